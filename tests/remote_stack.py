"""Real remote services for end-to-end tests, each on a free 127.0.0.1 port in a temporary folder.

- `s3_server` starts moto's standalone S3 server (`python -m moto.server`) as a subprocess in its
  own session, creates a bucket, and yields the env vars that make Metaflow use it as its S3
  datastore (pass `--datastore=s3` yourself). State lives in the server's memory only.
- `metadata_service` starts metaflow-local-service's server (`python -m
  metaflow_local_service.daemon`, run in the foreground instead of through its detaching `start`
  command) with its `.metaflow/` under `tmp` and its HOME (where it writes state.json) in
  `tmp/home`, and yields the env vars that make Metaflow use it as its metadata service.

Both write their output to a log in `tmp` and are stopped when the block exits: SIGTERM, then
SIGINT, then SIGKILL to the whole process group, each given a few seconds.

`S3_FAIL_FAST` makes Metaflow give up on an unreachable endpoint in about a second instead of
retrying for over an hour (a missing bucket fails fast without it).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from conftest import stop_process_group

# Metaflow retries max(S3_RETRY_COUNT=7, S3_TRANSIENT_RETRY_COUNT=20) times with exponential
# sleeps (capped at 360s), each try being botocore's own 10 adaptive attempts: all three must go.
S3_FAIL_FAST = {
    "METAFLOW_S3_RETRY_COUNT": "0",
    "METAFLOW_S3_TRANSIENT_RETRY_COUNT": "0",
    "METAFLOW_S3_CLIENT_RETRY_CONFIG": '{"max_attempts": 1, "mode": "standard"}',
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def s3_server(
    tmp: Path, bucket: str = "mfp-data", *, check_credentials: bool = False
) -> Iterator[dict[str, str]]:
    """Yield the env for a Metaflow process to keep its S3 datastore in `bucket` on moto.

    With `check_credentials`, moto authenticates every request after the bucket is made (its
    IAM knows no keys, so the yielded ones are wrong credentials)."""
    tmp.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{free_port()}"
    env = {
        "METAFLOW_S3_ENDPOINT_URL": url,
        "METAFLOW_DATASTORE_SYSROOT_S3": f"s3://{bucket}/metaflow",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        # Keep any real AWS configuration of the machine out of the way.
        "AWS_CONFIG_FILE": str(tmp / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "aws-credentials"),
    }
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", url.rsplit(":", 1)[1]]
    server_env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="1") if check_credentials else None
    with _started(command, tmp, tmp / "moto.log", url + "/moto-api/", server_env):
        _s3(env).create_bucket(Bucket=bucket)
        yield env


@contextlib.contextmanager
def metadata_service(tmp: Path) -> Iterator[dict[str, str]]:
    """Yield the env for a Metaflow process to use metaflow-local-service as its metadata."""
    (tmp / "home").mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "metaflow_local_service.daemon",
        "--port",
        str(port),
        "--metaflow-root",
        str(tmp),
        "--idle-timeout",
        "86400",
    ]
    env = dict(os.environ, HOME=str(tmp / "home"), METAFLOW_LOCAL_SERVICE_DEBUG="1")
    with _started(command, tmp, tmp / "metadata-service.log", url + "/ping", env):
        yield {"METAFLOW_SERVICE_URL": url, "METAFLOW_DEFAULT_METADATA": "service"}


def other_machine(
    folder: Path, applier: Mapping[str, str], *, s3_sysroot: bool = True
) -> dict[str, str]:
    """The environment of a worker elsewhere: only the server's URL, S3 and metadata settings
    (without `s3_sysroot`, no METAFLOW_DATASTORE_SYSROOT_S3 either: such a worker knows only
    the roots the manifests name). Its own local metadata is `folder/worker-metadata`."""
    keep = ("PATH", "LANG", "LC_ALL", "TZ", "SYSTEMROOT")
    env = {k: v for k, v in os.environ.items() if k in keep}
    for name in applier:
        if name.startswith(("METAFLOW_S3_", "AWS_", "METAFLOW_SERVICE_", "METAFLOW_DEFAULT_")):
            env[name] = applier[name]
    if s3_sysroot:
        env["METAFLOW_DATASTORE_SYSROOT_S3"] = applier["METAFLOW_DATASTORE_SYSROOT_S3"]
    else:
        env.pop("METAFLOW_DATASTORE_SYSROOT_S3", None)
    env.update(
        # The worker's own Metaflow metadata (local), which the client reads back.
        METAFLOW_DATASTORE_SYSROOT_LOCAL=str(folder / "worker-metadata"),
        HOME=str(folder / "home"),
        USER="worker-b",
        METAFLOW_HOME=str(folder / "metaflow-config"),
        PREFECT_HOME=str(folder / "prefect-profile"),
        PREFECT_API_URL=applier["PREFECT_API_URL"],
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    return env


@contextlib.contextmanager
def deployment_stack(
    base: Path,
    pool: str,
    services: Mapping[str, str],
    *,
    s3_sysroot: bool = True,
    worker_extra: Mapping[str, str] | None = None,
) -> Iterator[dict[str, Any]]:
    """An applier's environment reaching `services` (S3, metadata), mfprefect's local server, a
    process pool `pool` and a worker polling it in `base/worker`, in an environment of its own
    (see `other_machine`, plus `worker_extra`). Yields {"env", "base", "worker_folder",
    "client"}; `client` reads runs back through the worker's own metadata folder."""
    from conftest import flow_env
    from prefect_stack import server_with_pool, start_worker, stop_worker

    applier = flow_env(base / "applier")
    applier.pop("METAFLOW_DATASTORE_SYSROOT_LOCAL")
    applier.update(services)
    applier["MFPREFECT_HOME"] = str(base / "applier" / "mfprefect-home")
    applier["PREFECT_HOME"] = str(base / "applier" / "prefect-home")
    with server_with_pool(applier, pool):
        machine = base / "worker"
        machine.mkdir()
        worker_env = other_machine(machine, applier, s3_sysroot=s3_sysroot)
        worker_env.update(worker_extra or {})
        client = dict(applier, METAFLOW_DEFAULT_METADATA="local")
        client["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = worker_env["METAFLOW_DATASTORE_SYSROOT_LOCAL"]
        (base / "client").mkdir()
        client["_CLIENT_DIR"] = str(base / "client")
        worker = start_worker(machine, pool, worker_env)
        try:
            yield {"env": applier, "base": base, "worker_folder": machine, "client": client}
        finally:
            stop_worker(worker)


def s3_keys(env: Mapping[str, str], bucket: str, prefix: str = "") -> list[str]:
    """Every key in `bucket` under `prefix`, sorted."""
    pages = _s3(env).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def s3_get(env: Mapping[str, str], bucket: str, key: str) -> bytes:
    """The content of `key` in `bucket`."""
    body: bytes = _s3(env).get_object(Bucket=bucket, Key=key)["Body"].read()
    return body


def _s3(env: Mapping[str, str]) -> Any:
    import boto3

    return boto3.session.Session(
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    ).client("s3", endpoint_url=env["METAFLOW_S3_ENDPOINT_URL"])


@contextlib.contextmanager
def _started(
    command: list[str],
    cwd: Path,
    log_path: Path,
    ready_url: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `command` in its own session until the block exits, once `ready_url` answers."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=None if env is None else dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{command} exited early: {log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(ready_url, timeout=2):
                    break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{ready_url} did not answer within {timeout}s") from None
                time.sleep(0.1)
        yield process
    finally:
        stop_process_group(process)


@contextlib.contextmanager
def dask_cluster(
    tmp: Path, workers: Mapping[str, Mapping[str, str]], resources: Mapping[str, str] | None = None
) -> Iterator[dict[str, Any]]:
    """A Dask scheduler and one worker per entry of `workers` (name -> that worker's whole
    environment), each in `tmp/<name>` with its HOME there, two threads each, no nanny (so a
    test can kill one outright). `resources` gives a worker's `--resources`. Yields the
    scheduler's address and the worker processes by name."""
    tmp.mkdir(parents=True, exist_ok=True)
    address = f"tcp://127.0.0.1:{free_port()}"
    port = address.rsplit(":", 1)[1]
    scheduler_cmd = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    scheduler_cmd += ["--host", "127.0.0.1", "--port", port, "--dashboard-address", ":0"]
    procs: dict[str, subprocess.Popen[bytes]] = {}
    with open(tmp / "scheduler.log", "wb") as log:
        scheduler = subprocess.Popen(
            scheduler_cmd, cwd=tmp, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        for name, env in workers.items():
            folder = tmp / name
            (folder / "home").mkdir(parents=True, exist_ok=True)
            command = [sys.executable, "-m", "distributed.cli.dask_worker", address]
            command += ["--name", name, "--nthreads", "2", "--no-nanny", "--no-dashboard"]
            command += ["--local-directory", str(folder / "dask")]
            if resources and name in resources:
                command += ["--resources", resources[name]]
            with open(folder / "worker.log", "wb") as log:
                procs[name] = subprocess.Popen(
                    command,
                    cwd=folder,
                    env=dict(env, HOME=str(folder / "home")),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        _wait_for_workers(address, len(workers), tmp)
        yield {"address": address, "workers": procs, "scheduler": scheduler}
    finally:
        for proc in procs.values():
            stop_process_group(proc)
        stop_process_group(scheduler)


def _wait_for_workers(address: str, count: int, tmp: Path, timeout: float = 90) -> None:
    from distributed import Client

    with Client(address, timeout="60s") as client:
        try:
            client.wait_for_workers(count, timeout=timeout)
        except TimeoutError:
            logs = "\n".join(p.read_text()[-1500:] for p in sorted(tmp.rglob("*.log")))
            raise RuntimeError(
                f"the Dask workers did not join within {timeout}s:\n{logs}"
            ) from None
