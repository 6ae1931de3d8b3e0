import os
import time

from metaflow import FlowSpec, Parameter, step

# Each step works `pause` seconds; step 9 (`s8`) fails until the file RESUME_FLAG exists.


class TenStepFlow(FlowSpec):
    """Ten linear steps; the ninth fails until its fix lands (the file RESUME_FLAG)."""

    pause = Parameter("pause", type=float, default=1.0)

    @step
    def start(self):
        time.sleep(self.pause)
        self.next(self.s1)

    @step
    def s1(self):
        time.sleep(self.pause)
        self.next(self.s2)

    @step
    def s2(self):
        time.sleep(self.pause)
        self.next(self.s3)

    @step
    def s3(self):
        time.sleep(self.pause)
        self.next(self.s4)

    @step
    def s4(self):
        time.sleep(self.pause)
        self.next(self.s5)

    @step
    def s5(self):
        time.sleep(self.pause)
        self.next(self.s6)

    @step
    def s6(self):
        time.sleep(self.pause)
        self.next(self.s7)

    @step
    def s7(self):
        time.sleep(self.pause)
        self.next(self.s8)

    @step
    def s8(self):
        if not os.path.exists(os.environ["RESUME_FLAG"]):
            raise RuntimeError("step 9 fails until its fix lands")
        time.sleep(self.pause)
        self.next(self.end)

    @step
    def end(self):
        time.sleep(self.pause)


if __name__ == "__main__":
    TenStepFlow()
