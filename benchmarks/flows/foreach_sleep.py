import time

from metaflow import FlowSpec, Parameter, step


class ForeachSleepFlow(FlowSpec):
    """A foreach over n items that each sleep `pause` seconds."""

    n = Parameter("n", type=int, default=200)
    pause = Parameter("pause", type=float, default=0.5)

    @step
    def start(self):
        self.items = list(range(self.n))
        self.next(self.body, foreach="items")

    @step
    def body(self):
        time.sleep(self.pause)
        self.value = self.input
        self.next(self.join)

    @step
    def join(self, inputs):
        self.total = sum(i.value for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ForeachSleepFlow()
