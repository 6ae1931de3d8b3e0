from metaflow import FlowSpec, step, trigger_on_finish


@trigger_on_finish(flow="LinearFlow")
class TriggerOnFinishFlow(FlowSpec):
    """A flow triggered when LinearFlow finishes successfully."""

    @step
    def start(self):
        """Set an initial value."""
        self.value = "after LinearFlow"
        self.next(self.end)

    @step
    def end(self):
        """Record the final value."""
        self.final = self.value


if __name__ == "__main__":
    TriggerOnFinishFlow()
