import os
import time

from metaflow import FlowSpec, Parameter, step

# The test rewrites this line to deploy a changed flow.
VERSION = "v1"


class RemoteFlow(FlowSpec):
    """Runs on a worker that shares nothing with the machine that applied it."""

    wait = Parameter("wait", type=float, default=0.0, help="Seconds start sleeps.")

    @step
    def start(self):
        """Record which code ran, and where."""
        self.version = VERSION
        self.greeting = os.environ.get("GREETING")
        self.folder = os.path.basename(os.getcwd())
        print("hello from " + VERSION)
        time.sleep(self.wait)
        self.next(self.end)

    @step
    def end(self):
        """Done."""
        self.done_version = VERSION


if __name__ == "__main__":
    RemoteFlow()
