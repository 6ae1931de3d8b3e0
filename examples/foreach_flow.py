from metaflow import FlowSpec, step


class ForeachFlow(FlowSpec):
    """A foreach over three items with a two-step body, then a join."""

    @step
    def start(self):
        """Define the items to fan out over."""
        self.items = ["a", "b", "c"]
        self.next(self.body1, foreach="items")

    @step
    def body1(self):
        """First body step: upper-case the item."""
        self.item = self.input
        self.upper = self.input.upper()
        self.next(self.body2)

    @step
    def body2(self):
        """Second body step: repeat the item."""
        self.doubled = self.upper * 2
        self.next(self.join)

    @step
    def join(self, inputs):
        """Collect the results in order."""
        self.results = [inp.doubled for inp in inputs]
        self.items = inputs[0].items
        self.next(self.end)

    @step
    def end(self):
        """Record the final list."""
        self.final = ",".join(self.results)


if __name__ == "__main__":
    ForeachFlow()
