from metaflow import FlowSpec, step


class ForeachInSplitFlow(FlowSpec):
    """A static split where one branch holds a foreach and the other a plain step."""

    @step
    def start(self):
        """Split into a foreach branch and a plain branch."""
        self.next(self.fan, self.plain)

    @step
    def fan(self):
        """Start the foreach branch."""
        self.numbers = [1, 2, 3]
        self.next(self.square, foreach="numbers")

    @step
    def square(self):
        """Square one number."""
        self.sq = self.input * self.input
        self.next(self.fan_join)

    @step
    def fan_join(self, inputs):
        """Join the foreach."""
        self.squares = [inp.sq for inp in inputs]
        self.next(self.join)

    @step
    def plain(self):
        """The plain branch."""
        self.word = "plain"
        self.next(self.join)

    @step
    def join(self, inputs):
        """Join the static split."""
        self.squares = inputs.fan_join.squares
        self.word = inputs.plain.word
        self.next(self.end)

    @step
    def end(self):
        """Record the final result."""
        self.final = [self.word, sum(self.squares)]


if __name__ == "__main__":
    ForeachInSplitFlow()
