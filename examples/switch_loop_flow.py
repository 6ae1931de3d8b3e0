from metaflow import FlowSpec, step


class SwitchLoopFlow(FlowSpec):
    """A switch whose 'again' case loops back to the same step until a counter hits 3."""

    @step
    def start(self):
        """Initialise the counter."""
        self.counter = 0
        self.history = []
        self.next(self.loop)

    @step
    def loop(self):
        """Increment the counter and decide whether to loop again."""
        self.counter += 1
        self.history = self.history + [self.counter]
        self.status = "done" if self.counter >= 3 else "again"
        self.next({"again": self.loop, "done": self.end}, condition="status")

    @step
    def end(self):
        """Record the final counter."""
        self.final = self.counter


if __name__ == "__main__":
    SwitchLoopFlow()
