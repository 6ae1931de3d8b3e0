from metaflow import FlowSpec, step


class CustomNamesFlow(FlowSpec):
    """A flow whose start and end steps have custom names."""

    @step(start=True)
    def begin(self):
        """Custom-named start step."""
        self.value = 3
        self.next(self.work)

    @step
    def work(self):
        """Middle step."""
        self.value = self.value * 7
        self.next(self.finish)

    @step(end=True)
    def finish(self):
        """Custom-named end step."""
        self.final = self.value


if __name__ == "__main__":
    CustomNamesFlow()
