import time

from metaflow import FlowSpec, Parameter, step


class ForeachNFlow(FlowSpec):
    """A foreach over n trivial items, each sleeping `pause` seconds (none by default)."""

    n = Parameter("n", type=int, default=20)
    pause = Parameter("pause", type=float, default=0.0)

    @step
    def start(self):
        self.items = list(range(self.n))
        self.next(self.body, foreach="items")

    @step
    def body(self):
        time.sleep(self.pause)
        self.value = self.input * 2
        self.next(self.join)

    @step
    def join(self, inputs):
        self.total = sum(i.value for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ForeachNFlow()
