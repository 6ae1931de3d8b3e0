from metaflow import FlowSpec, step


class StartSplitFlow(FlowSpec):
    """The start step itself splits into two branches that join."""

    @step
    def start(self):
        """Split straight away."""
        self.seed = 5
        self.next(self.left, self.right)

    @step
    def left(self):
        """Left branch."""
        self.left_value = self.seed - 1
        self.next(self.join)

    @step
    def right(self):
        """Right branch."""
        self.right_value = self.seed + 1
        self.next(self.join)

    @step
    def join(self, inputs):
        """Merge both branches."""
        self.merge_artifacts(inputs)
        self.pair = [self.left_value, self.right_value]
        self.next(self.end)

    @step
    def end(self):
        """Record the final pair."""
        self.final = sum(self.pair)


if __name__ == "__main__":
    StartSplitFlow()
