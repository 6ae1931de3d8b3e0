import os

from metaflow import FlowSpec, environment, step


class PrintEnvFlow(FlowSpec):
    """Prints to stdout, and reads a variable the manifest takes from the worker's environment."""

    @environment(vars={"GREETING": "hello"})
    @step
    def start(self):
        """Print a line and the referenced secret."""
        print("hello from start")
        print("token is " + os.environ.get("API_TOKEN", "<unset>"))
        self.token_length = len(os.environ.get("API_TOKEN", ""))
        self.greeting = os.environ["GREETING"]
        self.next(self.end)

    @step
    def end(self):
        """Done."""


if __name__ == "__main__":
    PrintEnvFlow()
