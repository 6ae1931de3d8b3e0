from metaflow import FlowSpec, step


class SingleStepFlow(FlowSpec):
    """A flow with exactly one step, which is both start and end."""

    @step(start=True, end=True)
    def only(self):
        """The only step."""
        self.value = 42
        self.message = "single"


if __name__ == "__main__":
    SingleStepFlow()
