import os
import time

from metaflow import FlowSpec, step


def _record(name):
    with open(os.environ["RESUME_LOG"], "a") as handle:
        handle.write(name + "\n")


class ResumeFlow(FlowSpec):
    """A foreach whose item 1 fails while RESUME_FAIL is set; every user-code run is recorded."""

    @step
    def start(self):
        """Fan out."""
        _record("start")
        self.items = [0, 1, 2]
        self.next(self.body, foreach="items")

    @step
    def body(self):
        """Fail for item 1 when asked to."""
        _record(f"body{self.input}")
        if self.input == 1 and os.environ.get("RESUME_FAIL"):
            time.sleep(3)  # let the other items finish first, so there is something to clone
            raise RuntimeError("item 1 fails this time")
        self.square = self.input * self.input
        self.next(self.join)

    @step
    def join(self, inputs):
        """Collect."""
        _record("join")
        self.squares = sorted(i.square for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        """Done."""
        _record("end")


if __name__ == "__main__":
    ResumeFlow()
