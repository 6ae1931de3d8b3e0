from metaflow import FlowSpec, catch, retry, step


class CatchFlow(FlowSpec):
    """Steps that always raise, with @catch (alone and with @retry) swallowing the errors."""

    @step
    def start(self):
        """Set an initial value."""
        self.value = 1
        self.next(self.compute)

    @catch(var="compute_failed")
    @step
    def compute(self):
        """Always raise; @catch records the exception."""
        raise ValueError("compute always fails")
        self.next(self.flaky)  # unreachable; declares the graph edge

    @catch(var="flaky_failed")
    @retry(times=1, minutes_between_retries=0)
    @step
    def flaky(self):
        """Always raise, even after the retry; @catch records the exception."""
        raise ValueError("flaky always fails")
        self.next(self.end)

    @step
    def end(self):
        """Record whether both caught exceptions are set."""
        self.compute_caught = self.compute_failed is not None
        self.flaky_caught = self.flaky_failed is not None


if __name__ == "__main__":
    CatchFlow()
