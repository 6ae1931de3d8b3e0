"""Apply sets, prune, saved plans and fields left to the UI against a real Prefect server (no
worker: nothing runs).

The manifests use `deployment.code: {kind: path}` so that apply stores no code package: what is
under test is which objects plan and apply write, keep and delete."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import EXAMPLES, mfprefect, prefect_api
from prefect_stack import gitops_server
from ruamel.yaml import YAML

POOL = "gitops-pool"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    with gitops_server(tmp_path_factory.mktemp("gitops"), POOL) as env:
        yield env


def _pipelines(folder: Path, *examples: str, name: str = "") -> list[Path]:
    """Copies of example flows and their manifests on the test pool; `name` suffixes deployment
    names so that each test has deployments of its own."""
    folder.mkdir(parents=True, exist_ok=True)
    yaml = YAML()
    out = []
    for example in examples:
        shutil.copy(EXAMPLES / f"{example}.py", folder / f"{example}.py")
        data = yaml.load((EXAMPLES / f"{example}.yaml").read_text())
        data["deployment"]["work_pool"] = POOL
        data["deployment"]["code"] = {"kind": "path"}
        data["deployment"]["name"] = f"{example}{name}"
        target = folder / f"{example}.yaml"
        with target.open("w") as handle:
            yaml.dump(data, handle)
        out.append(target)
    return out


def _deployments(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Every deployment on the server by name, with its tags."""
    found = prefect_api(env["PREFECT_API_URL"], "POST", "/deployments/filter", {"limit": 200})
    return {d["name"]: d for d in found}  # type: ignore[union-attr]


def _set_of(env: dict[str, str], name: str) -> str | None:
    tags = _deployments(env)[name]["tags"]
    return next((t.split(":", 1)[1] for t in tags if t.startswith("mfprefect-set:")), None)


def test_removing_a_manifest_prunes_its_deployment_with_or_without_a_project(
    stack: dict[str, str], tmp_path: Path
) -> None:
    folder = tmp_path / "m"
    linear, project = _pipelines(folder, "linear_flow", "project_flow", name="-prune")
    (folder / ".mfprefect-set").write_text("# the pipelines of this folder\nprune-test\n")
    applied = mfprefect("apply", str(folder), env=stack)
    assert applied.returncode == 0, applied.stderr
    assert _set_of(stack, "linear_flow-prune") == "prune-test"
    assert _set_of(stack, "project_flow-prune") == "prune-test"

    # Without a set, prune is a usage error that says how to name one.
    (folder / ".mfprefect-set").unlink()
    refused = mfprefect("apply", str(folder), "--prune", env=stack)
    assert refused.returncode == 2 and "needs an apply set" in refused.stderr
    assert "--set NAME" in refused.stderr and "Traceback" not in refused.stderr

    # The @project pipeline goes: the one left has no project, it is pruned all the same.
    project.unlink()
    pruned = mfprefect("apply", str(folder), "--prune", "--set", "prune-test", env=stack)
    assert pruned.returncode == 0, pruned.stderr
    assert "delete deployment" in pruned.stderr and "project_flow-prune" not in _deployments(stack)
    # And the other way round, the set named by the environment this time (as in CI).
    _pipelines(folder, "project_flow", name="-prune")
    assert mfprefect("apply", str(folder), "--set", "prune-test", env=stack).returncode == 0
    linear.unlink()
    ci = dict(stack, MFPREFECT_SET="prune-test")
    pruned = mfprefect("apply", str(folder), "--prune", env=ci)
    assert pruned.returncode == 0, pruned.stderr
    names = _deployments(stack)
    assert "linear_flow-prune" not in names and "project_flow-prune" in names
    assert mfprefect("delete", "--set", "prune-test", env=stack).returncode == 0
    assert "project_flow-prune" not in _deployments(stack)


def test_two_sets_never_prune_each_other_and_a_renamed_file_changes_nothing(
    stack: dict[str, str], tmp_path: Path
) -> None:
    (a,) = _pipelines(tmp_path / "a", "linear_flow", name="-set-a")
    (b,) = _pipelines(tmp_path / "b", "linear_flow", name="-set-b")
    assert mfprefect("apply", str(a), "--set", "team-a", env=stack).returncode == 0
    assert mfprefect("apply", str(b), "--set", "team-b", env=stack).returncode == 0
    before = _deployments(stack)["linear_flow-set-b"]["updated"]
    # team-a prunes with its own manifests: team-b's deployment is not its to delete.
    plan = mfprefect("plan", str(a), "--prune", "--set", "team-a", env=stack)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    a.rename(a.with_name("renamed.yaml"))
    again = mfprefect("apply", str(tmp_path / "a"), "--prune", "--set", "team-a", env=stack)
    assert again.returncode == 0 and "No changes" in again.stdout, again.stdout
    # An empty team-c prunes nothing of a or b.
    empty = mfprefect(
        "apply", "--prune", "--allow-empty", "--set", "team-c", str(tmp_path / "c"), env=stack
    )
    assert empty.returncode == 2  # no such folder: a usage error, nothing deleted
    names = _deployments(stack)
    assert {"linear_flow-set-a", "linear_flow-set-b"} <= set(names)
    assert names["linear_flow-set-b"]["updated"] == before
    for team in ("team-a", "team-b"):
        assert mfprefect("delete", "--set", team, env=stack).returncode == 0


def test_a_pipeline_moved_to_another_set_is_kept_by_the_old_sets_prune(
    stack: dict[str, str], tmp_path: Path
) -> None:
    (manifest,) = _pipelines(tmp_path / "old", "linear_flow", name="-moved")
    _pipelines(tmp_path / "old", "foreach_flow", name="-moved")
    assert mfprefect("apply", str(tmp_path / "old"), "--set", "old", env=stack).returncode == 0
    (tmp_path / "new").mkdir()
    shutil.move(str(manifest), tmp_path / "new" / manifest.name)
    shutil.copy(tmp_path / "old" / "linear_flow.py", tmp_path / "new")
    plan = mfprefect("plan", str(tmp_path / "new"), "--set", "new", env=stack)
    assert plan.returncode == 1 and "mfprefect-set:old" in plan.stdout, plan.stdout
    assert (
        mfprefect("apply", str(tmp_path / "new"), "--prune", "--set", "new", env=stack).returncode
        == 0
    )
    assert _set_of(stack, "linear_flow-moved") == "new"
    old = mfprefect("apply", str(tmp_path / "old"), "--prune", "--set", "old", env=stack)
    assert old.returncode == 0 and "No changes" in old.stdout, old.stdout
    assert {"linear_flow-moved", "foreach_flow-moved"} <= set(_deployments(stack))
    for team in ("old", "new"):
        assert mfprefect("delete", "--set", team, env=stack).returncode == 0


def test_deployments_applied_before_sets_are_adopted_without_a_conflict(
    stack: dict[str, str], tmp_path: Path
) -> None:
    linear, foreach = _pipelines(tmp_path, "linear_flow", "foreach_flow", name="-legacy")
    # As an mfprefect from before sets left them: owned, and in no set.
    assert mfprefect("apply", str(tmp_path), env=stack).returncode == 0
    assert _set_of(stack, "linear_flow-legacy") is None
    foreach.unlink()
    plan = mfprefect("plan", str(tmp_path), "--prune", "--set", "adopting", env=stack)
    assert plan.returncode == 1
    assert "~ update deployment LinearFlow/linear_flow-legacy" in plan.stdout
    assert "ForeachFlow/foreach_flow-legacy" in plan.stdout and "no apply set" in plan.stdout
    applied = mfprefect("apply", str(tmp_path), "--prune", "--set", "adopting", env=stack)
    assert applied.returncode == 0, applied.stderr
    assert _set_of(stack, "linear_flow-legacy") == "adopting"
    assert "foreach_flow-legacy" in _deployments(stack)  # in no set: prune leaves it
    assert mfprefect("delete", "--set", "adopting", env=stack).returncode == 0
    _pipelines(tmp_path, "foreach_flow", name="-legacy")
    assert mfprefect("delete", str(tmp_path / "foreach_flow.yaml"), env=stack).returncode == 0


def test_a_saved_plan_applies_exactly_and_is_refused_once_stale(
    stack: dict[str, str], tmp_path: Path
) -> None:
    folder = tmp_path / "m"
    linear, switch = _pipelines(folder, "linear_flow", "switch_flow", name="-saved")
    plan_file = tmp_path / "plan.json"

    def saved_plan() -> subprocess.CompletedProcess[str]:
        # From the checkout's top, as CI does: the plan names its manifests relative to it.
        return mfprefect(
            "plan", "m", "--set", "saved", "--out", "plan.json", env=stack, cwd=tmp_path
        )

    def apply_it(*extra: str) -> subprocess.CompletedProcess[str]:
        return mfprefect("apply", "plan.json", *extra, env=stack, cwd=tmp_path)

    made = saved_plan()
    assert made.returncode == 1 and "2 to create" in made.stdout, made.stdout + made.stderr
    saved = json.loads(plan_file.read_text())
    assert saved["kind"] == "mfprefect-plan" and saved["apply_set"] == "saved"
    assert saved["paths"] == ["m"] and sorted(saved["manifests"]) == [
        "m/linear_flow.yaml",
        "m/switch_flow.yaml",
    ]
    assert "127.0.0.1" not in plan_file.read_text()  # which server, but not its address

    # Options belong to the plan.
    mixed = apply_it("--prune")
    assert mixed.returncode == 2 and "carries its own" in mixed.stderr
    applied = apply_it()
    assert applied.returncode == 0, applied.stderr
    assert {"linear_flow-saved", "switch_flow-saved"} <= set(_deployments(stack))
    # Applying it again: the server is not the one it was made against any more.
    stale = apply_it()
    assert stale.returncode == 1 and "the server changed since the plan was made" in stale.stderr
    assert stale.stderr.count("\n") <= 2 and "Traceback" not in stale.stderr

    # A plan, then an edit on the server: refused, and nothing written.
    assert (
        mfprefect(
            "plan", str(folder), "--set", "saved", "--out", str(plan_file), env=stack
        ).returncode
        == 0
    )
    deployment = _deployments(stack)["linear_flow-saved"]
    prefect_api(
        stack["PREFECT_API_URL"],
        "PATCH",
        f"/deployments/{deployment['id']}",
        {"description": "by hand"},
    )
    edited_at = _deployments(stack)["linear_flow-saved"]["updated"]
    refused = apply_it()
    assert refused.returncode == 1 and "server changed" in refused.stderr
    assert _deployments(stack)["linear_flow-saved"]["updated"] == edited_at
    assert _deployments(stack)["linear_flow-saved"]["description"] == "by hand"

    # A plan, then a manifest edited: refused, naming the file.
    assert (
        mfprefect(
            "plan", str(folder), "--set", "saved", "--out", str(plan_file), env=stack
        ).returncode
        == 1
    )
    switch.write_text(switch.read_text().replace("parallelism: 16", "parallelism: 3"))
    refused = apply_it()
    assert refused.returncode == 1 and "switch_flow.yaml (edited)" in refused.stderr, refused.stderr

    # An edited plan file is refused before anything is read from the server.
    plan_file.write_text(plan_file.read_text().replace('"prune": false', '"prune": true'))
    refused = apply_it()
    assert refused.returncode == 1 and "checksum does not match" in refused.stderr
    assert mfprefect("delete", "--set", "saved", env=stack).returncode == 0


def test_a_markdown_plan_for_a_pull_request(stack: dict[str, str], tmp_path: Path) -> None:
    _pipelines(tmp_path, "split_join_flow", name="-markdown")
    result = mfprefect("plan", str(tmp_path), "--set", "md", "--format", "markdown", env=stack)
    assert result.returncode == 1
    text = result.stdout
    assert text.startswith("### mfprefect plan (apply set `md`)")
    assert "**1 to add, 0 to change, 0 to delete**" in text and "```mermaid" in text
    github = mfprefect("plan", str(tmp_path), "--set", "md", "--format", "github", env=stack)
    assert github.returncode == 1
    assert "::notice file=" in github.stdout and "split_join_flow.yaml,line=1" in github.stdout
    with pytest.raises(urllib.error.HTTPError):
        prefect_api(
            stack["PREFECT_API_URL"],
            "GET",
            "/deployments/name/SplitJoinFlow/split_join_flow-markdown",
        )


# What a person does in the Prefect UI: pause the deployment, switch its schedule off.
PAUSE_IN_THE_UI = """
import asyncio, sys
from prefect.client.orchestration import get_client

async def main(key):
    async with get_client() as client:
        deployment = await client.read_deployment_by_name(key)
        await client.pause_deployment(deployment.id)
        for schedule in deployment.schedules:
            await client.update_deployment_schedule(deployment.id, schedule.id, active=False)

asyncio.run(main(sys.argv[1]))
"""


def test_fields_left_to_the_ui_are_never_reset_and_plan_reports_them(
    stack: dict[str, str], tmp_path: Path
) -> None:
    (manifest,) = _pipelines(tmp_path, "schedule_flow", name="-ui")
    yaml = YAML()
    data = yaml.load(manifest.read_text())
    data["deployment"]["unmanaged"] = ["paused", "schedule.active"]
    with manifest.open("w") as handle:
        yaml.dump(data, handle)
    key = "ScheduleFlow/schedule_flow-ui"
    applied = mfprefect("apply", str(manifest), env=stack)
    assert applied.returncode == 0, applied.stderr
    created = _deployments(stack)["schedule_flow-ui"]
    assert created["paused"] is False and created["schedules"][0]["active"] is True

    edit = subprocess.run(
        [sys.executable, "-c", PAUSE_IN_THE_UI, key], env=stack, capture_output=True, text=True
    )
    assert edit.returncode == 0, edit.stderr
    before = _deployments(stack)["schedule_flow-ui"]
    assert before["paused"] is True and before["schedules"][0]["active"] is False

    plan = mfprefect("plan", str(manifest), env=stack)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert f"note: deployment {key}: paused is left to the UI (now true)" in plan.stdout
    assert f"note: deployment {key}: schedule.active is left to the UI (now false)" in plan.stdout
    assert "No changes" in plan.stdout, plan.stdout
    as_json = json.loads(mfprefect("plan", str(manifest), "--format", "json", env=stack).stdout)
    assert {(u["field"], u["live"]) for u in as_json["unmanaged"]} == {
        ("paused", True),
        ("schedule.active", False),
    }
    again = mfprefect("apply", str(manifest), env=stack)
    assert again.returncode == 0 and "No changes" in again.stdout, again.stdout + again.stderr
    after = _deployments(stack)["schedule_flow-ui"]
    assert after["paused"] is True and after["schedules"][0]["active"] is False
    assert after["updated"] == before["updated"]
    assert after["schedules"][0]["updated"] == before["schedules"][0]["updated"]

    # A new cron is applied; the schedule stays as the UI left it, and so does the deployment.
    manifest.write_text(manifest.read_text().replace("cron: 0 6 * * *", "cron: 30 7 * * *"))
    moved = mfprefect("apply", str(manifest), env=stack)
    assert moved.returncode == 0, moved.stderr
    after = _deployments(stack)["schedule_flow-ui"]
    assert after["schedules"][0]["schedule"]["cron"] == "30 7 * * *"
    assert after["paused"] is True and after["schedules"][0]["active"] is False

    # Without `unmanaged`, the same UI edits are drift: plan shows them and exits 1.
    data = yaml.load(manifest.read_text())
    del data["deployment"]["unmanaged"]
    with manifest.open("w") as handle:
        yaml.dump(data, handle)
    drift = mfprefect("plan", str(manifest), env=stack)
    assert drift.returncode == 1, drift.stdout + drift.stderr
    assert "    paused: true -> false" in drift.stdout
    assert '"30 7 * * * (Europe/Amsterdam, paused)" -> "30 7 * * * (Europe/Amsterdam, active)"' in (
        drift.stdout
    )
    assert "left to the UI" not in drift.stdout
    assert mfprefect("delete", str(manifest), env=stack).returncode == 0
