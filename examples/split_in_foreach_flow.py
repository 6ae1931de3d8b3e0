from metaflow import FlowSpec, step


class SplitInForeachFlow(FlowSpec):
    """A foreach whose body contains a static split and join."""

    @step
    def start(self):
        """Define the items."""
        self.items = [1, 2]
        self.next(self.body, foreach="items")

    @step
    def body(self):
        """Foreach body: split statically."""
        self.item = self.input
        self.next(self.add, self.mul)

    @step
    def add(self):
        """Add branch."""
        self.added = self.item + 100
        self.next(self.inner_join)

    @step
    def mul(self):
        """Multiply branch."""
        self.multiplied = self.item * 100
        self.next(self.inner_join)

    @step
    def inner_join(self, inputs):
        """Join the static split inside the foreach."""
        self.merge_artifacts(inputs)
        self.pair = [self.added, self.multiplied]
        self.next(self.outer_join)

    @step
    def outer_join(self, inputs):
        """Join the foreach."""
        self.pairs = [inp.pair for inp in inputs]
        self.next(self.end)

    @step
    def end(self):
        """Record the final pairs."""
        self.final = self.pairs


if __name__ == "__main__":
    SplitInForeachFlow()
