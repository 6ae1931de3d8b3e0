from metaflow import FlowSpec, Parameter, step, trigger


# Mapping is flow parameter name -> event payload field: `path` is filled from `file_path`.
@trigger(event={"name": "data.ready", "parameters": {"path": "file_path"}})
class TriggerFlow(FlowSpec):
    """A flow triggered by the 'data.ready' event."""

    path = Parameter("path", help="Path of the data that is ready.", default="s3://bucket/none")

    @step
    def start(self):
        """Copy the parameter into an artifact."""
        self.seen_path = self.path
        self.next(self.end)

    @step
    def end(self):
        """Record the final value."""
        self.final = self.seen_path


if __name__ == "__main__":
    TriggerFlow()
