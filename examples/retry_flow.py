from metaflow import FlowSpec, current, retry, step


class RetryFlow(FlowSpec):
    """A step that fails on its first attempt and succeeds on the retry."""

    @step
    def start(self):
        """Set an initial value."""
        self.value = 1
        self.next(self.flaky)

    @retry(times=2, minutes_between_retries=0)
    @step
    def flaky(self):
        """Raise on the first attempt, succeed on the second."""
        if current.retry_count == 0:
            raise RuntimeError("deliberate failure on first attempt")
        self.attempts_seen = current.retry_count
        self.next(self.end)

    @step
    def end(self):
        """Record the attempt that succeeded."""
        self.final = [self.value, self.attempts_seen]


if __name__ == "__main__":
    RetryFlow()
