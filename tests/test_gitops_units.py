"""GitOps logic without a server: apply sets, prune, saved plans and the plan's pull-request
formats, on plan() with live deployments given as values (the server tests are in test_gitops)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import EXAMPLES
from ruamel.yaml import YAML

from mfprefect.deploy import plan_report, saved, sets
from mfprefect.deploy.desired import DeploymentSpec, deployment_for
from mfprefect.deploy.plan import LiveDeployment, Plan, in_set, plan
from mfprefect.errors import PlanRejected, UsageError
from mfprefect.manifest import from_data


@pytest.fixture(autouse=True)
def _user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USER", "mfp-test-user")  # @project user branches are named after it


def _spec(example: str = "linear_flow", description: str | None = None) -> DeploymentSpec:
    data = YAML(typ="safe").load((EXAMPLES / f"{example}.yaml").read_text())
    data["deployment"]["work_pool"] = "pool"
    if description is not None:
        data["flow"]["description"] = description
    return deployment_for(from_data(data, f"m/{example}.yaml"), data)


def _live(spec: DeploymentSpec, apply_set: str | None, ident: str = "id-1") -> LiveDeployment:
    """The deployment as apply would have left it in this set (code as a fixed package)."""
    fields = dict(in_set(spec, apply_set).fields)
    return LiveDeployment(ident, spec.flow_name, spec.name, fields)


def _specs_without_code(*specs: DeploymentSpec) -> list[DeploymentSpec]:
    from dataclasses import replace

    return [replace(s, code=None) for s in specs]


def test_set_names_come_from_the_flag_then_the_environment_then_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MFPREFECT_SET", raising=False)
    folder = tmp_path / "m"
    folder.mkdir()
    assert sets.resolve(None, [str(folder)]) is None
    (folder / ".mfprefect-set").write_text("# the data team's production pipelines\nteam-prod\n")
    assert sets.resolve(None, [str(folder)]) == "team-prod"
    assert sets.resolve(None, [str(folder / "a.yaml")]) == "team-prod"
    monkeypatch.setenv("MFPREFECT_SET", "from-ci")
    assert sets.resolve(None, [str(folder)]) == "from-ci"
    assert sets.resolve("given", [str(folder)]) == "given"


def test_bad_set_names_and_disagreeing_set_files_are_usage_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MFPREFECT_SET", raising=False)
    with pytest.raises(UsageError, match="--set: `a b` is not an apply set name"):
        sets.resolve("a b", [])
    for name, text in (("one", "x\n"), ("two", "y\n")):
        (tmp_path / name).mkdir()
        (tmp_path / name / ".mfprefect-set").write_text(text)
    with pytest.raises(UsageError, match="different apply sets"):
        sets.resolve(None, [str(tmp_path / "one"), str(tmp_path / "two")])
    (tmp_path / "one" / ".mfprefect-set").write_text("x\ny\n")
    with pytest.raises(UsageError, match="holds 2 names"):
        sets.resolve(None, [str(tmp_path / "one")])
    with pytest.raises(UsageError, match="--prune needs an apply set") as refused:
        sets.required(None, "--prune")
    assert "MFPREFECT_SET" in (refused.value.hint or "")


def test_prune_deletes_what_the_set_no_longer_declares_whatever_its_project() -> None:
    linear, project = _specs_without_code(_spec(), _spec("project_flow"))
    live = [_live(linear, "a", "1"), _live(project, "a", "2")]
    assert plan([linear, project], live, prune=True, apply_set="a").pending == []
    # The @project pipeline's manifest is removed: pruned though no manifest left has a project.
    (gone,) = plan([linear], live, prune=True, apply_set="a").pending
    assert (gone.action, gone.key) == ("delete", project.key)
    (gone,) = plan([project], live, prune=True, apply_set="a").pending
    assert (gone.action, gone.key) == ("delete", linear.key)
    # Nothing declared at all: the whole set goes (the CLI asks for --allow-empty first).
    assert {c.key for c in plan([], live, prune=True, apply_set="a").pending} == {
        linear.key,
        project.key,
    }


def test_two_sets_never_prune_each_other_and_unowned_is_never_touched() -> None:
    linear, project = _specs_without_code(_spec(), _spec("project_flow"))
    theirs = LiveDeployment("3", "HandMade", "keep-me", {"tags": []})
    live = [_live(linear, "a", "1"), _live(project, "b", "2"), theirs]
    assert plan([linear], live, prune=True, apply_set="a").pending == []
    assert plan([], live, prune=True, apply_set="b").pending[0].key == project.key
    assert plan([], live, prune=True, apply_set="c").pending == []
    with pytest.raises(ValueError):
        plan([], live, prune=True)


def test_deployments_from_before_sets_are_adopted_on_apply_and_left_by_prune() -> None:
    linear, project = _specs_without_code(_spec(), _spec("project_flow"))
    live = [_live(linear, None, "1"), _live(project, None, "2")]
    result = plan([linear], live, prune=True, apply_set="a")
    (change,) = result.pending
    assert change.action == "update" and [f.field for f in change.changes] == ["tags"]
    assert "mfprefect-set:a" in change.changes[0].new
    assert result.conflicts == []
    assert result.notes and project.key in result.notes[0] and "no apply set" in result.notes[0]
    assert "note: 1 mfprefect deployment(s) in no apply set" in result.text()


def test_a_pipeline_moved_to_another_set_changes_only_its_set_tag() -> None:
    (linear,) = _specs_without_code(_spec())
    live = [_live(linear, "a")]
    (change,) = plan([linear], live, apply_set="b").pending
    assert [
        (f.field, "mfprefect-set:a" in f.old, "mfprefect-set:b" in f.new) for f in change.changes
    ] == [("tags", True, True)]
    assert "mfprefect-set:a" not in change.spec.fields["tags"]  # type: ignore[union-attr]
    # Without a set named, an apply keeps the set the deployment has.
    assert plan([linear], live).pending == []
    # The old set's prune no longer sees it once moved.
    moved = [_live(linear, "b")]
    assert plan([], moved, prune=True, apply_set="a").pending == []


def _saved(result: Plan, **given: Any) -> saved.SavedPlan:
    fields: dict[str, Any] = {
        "paths": ("m",),
        "manifests": {"m/linear_flow.yaml": "0" * 64},
        "server": saved.server_digest("http://127.0.0.1:4200/api"),
        "apply_set": "a",
        "prune": True,
        "adopt": False,
        "observed": result.observed,
        "plan": result.as_json(),
    }
    fields.update(given)
    return saved.SavedPlan(**fields)


def test_a_saved_plan_round_trips_and_applies_only_against_what_it_was_made_from(
    tmp_path: Path,
) -> None:
    (linear,) = _specs_without_code(_spec())
    live = [_live(linear, "a")]
    made = plan([linear], live, prune=True, apply_set="a")
    file = tmp_path / "plan.json"
    file.write_text(saved.text(_saved(made)))
    back = saved.read(str(file))
    assert back == _saved(made)
    back.check_inputs(
        {"m/linear_flow.yaml": "0" * 64}, saved.server_digest("http://127.0.0.1:4200/api/")
    )
    back.check_plan(plan([linear], live, prune=True, apply_set="a"))
    with pytest.raises(PlanRejected, match=r"m/linear_flow.yaml \(edited\)"):
        back.check_inputs({"m/linear_flow.yaml": "1" * 64}, back.server)
    with pytest.raises(PlanRejected, match=r"m/new.yaml \(new\)"):
        back.check_inputs({"m/linear_flow.yaml": "0" * 64, "m/new.yaml": "2" * 64}, back.server)
    with pytest.raises(PlanRejected, match="another Prefect server"):
        back.check_inputs(dict(back.manifests), saved.server_digest("http://other:4200/api"))
    # Someone edited the deployment on the server after the plan was made.
    edited = [_live(linear, "a")]
    edited[0].fields["description"] = "edited by hand"  # type: ignore[index]
    with pytest.raises(PlanRejected, match="the server changed since the plan was made"):
        back.check_plan(plan([linear], edited, prune=True, apply_set="a"))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda t: t[: len(t) // 2], "not JSON"),
        (lambda t: t.replace('"format_version": 1', '"format_version": 2'), "format_version 2"),
        (lambda t: t.replace('"prune": true', '"prune": false'), "checksum does not match"),
        (lambda t: json.dumps({"kind": "Pipeline"}), "not a saved plan"),
        (lambda t: "[1, 2]", "not a saved plan"),
    ],
    ids=["truncated", "format-version", "edited", "other-kind", "not-an-object"],
)
def test_a_file_that_is_not_a_saved_plan_is_refused_in_one_line(
    tmp_path: Path, damage: Any, message: str
) -> None:
    (linear,) = _specs_without_code(_spec())
    text = saved.text(_saved(plan([linear], [], apply_set="a")))
    file = tmp_path / "plan.json"
    file.write_text(damage(text))
    with pytest.raises(PlanRejected, match=message) as refused:
        saved.read(str(file))
    assert "\n" not in refused.value.message and str(file.as_posix()) in refused.value.message


def test_the_markdown_plan_has_a_summary_a_diff_per_object_and_the_changed_graphs() -> None:
    linear, switch, project = _specs_without_code(
        _spec(), _spec("switch_flow"), _spec("project_flow")
    )
    changed = dict(linear.manifest)
    changed["steps"] = dict(changed["steps"], extra={"next": []})
    live = [
        LiveDeployment(
            "1", linear.flow_name, linear.name, dict(in_set(linear, "a").fields, description="old")
        ),
        _live(project, "a", "2"),
    ]
    result = plan([linear, switch], live, prune=True, apply_set="a")
    text = plan_report.markdown(result, "a")
    assert "**1 to add, 1 to change, 1 to delete**" in text
    assert text.count("<details>") == 3 and text.count("</details>") == 3
    assert '- description: "old"' in text and f"deployment <code>{switch.key}</code>" in text
    # The new pipeline's graph is shown; the changed one's steps did not change: no graph.
    assert text.count("```mermaid") == 1 and "s_start" in text
    assert plan_report.summary_line(Plan()) == "0 to add, 0 to change, 0 to delete"


def test_a_value_cannot_close_the_markdown_fence_or_forge_annotations() -> None:
    (linear,) = _specs_without_code(_spec(description="x\n```\n# injected\n::error::forged"))
    result = plan(
        [linear],
        [
            LiveDeployment(
                "1",
                linear.flow_name,
                linear.name,
                dict(in_set(linear, None).fields, description="y"),
            )
        ],
    )
    text = plan_report.markdown(result)
    fence = next(
        line for line in text.splitlines() if line.startswith("```") and line.endswith("diff")
    )
    assert fence.startswith("````")  # longer than the value's own backtick run
    annotations = plan_report.github(result).splitlines()
    assert all(line.startswith("::") for line in annotations)
    assert annotations[0].startswith(
        "::notice file=m/linear_flow.yaml,line=1,title=mfprefect plan::change"
    )
    assert annotations[-1] == "::notice title=mfprefect plan::0 to add, 1 to change, 0 to delete"


def _spec_leaving(example: str, *unmanaged: str, **deployment: Any) -> DeploymentSpec:
    """A spec whose manifest leaves these fields to the UI (and sets these deployment fields)."""
    from dataclasses import replace

    data = YAML(typ="safe").load((EXAMPLES / f"{example}.yaml").read_text())
    data["deployment"].update(work_pool="pool", **deployment)
    if unmanaged:
        data["deployment"]["unmanaged"] = list(unmanaged)
    return replace(deployment_for(from_data(data, f"m/{example}.yaml"), data), code=None)


def _live_edited_in_ui(
    spec: DeploymentSpec, apply_set: str | None = None, **fields: Any
) -> LiveDeployment:
    """The deployment as apply left it, then edited in the UI: `fields`, and the schedule
    deactivated."""
    from dataclasses import replace

    from mfprefect.deploy.plan import LiveSchedule

    schedules = tuple(LiveSchedule("s1", s.slug, s.cron, s.timezone, False) for s in spec.schedules)
    live = _live(spec, apply_set)
    return replace(live, fields={**live.fields, **fields}, schedules=schedules)


def test_fields_left_to_the_ui_are_reported_not_compared_nor_written() -> None:
    from mfprefect.deploy.plan import Unmanaged

    spec = _spec_leaving("schedule_flow", "paused", "schedule.active", "concurrency_limit")
    assert spec.unmanaged == {"paused", "schedule.active", "concurrency_limit"}
    live = _live_edited_in_ui(spec, paused=True, concurrency_limit=3)
    result = plan([spec], [live])
    assert result.pending == []
    assert result.unmanaged == [
        Unmanaged(spec.key, "paused", True),
        Unmanaged(spec.key, "schedule.active", False),
        Unmanaged(spec.key, "concurrency_limit", 3),
    ]
    text = result.text()
    assert f"note: deployment {spec.key}: paused is left to the UI (now true)" in text
    assert f"note: deployment {spec.key}: schedule.active is left to the UI (now false)" in text
    assert text.endswith("No changes: the server matches the manifests.")
    assert result.as_json()["unmanaged"][0] == {
        "kind": "deployment",
        "key": spec.key,
        "field": "paused",
        "live": True,
    }
    assert f"> note: deployment {spec.key}: paused is left to the UI (now true)" in (
        plan_report.markdown(result)
    )
    assert (
        f"::notice title=mfprefect plan::deployment {spec.key}: concurrency_limit is left to the "
        "UI (now 3)"
    ) in plan_report.github(result).splitlines()

    # Without `unmanaged`, the same UI edits are drift that apply puts back.
    managed = _spec_leaving("schedule_flow")
    (change,) = plan(
        [managed], [_live_edited_in_ui(managed, paused=True, concurrency_limit=3)]
    ).pending
    assert [f.field for f in change.changes] == [
        "concurrency_limit",
        "paused",
        "schedule mfprefect-cron",
    ]
    assert [(s.op, s.want.active) for s in change.schedule_ops if s.want] == [("update", True)]


def test_a_new_cron_keeps_the_ui_active_flag_and_the_manifests_paused_is_only_initial() -> None:
    spec = _spec_leaving("schedule_flow", "paused", "schedule.active")
    live = _live_edited_in_ui(spec, paused=True)
    # The reviewer edits the manifest: a new cron, and paused flipped (an initial value only).
    from dataclasses import replace

    edited = _spec_leaving("schedule_flow", "paused", "schedule.active", paused=True)
    edited = replace(edited, schedules=(replace(edited.schedules[0], cron="30 7 * * *"),))
    (change,) = plan([edited], [live]).pending
    assert [f.field for f in change.changes] == ["schedule mfprefect-cron"]
    (schedule,) = change.schedule_ops
    op, want, have = schedule.op, schedule.want, schedule.have
    assert op == "update" and want is not None and have is not None
    assert (want.cron, want.active) == ("30 7 * * *", False)  # the UI's flag, sent back as it is
    assert "paused" not in {f.field for f in change.changes}

    # Only `paused` left to the UI: the schedule's flag is managed, and put back.
    paused_only = _spec_leaving("schedule_flow", "paused")
    (change,) = plan([paused_only], [_live_edited_in_ui(paused_only, paused=True)]).pending
    assert [f.field for f in change.changes] == ["schedule mfprefect-cron"]
    assert change.schedule_ops[0].want.active is True  # type: ignore[union-attr]


def test_a_new_deployment_takes_the_manifests_values_of_unmanaged_fields() -> None:
    spec = _spec_leaving("schedule_flow", "paused", "schedule.active", paused=True)
    (change,) = plan([spec], []).pending
    assert change.action == "create" and change.spec is not None
    assert change.spec.fields["paused"] is True and change.spec.schedules[0].active is False
    assert ("paused", True) in [(f.field, f.new) for f in change.changes]
    assert plan([spec], []).unmanaged == []


def test_a_ui_edit_of_an_unmanaged_field_does_not_make_a_saved_plan_stale() -> None:
    spec = _spec_leaving("schedule_flow", "paused", "schedule.active")
    before = plan([spec], [_live_edited_in_ui(spec, "a")], apply_set="a")
    reviewed = _saved(before)
    # Between the review and the merge, someone pauses the deployment and its schedule.
    after = plan([spec], [_live_edited_in_ui(spec, "a", paused=True)], apply_set="a")
    assert after.pending == [] and after.unmanaged[0].live is True
    reviewed.check_plan(after)
    # A managed field edited meanwhile still makes it stale.
    edited = _live_edited_in_ui(spec, "a", description="by hand")
    with pytest.raises(PlanRejected, match="the server changed"):
        reviewed.check_plan(plan([spec], [edited], apply_set="a"))
