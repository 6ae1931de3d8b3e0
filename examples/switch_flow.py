from metaflow import FlowSpec, Parameter, step


class SwitchFlow(FlowSpec):
    """A switch driven by a parameter; branches re-converge before end."""

    mode = Parameter("mode", help="Which branch to take: fast or slow.", default="fast")

    @step
    def start(self):
        """Copy the parameter and switch on it."""
        self.choice = self.mode
        self.next({"fast": self.fast, "slow": self.slow}, condition="choice")

    @step
    def fast(self):
        """The fast branch."""
        self.result = "took fast"
        self.next(self.converge)

    @step
    def slow(self):
        """The slow branch."""
        self.result = "took slow"
        self.next(self.converge)

    @step
    def converge(self):
        """Common step after either branch."""
        self.summary = self.result.upper()
        self.next(self.end)

    @step
    def end(self):
        """Record the final summary."""
        self.final = [self.choice, self.result, self.summary]


if __name__ == "__main__":
    SwitchFlow()
