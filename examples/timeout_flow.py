from metaflow import FlowSpec, step, timeout


class TimeoutFlow(FlowSpec):
    """Steps carrying @timeout decorators that finish well within their limits."""

    @timeout(seconds=30)
    @step
    def start(self):
        """Quick step with a 30-second timeout."""
        self.value = 1
        self.next(self.work)

    @timeout(minutes=2)
    @step
    def work(self):
        """Quick step with a 2-minute timeout."""
        self.value = self.value + 1
        self.next(self.end)

    @step
    def end(self):
        """Record the final value."""
        self.final = self.value


if __name__ == "__main__":
    TimeoutFlow()
