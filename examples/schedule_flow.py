from metaflow import FlowSpec, schedule, step


@schedule(cron="0 6 * * *", timezone="Europe/Amsterdam")
class ScheduleFlow(FlowSpec):
    """A flow scheduled daily at 06:00 Amsterdam time."""

    @step
    def start(self):
        """Set an initial value."""
        self.value = "scheduled"
        self.next(self.end)

    @step
    def end(self):
        """Record the final value."""
        self.final = self.value.upper()


if __name__ == "__main__":
    ScheduleFlow()
