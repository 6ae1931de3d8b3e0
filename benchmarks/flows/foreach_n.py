from metaflow import FlowSpec, Parameter, step


class ForeachNFlow(FlowSpec):
    """A foreach over n trivial items."""

    n = Parameter("n", type=int, default=20)

    @step
    def start(self):
        self.items = list(range(self.n))
        self.next(self.body, foreach="items")

    @step
    def body(self):
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
