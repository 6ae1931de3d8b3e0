import os
import time

from metaflow import FlowSpec, Parameter, step


class DeployedResumeFlow(FlowSpec):
    """A foreach whose item 1 fails until the file RESUME_FLAG exists (where the steps run)."""

    count = Parameter("count", type=int, default=3)
    pause = Parameter("pause", type=int, default=0)

    @step
    def start(self):
        """Fan out."""
        time.sleep(self.pause)
        self.items = list(range(self.count))
        self.next(self.body, foreach="items")

    @step
    def body(self):
        """Fail for item 1 until the flag exists."""
        if self.input == 1 and not os.path.exists(os.environ["RESUME_FLAG"]):
            time.sleep(2)  # the other items finish first: there is something to clone
            raise RuntimeError("item 1 fails this time")
        self.square = self.input * self.input
        self.next(self.join)

    @step
    def join(self, inputs):
        """Collect."""
        self.squares = sorted(i.square for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        """Done."""
        print(f"squares {self.squares}")


if __name__ == "__main__":
    DeployedResumeFlow()
