"""GitOps against a real Prefect server and a real process worker, both started here."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    EXAMPLES,
    flow_cli,
    flow_env,
    mfprefect,
    prefect_api,
    run,
    start_local_server,
    stop_local_server,
)

HERE = Path(__file__).resolve().parent
POOL = "mfp-test-pool"

pytestmark = pytest.mark.slow


def _request(env: dict[str, str], method: str, path: str, body: dict | None = None) -> Any:
    return prefect_api(env["PREFECT_API_URL"], method, path, body)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A Prefect server, a process work pool and a worker polling it; all stopped at the end."""
    home = tmp_path_factory.mktemp("deploy")
    env = flow_env(home)
    env["MFPREFECT_HOME"] = str(home / "mfhome")
    env.pop("PREFECT_API_URL", None)
    env["PREFECT_API_URL"] = start_local_server(env)
    made = run(
        [sys.executable, "-m", "prefect", "work-pool", "create", POOL, "--type", "process"],
        env=env,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    worker_env = dict(env, PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_PREFETCH_SECONDS="5")
    worker = subprocess.Popen(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL],
        env=worker_env,
        stdout=open(home / "worker.log", "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    env["_HOME"] = str(home)
    try:
        yield env
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGKILL):
            if worker.poll() is not None:
                break
            os.killpg(worker.pid, sig)
            try:
                worker.wait(timeout=8)
            except subprocess.TimeoutExpired:
                continue
        stop_local_server(env)


def _workspace(tmp_path: Path, env: dict[str, str], *flows: str, pool: str = POOL) -> list[Path]:
    """Copies of example flows with their manifests exported onto the test pool."""
    manifests = []
    for name in flows:
        shutil.copy(EXAMPLES / f"{name}.py", tmp_path / f"{name}.py")
        manifest = tmp_path / f"{name}.yaml"
        result = flow_cli(
            tmp_path / f"{name}.py",
            "prefect",
            "export",
            str(manifest),
            "--work-pool",
            pool,
            env=env,
        )
        assert result.returncode == 0, result.stderr
        manifests.append(manifest)
    return manifests


def _deployment(env: dict[str, str], key: str) -> dict:
    flow, name = key.split("/")
    return _request(env, "GET", f"/deployments/name/{flow}/{name}")  # type: ignore[return-value]


def test_apply_is_idempotent_and_plan_shows_drift(stack: dict[str, str], tmp_path: Path) -> None:
    linear, schedule = _workspace(tmp_path, stack, "linear_flow", "schedule_flow")
    assert mfprefect("plan", str(linear), str(schedule), env=stack).returncode == 1
    applied = mfprefect("apply", str(tmp_path), env=stack)
    assert applied.returncode == 0, applied.stderr
    assert (
        "[1/2] create deployment" in applied.stderr and "[2/2] create deployment" in applied.stderr
    )
    before = _deployment(stack, "ScheduleFlow/ScheduleFlow")
    assert (
        before["schedules"][0]["slug"] == "mfprefect-cron"
        and before["schedules"][0]["schedule"]["cron"] == "0 6 * * *"
    )
    again = mfprefect("apply", str(tmp_path), env=stack)
    assert again.returncode == 0 and "No changes" in again.stdout
    after = _deployment(stack, "ScheduleFlow/ScheduleFlow")
    assert after["updated"] == before["updated"]  # no write at all
    assert mfprefect("plan", str(tmp_path), env=stack).returncode == 0

    # Drift made by hand in the UI: a schedule paused, a parameter default changed.
    schedule_id = after["schedules"][0]["id"]
    _request(
        stack, "PATCH", f"/deployments/{after['id']}/schedules/{schedule_id}", {"active": False}
    )
    _request(
        stack,
        "PATCH",
        f"/deployments/{_deployment(stack, 'LinearFlow/LinearFlow')['id']}",
        {"description": "edited by hand"},
    )
    drift = mfprefect("plan", str(tmp_path), "--output", "json", env=stack)
    assert drift.returncode == 1
    data = json.loads(drift.stdout)
    assert data["format_version"] == 1
    fields = {(c["key"], f["field"]) for c in data["changes"] for f in c["fields"]}
    assert ("ScheduleFlow/ScheduleFlow", "schedule mfprefect-cron") in fields
    assert ("LinearFlow/LinearFlow", "description") in fields
    text = mfprefect("plan", str(tmp_path), env=stack).stdout
    assert "~ update deployment LinearFlow/LinearFlow" in text and '"edited by hand" -> ' in text
    assert mfprefect("apply", str(tmp_path), env=stack).returncode == 0
    restored = _deployment(stack, "ScheduleFlow/ScheduleFlow")
    assert (
        restored["schedules"][0]["active"] is True and restored["schedules"][0]["id"] == schedule_id
    )
    assert mfprefect("plan", str(tmp_path), env=stack).returncode == 0

    # A code-derived change edited into the manifest shows as a manifest field and is applied.
    linear.write_text(linear.read_text().replace("  parallelism: 16\n", "  parallelism: 4\n"))
    text = mfprefect("plan", str(linear), env=stack).stdout
    assert "manifest.deployment.parallelism: 16 -> 4" in text
    assert mfprefect("apply", str(linear), env=stack).returncode == 0
    assert mfprefect("plan", str(linear), env=stack).returncode == 0
    assert mfprefect("delete", str(tmp_path), env=stack).returncode == 0


def test_prune_touches_only_what_mfprefect_owns(stack: dict[str, str], tmp_path: Path) -> None:
    linear, foreach = _workspace(tmp_path, stack, "linear_flow", "foreach_flow")
    assert mfprefect("apply", str(linear), str(foreach), "--set", "t", env=stack).returncode == 0
    # Someone else's deployment, made without mfprefect.
    flow_id = _request(stack, "POST", "/flows/", {"name": "HandMade"})["id"]  # type: ignore[index]
    _request(
        stack,
        "POST",
        "/deployments/",
        {"name": "keep-me", "flow_id": flow_id, "work_pool_name": POOL},
    )
    refused = mfprefect("apply", str(linear), "--prune", env=stack)
    assert refused.returncode == 2 and "--set" in refused.stderr, refused.stderr
    pruned = mfprefect("apply", str(linear), "--prune", "--set", "t", env=stack)
    assert pruned.returncode == 0, pruned.stderr
    assert "delete deployment ForeachFlow/ForeachFlow" in pruned.stderr
    assert _deployment(stack, "HandMade/keep-me")["name"] == "keep-me"
    with pytest.raises(urllib.error.HTTPError):
        _deployment(stack, "ForeachFlow/ForeachFlow")
    assert mfprefect("delete", str(linear), env=stack).returncode == 0


def test_unowned_deployment_is_a_conflict_unless_adopted(
    stack: dict[str, str], tmp_path: Path
) -> None:
    (linear,) = _workspace(tmp_path, stack, "start_split_flow")
    flow_id = _request(stack, "POST", "/flows/", {"name": "StartSplitFlow"})["id"]  # type: ignore[index]
    _request(
        stack,
        "POST",
        "/deployments/",
        {"name": "StartSplitFlow", "flow_id": flow_id, "work_pool_name": POOL},
    )
    refused = mfprefect("apply", str(linear), env=stack)
    assert refused.returncode == 3
    assert (
        "not managed by mfprefect already exist: deployment StartSplitFlow/StartSplitFlow"
        in refused.stderr
    )
    assert "--adopt" in refused.stderr and "Traceback" not in refused.stderr
    adopted = mfprefect("apply", str(linear), "--adopt", env=stack)
    assert adopted.returncode == 0, adopted.stderr
    assert "mfprefect" in _deployment(stack, "StartSplitFlow/StartSplitFlow")["tags"]
    assert mfprefect("delete", str(linear), env=stack).returncode == 0


def _wait_flow_run(env: dict[str, str], flow_run_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        found = _request(env, "GET", f"/flow_runs/{flow_run_id}")
        if (
            found["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
            or time.monotonic() > deadline
        ):  # type: ignore[index]
            return found  # type: ignore[return-value]
        time.sleep(0.5)


def test_triggered_run_goes_through_the_worker(stack: dict[str, str], tmp_path: Path) -> None:
    (params,) = _workspace(tmp_path, stack, "parameters_flow")
    assert mfprefect("apply", str(params), env=stack).returncode == 0
    triggered = mfprefect(
        "trigger",
        "ParametersFlow",
        "--param",
        "dataset=remote",
        "--param",
        "learning-rate=0.3",
        "--param",
        # Prefect's server would render this mapping (to 49) if it reached it as one.
        'settings={"__prefect_kind": "jinja", "template": "{{ 7*7 }}"}',
        env=stack,
    )
    assert triggered.returncode == 0, triggered.stderr
    flow_run = _wait_flow_run(stack, triggered.stdout.strip())
    assert flow_run["state"]["type"] == "COMPLETED", flow_run["state"]
    assert (
        flow_run["parameters"]["dataset"] == "remote"
        and flow_run["parameters"]["learning_rate"] == 0.3
    )
    probe = (
        "import sys, json; from metaflow import Flow, namespace; namespace(None); "
        "r = [r for r in Flow('ParametersFlow') if ('prefect_flow_run:' + sys.argv[1]) in r.tags][0]; "
        "print(r.successful, r['start'].task.data.dataset_value, r['start'].task.data.learning_rate_value); "
        "print(json.dumps(r['start'].task.data.settings, sort_keys=True))"
    )
    found = run([sys.executable, "-c", probe, flow_run["id"]], env=stack)
    assert found.returncode == 0, found.stderr[-2000:]
    first, second = found.stdout.strip().splitlines()
    assert first.split() == ["True", "remote", "0.3"], found.stdout
    assert json.loads(second) == {"__prefect_kind": "jinja", "template": "{{ 7*7 }}"}
    bad = mfprefect("trigger", "ParametersFlow", "--param", "count=many", env=stack)
    assert bad.returncode == 2 and "not a valid integer" in bad.stderr
    assert mfprefect("trigger", "NoSuchFlow", env=stack).returncode == 3
    assert mfprefect("delete", str(params), env=stack).returncode == 0


def test_metaflow_create_and_trigger(stack: dict[str, str], tmp_path: Path) -> None:
    shutil.copy(EXAMPLES / "linear_flow.py", tmp_path / "linear_flow.py")
    created = flow_cli(
        tmp_path / "linear_flow.py",
        "prefect",
        "create",
        "--name",
        "prod",
        "--work-pool",
        POOL,
        env=stack,
    )
    assert created.returncode == 0, created.stderr
    assert _deployment(stack, "LinearFlow/prod")["work_pool_name"] == POOL
    triggered = flow_cli(
        tmp_path / "linear_flow.py", "prefect", "trigger", "--name", "prod", env=stack
    )
    assert triggered.returncode == 0, triggered.stderr
    assert (
        _wait_flow_run(stack, triggered.stdout.strip().splitlines()[-1])["state"]["type"]
        == "COMPLETED"
    )
    _request(stack, "DELETE", f"/deployments/{_deployment(stack, 'LinearFlow/prod')['id']}")


def test_cards_of_a_deployed_run_on_the_local_datastore(
    stack: dict[str, str], tmp_path: Path
) -> None:
    """A package deployment's steps run in a folder removed after the run: its cards used to
    go there (Metaflow writes local cards under the `.metaflow` found from the working folder)."""
    shutil.copy(EXAMPLES / "card_flow.py", tmp_path / "card_flow.py")
    created = flow_cli(
        tmp_path / "card_flow.py", "prefect", "create", "--work-pool", POOL, env=stack
    )
    assert created.returncode == 0, created.stderr
    triggered = flow_cli(tmp_path / "card_flow.py", "prefect", "trigger", env=stack)
    assert triggered.returncode == 0, triggered.stderr
    flow_run_id = triggered.stdout.strip().splitlines()[-1]
    assert _wait_flow_run(stack, flow_run_id)["state"]["type"] == "COMPLETED"
    probe = (
        "import sys; from metaflow import Flow, namespace; from metaflow.cards import get_cards; "
        "namespace(None); "
        "r = [r for r in Flow('CardFlow') if ('prefect_flow_run:' + sys.argv[1]) in r.tags][0]; "
        "print([c.type for c in get_cards(r['report'].task)])"
    )
    found = run([sys.executable, "-c", probe, flow_run_id], env=stack, cwd=tmp_path)
    assert found.returncode == 0, found.stderr[-2000:]
    assert found.stdout.strip().splitlines()[-1] == "['default']"
    _request(stack, "DELETE", f"/deployments/{_deployment(stack, 'CardFlow/CardFlow')['id']}")


def test_errors_are_one_line_with_the_right_exit_code(
    stack: dict[str, str], tmp_path: Path
) -> None:
    (linear,) = _workspace(tmp_path, stack, "linear_flow")
    down = mfprefect(
        "apply", str(linear), env=dict(stack, PREFECT_API_URL="http://127.0.0.1:9/api")
    )
    assert down.returncode == 3 and "cannot reach http://127.0.0.1:9/api" in down.stderr
    assert "Traceback" not in down.stderr
    no_pool = _workspace(tmp_path / "..", stack, "switch_flow", pool="no-such-pool")[0]
    missing = mfprefect("apply", str(no_pool), env=stack)
    # A pool nobody has is a plan error (exit 1) at the manifest's line, before any write.
    assert missing.returncode == 1 and "work pool `no-such-pool` does not exist" in missing.stderr
    assert "deployment.work_pool" in missing.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text(linear.read_text().replace("kind: linear", "kind: linearr", 1))
    invalid = mfprefect("apply", str(broken), env=stack)
    assert invalid.returncode == 1 and "nothing was applied" in invalid.stderr
    unset = dict(stack)
    unset.pop("PREFECT_API_URL")
    assert (
        mfprefect(
            "plan", str(linear), env=dict(unset, PREFECT_HOME=str(tmp_path / "nohome"))
        ).returncode
        == 2
    )


def _automations(env: dict[str, str], key: str) -> list[dict]:
    found = _request(env, "POST", "/automations/filter", {})
    return [a for a in found if f"mfprefect-deployment:{key}" in a.get("tags", [])]  # type: ignore[union-attr]


def _runs_of(env: dict[str, str], flow_name: str) -> list[dict]:
    return _request(env, "POST", "/flow_runs/filter", {"flows": {"name": {"any_": [flow_name]}}})  # type: ignore[return-value]


def _wait_for_run_of(env: dict[str, str], flow_name: str, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = [
            r
            for r in _runs_of(env, flow_name)
            if r["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED")
        ]
        if runs:
            return runs[0]
        time.sleep(0.5)
    raise AssertionError(f"no finished run of {flow_name} within {timeout} s")


def test_event_trigger_runs_the_deployment(stack: dict[str, str], tmp_path: Path) -> None:
    (manifest,) = _workspace(tmp_path, stack, "trigger_flow")
    assert mfprefect("apply", str(manifest), env=stack).returncode == 0
    first = _automations(stack, "TriggerFlow/TriggerFlow")
    assert len(first) == 1 and first[0]["trigger"]["expect"] == ["data.ready"]
    assert first[0]["actions"][0]["parameters"] == {
        "path": {"__prefect_kind": "jinja", "template": "{{ event.payload.file_path }}"}
    }
    again = mfprefect("apply", str(manifest), env=stack)
    assert again.returncode == 0 and "No changes" in again.stdout
    assert [a["id"] for a in _automations(stack, "TriggerFlow/TriggerFlow")] == [first[0]["id"]]
    emit = (
        "from prefect.events import emit_event; "
        "emit_event(event='data.ready', resource={'prefect.resource.id': 'test.source'}, payload={'file_path': 's3://bucket/key'})"
    )
    emitted = run([sys.executable, "-c", emit], env=stack)
    assert emitted.returncode == 0, emitted.stderr[-2000:]
    flow_run = _wait_for_run_of(stack, "TriggerFlow")
    assert flow_run["state"]["type"] == "COMPLETED", flow_run["state"]
    assert flow_run["parameters"]["path"] == "s3://bucket/key"
    # A hand edit of the automation is drift, put back in place (same id).
    _request(stack, "PATCH", f"/automations/{first[0]['id']}", {"enabled": False})
    assert mfprefect("plan", str(manifest), env=stack).returncode == 1
    assert mfprefect("apply", str(manifest), env=stack).returncode == 0
    restored = _automations(stack, "TriggerFlow/TriggerFlow")
    assert [(a["id"], a["enabled"]) for a in restored] == [(first[0]["id"], True)]
    assert mfprefect("delete", str(manifest), env=stack).returncode == 0
    assert _automations(stack, "TriggerFlow/TriggerFlow") == []


def test_upstream_completion_runs_the_downstream(stack: dict[str, str], tmp_path: Path) -> None:
    manifests = _workspace(tmp_path, stack, "linear_flow", "trigger_on_finish_flow")
    assert mfprefect("apply", *map(str, manifests), env=stack).returncode == 0
    (automation,) = _automations(stack, "TriggerOnFinishFlow/TriggerOnFinishFlow")
    assert automation["trigger"]["expect"] == ["prefect.flow-run.Completed"]
    before = len(_runs_of(stack, "TriggerOnFinishFlow"))
    triggered = mfprefect("trigger", "LinearFlow", env=stack)
    assert triggered.returncode == 0, triggered.stderr
    assert _wait_flow_run(stack, triggered.stdout.strip())["state"]["type"] == "COMPLETED"
    deadline = time.monotonic() + 90
    while len(_runs_of(stack, "TriggerOnFinishFlow")) == before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _wait_for_run_of(stack, "TriggerOnFinishFlow")["state"]["type"] == "COMPLETED"
    assert mfprefect("delete", *map(str, manifests), env=stack).returncode == 0


DEPLOYER_SCRIPT = """
import json, sys, time
from metaflow import Deployer, DeployedFlow

def wait(triggered, limit=120):
    deadline = time.time() + limit
    while time.time() < deadline and triggered.status not in ("SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"):
        time.sleep(0.5)
    return triggered.status

case = sys.argv[1]
out = {}
if case == "basic":
    deployed = Deployer("parameters_flow.py").prefect().create(work_pool=sys.argv[2], tags=["via-api"])
    out["name"] = deployed.name
    run = deployed.trigger(dataset="api", count=11)
    out["pathspec_at_trigger"] = run.pathspec
    out["status"] = wait(run)
    out["count"] = run.run["start"].task.data.count_value
    again = DeployedFlow.from_deployment(deployed.name, impl="prefect")
    second = again.trigger(dataset="recovered")
    out["recovered_status"] = wait(second)
    out["recovered_dataset"] = second.run["start"].task.data.dataset_value
elif case == "project":
    deployed = Deployer("project_flow.py", branch="feature").prefect().create(work_pool=sys.argv[2])
    out["name"] = deployed.name
    recovered = DeployedFlow.from_deployment("demo_project.test.feature.ProjectFlow", impl="prefect")
    # The deployer object recovers it too (its own flow file plays no part).
    out["from_deployer"] = Deployer("project_flow.py").prefect().from_deployment(
        "demo_project.test.feature.ProjectFlow").deployer.name
    run = recovered.trigger()
    out["status"] = wait(run)
    out["branch"] = run.run["start"].task.data.branch_name
elif case == "failing":
    deployed = Deployer("fail_flow.py").prefect().create(work_pool=sys.argv[2])
    run = deployed.trigger()
    started = time.time()
    out["status"] = wait(run)
    out["seconds"] = time.time() - started
elif case == "options":
    override = {"source": {"table": "from-deployer", "limit": 2}}
    deployed = Deployer("config_flow.py", config_value=[("data", override)], decospecs=["retry:times=1"]).prefect().create(
        work_pool=sys.argv[2], name="configured")
    run = deployed.trigger()
    out["status"] = wait(run)
    out["table"] = run.run["end"].task.data.table
print("RESULT " + json.dumps(out))
"""


def _deployer(stack: dict[str, str], tmp_path: Path, case: str, *flows: Path) -> dict:
    for flow in flows:
        shutil.copy(flow, tmp_path / flow.name)
    script = tmp_path / "drive.py"
    script.write_text(DEPLOYER_SCRIPT)
    result = run([sys.executable, str(script), case, POOL], env=stack, cwd=tmp_path, timeout=400)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
    line = next(text for text in result.stdout.splitlines() if text.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def test_deployer_create_trigger_status_and_recover(stack: dict[str, str], tmp_path: Path) -> None:
    out = _deployer(stack, tmp_path, "basic", EXAMPLES / "parameters_flow.py")
    assert out["name"] == "ParametersFlow/ParametersFlow"  # name defaults to the pipeline name
    assert out["status"] == "SUCCEEDED" and out["count"] == 11
    assert out["pathspec_at_trigger"].startswith("ParametersFlow/prefect-")
    assert out["recovered_status"] == "SUCCEEDED" and out["recovered_dataset"] == "recovered"
    assert "via-api" in _deployment(stack, "ParametersFlow/ParametersFlow")["tags"]
    _request(
        stack, "DELETE", f"/deployments/{_deployment(stack, 'ParametersFlow/ParametersFlow')['id']}"
    )


def test_deployer_project_branch_and_dotted_name(stack: dict[str, str], tmp_path: Path) -> None:
    out = _deployer(stack, tmp_path, "project", EXAMPLES / "project_flow.py")
    assert (
        out["name"] == "demo_project.test.feature.ProjectFlow/demo_project.test.feature.ProjectFlow"
    )
    assert out["status"] == "SUCCEEDED" and out["branch"] == "test.feature"
    assert out["from_deployer"] == out["name"]
    _request(stack, "DELETE", f"/deployments/{_deployment(stack, out['name'])['id']}")


def test_deployer_reports_a_failed_run_promptly(stack: dict[str, str], tmp_path: Path) -> None:
    out = _deployer(stack, tmp_path, "failing", HERE / "flows" / "fail_flow.py")
    assert out["status"] == "FAILED" and out["seconds"] < 60
    _request(stack, "DELETE", f"/deployments/{_deployment(stack, 'FailFlow/FailFlow')['id']}")


def test_deployer_options_reach_every_step(stack: dict[str, str], tmp_path: Path) -> None:
    out = _deployer(stack, tmp_path, "options", EXAMPLES / "config_flow.py")
    assert out["status"] == "SUCCEEDED" and out["table"] == "from-deployer"
    deployment = _deployment(stack, "ConfigFlow/configured")
    from mfprefect.deploy.desired import decode_manifest

    carried = decode_manifest(deployment["job_variables"]["env"]["MFPREFECT_MANIFEST"])
    assert all(
        step["with"] == ["retry:times=1,minutes_between_retries=2"]
        for step in carried["steps"].values()
    )
    _request(stack, "DELETE", f"/deployments/{deployment['id']}")


def test_dry_run_writes_nothing_and_limits_are_idempotent(
    stack: dict[str, str], tmp_path: Path
) -> None:
    (manifest,) = _workspace(tmp_path, stack, "foreach_in_split_flow")
    text = manifest.read_text().replace("  concurrency_limit: null\n", "  concurrency_limit: 2\n")
    manifest.write_text(text.replace("  tags: []\n", "  tags: [nightly]\n"))
    dry = mfprefect("apply", str(manifest), "--dry-run", env=stack)
    assert (
        dry.returncode == 1
        and "+ create deployment ForeachInSplitFlow/ForeachInSplitFlow" in dry.stdout
    )
    with pytest.raises(urllib.error.HTTPError):
        _deployment(stack, "ForeachInSplitFlow/ForeachInSplitFlow")
    assert mfprefect("apply", str(manifest), env=stack).returncode == 0
    created = _deployment(stack, "ForeachInSplitFlow/ForeachInSplitFlow")
    assert created["global_concurrency_limit"]["limit"] == 2
    assert set(created["tags"]) == {"nightly", "mfprefect", "mfprefect-project:-"}
    assert created["parameter_openapi_schema"]["type"] == "object"
    again = mfprefect("apply", str(manifest), env=stack)
    assert again.returncode == 0 and "No changes" in again.stdout
    assert (
        _deployment(stack, "ForeachInSplitFlow/ForeachInSplitFlow")["updated"] == created["updated"]
    )
    # Taking the limit away again clears it on the server.
    manifest.write_text(
        manifest.read_text().replace("  concurrency_limit: 2\n", "  concurrency_limit: null\n")
    )
    assert mfprefect("apply", str(manifest), env=stack).returncode == 0
    assert (
        _deployment(stack, "ForeachInSplitFlow/ForeachInSplitFlow")["global_concurrency_limit"]
        is None
    )
    assert mfprefect("plan", str(manifest), env=stack).returncode == 0
    assert mfprefect("delete", str(manifest), env=stack).returncode == 0
