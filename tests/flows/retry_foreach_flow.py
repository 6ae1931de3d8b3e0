from metaflow import FlowSpec, current, retry, step


class RetryForeachFlow(FlowSpec):
    """A foreach split that fails on its first attempt: the fan-out comes from the retry."""

    @retry(times=1, minutes_between_retries=0)
    @step
    def start(self):
        """Fail once, then fan out over three items."""
        if current.retry_count == 0:
            raise RuntimeError("first attempt fails")
        self.items = ["a", "b", "c"]
        self.next(self.body, foreach="items")

    @step
    def body(self):
        """Upper-case one item."""
        self.value = self.input.upper()
        self.next(self.join)

    @step
    def join(self, inputs):
        """Collect."""
        self.values = sorted(i.value for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        """Done."""


if __name__ == "__main__":
    RetryForeachFlow()
