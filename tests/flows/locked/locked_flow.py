import sys

from metaflow import FlowSpec, step


class LockedFlow(FlowSpec):
    """Steps that import a package only the flow's uv.lock provides."""

    @step
    def start(self):
        """Import the locked package."""
        import pyfiglet

        # A plain str: its own str subclass would need pyfiglet wherever the artifact is read.
        self.banner = str(pyfiglet.figlet_format("ok"))
        self.python = sys.executable
        self.next(self.end)

    @step
    def end(self):
        """Done."""
        print(self.banner)


if __name__ == "__main__":
    LockedFlow()
