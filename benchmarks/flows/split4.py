import time

from metaflow import FlowSpec, step


class SplitFourFlow(FlowSpec):
    """Four branches that each sleep 2 s."""

    @step
    def start(self):
        self.next(self.a, self.b, self.c, self.d)

    @step
    def a(self):
        time.sleep(2)
        self.next(self.join)

    @step
    def b(self):
        time.sleep(2)
        self.next(self.join)

    @step
    def c(self):
        time.sleep(2)
        self.next(self.join)

    @step
    def d(self):
        time.sleep(2)
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    SplitFourFlow()
