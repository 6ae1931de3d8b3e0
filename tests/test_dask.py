"""Steps on a Dask cluster: a real `dask scheduler` and two `dask worker` processes on
127.0.0.1, each in a folder of its own with its own HOME (one advertising GPU=1), moto's S3
server for the datastore, a Prefect server, and (for the deployed run) a process worker.

The Dask workers share one folder for Metaflow's local metadata: it stands in for a metadata
service (metaflow-local-service renames client-chosen task ids; see the README), so that
Metaflow's client can read the run back. The workers get no Prefect settings: the task runner
sends them with each task."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, flow_env, mfprefect, run, start_local_server, stop_local_server
from prefect_stack import api, start_worker, stop_worker, wait_flow_run
from remote_stack import dask_cluster, s3_keys, s3_server
from ruamel.yaml import YAML

pytestmark = pytest.mark.slow

FLOW = ROOT / "tests" / "flows" / "dask_flow.py"
BUCKET = "mfp-dask"
POOL = "dask-pool"
# Must never travel with a task: it is read from a Prefect Secret block on the worker.
SECRET_VALUE = "dask-secret-7f1e0c"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("dask")
    with s3_server(base / "s3", bucket=BUCKET) as s3:
        env = flow_env(base / "applier")
        env.update(s3)
        env["MFPREFECT_HOME"] = str(base / "applier" / "mfprefect-home")
        env["PREFECT_HOME"] = str(base / "applier" / "prefect-home")
        shared_metadata = base / "shared-metadata"
        env["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = str(shared_metadata)
        env.pop("PREFECT_API_URL", None)
        try:
            env["PREFECT_API_URL"] = start_local_server(env)
            workers = {name: _worker_env(env, name) for name in ("plain", "gpu")}
            with dask_cluster(base / "cluster", workers, {"gpu": "GPU=1"}) as cluster:
                yield {"env": env, "base": base, "cluster": cluster}
        finally:
            stop_local_server(env)


def _worker_env(applier: dict[str, str], label: str) -> dict[str, str]:
    """A Dask worker's environment: PATH, S3 and the shared metadata folder; no Prefect."""
    keep = ("PATH", "LANG", "LC_ALL", "TZ")
    env = {k: v for k, v in os.environ.items() if k in keep}
    for name, value in applier.items():
        if name.startswith(("METAFLOW_S3_", "AWS_")):
            env[name] = value
    env.update(
        # Metaflow's S3 client starts one process (and boto3 client) per object, up to 64, for
        # every batch a step saves or reads: two keep this 2-core machine's tests fast.
        METAFLOW_S3_WORKER_COUNT="2",
        METAFLOW_DATASTORE_SYSROOT_S3=applier["METAFLOW_DATASTORE_SYSROOT_S3"],
        METAFLOW_DATASTORE_SYSROOT_LOCAL=applier["METAFLOW_DATASTORE_SYSROOT_LOCAL"],
        WORKER_LABEL=label,
        USER=f"dask-{label}",
    )
    return env


def _export(folder: Path, env: dict[str, str], **deployment: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dask_flow.py").write_text(FLOW.read_text())
    manifest = folder / "dask.yaml"
    done = mfprefect(
        "export",
        str(folder / "dask_flow.py"),
        "-o",
        str(manifest),
        "--datastore",
        "s3",
        "--datastore-root",
        f"s3://{BUCKET}/metaflow",
        "--work-pool",
        POOL,
        env=env,
        cwd=folder,
    )
    assert done.returncode == 0, done.stderr
    yaml = YAML()
    data = yaml.load(manifest.read_text())
    data["deployment"]["parallelism"] = 4
    data["steps"]["accelerated"]["environment"] = {"GREETING": {"secret": "dask-greeting"}}
    for key, value in deployment.items():
        data["deployment"][key] = value
    with open(manifest, "w") as handle:
        yaml.dump(data, handle)
    return manifest


def _secret(env: dict[str, str]) -> None:
    probe = (
        "import sys\nfrom prefect.blocks.system import Secret\n"
        "Secret(value=sys.argv[1]).save('dask-greeting', overwrite=True)\n"
    )
    done = run([sys.executable, "-c", probe, SECRET_VALUE], env=env)
    assert done.returncode == 0, done.stderr[-2000:]


def _run_id(output: str) -> str:
    return next(
        line.split("/")[-1] for line in output.splitlines() if line.startswith("Metaflow run ")
    )


def _read(env: dict[str, str], run_id: str, cwd: Path) -> dict[str, Any]:
    """Metaflow's client on the run: every `work` task's item, worker and retry count."""
    probe = (
        "import json, sys\n"
        "from metaflow import Run, namespace\n"
        "namespace(None)\n"
        "run = Run('DaskFlow/' + sys.argv[1])\n"
        "work = [(t['item'].data, t['where'].data, t['retry'].data, t.current_attempt)"
        " for t in run['work']]\n"
        "acc = run['accelerated'].task\n"
        "print(json.dumps({'ok': run.successful, 'work': work,"
        " 'seen': run['join'].task['seen'].data,"
        " 'gpu_where': acc['gpu_where'].data, 'greeting': acc['greeting'].data,"
        " 'stdout': run['work'].task.stdout}))\n"
    )
    done = run([sys.executable, "-c", probe, run_id], env=env, cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _task_runs(env: dict[str, str], run_id: str) -> list[dict[str, Any]]:
    flow_runs = api(
        env,
        "POST",
        "/flow_runs/filter",
        {"flow_runs": {"tags": {"all_": [f"metaflow_run:DaskFlow/{run_id}"]}}},
    )
    assert len(flow_runs) == 1, flow_runs
    found: list[dict[str, Any]] = api(
        env,
        "POST",
        "/task_runs/filter",
        {"task_runs": {"flow_run_id": {"any_": [flow_runs[0]["id"]]}}, "limit": 200},
    )
    return found


def test_a_foreach_spreads_over_the_workers_and_the_gpu_step_finds_the_gpu(
    stack: dict[str, Any],
) -> None:
    env = dict(stack["env"])
    _secret(env)
    folder = stack["base"] / "local-run"
    manifest = _export(folder, env)
    address = stack["cluster"]["address"]
    # 40 foreach tasks on a 2-core machine shared with the other test worker: the timeout only
    # guards against a hang.
    ran = mfprefect("run", str(manifest), "--address", address, env=env, cwd=folder, timeout=300)
    assert ran.returncode == 0, ran.stderr[-3000:]
    run_id = _run_id(ran.stderr)
    found = _read(env, run_id, folder)
    assert found["ok"]
    assert found["seen"] == list(range(40))
    wheres = {where for _, where, _, _ in found["work"]}
    assert wheres == {"plain", "gpu"}, found["work"]
    assert len(found["work"]) == 40
    assert found["gpu_where"] == "gpu"
    # The secret was read on the worker; it never reached the task's arguments or logs.
    assert found["greeting"] == SECRET_VALUE
    task_runs = _task_runs(env, run_id)
    work_runs = [t for t in task_runs if t["name"].startswith("work")]
    assert len(work_runs) == 40
    for task_run in task_runs:
        placed = [t for t in task_run["tags"] if t.startswith("dask-worker:tcp://127.0.0.1:")]
        assert len(placed) == 1, task_run
    logs = api(
        env,
        "POST",
        "/logs/filter",
        {"logs": {"task_run_id": {"any_": [t["id"] for t in work_runs]}}, "limit": 200},
    )
    assert any(entry["message"].startswith("item ") for entry in logs)
    assert all(SECRET_VALUE not in entry["message"] for entry in logs)
    # Nothing of the run was written to the applier's folder.
    assert not list(folder.rglob("data"))


def test_a_step_that_no_worker_can_run_fails_the_run_at_start(stack: dict[str, Any]) -> None:
    env = dict(stack["env"])
    folder = stack["base"] / "two-gpus"
    manifest = _export(folder, env)
    yaml = YAML()
    data = yaml.load(manifest.read_text())
    data["steps"]["accelerated"]["resources"]["gpu"] = 2
    with open(manifest, "w") as handle:
        yaml.dump(data, handle)
    address = stack["cluster"]["address"]
    ran = mfprefect("run", str(manifest), "--address", address, env=env, cwd=folder)
    assert ran.returncode == 3, ran.stderr[-3000:]
    errors = [line for line in ran.stderr.splitlines() if line.startswith("mfprefect: error:")]
    assert errors == [
        f"mfprefect: error: step `accelerated` needs GPU=2, and no worker of the Dask cluster "
        f"at {address} has that much (the most any worker has: GPU=1)"
    ], ran.stderr[-3000:]
    # No step ran: the run has nothing in the datastore.
    assert s3_keys(env, BUCKET, f"metaflow/DaskFlow/{_run_id(ran.stderr)}/") == []


def test_a_deployed_run_finds_the_scheduler_through_the_workers_environment(
    stack: dict[str, Any],
) -> None:
    env = dict(stack["env"])
    _secret(env)
    folder = stack["base"] / "deployed"
    manifest = _export(folder, env, executor={"kind": "dask", "address": {"env": "DASK_SCHEDULER"}})
    made = run(
        [sys.executable, "-m", "prefect", "work-pool", "create", POOL, "--type", "process"],
        env=env,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    applied = mfprefect("apply", str(manifest), env=env, cwd=folder)
    assert applied.returncode == 0, applied.stderr[-3000:]
    machine = stack["base"] / "process-worker"
    (machine / "home").mkdir(parents=True)
    worker_env = _worker_env(env, "process-worker")
    worker_env.update(
        HOME=str(machine / "home"),
        PREFECT_API_URL=env["PREFECT_API_URL"],
        PREFECT_HOME=str(machine / "prefect"),
        DASK_SCHEDULER=stack["cluster"]["address"],
    )
    worker = start_worker(machine, POOL, worker_env)
    try:
        triggered = mfprefect("trigger", "DaskFlow", "--param", "items=4", env=env)
        assert triggered.returncode == 0, triggered.stderr
        flow_run_id = triggered.stdout.strip().splitlines()[-1]
        final = wait_flow_run(env, flow_run_id, timeout=300)
        assert final["state"]["type"] == "COMPLETED", (machine / "worker.log").read_text()[-3000:]
    finally:
        stop_worker(worker)
    task_runs = api(
        env,
        "POST",
        "/task_runs/filter",
        {"task_runs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200},
    )
    work = [t for t in task_runs if t["name"].startswith("work")]
    assert len(work) == 4
    assert all(any(tag.startswith("dask-worker:") for tag in t["tags"]) for t in task_runs)


def _processes_with(variable: str) -> list[int]:
    """Processes of this user whose environment holds `variable` (NAME=VALUE)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                if variable.encode() in handle.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


@contextlib.contextmanager
def _run_until(
    folder: Path, manifest: Path, address: str, env: dict[str, str], params: list[str], started: Any
) -> Iterator[subprocess.Popen[bytes]]:
    """`mfprefect run` in the background (output in folder/run.log), yielded once `started()`
    holds; killed on the way out if it is still running."""
    command = [sys.executable, "-m", "mfprefect.cli", "run", str(manifest), "--address", address]
    for param in params:
        command += ["--param", param]
    with open(folder / "run.log", "wb") as log:
        running = subprocess.Popen(
            command, env=env, cwd=folder, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 180
        while not started():
            assert running.poll() is None, (folder / "run.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the items never started"
            time.sleep(0.2)
        yield running
    finally:
        if running.poll() is None:
            running.kill()


def _clear_markers(*homes: Path) -> None:
    for home in homes:
        for old in home.glob("started-*"):
            old.unlink()


def test_cancelling_the_flow_run_stops_the_steps_on_every_worker(stack: dict[str, Any]) -> None:
    env = dict(stack["env"])
    folder = stack["base"] / "cancelled"
    manifest = _export(folder, env)
    homes = [stack["base"] / "cluster" / name / "home" for name in ("plain", "gpu")]
    _clear_markers(*homes)
    params = ["items=4", "pause=300"]
    on_both = lambda: all(list(home.glob("started-*")) for home in homes)  # noqa: E731
    with _run_until(folder, manifest, stack["cluster"]["address"], env, params, on_both) as running:
        steps = [int(p.read_text() or 0) for home in homes for p in home.glob("started-*")]
        assert steps and all(_alive(pid) for pid in steps)
        output = (folder / "run.log").read_text()
        flow_run_id = output.split("/runs/flow-run/")[1].split()[0]
        api(
            env,
            "POST",
            f"/flow_runs/{flow_run_id}/set_state",
            {"state": {"type": "CANCELLING"}, "force": True},
        )
        assert running.wait(timeout=120) == 3
    deadline = time.monotonic() + 15
    while any(_alive(pid) for pid in steps) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in steps if _alive(pid)]
    output = (folder / "run.log").read_text()
    assert "mfprefect: error: the flow run was cancelled; its steps were stopped" in output


def test_a_lost_scheduler_fails_the_run_and_resume_runs_only_the_rest(
    stack: dict[str, Any],
) -> None:
    """A cluster of its own (its scheduler is killed), then resume on the shared one."""
    env = dict(stack["env"])
    _secret(env)
    folder = stack["base"] / "lost-scheduler"
    manifest = _export(folder, env)
    workers = {"lonely": _worker_env(env, "lonely")}
    with dask_cluster(stack["base"] / "doomed", workers, {"lonely": "GPU=1"}) as doomed:
        home = stack["base"] / "doomed" / "lonely" / "home"
        two_done = lambda: len(list(home.glob("started-*"))) >= 3  # noqa: E731
        params = ["items=4", "pause=3"]
        with _run_until(folder, manifest, doomed["address"], env, params, two_done) as running:
            os.killpg(doomed["scheduler"].pid, signal.SIGKILL)
            assert running.wait(timeout=120) == 3
    output = (folder / "run.log").read_text()
    errors = [line for line in output.splitlines() if line.startswith("mfprefect: error:")]
    assert len(errors) == 1 and "did not finish on the Dask cluster at" in errors[0], output[-3000:]
    first = _run_id(output)
    homes = [stack["base"] / "cluster" / name / "home" for name in ("plain", "gpu")]
    _clear_markers(*homes)
    resumed = mfprefect(
        "resume",
        str(manifest),
        "--clone-run-id",
        first,
        "--address",
        stack["cluster"]["address"],
        env=env,
        cwd=folder,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    found = _read(env, _run_id(resumed.stderr), folder)
    assert found["ok"] and found["seen"] == list(range(4))
    probe = (
        "import json, sys\nfrom metaflow import Run, namespace\nnamespace(None)\n"
        "print(json.dumps([t['item'].data for t in Run('DaskFlow/' + sys.argv[1])['work']"
        " if t.successful]))\n"
    )
    done = run([sys.executable, "-c", probe, first], env=env, cwd=folder)
    assert done.returncode == 0, done.stderr[-2000:]
    finished_before = set(json.loads(done.stdout.strip().splitlines()[-1]))
    ran_again = {int(p.name.split("-")[1]) for home in homes for p in home.glob("started-*")}
    assert finished_before, "no item had finished before the scheduler was killed"
    assert ran_again == set(range(4)) - finished_before


def test_a_worker_killed_mid_foreach_costs_only_a_retry(stack: dict[str, Any]) -> None:
    """Runs last: it leaves the cluster with one worker."""
    env = dict(stack["env"])
    folder = stack["base"] / "killed"
    manifest = _export(folder, env)
    plain_home = stack["base"] / "cluster" / "plain" / "home"
    _clear_markers(plain_home)
    on_plain = lambda: list(plain_home.glob("started-*-0"))  # noqa: E731
    params = ["items=6", "pause=4"]
    with _run_until(
        folder, manifest, stack["cluster"]["address"], env, params, on_plain
    ) as running:
        lost = sorted(int(p.name.split("-")[1]) for p in plain_home.glob("started-*-0"))
        os.killpg(stack["cluster"]["workers"]["plain"].pid, signal.SIGKILL)
        assert running.wait(timeout=300) == 0, (folder / "run.log").read_text()[-3000:]
    output = (folder / "run.log").read_text()
    found = _read(env, _run_id(output), folder)
    assert found["ok"] and found["seen"] == list(range(6))
    work = {item: (where, retry, attempt) for item, where, retry, attempt in found["work"]}
    assert len(found["work"]) == 6  # one task per foreach index
    for item in lost:
        # The attempt on the lost worker counts as failed: the next one is attempt 1.
        assert work[item] == ("gpu", 1, 1), work
    assert all(retry == attempt for _, retry, attempt in work.values()), work
    assert any(retry == 0 for _, retry, _ in work.values()), work
    # The steps that the killed worker was running died with it.
    assert _processes_with("WORKER_LABEL=plain") == []
