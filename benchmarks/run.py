"""Benchmarks: mfprefect against Metaflow's own commands, alternating sides, medians and ratios.

    python benchmarks/run.py [--repeat 5] [--only linear,foreach20,...,deploy,resume] [--readme]
    python benchmarks/run.py --repeat 1 --only dask     # writes benchmarks/RESULTS-dask.md
    python benchmarks/run.py --repeat 3 --only resume   # writes benchmarks/RESULTS-resume.md
    python benchmarks/run.py --repeat 3 --only workspace   # writes benchmarks/RESULTS-workspace.md
    python benchmarks/run.py --repeat 3 --only concurrent  # writes benchmarks/RESULTS-concurrent.md
    python benchmarks/run.py --repeat 3 --only server      # writes benchmarks/RESULTS-server.md

Writes benchmarks/RESULTS.md (and, with --readme, the table between the markers in README.md).
Each workload runs in fresh temporary folders; peak memory is the PSS of the whole process tree
(the sum of each process's proportional set size, so shared copy-on-write pages count once),
with mfprefect's local runner and everything it starts counted as part of ours (the Prefect
server is not counted).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FLOWS = Path(__file__).resolve().parent / "flows"
sys.path.insert(0, str(ROOT))


@dataclass
class Sample:
    seconds: float
    peak_mb: float
    run_id: str | None = None


@dataclass
class Row:
    workload: str
    ours: str
    theirs: str
    ours_samples: list[Sample] = field(default_factory=list)
    theirs_samples: list[Sample] = field(default_factory=list)
    note: str = ""

    def median(self, side: str) -> float:
        samples = self.ours_samples if side == "ours" else self.theirs_samples
        return statistics.median(s.seconds for s in samples) if samples else float("nan")

    def peak(self, side: str) -> float:
        samples = self.ours_samples if side == "ours" else self.theirs_samples
        return statistics.median(s.peak_mb for s in samples) if samples else float("nan")


def _runner_pids(env: dict[str, str]) -> list[int]:
    """mfprefect's local runners: they do the run's work outside the command's own tree."""
    home = env.get("MFPREFECT_HOME")
    if not home:
        return []
    pids = []
    for pid_file in (Path(home) / "runner").glob("*.pid"):
        try:
            pids.append(int(pid_file.read_text().strip()))
        except (OSError, ValueError):
            continue
    return pids


def _tree(*roots: int) -> set[int]:
    """`roots` and all their descendants alive now, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        pid = stack.pop()
        if pid not in seen:
            seen.add(pid)
            stack += children.get(pid, [])
    return seen


def _tree_rss_mb(*roots: int) -> float:
    """Resident memory of `roots` and all their descendants, from /proc."""
    return sum(_rss_mb(pid) for pid in _tree(*roots))


def _tree_pss_mb(*roots: int) -> float:
    """Proportional set size of `roots` and all their descendants (from each one's
    /proc/PID/smaps_rollup): a page shared by n processes counts 1/n in each, so copy-on-write
    pages of forked steps are counted once in all, not once per process as RSS would."""
    total_kb = 0
    for pid in _tree(*roots):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as handle:
                for line in handle:
                    if line.startswith("Pss:"):
                        total_kb += int(line.split()[1])
                        break
        except (OSError, ValueError):
            continue
    return total_kb / 1024


def measure(command: list[str], env: dict[str, str], cwd: Path, *, runner: bool = False) -> Sample:
    """Wall time and peak process-tree PSS of one command; it must succeed."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    peak = 0.0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            # The runner's whole tree counts too (its idle self included): it runs the steps.
            roots = [proc.pid, *(_runner_pids(env) if runner else [])]
            peak = max(peak, _tree_pss_mb(*roots))
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = proc.communicate()
    elapsed = time.perf_counter() - started
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({proc.returncode}):\n{output[-3000:]}")
    return Sample(elapsed, peak)


def base_env(work: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("USER", "bench")
    env["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = str(work / "ds")
    env["METAFLOW_HOME"] = str(work / "mfhome")
    env["MFPREFECT_HOME"] = str(work / "mfprefect-home")
    env.pop("PREFECT_API_URL", None)
    return env


def alternate(
    row: Row, repeat: int, ours: Callable[[], Sample], theirs: Callable[[], Sample]
) -> Row:
    for _ in range(repeat):
        row.ours_samples.append(ours())
        row.theirs_samples.append(theirs())
    return row


def python_flow(name: str) -> list[str]:
    return [sys.executable, str(FLOWS / name), "--no-pylint", "--quiet"]


def bench_local_runs(repeat: int, work: Path, only: set[str]) -> list[Row]:
    rows = []
    env = base_env(work)
    if "first" in only:
        # Each in a state folder of its own: a new local server, database and runner every time.
        firsts = []
        for number in range(repeat):
            fresh = base_env(_fresh(work / f"first-{number}"))
            firsts.append(
                measure(python_flow("linear3.py") + ["prefect", "run"], fresh, work, runner=True)
            )
            _stop_local_server(fresh)
        rows.append(
            Row(
                "very first `prefect run` (starts the local server, a new database and the runner)",
                "prefect run",
                "-",
                firsts,
                [],
                "target: at most 8 s",
            )
        )
    if "first" not in only or only & {"linear", "foreach20", "foreach100", "split"}:
        measure(
            python_flow("linear3.py") + ["prefect", "run"], env, work
        )  # the server is up from here on
    cases = [
        (
            "linear",
            "linear3.py",
            [],
            "3-step linear flow, after the first run",
            "target: at most 1.0x",
        ),
        (
            "foreach20",
            "foreach_n.py",
            ["--n", "20"],
            "foreach over 20 items (16 workers both sides)",
            "",
        ),
        (
            "foreach100",
            "foreach_n.py",
            ["--n", "100"],
            "foreach over 100 items (16 workers both sides)",
            "target: at most 0.30x, peak PSS at most 0.45x",
        ),
        (
            "split",
            "split4.py",
            [],
            "static split of 4 branches sleeping 2 s",
            "target: split part under 4 s",
        ),
    ]
    for key, flow, args, label, note in cases:
        if key not in only:
            continue
        row = Row(
            label, f"python {flow} prefect run", f"python {flow} run --max-workers 16", note=note
        )
        alternate(
            row,
            repeat,
            lambda flow=flow, args=args: measure(
                python_flow(flow) + ["prefect", "run", *args], env, work, runner=True
            ),
            lambda flow=flow, args=args: measure(
                python_flow(flow) + ["run", "--max-workers", "16", *args], env, work
            ),
        )
        if key == "split":
            row.note += f"; split part: {split_part(env, work):.2f} s (ours, last run)"
        rows.append(row)
    _stop_local_server(env)
    return rows


def _at_once(command: list[str], env: dict[str, str], cwd: Path, count: int) -> Sample:
    """Wall time until all of `count` copies of a command, started together, have finished."""
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        for _ in range(count)
    ]
    outputs = [proc.communicate()[0] for proc in procs]
    elapsed = time.perf_counter() - started
    for proc, output in zip(procs, outputs, strict=True):
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} failed ({proc.returncode}):\n{output[-3000:]!r}"
            )
    return Sample(elapsed, 0.0)


def bench_concurrent(repeat: int, work: Path) -> list[Row]:
    """Runs of the linear flow started at once from separate commands, against one run alone."""
    env = base_env(work)
    command = python_flow("linear3.py") + ["prefect", "run"]
    measure(command, env, work)  # the local server and the runner are up from here on
    rows = []
    for count in (2, 4):
        row = Row(
            f"{count} runs of the 3-step linear flow started at once, against one run",
            f"{count} x python linear3.py prefect run",
            "python linear3.py prefect run",
            note="target: at most 1.5x",
        )
        alternate(
            row,
            repeat,
            lambda count=count: _at_once(command, env, work, count),
            lambda: _at_once(command, env, work, 1),
        )
        rows.append(row)
    _stop_local_server(env)
    return rows


def _server_start(work: Path, ui: bool, fresh: bool = True) -> Sample:
    """Seconds from starting mfprefect's server process to its API answering /health."""
    import socket
    import urllib.request

    from mfprefect.runtime import local_server

    home = work / "server-home"
    if fresh:
        shutil.rmtree(home, ignore_errors=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api"
    env = local_server._server_env(home, url)
    env["PREFECT_SERVER_UI_ENABLED"] = "true" if ui else "false"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mfprefect.runtime.prefect_server", "--host", "127.0.0.1"]
        + ["--port", str(port)],
        env=env,
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            with contextlib.suppress(OSError):
                with opener.open(f"{url}/health", timeout=1) as answer:
                    if answer.status == 200:
                        break
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited ({proc.returncode})")
            time.sleep(0.05)
        return Sample(time.perf_counter() - started, 0.0)
    finally:
        proc.terminate()
        proc.wait(30)


def bench_server(repeat: int, work: Path) -> list[Row]:
    """The local server's start: with and without the UI (fresh database), fresh against existing."""
    ui = Row(
        "local server start with a fresh database, UI served against not",
        "server with UI",
        "server without UI",
        note="the UI's start-up cost",
    )
    alternate(
        ui, repeat, lambda: _server_start(work, ui=True), lambda: _server_start(work, ui=False)
    )
    fresh = Row(
        "local server start, fresh database against an existing one",
        "fresh database",
        "existing database",
        note="what setting up the database costs",
    )
    alternate(
        fresh,
        repeat,
        lambda: _server_start(work, ui=True),
        lambda: _server_start(work, ui=True, fresh=False),
    )
    return [ui, fresh]


def _stop_local_server(env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "-m", "mfprefect", "server", "stop"], env=env, capture_output=True
    )


def split_part(env: dict[str, str], work: Path) -> float:
    """Seconds from the first branch's start to the last branch's end, in the latest run of ours."""
    probe = (
        "from metaflow import Flow, namespace; namespace(None)\n"
        "run = next(r for r in Flow('SplitFourFlow') if r.id.startswith('prefect-'))\n"
        "tasks = [t for s in ('a', 'b', 'c', 'd') for t in run[s]]\n"
        "print((max(t.finished_at for t in tasks) - min(t.created_at for t in tasks)).total_seconds())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=work, capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip())


def bench_export(repeat: int, work: Path) -> Row:
    env = base_env(work)
    row = Row(
        "export of a 30-step flow",
        "python steps30.py prefect export -",
        "python steps30.py show",
        note="target: at most 1.3x",
    )
    return alternate(
        row,
        repeat,
        lambda: measure(python_flow("steps30.py") + ["prefect", "export", "-"], env, work),
        lambda: measure(python_flow("steps30.py") + ["show"], env, work),
    )


def chain_manifest(steps: int) -> dict:
    from ruamel.yaml import YAML

    data = YAML(typ="safe").load((ROOT / "examples" / "linear_flow.yaml").read_text())
    names = ["start"] + [f"step_{i}" for i in range(1, steps - 1)] + ["end"]
    data["steps"] = {
        name: (
            {"kind": "linear", "next": [names[i + 1]]} if i + 1 < len(names) else {"kind": "end"}
        )
        for i, name in enumerate(names)
    }
    return data


def bench_validate(repeat: int, work: Path) -> Row:
    env = base_env(work)
    small, large = work / "v10.yaml", work / "v1000.yaml"
    small.write_text(json.dumps(chain_manifest(10)))
    large.write_text(json.dumps(chain_manifest(1000)))
    command = [sys.executable, "-m", "mfprefect.cli", "validate"]
    for path in (small, large):
        result = subprocess.run(command + [str(path)], env=env, capture_output=True, text=True)
        if "error[" in result.stdout:
            raise RuntimeError(result.stdout[-2000:])
    row = Row(
        "validate: 1,000-step vs 10-step manifest",
        "mfprefect validate (1,000 steps)",
        "mfprefect validate (10 steps)",
        note="target: at most 2x",
    )
    return alternate(
        row,
        repeat,
        lambda: _timed(command + [str(large)], env, work),
        lambda: _timed(command + [str(small)], env, work),
    )


def _timed(command: list[str], env: dict[str, str], cwd: Path) -> Sample:
    """Wall time of a command that must exit 0 (for validate and plan: nothing found, nothing
    to change), without sampling its memory."""
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return Sample(elapsed, 0.0)


def _gitops_bench_server(work: Path) -> dict[str, str]:
    """The environment of a local server with a process pool `bench`, and linear_flow.py in
    `work` for manifests to name."""
    from mfprefect.runtime import local_server

    env = base_env(work)
    os.environ["MFPREFECT_HOME"] = env["MFPREFECT_HOME"]
    env["PREFECT_API_URL"] = local_server.ensure_server()
    subprocess.run(
        [sys.executable, "-m", "prefect", "work-pool", "create", "bench", "--type", "process"],
        env=env,
        capture_output=True,
        check=True,
    )
    shutil.copy(ROOT / "examples" / "linear_flow.py", work / "linear_flow.py")
    return env


def bench_gitops(repeat: int, work: Path) -> list[Row]:
    from mfprefect.runtime import local_server

    env = _gitops_bench_server(work)
    base = (
        (ROOT / "examples" / "linear_flow.yaml")
        .read_text()
        .replace("  work_pool: null", "  work_pool: bench")
    )
    rows = []
    apply_one, apply_fifty = [], []
    for round_number in range(repeat):
        one, fifty = work / f"one{round_number}", work / f"fifty{round_number}"
        for folder, count in ((one, 1), (fifty, 50)):
            folder.mkdir()
            for i in range(count):
                (folder / f"m{i}.yaml").write_text(
                    base.replace("file: linear_flow.py", "file: ../linear_flow.py").replace(
                        "  name: null", f"  name: r{round_number}-{folder.name}-{i}"
                    )
                )
        apply_one.append(
            measure([sys.executable, "-m", "mfprefect.cli", "apply", str(one)], env, work)
        )
        apply_fifty.append(
            measure([sys.executable, "-m", "mfprefect.cli", "apply", str(fifty)], env, work)
        )
    rows.append(
        Row(
            "apply: 50 new manifests vs 1",
            "mfprefect apply (50)",
            "mfprefect apply (1)",
            apply_fifty,
            apply_one,
            "target: at most 10x",
        )
    )
    plan_row = Row(
        "plan with nothing to change: 50 manifests vs 1",
        "mfprefect plan (50)",
        "mfprefect plan (1)",
        note="target: at most 3x",
    )
    alternate(
        plan_row,
        repeat,
        lambda: _timed(
            [sys.executable, "-m", "mfprefect.cli", "plan", str(work / "fifty0")], env, work
        ),
        lambda: _timed(
            [sys.executable, "-m", "mfprefect.cli", "plan", str(work / "one0")], env, work
        ),
    )
    rows.append(plan_row)
    local_server.stop_server()
    return rows


def bench_workspace(repeat: int, work: Path) -> list[Row]:
    """plan and apply with nothing to change: 200 pipelines, 10 work pools and 10 concurrency
    limits against one pipeline; then the writes a second apply made, by the server's `updated`."""
    from mfprefect.runtime import local_server

    env = _gitops_bench_server(work)
    base = (
        (ROOT / "examples" / "linear_flow.yaml")
        .read_text()
        .replace("file: linear_flow.py", "file: ../linear_flow.py")
        .replace("  environment: {}\n", "  environment: {}\n  code:\n    kind: path\n", 1)
    )
    big, one = work / "big", work / "one"
    for folder in (big, one):
        folder.mkdir()
    (one / "m.yaml").write_text(
        base.replace("  work_pool: null", "  work_pool: bench").replace(
            "  name: null", "  name: one"
        )
    )
    for i in range(10):
        (big / f"pool{i}.yaml").write_text(
            f"apiVersion: mfprefect/v1\nkind: WorkPool\nmetadata:\n  name: pool{i}\n"
            "spec:\n  type: process\n  concurrency_limit: 4\n"
        )
        (big / f"limit{i}.yaml").write_text(
            f"apiVersion: mfprefect/v1\nkind: ConcurrencyLimit\nmetadata:\n  name: limit{i}\n"
            "spec:\n  limit: 2\n"
        )
    for i in range(200):
        (big / f"m{i}.yaml").write_text(
            base.replace("  work_pool: null", f"  work_pool: pool{i % 10}").replace(
                "  name: null", f"  name: big-{i}"
            )
        )
    for folder in (one, big):
        first = subprocess.run(
            [sys.executable, "-m", "mfprefect.cli", "apply", str(folder), "--set", folder.name],
            env=env,
            capture_output=True,
            text=True,
        )
        if first.returncode != 0:
            raise RuntimeError(first.stderr)
    rows = []
    for verb in ("plan", "apply"):
        row = Row(
            f"{verb} with nothing to change: 200 pipelines + 10 pools + 10 limits vs 1 pipeline",
            f"mfprefect {verb} (220 manifests)",
            f"mfprefect {verb} (1)",
            note="target: at most 3x",
        )
        alternate(
            row,
            repeat,
            lambda verb=verb: _timed(  # type: ignore[misc]
                [sys.executable, "-m", "mfprefect.cli", verb, str(big), "--set", "big"], env, work
            ),
            lambda verb=verb: _timed(  # type: ignore[misc]
                [sys.executable, "-m", "mfprefect.cli", verb, str(one), "--set", "one"], env, work
            ),
        )
        rows.append(row)
    url = env["PREFECT_API_URL"]
    before = _updated_fields(url)
    subprocess.run(
        [sys.executable, "-m", "mfprefect.cli", "apply", str(big), "--set", "big"],
        env=env,
        capture_output=True,
        check=True,
    )
    writes = sum(before[k] != v for k, v in _updated_fields(url).items())
    rows[-1].note += f"; objects the last apply wrote (by `updated`): {writes} of {len(before)}"
    local_server.stop_server()
    return rows


def _updated_fields(url: str) -> dict[str, str]:
    """Every deployment's, work pool's, limit's and variable's `updated`, by kind and id."""
    import urllib.request

    found = {}
    for path in (
        "/deployments/filter",
        "/work_pools/filter",
        "/v2/concurrency_limits/filter",
        "/variables/filter",
    ):
        offset = 0
        while True:
            body = json.dumps({"limit": 200, "offset": offset}).encode()
            request = urllib.request.Request(
                url + path, body, {"Content-Type": "application/json"}, method="POST"
            )
            with urllib.request.urlopen(request) as answer:  # noqa: S310 - the local server
                page = json.loads(answer.read())
            found.update({f"{path}:{o['id']}": o["updated"] for o in page})
            if len(page) < 200:
                break
            offset += 200
    return found


def _s3(work: Path) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    """moto's S3 server on a free port, with a bucket; the variables Metaflow needs for it."""
    import socket
    import urllib.request

    import boto3

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    for _ in range(100):
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1).read()
            break
        except OSError:
            time.sleep(0.1)
    env = {
        "METAFLOW_S3_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(work / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(work / "no-aws-credentials"),
    }
    boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        region_name="us-east-1",
    ).create_bucket(Bucket="bench")
    return server, env


def _manifest(flow: Path, name: str, env: dict[str, str], code: str) -> Path:
    """Export `flow` for pool `bench-deploy` on the S3 datastore, with `deployment.code`."""
    target = flow.parent / f"{name}.yaml"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "mfprefect.cli",
            "export",
            str(flow),
            "-o",
            str(target),
            "--work-pool",
            "bench-deploy",
            "--name",
            name,
            "--datastore",
            "s3",
            "--datastore-root",
            "s3://bench/metaflow",
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    text = target.read_text().replace(
        "  parallelism:", f"  code:\n    kind: {code}\n  parallelism:", 1
    )
    target.write_text(text)
    return target


def _deployed_run(
    env: dict[str, str],
    flow: str,
    name: str,
    *,
    until: str = "COMPLETED",
    resume: str | None = None,
) -> Sample:
    """Trigger a deployment (or resume Metaflow run `resume` with it) and wait until its flow
    run has ended `until` (polled every 50 ms). The sample carries the Metaflow run id."""

    api = env["PREFECT_API_URL"]
    started = time.perf_counter()
    command = [sys.executable, "-m", "mfprefect.cli", "trigger", flow, "--name", name]
    if resume:
        command += ["--resume", resume]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    flow_run_id = done.stdout.strip().splitlines()[-1]
    import urllib.request

    while True:
        with urllib.request.urlopen(f"{api}/flow_runs/{flow_run_id}", timeout=10) as answer:
            state = json.loads(answer.read())["state"]["type"]
        if state == until:
            run_id = "prefect-" + flow_run_id.replace("-", "")
            return Sample(time.perf_counter() - started, 0.0, run_id)
        if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            raise RuntimeError(f"deployed run {flow_run_id} ended {state}, not {until}")
        time.sleep(0.05)


@contextlib.contextmanager
def _deploy_stack(work: Path, worker_env: dict[str, str] | None = None) -> Any:
    """S3 on moto, mfprefect's local server and a process worker polling `bench-deploy` every
    second, in `work`; yields the environment that reaches them."""
    from mfprefect.runtime import local_server
    from mfprefect.runtime.processes import stop_group

    env = base_env(work)
    os.environ["MFPREFECT_HOME"] = env["MFPREFECT_HOME"]
    s3, s3_env = _s3(work)
    env.update(s3_env)
    env["PREFECT_API_URL"] = local_server.ensure_server()
    worker = None
    try:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "prefect",
                "work-pool",
                "create",
                "bench-deploy",
                "--type",
                "process",
            ],
            env=env,
            capture_output=True,
            check=True,
        )
        (work / "worker").mkdir()
        polling = dict(env, PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_PREFETCH_SECONDS="5")
        worker = subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", "bench-deploy"],
            env=dict(polling, **(worker_env or {})),
            cwd=work / "worker",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        yield env
    finally:
        # A Prefect worker now and then catches SIGTERM and never exits: SIGKILL after 30 s.
        if worker is not None:
            stop_group(worker.pid, 30, lambda: worker.poll() is not None)
            worker.wait()
        local_server.stop_server()
        stop_group(s3.pid, 30, lambda: s3.poll() is not None)
        s3.wait()


def _apply(manifest: Path, env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "-m", "mfprefect.cli", "apply", str(manifest)],
        env=env,
        check=True,
        capture_output=True,
    )


def bench_deploy(repeat: int, work: Path) -> list[Row]:
    """Deployed runs on a process worker (package vs path vs a local run) and package builds."""
    rows = []
    with _deploy_stack(work) as env:
        (work / "flow").mkdir()
        flow = work / "flow" / "linear3.py"
        shutil.copy(FLOWS / "linear3.py", flow)
        for name, code in (("package", "package"), ("path", "path")):
            _apply(_manifest(flow, name, env, code), env)
        _deployed_run(env, "LinearThreeFlow", "package")  # warm the worker's first run
        package_row = Row(
            "deployed 3-step run, trigger to completed on a process worker (polling every 1 s)",
            "package",
            "path",
            note="target: the package costs at most 1 s more than path",
        )
        alternate(
            package_row,
            repeat,
            lambda: _deployed_run(env, "LinearThreeFlow", "package"),
            lambda: _deployed_run(env, "LinearThreeFlow", "path"),
        )
        rows.append(package_row)
        local = Row(
            "the same run, deployed (package) vs started locally",
            "trigger + worker (package)",
            "mfprefect run",
        )
        alternate(
            local,
            repeat,
            lambda: _deployed_run(env, "LinearThreeFlow", "package"),
            lambda: measure(
                [sys.executable, "-m", "mfprefect.cli", "run", str(flow.parent / "package.yaml")],
                env,
                work,
                runner=True,
            ),
        )
        rows.append(local)
        # apply with the code changed (build and store a package) vs unchanged (no write).
        big = work / "big"
        big.mkdir()
        shutil.copy(FLOWS / "linear3.py", big / "linear3.py")
        payload = "BLOB = (\n" + "".join(f"    {'x' * 90!r}\n" for _ in range(11000)) + ")\n"
        (big / "payload.py").write_text(payload)
        size = sum(p.stat().st_size for p in big.iterdir())
        manifest = _manifest(big / "linear3.py", "big", env, "package")
        apply = [sys.executable, "-m", "mfprefect.cli", "apply", str(manifest)]
        apply_row = Row(
            f"apply of a {size / 1e6:.1f} MB flow folder, code changed vs unchanged",
            "apply (changed)",
            "apply (unchanged)",
        )
        for round_number in range(repeat):
            with open(big / "payload.py", "a") as handle:
                handle.write(f"# round {round_number}\n")
            apply_row.ours_samples.append(measure(apply, env, work))
            apply_row.theirs_samples.append(measure(apply, env, work))
        extra = apply_row.median("ours") - apply_row.median("theirs")
        apply_row.note = f"target: build plus upload under 2 s; measured: {extra:.2f} s"
        rows.append(apply_row)
    return rows


def bench_resume(repeat: int, work: Path) -> list[Row]:
    """A deployed 10-step flow (1 s of work per step) that failed at step 9: `mfprefect
    trigger --resume` (8 steps cloned, 2 run) against a fresh run, both to completed."""
    flag = work / "resume-flag"
    with _deploy_stack(work, {"RESUME_FLAG": str(flag)}) as env:
        (work / "flow").mkdir()
        flow = work / "flow" / "steps10_fail9.py"
        shutil.copy(FLOWS / "steps10_fail9.py", flow)
        _apply(_manifest(flow, "ten", env, "package"), env)
        flag.write_text("fixed")
        _deployed_run(env, "TenStepFlow", "ten")  # warm the worker's first run

        def resumed() -> Sample:
            flag.unlink(missing_ok=True)
            failed = _deployed_run(env, "TenStepFlow", "ten", until="FAILED")
            flag.write_text("fixed")
            return _deployed_run(env, "TenStepFlow", "ten", resume=failed.run_id)

        row = Row(
            "deployed 10-step flow that failed at step 9, resumed vs run afresh (1 s per step)",
            "trigger --resume",
            "trigger",
        )
        alternate(row, repeat, resumed, lambda: _deployed_run(env, "TenStepFlow", "ten"))
        row.note = (
            f"S3 on moto; 8 steps cloned, 2 run; the resume takes "
            f"{row.median('ours') - row.median('theirs'):+.1f} s against a fresh run"
        )
    return [row, _bench_local_resume(repeat, _fresh(work / "local"))]


def _bench_local_resume(repeat: int, work: Path) -> Row:
    """The same flow run here (local datastore): mfprefect's resume against Metaflow's own."""
    flag = work / "resume-flag"
    env = dict(base_env(work), RESUME_FLAG=str(flag))
    flow = python_flow("steps10_fail9.py")

    def failed_run(command: list[str]) -> str:
        flag.unlink(missing_ok=True)
        done = subprocess.run(command, env=env, cwd=work, capture_output=True, text=True)
        assert done.returncode != 0, done.stderr[-2000:]
        if "prefect" in command:
            line = next(t for t in done.stderr.splitlines() if t.startswith("Metaflow run "))
            return line.rsplit("/", 1)[1]
        return (work / "run-id").read_text().strip()

    def ours() -> Sample:
        origin = failed_run([*flow, "prefect", "run"])
        flag.write_text("fixed")
        return measure(
            [*flow, "prefect", "resume", "--clone-run-id", origin], env, work, runner=True
        )

    def theirs() -> Sample:
        origin = failed_run([*flow, "run", "--run-id-file", str(work / "run-id")])
        flag.write_text("fixed")
        return measure([*flow, "resume", "--origin-run-id", origin], env, work)

    flag.write_text("fixed")
    measure([*flow, "prefect", "run"], env, work, runner=True)  # start the server and runner
    row = Row(
        "the same flow resumed locally (local datastore), 1 s per step",
        "python steps10_fail9.py prefect resume",
        "python steps10_fail9.py resume",
    )
    alternate(row, repeat, ours, theirs)
    from mfprefect.runtime import local_server

    os.environ["MFPREFECT_HOME"] = env["MFPREFECT_HOME"]
    local_server.stop_server()
    return row


def _dask_cluster(
    work: Path, env: dict[str, str], workers: int
) -> tuple[str, list[subprocess.Popen[bytes]]]:
    """A Dask scheduler and `workers` workers (2 threads each, own folder and HOME)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1"]
            + ["--port", str(port), "--dashboard-address", ":0"],
            env=env,
            cwd=work,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    ]
    for index in range(workers):
        folder = work / f"worker-{index}"
        (folder / "home").mkdir(parents=True)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "2"]
                + ["--no-nanny", "--no-dashboard", "--local-directory", str(folder / "dask")],
                env=dict(env, HOME=str(folder / "home")),
                cwd=folder,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
    from distributed import Client

    with Client(address, timeout="60s") as client:
        client.wait_for_workers(workers, timeout=120)
    return address, procs


def bench_dask(repeat: int, work: Path) -> list[Row]:
    """A foreach of 200 x 0.5 s: the local executor (parallelism 4) against a Dask cluster of
    two workers with two threads each (4 slots too), both on the S3 datastore (moto)."""
    from mfprefect.runtime import local_server

    env = base_env(work)
    os.environ["MFPREFECT_HOME"] = env["MFPREFECT_HOME"]
    s3, s3_env = _s3(work)
    env.update(s3_env)
    env["PREFECT_API_URL"] = local_server.ensure_server()
    address, procs = _dask_cluster(work, env, workers=2)
    try:
        flow = work / "foreach_n.py"
        shutil.copy(FLOWS / "foreach_n.py", flow)
        manifest = work / "foreach-n.yaml"
        subprocess.run(
            [sys.executable, "-m", "mfprefect.cli", "export", str(flow), "-o", str(manifest)]
            + ["--datastore", "s3", "--datastore-root", "s3://bench/metaflow"],
            env=env,
            check=True,
            capture_output=True,
        )
        text = manifest.read_text()
        assert "  parallelism: 16\n" in text, "the export's default parallelism changed"
        manifest.write_text(text.replace("  parallelism: 16\n", "  parallelism: 4\n", 1))
        items = int(os.environ.get("BENCH_DASK_ITEMS", "200"))
        run = [sys.executable, "-m", "mfprefect.cli", "run", str(manifest), "--param", f"n={items}"]
        run += ["--param", "pause=0.5"]
        steps = items + 3
        peaks: dict[str, float] = {"scheduler": 0.0, "worker": 0.0, "worker tree": 0.0}

        def on_cluster() -> Sample:
            done = threading.Event()

            def sample() -> None:
                while not done.is_set():
                    peaks["scheduler"] = max(peaks["scheduler"], _tree_rss_mb(procs[0].pid))
                    for proc in procs[1:]:
                        peaks["worker"] = max(peaks["worker"], _rss_mb(proc.pid))
                        peaks["worker tree"] = max(peaks["worker tree"], _tree_rss_mb(proc.pid))
                    done.wait(0.2)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            try:
                return measure(run + ["--address", address], env, work, runner=True)
            finally:
                done.set()
                sampler.join()

        row = alternate(
            Row(
                f"foreach {items} x 0.5 s, 4 slots",
                "dask: 2 workers x 2 threads",
                "local executor",
            ),
            repeat,
            on_cluster,
            lambda: measure(run, env, work, runner=True),
        )
        extra = (row.median("ours") - row.median("theirs")) * 4 / steps
        row.note = (
            f"cluster adds {extra * 1000:.0f} ms per step (slot-seconds); peak RSS: scheduler "
            f"{peaks['scheduler']:.0f} MB, each worker {peaks['worker']:.0f} MB alone and "
            f"{peaks['worker tree']:.0f} MB with its launcher and steps"
        )
        # The runner's own tree does not hold the cluster: its memory column is the flow run's.
        return [row]
    finally:
        for proc in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(s3.pid, 9)


def _rss_mb(pid: int) -> float:
    """The resident memory of one process (VmRSS)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import metaflow
    import prefect

    return (
        f"{os.cpu_count()} cores ({model}), {platform.system()} {platform.machine()}, Python {platform.python_version()}, "
        f"metaflow {metaflow.__version__}, prefect {prefect.__version__}"
    )


def table(rows: list[Row], repeat: int) -> str:
    lines = [
        f"Machine: {machine()}. Medians of {repeat} alternating runs; ratio = ours / theirs.",
        "",
        "| workload | ours (median s) | theirs (median s) | ratio | peak PSS ours / theirs (MB) | note |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        theirs = row.median("theirs")
        ratio = row.median("ours") / theirs if row.theirs_samples else float("nan")
        theirs_peak = f"{row.peak('theirs'):.0f}" if row.theirs_samples else "-"
        memory = f"{row.peak('ours'):.0f} / {theirs_peak}" if row.ours_samples[0].peak_mb else "-"
        theirs_text = f"{theirs:.2f}" if row.theirs_samples else "-"
        ratio_text = f"{ratio:.2f}x" if row.theirs_samples else "-"
        lines.append(
            f"| {row.workload}: `{row.ours}` vs `{row.theirs}` | {row.median('ours'):.2f} | {theirs_text} | {ratio_text} | {memory} | {row.note} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--only",
        default="first,linear,foreach20,foreach100,split,export,validate,gitops,deploy,resume",
    )
    parser.add_argument("--readme", action="store_true", help="Also put the table into README.md.")
    args = parser.parse_args()
    only = set(args.only.split(","))
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="mfprefect-bench-") as tmp:
        work = Path(tmp)
        if only & {"first", "linear", "foreach20", "foreach100", "split"}:
            rows += bench_local_runs(args.repeat, _fresh(work / "runs"), only)
        if "export" in only:
            rows.append(bench_export(args.repeat, _fresh(work / "export")))
        if "validate" in only:
            rows.append(bench_validate(args.repeat, _fresh(work / "validate")))
        if "gitops" in only:
            rows += bench_gitops(args.repeat, _fresh(work / "gitops"))
        if "workspace" in only:
            rows += bench_workspace(args.repeat, _fresh(work / "workspace"))
        if "deploy" in only:
            rows += bench_deploy(args.repeat, _fresh(work / "deploy"))
        if "resume" in only:
            rows += bench_resume(args.repeat, _fresh(work / "resume"))
        if "concurrent" in only:
            rows += bench_concurrent(args.repeat, _fresh(work / "concurrent"))
        if "server" in only:
            rows += bench_server(args.repeat, _fresh(work / "server"))
        if "dask" in only:
            rows += bench_dask(args.repeat, _fresh(work / "dask"))
    text = table(rows, args.repeat)
    # The default set writes RESULTS.md; one workload run alone (the minutes-long Dask one is
    # not in the default set) keeps a results file of its own, RESULTS-<workload>.md.
    name = f"RESULTS-{args.only}.md" if len(only) == 1 else "RESULTS.md"
    (Path(__file__).resolve().parent / name).write_text("# Benchmark results\n\n" + text)
    print(text)
    if args.readme:
        readme = ROOT / "README.md"
        content = readme.read_text()
        start, end = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"
        if start in content and end in content:
            head, rest = content.split(start, 1)
            readme.write_text(head + start + "\n" + text + end + rest.split(end, 1)[1])
    return 0


def _fresh(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


if __name__ == "__main__":
    sys.exit(main())
