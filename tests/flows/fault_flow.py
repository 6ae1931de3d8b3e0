import os
import signal
import subprocess
import sys
import time

from metaflow import FlowSpec, step


def _parent_of(pid):
    with open(f"/proc/{pid}/stat") as handle:
        return int(handle.read().rsplit(")", 1)[1].split()[1])


def _record(name):
    """The step's name, pid, and its parent's and grandparent's pids (the run's zygote and the
    template that forked it, when the step was forked)."""
    parent = os.getppid()
    with open(os.environ["FAULT_LOG"], "a") as handle:
        handle.write(f"{name} {os.getpid()} {parent} {_parent_of(parent)}\n")


class FaultFlow(FlowSpec):
    """Item 1 of a foreach misbehaves as FAULT_MODE says; every step that runs is recorded.

    FAULT_MODE: `sigkill` (the step kills itself), `exit0` (it leaves with status 0 before
    finishing), `disk` (it saves an artifact bigger than the datastore's disk), `hang` (it starts
    a child and waits, to be interrupted from outside), or unset (all is well).
    """

    @step
    def start(self):
        _record("start")
        self.orig_argv = list(getattr(sys, "orig_argv", []))
        self.items = [0, 1, 2]
        self.next(self.body, foreach="items")

    @step
    def body(self):
        _record(f"body{self.input}")
        self.orig_argv = list(getattr(sys, "orig_argv", []))
        mode = os.environ.get("FAULT_MODE", "")
        if self.input == 1:
            if mode == "sigkill":
                os.kill(os.getpid(), signal.SIGKILL)
            if mode == "exit0":
                sys.stdout.flush()
                os._exit(0)
            if mode == "disk":
                self.blob = os.urandom(8 * 1024 * 1024)
            if mode == "hang":
                child = subprocess.Popen(["sleep", "300"])
                with open(os.environ["FAULT_PIDS"], "a") as handle:
                    handle.write(f"{os.getpid()} {child.pid}\n")
                time.sleep(300)
        self.square = self.input * self.input
        self.next(self.join)

    @step
    def join(self, inputs):
        _record("join")
        self.squares = sorted(i.square for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        _record("end")


if __name__ == "__main__":
    FaultFlow()
