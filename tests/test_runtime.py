"""Runs on a real Prefect server (started by the fixture) compared with Metaflow's own `run`."""

from __future__ import annotations

import json
import os
import re
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import (
    EXAMPLES,
    flow_cli,
    mfprefect,
    prefect_api,
    run,
)

HERE = Path(__file__).resolve().parent
FLOWS = HERE / "flows"
EXAMPLE_FLOWS = sorted(EXAMPLES.glob("*_flow.py"))
EXTRA_ARGS = {"parameters_flow": ["--dataset", "d1"]}

pytestmark = pytest.mark.slow


def _pathspec(stderr: str) -> str:
    match = re.search(r"run (\w+/prefect-[0-9a-f]+) completed", stderr)
    assert match, stderr[-3000:]
    return match.group(1)


def _dump(pathspec: str, env: dict[str, str]) -> dict:
    result = run([sys.executable, str(HERE / "dump_run.py"), pathspec], env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _eventually(
    fetch: Callable[[], list[dict]], done: Callable[[list[dict]], bool], timeout: float = 30
) -> list[dict]:
    """Prefect records task runs and logs from events, a moment after the run: poll for them."""
    deadline = time.monotonic() + timeout
    while True:
        found = fetch()
        if done(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.25)


def _flow_run_id(dumped: dict) -> str:
    """The Prefect flow run a Metaflow run points back at (its `prefect_flow_run:` tag)."""
    return next(t.split(":", 1)[1] for t in dumped["tags"] if t.startswith("prefect_flow_run:"))


def _api(env: dict[str, str], path: str, body: dict) -> list[dict]:
    found: list[dict] = prefect_api(env["_API_URL"], "POST", path, body)
    return found


def _metaflow_run(flow: Path, env: dict[str, str], tmp_path: Path, *args: str) -> str:
    id_file = tmp_path / "run-id"
    result = flow_cli(flow, "run", "--run-id-file", str(id_file), *args, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return f"{_flow_class(flow)}/{id_file.read_text().strip()}"


def _flow_class(flow: Path) -> str:
    return re.search(r"^class (\w+)\(FlowSpec\)", flow.read_text(), re.M).group(1)  # type: ignore[union-attr]


@pytest.mark.parametrize("flow", EXAMPLE_FLOWS, ids=lambda p: p.stem)
def test_example_matches_metaflow_run(flow: Path, server: dict[str, str], tmp_path: Path) -> None:
    """Every example, through `mfprefect run` of its manifest, gives Metaflow's own artifacts."""
    env = dict(server, METAFLOW_DATASTORE_SYSROOT_LOCAL=str(tmp_path / "ds"))
    extra = EXTRA_ARGS.get(flow.stem, [])
    native = _dump(_metaflow_run(flow, env, tmp_path, *extra), env)
    params = [f"--param={extra[0][2:]}={extra[1]}"] if extra else []
    ours = mfprefect("run", str(flow.with_suffix(".yaml")), *params, env=env, cwd=tmp_path)
    assert ours.returncode == 0, ours.stderr[-3000:]
    pathspec = _pathspec(ours.stderr)
    mine = _dump(pathspec, env)
    assert mine["successful"] and mine["finished"]
    assert sorted(mine["steps"]) == sorted(native["steps"])
    for step, tasks in native["steps"].items():
        assert [t["data"] for t in mine["steps"][step]] == [t["data"] for t in tasks], step
    assert any(tag.startswith("prefect_flow_run:") for tag in mine["tags"])
    # Prefect recorded one completed task run per Metaflow task (plus _parameters), under the flow run.
    flow_run_id = _flow_run_id(mine)
    metaflow_tasks = sum(len(tasks) for tasks in mine["steps"].values()) + 1
    task_runs = _eventually(
        lambda: _api(
            server,
            "/task_runs/filter",
            {"flow_runs": {"id": {"any_": [flow_run_id]}}, "limit": 200},
        ),
        lambda found: (
            len(found) >= metaflow_tasks and all(tr["state"]["type"] == "COMPLETED" for tr in found)
        ),
    )
    assert len(task_runs) == metaflow_tasks
    assert all(tr["state"]["type"] == "COMPLETED" for tr in task_runs)
    flow_run = _api(server, "/flow_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})[0]
    assert flow_run["state"]["type"] == "COMPLETED"
    assert f"metaflow_run:{pathspec}" in flow_run["tags"]


def test_metaflow_form_runs_with_cli_parameters(server: dict[str, str], tmp_path: Path) -> None:
    env = dict(server, METAFLOW_DATASTORE_SYSROOT_LOCAL=str(tmp_path / "ds"))
    result = flow_cli(
        EXAMPLES / "parameters_flow.py",
        "prefect",
        "run",
        "--dataset",
        "abc",
        "--count",
        "9",
        "--learning-rate",
        "0.25",
        "--verbose",
        "true",
        "--settings",
        '{"x": [1]}',
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = _dump(_pathspec(result.stderr), env)["steps"]["start"][0]["data"]
    assert data["dataset_value"] == "'abc'" and data["count_value"] == "9"
    assert data["learning_rate_value"] == "0.25" and data["verbose_value"] == "True"
    assert data["settings_value"] == "{'x': [1]}" and data["computed_value"] == "'computed'"


def test_missing_required_parameter_is_a_usage_error(
    server: dict[str, str], tmp_path: Path
) -> None:
    result = mfprefect("run", str(EXAMPLES / "parameters_flow.yaml"), env=server, cwd=tmp_path)
    assert result.returncode == 2
    assert (
        "missing required parameter(s): dataset" in result.stderr
        and "Traceback" not in result.stderr
    )
    bad = mfprefect(
        "run",
        str(EXAMPLES / "parameters_flow.yaml"),
        "--param",
        "count=many",
        "--param",
        "dataset=x",
        env=server,
        cwd=tmp_path,
    )
    assert bad.returncode == 2 and "'many' is not a valid int" in bad.stderr


def test_failure_stops_downstream_and_names_the_step(
    server: dict[str, str], tmp_path: Path
) -> None:
    env = dict(server, METAFLOW_DATASTORE_SYSROOT_LOCAL=str(tmp_path / "ds"))
    result = flow_cli(FLOWS / "fail_flow.py", "prefect", "run", env=env, cwd=tmp_path)
    assert result.returncode == 3
    match = re.search(r"step failed: (FailFlow/prefect-[0-9a-f]+)/boom/t\d+", result.stderr)
    assert match, result.stderr[-3000:]
    assert "deliberate failure in boom" in result.stderr
    dumped = _dump(match.group(1), env)
    assert not dumped["successful"]
    assert "join" not in dumped["steps"] and "end" not in dumped["steps"]
    assert "about to fail" in dumped["steps"]["boom"][0]["stdout"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


def test_timeout_stops_the_whole_process_group(server: dict[str, str], tmp_path: Path) -> None:
    env = dict(
        server,
        METAFLOW_DATASTORE_SYSROOT_LOCAL=str(tmp_path / "ds"),
        HANG_PID_FILE=str(tmp_path / "pids"),
    )
    started = time.monotonic()
    result = flow_cli(FLOWS / "hang_flow.py", "prefect", "run", env=env, cwd=tmp_path)
    assert result.returncode == 3, result.stderr[-3000:]
    assert time.monotonic() - started < 60
    assert "/hang/" in result.stderr
    pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in pids if _alive(p)], "a step process outlived its timeout"


def test_logs_reach_metaflow_and_references_stay_secret(
    server: dict[str, str], tmp_path: Path
) -> None:
    secret = "tok-5f2e9a-very-secret"
    env = dict(server, METAFLOW_DATASTORE_SYSROOT_LOCAL=str(tmp_path / "ds"), API_TOKEN=secret)
    manifest = tmp_path / "print_env.yaml"
    exported = flow_cli(FLOWS / "print_env_flow.py", "prefect", "export", str(manifest), env=env)
    assert exported.returncode == 0, exported.stderr
    text = manifest.read_text().replace(
        "      GREETING: hello\n", "      GREETING: hello\n      API_TOKEN: {env: API_TOKEN}\n"
    )
    manifest.write_text(text)
    assert secret not in text
    result = mfprefect("run", str(manifest), env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert secret not in result.stdout + result.stderr
    dumped = _dump(_pathspec(result.stderr), env)
    start = dumped["steps"]["start"][0]
    assert start["data"]["greeting"] == "'hello'" and start["data"]["token_length"] == str(
        len(secret)
    )
    assert "hello from start" in start["stdout"] and "token is ***" in start["stdout"]
    assert secret not in start["stdout"]
    unset = dict(env)
    unset.pop("API_TOKEN")
    missing = mfprefect("run", str(manifest), env=unset, cwd=tmp_path)
    assert missing.returncode == 2 and "API_TOKEN is not set" in missing.stderr


def test_resume_reuses_what_succeeded(server: dict[str, str], tmp_path: Path) -> None:
    log = tmp_path / "ran"
    env = dict(server, METAFLOW_DATASTORE_SYSROOT_LOCAL=str(tmp_path / "ds"), RESUME_LOG=str(log))
    failed = flow_cli(
        FLOWS / "resume_flow.py", "prefect", "run", env=dict(env, RESUME_FAIL="1"), cwd=tmp_path
    )
    assert failed.returncode == 3
    origin = re.search(r"ResumeFlow/(prefect-[0-9a-f]+)/body", failed.stderr).group(1)  # type: ignore[union-attr]
    assert sorted(log.read_text().split()) == ["body0", "body1", "body2", "start"]
    log.unlink()
    resumed = flow_cli(
        FLOWS / "resume_flow.py",
        "prefect",
        "resume",
        "--clone-run-id",
        origin,
        env=env,
        cwd=tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # Only what did not succeed before (the failed task, siblings stopped when it failed) and
    # what follows ran user code; every task that succeeded was cloned.
    origin_bodies = _dump(f"ResumeFlow/{origin}", env)["steps"]["body"]
    succeeded = {
        f"body{int(t['data']['square']) ** 0.5:.0f}"
        for t in origin_bodies
        if t["ok"] and "square" in t["data"]
    }
    assert "body1" not in succeeded and succeeded  # the failure, and at least one success to clone
    assert sorted(log.read_text().split()) == sorted(
        {"body0", "body1", "body2"} - succeeded | {"join", "end"}
    )
    dumped = _dump(_pathspec(resumed.stderr), env)
    assert dumped["successful"]
    assert [t["data"]["squares"] for t in dumped["steps"]["join"]] == ["[0, 1, 4]"]
    assert len(dumped["steps"]["body"]) == 3
    # The standalone form resumes the same way.
    manifest = tmp_path / "resume.yaml"
    assert (
        flow_cli(FLOWS / "resume_flow.py", "prefect", "export", str(manifest), env=env).returncode
        == 0
    )
    again = mfprefect(
        "resume",
        str(manifest),
        "--clone-run-id",
        _pathspec(resumed.stderr).split("/")[1],
        env=env,
        cwd=tmp_path,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    missing = mfprefect(
        "resume", str(manifest), "--clone-run-id", "prefect-nonexistent", env=env, cwd=tmp_path
    )
    assert missing.returncode == 2 and "no run ResumeFlow/prefect-nonexistent" in missing.stderr


INJECTION = "x'''\"); __import__('os').system('touch PWNED') #{{ 7*7 }} $(touch PWNED2)"


def test_compiled_file_runs_and_keeps_values_as_data(
    server: dict[str, str], tmp_path: Path
) -> None:
    env = dict(server, METAFLOW_DATASTORE_SYSROOT_LOCAL=str(tmp_path / "ds"))
    source = (EXAMPLES / "parameters_flow.yaml").read_text()
    manifest = tmp_path / "manifests" / "params.yaml"
    manifest.parent.mkdir()
    relative = os.path.relpath(EXAMPLES / "parameters_flow.py", manifest.parent)
    text = source.replace("file: parameters_flow.py", f"file: {relative}")
    text = text.replace("default: world", "default: " + json.dumps(INJECTION))
    manifest.write_text(text)
    out = tmp_path / "build" / "run_params.py"
    compiled = mfprefect("compile", str(manifest), str(out), env=env, cwd=tmp_path)
    assert compiled.returncode == 0, compiled.stderr
    body = out.read_text()
    import ast

    tree = ast.parse(body)
    calls = [node.func for node in ast.walk(tree) if isinstance(node, ast.Call)]
    named = sorted(f.attr if isinstance(f, ast.Attribute) else f.id for f in calls)  # type: ignore[union-attr]
    assert named == ["exit", "loads", "main"]  # the payload is inside one string literal, not code
    result = run(
        [sys.executable, str(out), "--dataset", "d9", "--count", "5"], env=env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = _dump(_pathspec(result.stderr), env)["steps"]["start"][0]["data"]
    assert data["count_value"] == "5" and data["dataset_value"] == "'d9'"
    assert data["greeting_value"] == repr(INJECTION)
    assert not list(tmp_path.glob("PWNED*")) and not list(Path.cwd().glob("PWNED*"))
    # The Metaflow form compiles the same pipeline from the flow itself.
    direct = tmp_path / "direct.py"
    assert (
        flow_cli(
            EXAMPLES / "foreach_flow.py", "prefect", "compile", str(direct), env=env, cwd=tmp_path
        ).returncode
        == 0
    )
    ran = run([sys.executable, str(direct)], env=env, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert _dump(_pathspec(ran.stderr), env)["successful"]


def test_each_step_gets_a_prefect_artifact(server: dict[str, str], tmp_path: Path) -> None:
    env = dict(server, METAFLOW_DATASTORE_SYSROOT_LOCAL=str(tmp_path / "ds"))
    result = mfprefect("run", str(EXAMPLES / "linear_flow.yaml"), env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    pathspec = _pathspec(result.stderr)
    flow_run_id = _flow_run_id(_dump(pathspec, env))
    artifacts = _eventually(
        lambda: _api(
            server, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}}
        ),
        lambda found: len(found) >= 3,
    )
    assert sorted(a["key"] for a in artifacts) == [
        "end-artifacts",
        "middle-artifacts",
        "start-artifacts",
    ]
    middle = next(a for a in artifacts if a["key"] == "middle-artifacts")["data"]
    assert f"Task('{pathspec}/middle/" in middle and "task.data." in middle


def _pids_dead(folder: Path) -> list[int]:
    pids = [int(p) for f in folder.iterdir() for p in f.read_text().split()]
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(pids) == 4, pids
    return [p for p in pids if _alive(p)]


def _sleep_manifest(tmp_path: Path, env: dict[str, str], flow_timeout: int | None) -> Path:
    manifest = tmp_path / "sleep.yaml"
    assert (
        flow_cli(FLOWS / "sleep_flow.py", "prefect", "export", str(manifest), env=env).returncode
        == 0
    )
    if flow_timeout is not None:
        manifest.write_text(
            manifest.read_text().replace(
                "  timeout_seconds: null\n", f"  timeout_seconds: {flow_timeout}\n"
            )
        )
    return manifest


def test_flow_timeout_stops_every_running_step(server: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "pids").mkdir()
    env = dict(
        server,
        METAFLOW_DATASTORE_SYSROOT_LOCAL=str(tmp_path / "ds"),
        SLEEP_PID_DIR=str(tmp_path / "pids"),
    )
    manifest = _sleep_manifest(tmp_path, env, flow_timeout=4)
    result = mfprefect("run", str(manifest), env=env, cwd=tmp_path)
    assert result.returncode == 3
    assert "flow run timed out after 4 s" in result.stderr
    assert _pids_dead(tmp_path / "pids") == []


def test_cancelling_the_flow_run_stops_its_steps(server: dict[str, str], tmp_path: Path) -> None:
    import subprocess

    (tmp_path / "pids").mkdir()
    env = dict(
        server,
        METAFLOW_DATASTORE_SYSROOT_LOCAL=str(tmp_path / "ds"),
        SLEEP_PID_DIR=str(tmp_path / "pids"),
    )
    manifest = _sleep_manifest(tmp_path, env, flow_timeout=None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mfprefect.cli", "run", str(manifest)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while len(list((tmp_path / "pids").iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        running = _api(
            server,
            "/flow_runs/filter",
            {
                "flow_runs": {
                    "state": {"type": {"any_": ["RUNNING"]}},
                    "name": {"any_": ["SleepFlow"]},
                }
            },
        )
        assert len(running) == 1
        flow_run_id = running[0]["id"]
        body = {"state": {"type": "CANCELLING", "name": "Cancelling"}, "force": True}
        request = urllib.request.Request(
            f"{server['_API_URL']}/flow_runs/{flow_run_id}/set_state",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(request, timeout=10).read()
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 3, stderr[-3000:]
    assert "the flow run was cancelled" in stderr
    assert _pids_dead(tmp_path / "pids") == []
    final = _eventually(
        lambda: _api(server, "/flow_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}}),
        lambda found: found[0]["state"]["type"] == "CANCELLED",
    )[0]
    assert final["state"]["type"] == "CANCELLED"


def test_manifest_edits_change_what_runs(server: dict[str, str], tmp_path: Path) -> None:
    """The manifest is the only input: a retry delay edited in the YAML is honoured, and with
    retries removed the flaky step fails."""
    env = dict(server, METAFLOW_DATASTORE_SYSROOT_LOCAL=str(tmp_path / "ds"))
    source = (
        (EXAMPLES / "retry_flow.yaml")
        .read_text()
        .replace("file: retry_flow.py", f"file: {EXAMPLES / 'retry_flow.py'}")
    )
    assert "      delay_seconds: 0\n" in source
    delayed = tmp_path / "delayed.yaml"
    delayed.write_text(source.replace("      delay_seconds: 0\n", "      delay_seconds: 3\n"))
    # An absolute flow path is refused by validation, so point at the flow relatively.
    for path in (delayed,):
        path.write_text(
            path.read_text().replace(
                f"file: {EXAMPLES / 'retry_flow.py'}",
                f"file: {os.path.relpath(EXAMPLES / 'retry_flow.py', tmp_path)}",
            )
        )
    result = mfprefect("run", str(delayed), env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    dumped = _dump(_pathspec(result.stderr), env)
    assert [t["data"]["attempts_seen"] for t in dumped["steps"]["flaky"]] == ["1"]
    flow_run_id = _flow_run_id(dumped)
    flaky = _eventually(
        lambda: _api(
            server,
            "/task_runs/filter",
            {
                "flow_runs": {"id": {"any_": [flow_run_id]}},
                "task_runs": {"name": {"any_": ["flaky"]}},
            },
        ),
        lambda found: bool(found) and found[0]["state"]["type"] == "COMPLETED",
    )[0]
    assert flaky["run_count"] == 2
    states = json.loads(
        urllib.request.urlopen(
            f"{server['_API_URL']}/task_run_states/?task_run_id={flaky['id']}", timeout=10
        ).read()
    )
    waiting = [s for s in states if s["name"] == "AwaitingRetry"]
    assert len(waiting) == 1
    from datetime import datetime

    scheduled = datetime.fromisoformat(
        waiting[0]["state_details"]["scheduled_time"].replace("Z", "+00:00")
    )
    stamped = datetime.fromisoformat(waiting[0]["timestamp"].replace("Z", "+00:00"))
    assert 2.5 <= (scheduled - stamped).total_seconds() <= 4

    no_retry = tmp_path / "no_retry.yaml"
    no_retry.write_text(
        delayed.read_text().replace("    retries:\n      times: 2\n      delay_seconds: 3\n", "")
    )
    failed = mfprefect("run", str(no_retry), env=env, cwd=tmp_path)
    assert failed.returncode == 3 and "/flaky/" in failed.stderr


def test_resources_become_tags_and_cards_are_made(server: dict[str, str], tmp_path: Path) -> None:
    env = dict(server, METAFLOW_DATASTORE_SYSROOT_LOCAL=str(tmp_path / "ds"))
    result = mfprefect("run", str(EXAMPLES / "resources_flow.yaml"), env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    dumped = _dump(_pathspec(result.stderr), env)
    flow_run_id = _flow_run_id(dumped)
    runs = {
        tr["name"]: sorted(tr["tags"])
        for tr in _eventually(
            lambda: _api(
                server, "/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}}
            ),
            lambda found: len(found) >= 5,
        )
    }
    resource = {
        name: [t for t in tags if t.split(":")[0] in ("cpu", "memory", "gpu", "disk", "mfprefect")]
        for name, tags in runs.items()
    }
    assert resource["gpu"] == [
        "cpu:1",
        "disk:2048",
        "gpu:1",
        "memory:1024",
        "mfprefect:gpu",
    ]
    assert resource["big"] == ["cpu:2", "memory:8192"]
    # The run's own tags mark the flow run only (each tag on a task run costs a concurrency
    # lease request), so a step without @resources has no tags.
    assert runs["start"] == []

    # Cards, like data, go to Metaflow's default place: .metaflow in the working directory.
    plain = dict(env)
    plain.pop("METAFLOW_DATASTORE_SYSROOT_LOCAL")
    workdir = tmp_path / "cards"
    workdir.mkdir()
    cards = mfprefect("run", str(EXAMPLES / "card_flow.yaml"), env=plain, cwd=workdir)
    assert cards.returncode == 0, cards.stderr[-3000:]
    probe = (
        "import sys; from metaflow import Run, namespace; from metaflow.cards import get_cards; "
        "namespace(None); print(len(get_cards(Run(sys.argv[1])['report'].task)))"
    )
    counted = run([sys.executable, "-c", probe, _pathspec(cards.stderr)], env=plain, cwd=workdir)
    assert counted.returncode == 0, counted.stderr[-2000:]
    assert int(counted.stdout.strip()) == 1


def test_step_output_reaches_the_prefect_log(server: dict[str, str], tmp_path: Path) -> None:
    env = dict(server, METAFLOW_DATASTORE_SYSROOT_LOCAL=str(tmp_path / "ds"))
    result = flow_cli(FLOWS / "print_env_flow.py", "prefect", "run", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    dumped = _dump(_pathspec(result.stderr), env)
    flow_run_id = _flow_run_id(dumped)
    logs = _eventually(
        lambda: _api(
            server, "/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200}
        ),
        lambda found: any(entry["message"] == "hello from start" for entry in found),
    )
    assert any(entry["message"] == "hello from start" and entry["task_run_id"] for entry in logs)


def test_retried_foreach_fans_out_from_the_successful_attempt(
    server: dict[str, str], tmp_path: Path
) -> None:
    env = dict(server, METAFLOW_DATASTORE_SYSROOT_LOCAL=str(tmp_path / "ds"))
    result = flow_cli(FLOWS / "retry_foreach_flow.py", "prefect", "run", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    dumped = _dump(_pathspec(result.stderr), env)
    assert len(dumped["steps"]["body"]) == 3
    assert dumped["steps"]["join"][0]["data"]["values"] == "['A', 'B', 'C']"


def test_config_override_reaches_every_step(server: dict[str, str], tmp_path: Path) -> None:
    env = dict(server, METAFLOW_DATASTORE_SYSROOT_LOCAL=str(tmp_path / "ds"))
    override = '{"source": {"table": "other", "limit": 7}}'
    result = flow_cli(
        EXAMPLES / "config_flow.py",
        "--config-value",
        "data",
        override,
        "prefect",
        "run",
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    steps = _dump(_pathspec(result.stderr), env)["steps"]
    assert steps["end"][0]["data"]["table"] == "'other'" and steps["end"][0]["data"]["limit"] == "7"
    assert steps["start"][0]["data"]["depth"] == "3"


def test_secret_block_reference_is_resolved_and_never_printed(
    server: dict[str, str], tmp_path: Path
) -> None:
    secret = "blk-8c1d77-secret-value"
    env = dict(
        server,
        METAFLOW_DATASTORE_SYSROOT_LOCAL=str(tmp_path / "ds"),
        PREFECT_API_URL=server["_API_URL"],
    )
    saved = run(
        [
            sys.executable,
            "-c",
            "import sys; from prefect.blocks.system import Secret; Secret(value=sys.argv[1]).save('api-token', overwrite=True)",
            secret,
        ],
        env=env,
    )
    assert saved.returncode == 0, saved.stderr[-2000:]
    manifest = tmp_path / "print_env.yaml"
    assert (
        flow_cli(
            FLOWS / "print_env_flow.py", "prefect", "export", str(manifest), env=env
        ).returncode
        == 0
    )
    manifest.write_text(
        manifest.read_text().replace(
            "      GREETING: hello\n",
            "      GREETING: hello\n      API_TOKEN: {secret: api-token}\n",
        )
    )
    result = mfprefect("run", str(manifest), env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert secret not in result.stdout + result.stderr
    pathspec = _pathspec(result.stderr)
    start = _dump(pathspec, env)["steps"]["start"][0]
    assert start["data"]["token_length"] == str(len(secret))
    assert "token is ***" in start["stdout"] and secret not in start["stdout"]
    flow_run_id = _flow_run_id(_dump(pathspec, env))
    logs = _eventually(
        lambda: _api(
            server, "/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200}
        ),
        lambda found: any(entry["message"] == "token is ***" for entry in found),
    )
    assert any(entry["message"] == "token is ***" for entry in logs)
    assert not any(secret in entry["message"] for entry in logs)
