from metaflow import FlowSpec, resources, step


class ResourcesFlow(FlowSpec):
    """Steps carrying @resources requests (nothing GPU-specific is executed)."""

    @step
    def start(self):
        """Set an initial value."""
        self.value = 1
        self.next(self.big)

    @resources(cpu=2, memory=8192)
    @step
    def big(self):
        """Step requesting 2 CPUs and 8 GiB of memory."""
        self.value = self.value + 1
        self.next(self.gpu)

    @resources(gpu=1, cpu=1, memory=1024, disk=2048)
    @step
    def gpu(self):
        """Step requesting a GPU; it only does plain arithmetic."""
        self.value = self.value * 10
        self.next(self.end)

    @step
    def end(self):
        """Record the final value."""
        self.final = self.value


if __name__ == "__main__":
    ResourcesFlow()
