from metaflow import FlowSpec, card, step


class CardFlow(FlowSpec):
    """A flow with a default @card on one step."""

    @step
    def start(self):
        """Set an initial value."""
        self.values = [1, 2, 3]
        self.next(self.report)

    @card
    @step
    def report(self):
        """Step carrying the default card."""
        self.total = sum(self.values)
        self.next(self.end)

    @step
    def end(self):
        """Record the final value."""
        self.final = self.total


if __name__ == "__main__":
    CardFlow()
