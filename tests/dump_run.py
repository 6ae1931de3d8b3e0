"""Print a Metaflow run's steps and artifacts as JSON (run in a subprocess with the test datastore)."""

import json
import sys

from metaflow import Run, namespace

namespace(None)
run = Run(sys.argv[1])
out = {
    "successful": run.successful,
    "finished": run.finished,
    "tags": sorted(run.tags),
    "steps": {},
}
for step in run:
    tasks = []
    for task in step:
        data = {}
        for artifact in task:
            if artifact.id.startswith("_") or artifact.id == "name":
                continue
            try:
                data[artifact.id] = repr(artifact.data)
            except Exception as exc:  # noqa: BLE001
                data[artifact.id] = f"<unreadable {type(exc).__name__}>"
        tasks.append({"data": data, "stdout": task.stdout, "ok": task.successful})
    out["steps"][step.id] = sorted(tasks, key=lambda t: json.dumps(t["data"], sort_keys=True))
print(json.dumps(out, sort_keys=True))
