from metaflow import FlowSpec, step


class LinearThreeFlow(FlowSpec):
    """Three trivial steps."""

    @step
    def start(self):
        self.x = 1
        self.next(self.middle)

    @step
    def middle(self):
        self.x += 1
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    LinearThreeFlow()
