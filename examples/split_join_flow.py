from metaflow import FlowSpec, step


class SplitJoinFlow(FlowSpec):
    """A static split into two two-step branches, then a join."""

    @step
    def start(self):
        """Set a shared base value and split."""
        self.base = 10
        self.next(self.a1, self.b1)

    @step
    def a1(self):
        """First step of branch a."""
        self.a_value = self.base + 1
        self.next(self.a2)

    @step
    def a2(self):
        """Second step of branch a."""
        self.a_value = self.a_value * 2
        self.next(self.join)

    @step
    def b1(self):
        """First step of branch b."""
        self.b_value = self.base + 2
        self.next(self.b2)

    @step
    def b2(self):
        """Second step of branch b."""
        self.b_value = self.b_value * 3
        self.next(self.join)

    @step
    def join(self, inputs):
        """Merge both branches and sum their values."""
        self.merge_artifacts(inputs)
        self.total = self.a_value + self.b_value
        self.next(self.end)

    @step
    def end(self):
        """Record the final result."""
        self.result = [self.base, self.a_value, self.b_value, self.total]


if __name__ == "__main__":
    SplitJoinFlow()
