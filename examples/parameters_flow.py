from metaflow import FlowSpec, JSONType, Parameter, step


class ParametersFlow(FlowSpec):
    """A flow with Parameters of every supported kind."""

    greeting = Parameter("greeting", help="A string.", default="world")
    count = Parameter("count", help="An integer.", type=int, default=3)
    ratio = Parameter("ratio", help="A float.", type=float, default=0.5)
    verbose = Parameter("verbose", help="A boolean flag.", type=bool, default=False)
    settings = Parameter("settings", help="A JSON value.", type=JSONType, default='{"k": [1, 2]}')
    dataset = Parameter("dataset", help="A required string.", required=True)
    learning_rate = Parameter("learning-rate", help="A dashed name.", type=float, default=0.01)
    computed = Parameter("computed", help="A deploy-time default.", default=lambda ctx: "computed")

    @step
    def start(self):
        """Copy each parameter into an artifact."""
        self.greeting_value = self.greeting
        self.count_value = self.count
        self.ratio_value = self.ratio
        self.verbose_value = self.verbose
        self.settings_value = self.settings
        self.dataset_value = self.dataset
        self.learning_rate_value = self.learning_rate
        self.computed_value = self.computed
        self.next(self.end)

    @step
    def end(self):
        """Record a summary."""
        self.summary = f"{self.greeting_value}:{self.count_value}:{self.dataset_value}"


if __name__ == "__main__":
    ParametersFlow()
