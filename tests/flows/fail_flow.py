from metaflow import FlowSpec, step


class FailFlow(FlowSpec):
    """A flow whose middle step fails: nothing after it may run."""

    @step
    def start(self):
        """Fan out into a failing branch and a slow, healthy one."""
        self.next(self.boom, self.fine)

    @step
    def boom(self):
        """Fail loudly."""
        print("about to fail")
        raise ValueError("deliberate failure in boom")
        self.next(self.join)

    @step
    def fine(self):
        """A healthy sibling."""
        self.value = 1
        self.next(self.join)

    @step
    def join(self, inputs):
        """Never reached."""
        self.next(self.end)

    @step
    def end(self):
        """Never reached."""


if __name__ == "__main__":
    FailFlow()
