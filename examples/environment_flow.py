import os

from metaflow import FlowSpec, environment, step


class EnvironmentFlow(FlowSpec):
    """A step that receives environment variables through @environment."""

    @step
    def start(self):
        """Set an initial value."""
        self.value = 1
        self.next(self.greet)

    @environment(vars={"GREETING": "hello", "MODE": "test"})
    @step
    def greet(self):
        """Copy the injected environment variables into artifacts."""
        self.greeting = os.environ["GREETING"]
        self.mode = os.environ["MODE"]
        self.next(self.end)

    @step
    def end(self):
        """Record the final message."""
        self.final = f"{self.greeting}/{self.mode}"


if __name__ == "__main__":
    EnvironmentFlow()
