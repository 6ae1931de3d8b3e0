from metaflow import FlowSpec, step


class StepsThirtyFlow(FlowSpec):
    """A 30-step linear flow."""

    @step
    def start(self):
        self.next(self.step_01)

    @step
    def step_01(self):
        self.next(self.step_02)

    @step
    def step_02(self):
        self.next(self.step_03)

    @step
    def step_03(self):
        self.next(self.step_04)

    @step
    def step_04(self):
        self.next(self.step_05)

    @step
    def step_05(self):
        self.next(self.step_06)

    @step
    def step_06(self):
        self.next(self.step_07)

    @step
    def step_07(self):
        self.next(self.step_08)

    @step
    def step_08(self):
        self.next(self.step_09)

    @step
    def step_09(self):
        self.next(self.step_10)

    @step
    def step_10(self):
        self.next(self.step_11)

    @step
    def step_11(self):
        self.next(self.step_12)

    @step
    def step_12(self):
        self.next(self.step_13)

    @step
    def step_13(self):
        self.next(self.step_14)

    @step
    def step_14(self):
        self.next(self.step_15)

    @step
    def step_15(self):
        self.next(self.step_16)

    @step
    def step_16(self):
        self.next(self.step_17)

    @step
    def step_17(self):
        self.next(self.step_18)

    @step
    def step_18(self):
        self.next(self.step_19)

    @step
    def step_19(self):
        self.next(self.step_20)

    @step
    def step_20(self):
        self.next(self.step_21)

    @step
    def step_21(self):
        self.next(self.step_22)

    @step
    def step_22(self):
        self.next(self.step_23)

    @step
    def step_23(self):
        self.next(self.step_24)

    @step
    def step_24(self):
        self.next(self.step_25)

    @step
    def step_25(self):
        self.next(self.step_26)

    @step
    def step_26(self):
        self.next(self.step_27)

    @step
    def step_27(self):
        self.next(self.step_28)

    @step
    def step_28(self):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    StepsThirtyFlow()
