import os
import subprocess
import time

from metaflow import FlowSpec, step


class SleepFlow(FlowSpec):
    """Two branches that sleep with a child process each: for flow timeouts and cancellation."""

    @step
    def start(self):
        """Fan out."""
        self.next(self.nap_a, self.nap_b)

    @step
    def nap_a(self):
        """Sleep."""
        self._nap("a")
        self.next(self.join)

    @step
    def nap_b(self):
        """Sleep."""
        self._nap("b")
        self.next(self.join)

    def _nap(self, name):
        child = subprocess.Popen(["sleep", "300"])
        with open(os.environ["SLEEP_PID_DIR"] + "/" + name, "w") as handle:
            handle.write(f"{os.getpid()} {child.pid}\n")
        time.sleep(float(os.environ.get("SLEEP_SECONDS", "120")))

    @step
    def join(self, inputs):
        """Never reached when stopped."""
        self.next(self.end)

    @step
    def end(self):
        """Done."""


if __name__ == "__main__":
    SleepFlow()
