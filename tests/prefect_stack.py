"""A real Prefect stack for end-to-end tests: mfprefect's local server in a private home, a process
work pool and a worker polling it. Everything started here is stopped when the block exits."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from conftest import (
    flow_env,
    prefect_api,
    run,
    start_local_server,
    stop_local_server,
)
from conftest import stop_process_group as stop_worker


@contextlib.contextmanager
def prefect_stack(
    home: Path, pool: str, worker_env: Mapping[str, str] | None = None
) -> Iterator[dict[str, str]]:
    """Yield the environment that reaches the stack (PREFECT_API_URL set); `_HOME` is `home`."""
    env = stack_env(home)
    env["_HOME"] = str(home)
    with server_with_pool(env, pool):
        worker = start_worker(home, pool, dict(env, **(worker_env or {})))
        try:
            yield env
        finally:
            stop_worker(worker)


def stack_env(home: Path) -> dict[str, str]:
    """An environment whose mfprefect and Prefect state live in `home` (and no apply set)."""
    env = flow_env(home)
    env["MFPREFECT_HOME"] = str(home / "mfprefect-home")
    env["PREFECT_HOME"] = str(home / "prefect-home")
    env.pop("MFPREFECT_SET", None)
    return env


@contextlib.contextmanager
def gitops_server(home: Path, pool: str) -> Iterator[dict[str, str]]:
    """A server with a process pool `pool` and no worker (nothing runs): for plan and apply."""
    env = stack_env(home)
    with server_with_pool(env, pool):
        yield env


@contextlib.contextmanager
def server_with_pool(env: dict[str, str], pool: str) -> Iterator[None]:
    """mfprefect's local server for `env` (its PREFECT_API_URL is set in `env`) with a process work
    pool `pool`; the server is stopped when the block exits."""
    env.pop("PREFECT_API_URL", None)
    try:
        env["PREFECT_API_URL"] = start_local_server(env)
        made = run(
            [sys.executable, "-m", "prefect", "work-pool", "create", pool, "--type", "process"],
            env=env,
            timeout=60,
        )
        assert made.returncode == 0, made.stderr
        yield
    finally:
        stop_local_server(env)


def start_worker(folder: Path, pool: str, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    """A process worker polling `pool` every second, in `folder` (its log: folder/worker.log).
    Stop it with `stop_worker`."""
    polling = dict(env, PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_PREFETCH_SECONDS="5")
    with open(folder / "worker.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool],
            env=polling,
            cwd=folder,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def api(env: Mapping[str, str], method: str, path: str, body: dict | None = None) -> Any:
    return prefect_api(env["PREFECT_API_URL"], method, path, body)


def wait_flow_run(env: Mapping[str, str], flow_run_id: str, timeout: float = 180) -> dict:
    """The flow run once it has finished (or as it is when `timeout` runs out)."""
    deadline = time.monotonic() + timeout
    while True:
        found: dict = api(env, "GET", f"/flow_runs/{flow_run_id}")
        final = found["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
        if final or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def all_logs(env: Mapping[str, str], flow_run_ids: list[str]) -> list[dict]:
    """Every log entry Prefect holds for these flow runs (their task runs included)."""
    logs: list[dict] = []
    while True:
        page = api(
            env,
            "POST",
            "/logs/filter",
            {
                "logs": {"flow_run_id": {"any_": flow_run_ids}},
                "limit": 200,
                "offset": len(logs),
                "sort": "TIMESTAMP_ASC",
            },
        )
        logs += page
        if len(page) < 200:
            return logs


def metaflow_data(env: Mapping[str, str], pathspec: str, step: str, names: list[str]) -> Any:
    """Artifacts of a step's (first) task, as JSON, read with the Metaflow client."""
    probe = (
        "import json, sys\n"
        "from metaflow import Run, namespace\n"
        "namespace(None)\n"
        "run = Run(sys.argv[1])\n"
        "task = run[sys.argv[2]].task\n"
        "out = {name: task[name].data for name in sys.argv[3:]}\n"
        "out['__tags'] = sorted(run.user_tags)\n"
        "out['__successful'] = run.successful\n"
        "print(json.dumps(out))\n"
    )
    done = run([sys.executable, "-c", probe, pathspec, step, *names], env=dict(env))
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def metaflow_run_of(env: Mapping[str, str], flow: str, flow_run_id: str) -> str:
    """The pathspec of the Metaflow run a Prefect flow run made (its `prefect_flow_run:` tag)."""
    probe = (
        "import sys\n"
        "from metaflow import Flow, namespace\n"
        "namespace(None)\n"
        "tag = 'prefect_flow_run:' + sys.argv[2]\n"
        "print([r.pathspec for r in Flow(sys.argv[1]) if tag in r.tags][0])\n"
    )
    done = run([sys.executable, "-c", probe, flow, flow_run_id], env=dict(env))
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]
