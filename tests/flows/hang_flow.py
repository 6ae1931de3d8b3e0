import os
import subprocess
import time

from metaflow import FlowSpec, step, timeout


class HangFlow(FlowSpec):
    """A step that hangs with a child process: the timeout must stop both."""

    @step
    def start(self):
        """Nothing to do."""
        self.next(self.hang)

    @timeout(seconds=2)
    @step
    def hang(self):
        """Start a long-lived child, record its pid, then hang."""
        child = subprocess.Popen(["sleep", "300"])
        with open(os.environ["HANG_PID_FILE"], "w") as handle:
            handle.write(f"{os.getpid()} {child.pid}\n")
        time.sleep(120)
        self.next(self.end)

    @step
    def end(self):
        """Never reached."""


if __name__ == "__main__":
    HangFlow()
