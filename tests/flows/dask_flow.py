"""A foreach whose items record which Dask worker ran them, and a step that needs a GPU."""

import os
import time

from metaflow import FlowSpec, Parameter, current, resources, retry, step


class DaskFlow(FlowSpec):
    items = Parameter("items", type=int, default=40)
    pause = Parameter("pause", type=float, default=0.0)

    @step
    def start(self):
        self.things = list(range(self.items))
        self.next(self.work, foreach="things")

    @retry(times=2)
    @step
    def work(self):
        # Each worker's HOME is its own folder: a test watches it to know what runs where.
        marker = os.path.join(os.environ["HOME"], f"started-{self.input}-{current.retry_count}")
        with open(marker, "w") as handle:
            handle.write(str(os.getpid()))
        print(f"item {self.input} on {os.environ.get('WORKER_LABEL')}")
        time.sleep(self.pause)
        self.item = self.input
        self.where = os.environ.get("WORKER_LABEL")
        self.retry = current.retry_count
        self.next(self.join)

    @step
    def join(self, inputs):
        self.seen = sorted(i.item for i in inputs)
        self.wheres = sorted({i.where for i in inputs})
        self.next(self.accelerated)

    @resources(gpu=1)
    @step
    def accelerated(self):
        self.gpu_where = os.environ.get("WORKER_LABEL")
        self.greeting = os.environ.get("GREETING")
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    DaskFlow()
