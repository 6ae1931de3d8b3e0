from metaflow import FlowSpec, step


class NestedForeachFlow(FlowSpec):
    """A 2x2x2 foreach nested three levels deep with a join at each level."""

    @step
    def start(self):
        """Define the outer items."""
        self.xs = [1, 2]
        self.next(self.level1, foreach="xs")

    @step
    def level1(self):
        """Outer body: fan out again."""
        self.x = self.input
        self.ys = [10, 20]
        self.next(self.level2, foreach="ys")

    @step
    def level2(self):
        """Middle body: fan out a third time."""
        self.y = self.input
        self.zs = [100, 200]
        self.next(self.level3, foreach="zs")

    @step
    def level3(self):
        """Innermost body: combine the three indices."""
        self.z = self.input
        self.value = self.x + self.y + self.z
        self.next(self.join3)

    @step
    def join3(self, inputs):
        """Join the innermost level."""
        self.values3 = [inp.value for inp in inputs]
        self.next(self.join2)

    @step
    def join2(self, inputs):
        """Join the middle level."""
        self.values2 = [v for inp in inputs for v in inp.values3]
        self.next(self.join1)

    @step
    def join1(self, inputs):
        """Join the outer level."""
        self.values = [v for inp in inputs for v in inp.values2]
        self.next(self.end)

    @step
    def end(self):
        """Record the total."""
        self.total = sum(self.values)
        self.count = len(self.values)


if __name__ == "__main__":
    NestedForeachFlow()
