"""Shared fixtures: run real Metaflow commands in an isolated home and datastore."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def flow_env(tmp: Path) -> dict[str, str]:
    """An environment for Metaflow subprocesses: a known user, a private home and datastore."""
    env = dict(os.environ)
    env["USER"] = env["USERNAME"] = "mfp-test-user"
    env["METAFLOW_HOME"] = str(tmp / "mfhome")
    env["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = str(tmp / "datastore")
    env.pop("METAFLOW_PROFILE", None)
    return env


@pytest.fixture
def metaflow_env(tmp_path: Path) -> dict[str, str]:
    return flow_env(tmp_path)


def run(
    args: list[str], env: dict[str, str], cwd: Path | str | None = None, timeout: int = 120
) -> subprocess.CompletedProcess[str]:
    """Run a command and capture its text output."""
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def flow_cli(
    flow: Path | str, *args: str, env: dict[str, str], cwd: Path | str | None = None
) -> subprocess.CompletedProcess[str]:
    """`python FLOW --no-pylint --quiet ARGS...` (top-level options go in ARGS before the command)."""
    return run([sys.executable, str(flow), "--no-pylint", "--quiet", *args], env=env, cwd=cwd)


def mfprefect(
    *args: str, env: dict[str, str], cwd: Path | str | None = None, timeout: int = 120
) -> subprocess.CompletedProcess[str]:
    """The installed `mfprefect` command, as a real process (`timeout` only guards against a hang)."""
    return run([sys.executable, "-m", "mfprefect.cli", *args], env=env, cwd=cwd, timeout=timeout)


def stop_process_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGINT, then SIGKILL to a process's group, 8 s each (some ignore one)."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGKILL):
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=8)
        except subprocess.TimeoutExpired:
            continue


def start_local_server(env: dict[str, str]) -> str:
    """Start (or reuse) mfprefect's local server for env's MFPREFECT_HOME; return its API URL."""
    started = run(
        [
            sys.executable,
            "-c",
            "from mfprefect.runtime import local_server as s; print(s.ensure_server())",
        ],
        env=env,
    )
    assert started.returncode == 0, started.stderr
    return started.stdout.strip().splitlines()[-1]


def stop_local_server(env: dict[str, str]) -> None:
    stopped = run(
        [sys.executable, "-m", "mfprefect.runtime.local_server", "stop"], env=env, timeout=60
    )
    assert stopped.returncode == 0, stopped.stderr


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """mfprefect's own local server in a private MFPREFECT_HOME, stopped at the end (its local
    runner with it). `_API_URL` holds the server's URL; PREFECT_API_URL stays unset, as for a user
    who set nothing up."""
    home = tmp_path_factory.mktemp("mfprefect-home")
    env = flow_env(home)
    env["MFPREFECT_HOME"] = str(home)
    env.pop("PREFECT_API_URL", None)
    env["_API_URL"] = start_local_server(env)
    yield env
    stop_local_server(env)
    assert not list((home / "runner").glob("*.pid")), "a runner outlived `local_server stop`"


def prefect_api(url: str, method: str, path: str, body: dict | None = None) -> Any:
    """One call to a Prefect server's REST API, answered as JSON (None for an empty answer).

    SQLite under load makes the server answer 503 ("database is locked"); like Prefect's own
    client, retry those a few times before giving up.
    """
    for attempt in range(6):
        request = urllib.request.Request(
            url + path,
            data=json.dumps(body).encode() if body is not None else None,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=15) as response:
                raw = response.read()
            return json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or attempt == 5:
                raise
            time.sleep(0.5 * (attempt + 1))
    return None


def containers(data: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """(path, container) for every dict and list inside `data`, the root included."""
    yield path, data
    items = data.items() if isinstance(data, dict) else enumerate(data)
    for key, value in items:
        if isinstance(value, (dict, list)):
            yield from containers(value, path + (key,))


def mutate(draw: Any, data: Any, *, keys: Any, values: Any, steps: int) -> Any:
    """1 to `steps` structural edits of `data` in place (a hypothesis `draw`): delete, replace,
    rename (to a key drawn from `keys`) or insert (a value drawn from `values`)."""
    for _ in range(draw(st.integers(min_value=1, max_value=steps))):
        _, target = draw(st.sampled_from(list(containers(data))))
        action = draw(st.sampled_from(["delete", "replace", "rename", "insert"]))
        found = list(target) if isinstance(target, dict) else list(range(len(target)))
        if action == "insert" or not found:
            if isinstance(target, dict):
                target[draw(keys)] = draw(values)
            else:
                target.append(draw(values))
            continue
        key = draw(st.sampled_from(found))
        if action == "delete":
            del target[key]
        elif action == "replace" or not isinstance(target, dict):
            target[key] = draw(values)
        else:
            target[draw(keys)] = target.pop(key)
    return data
