from metaflow import FlowSpec, step


class LinearFlow(FlowSpec):
    """A three-step linear flow: start -> middle -> end."""

    @step
    def start(self):
        """Set the initial value."""
        self.value = 1
        self.next(self.middle)

    @step
    def middle(self):
        """Double the value and record a label."""
        self.value = self.value * 2
        self.label = "middle"
        self.next(self.end)

    @step
    def end(self):
        """Record the final value."""
        self.final = self.value + 1


if __name__ == "__main__":
    LinearFlow()
