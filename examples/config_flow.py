from metaflow import Config, FlowSpec, step


class ConfigFlow(FlowSpec):
    """A flow reading two nested-dict Configs with default values."""

    settings = Config(
        "settings",
        default_value={"model": {"depth": 3, "name": "tree"}, "tags": ["a", "b"]},
        help="Model settings.",
    )
    data = Config("data", default_value={"source": {"table": "events", "limit": 100}})

    @step
    def start(self):
        """Copy config values into artifacts."""
        self.depth = self.settings.model.depth
        self.model_name = self.settings.model.name
        self.tags = list(self.settings.tags)
        self.next(self.end)

    @step
    def end(self):
        """Copy the second config's values into artifacts."""
        self.table = self.data.source.table
        self.limit = self.data["source"]["limit"]


if __name__ == "__main__":
    ConfigFlow()
