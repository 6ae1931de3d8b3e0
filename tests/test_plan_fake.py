"""GitOps logic end to end without a server: the real plan and apply code (`apply.run`) against
FakePrefect, an in-memory fake of the Prefect calls they make (tests/fake_prefect.py).

Idempotence, field diffs, drift, prune and apply sets, conflicts and adoption, schedules and
automations, work pools, limits and variables with their markers, plan errors, saved plans, and
the races apply tolerates. The same behaviours against a real server are in test_gitops.py and
test_workspace.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from conftest import EXAMPLES
from fake_prefect import FakePrefect, http_error
from prefect.client.schemas.actions import (
    DeploymentScheduleCreate,
    GlobalConcurrencyLimitCreate,
    VariableCreate,
    WorkPoolCreate,
)
from prefect.client.schemas.schedules import CronSchedule
from prefect.workers.process import ProcessWorker
from ruamel.yaml import YAML

from mfprefect.deploy import apply, saved
from mfprefect.deploy.desired import DeploymentSpec, deployment_for
from mfprefect.deploy.plan import Plan
from mfprefect.deploy.resources import MARKER_TAG, marker_name
from mfprefect.errors import ManifestError, PlanRejected, RuntimeFailure
from mfprefect.kinds import Resource, resource_from_data
from mfprefect.manifest import from_data

POOL = "pool"
OWNER = "mfprefect"


@pytest.fixture(autouse=True)
def _user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USER", "mfp-test-user")  # @project user branches are named after it


@pytest.fixture
def fake() -> FakePrefect:
    """A server with one process pool that mfprefect does not own (made with the CLI, say)."""
    server = FakePrefect()
    template = ProcessWorker.get_default_base_job_template()
    asyncio.run(
        server.create_work_pool(
            WorkPoolCreate(name=POOL, type="process", base_job_template=template)
        )
    )
    server.writes.clear()
    return server


def _pipeline(
    example: str, edit: Callable[[dict[str, Any]], None] | None = None, **deployment: Any
) -> DeploymentSpec:
    """An example's manifest on POOL with its code at a path (so apply builds no package)."""
    path = EXAMPLES / f"{example}.yaml"
    data = YAML(typ="safe").load(path.read_text())
    data["deployment"].update({"work_pool": POOL, "code": {"kind": "path"}, **deployment})
    if edit is not None:
        edit(data)
    return deployment_for(from_data(data, str(path)), data)


def _resource(text: str) -> Resource:
    data = YAML(typ="safe").load(text)
    return resource_from_data(data, f"m/{data['kind']}.yaml")


def _workspace() -> list[Resource]:
    """The bundled pool `gpu`, limit `tag:mfprefect:gpu` and variable `model_bucket`."""
    paths = sorted((EXAMPLES / "workspace").glob("*.yaml"))
    return [resource_from_data(YAML(typ="safe").load(p.read_text()), str(p)) for p in paths]


def _no_package(spec: DeploymentSpec) -> Any:
    raise AssertionError(f"{spec.key}: code at a path needs no package")


def _apply(fake: FakePrefect, specs: list[DeploymentSpec], **options: Any) -> Plan:
    return apply.run(specs, client=fake, build_code=_no_package, **options)


def _plan(fake: FakePrefect, specs: list[DeploymentSpec], **options: Any) -> Plan:
    """`mfprefect plan`: the same code as apply, and it writes nothing."""
    before = list(fake.writes)
    result = _apply(fake, specs, dry_run=True, **options)
    assert fake.writes == before
    return result


def _actions(result: Plan) -> list[tuple[str, str]]:
    return [(c.action, c.label) for c in result.changes]


def _owned_automations(fake: FakePrefect) -> list[str]:
    return sorted(a.name for a in fake.automations.values() if OWNER in a.tags)


def test_an_apply_creates_everything_and_a_second_one_plans_and_writes_nothing(
    fake: FakePrefect,
) -> None:
    specs = [_pipeline("linear_flow"), _pipeline("schedule_flow"), _pipeline("trigger_flow")]
    said: list[str] = []
    first = _apply(fake, specs, resources=_workspace(), apply_set="a", echo=said.append)
    assert _actions(first) == [
        ("create", "work pool gpu"),
        ("create", "concurrency limit tag:mfprefect:gpu"),
        ("create", "variable model_bucket"),
        ("create", "deployment LinearFlow/LinearFlow"),
        ("create", "deployment ScheduleFlow/ScheduleFlow"),
        ("create", "deployment TriggerFlow/TriggerFlow"),
    ]
    assert said[0] == "[1/6] create work pool gpu" and len(said) == 6
    made = fake.deployment("ScheduleFlow")
    assert sorted(made.tags) == [OWNER, "mfprefect-project:-", "mfprefect-set:a"]
    assert made.work_pool_name == POOL and made.entrypoint == "mfprefect.runtime.deployed:pipeline"
    (schedule,) = made.schedules
    assert (schedule.slug, schedule.active) == ("mfprefect-cron", True)
    assert (schedule.schedule.cron, schedule.schedule.timezone) == (  # type: ignore[union-attr]
        "0 6 * * *",
        "Europe/Amsterdam",
    )
    assert _owned_automations(fake) == ["mfprefect TriggerFlow/TriggerFlow trigger 0"]
    (automation,) = fake.automations.values()
    assert automation.actions[0].deployment_id == fake.deployment("TriggerFlow").id  # type: ignore[union-attr]
    assert fake.work_pools["gpu"].concurrency_limit == 4
    assert fake.limits["tag:mfprefect:gpu"].limit == 2
    assert fake.variables["model_bucket"].value == {"bucket": "s3://models", "region": "eu-west-1"}
    markers = [v for v in fake.variables.values() if MARKER_TAG in v.tags]
    assert {m.name for m in markers} == {
        marker_name("WorkPool", "gpu"),
        marker_name("ConcurrencyLimit", "tag:mfprefect:gpu"),
    }

    fake.writes.clear()
    again = _apply(fake, specs, resources=_workspace(), apply_set="a", echo=said.append)
    assert again.changes == [] and again.text() == "No changes: the server matches the manifests."
    assert fake.writes == []
    assert _plan(fake, specs, resources=_workspace(), apply_set="a").pending == []


def test_a_changed_field_shows_its_diff_and_apply_writes_only_that(fake: FakePrefect) -> None:
    _apply(fake, [_pipeline("linear_flow")])
    fake.writes.clear()

    def describe(data: dict[str, Any]) -> None:
        data["flow"]["description"] = "A new description."

    edited = [_pipeline("linear_flow", describe, concurrency_limit=2)]
    planned = _plan(fake, edited)
    (change,) = planned.pending
    assert [f.field for f in change.changes] == [
        "description",
        "concurrency_limit",
        "manifest.deployment.concurrency_limit",
        "manifest.flow.description",
    ]
    text = planned.text().splitlines()
    assert text[0] == "~ update deployment LinearFlow/LinearFlow"
    assert (
        '    description: "A three-step linear flow: start -> middle -> end." -> "A new description."'
        in text
    )
    assert "    concurrency_limit: null -> 2" in text
    assert text[-1] == "Plan: 0 to create, 1 to update, 0 to delete."

    _apply(fake, edited)
    # One PATCH with the changed fields, the manifest it carries, and the version.
    assert fake.writes == [
        "update_deployment LinearFlow "
        "['concurrency_limit', 'description', 'job_variables', 'version']"
    ]
    made = fake.deployment("LinearFlow")
    assert made.description == "A new description."
    assert made.global_concurrency_limit is not None and made.global_concurrency_limit.limit == 2
    fake.writes.clear()
    assert _apply(fake, edited).changes == [] and fake.writes == []


def test_drift_made_on_the_server_is_shown_and_undone(fake: FakePrefect) -> None:
    specs = [_pipeline("schedule_flow")]
    _apply(fake, specs)
    fake.edit_deployment("ScheduleFlow", paused=True, description="by hand")
    fake.edit_schedule("ScheduleFlow", "mfprefect-cron", active=False)
    fake.writes.clear()

    drift = _plan(fake, specs)
    (change,) = drift.pending
    assert [(f.field, f.old, f.new) for f in change.changes] == [
        ("description", "by hand", "A flow scheduled daily at 06:00 Amsterdam time."),
        ("paused", True, False),
        (
            "schedule mfprefect-cron",
            "0 6 * * * (Europe/Amsterdam, paused)",
            "0 6 * * * (Europe/Amsterdam, active)",
        ),
    ]
    schedule_id = fake.deployment("ScheduleFlow").schedules[0].id
    _apply(fake, specs)
    assert fake.writes == [
        "update_deployment ScheduleFlow ['description', 'paused', 'version']",
        "update_schedule ScheduleFlow mfprefect-cron",
    ]
    undone = fake.deployment("ScheduleFlow")
    assert undone.paused is False and undone.schedules[0].active is True
    assert undone.schedules[0].id == schedule_id  # updated in place: its runs are kept
    assert _plan(fake, specs).changes == []

    # A job variable set in the UI; mfprefect's own environment is not the user's to see.
    jv = fake.deployment("ScheduleFlow").job_variables
    fake.edit_deployment("ScheduleFlow", job_variables={**jv, "stream_output": False})
    (change,) = _plan(fake, specs).pending
    assert [(f.field, f.old, f.new) for f in change.changes] == [
        ("job_variables", {"stream_output": False}, {})
    ]
    _apply(fake, specs)
    assert fake.deployment("ScheduleFlow").job_variables == jv

    # A schedule switched off and nothing else: the deployment itself is not written.
    fake.edit_schedule("ScheduleFlow", "mfprefect-cron", active=False)
    fake.writes.clear()
    _apply(fake, specs)
    assert fake.writes == ["update_schedule ScheduleFlow mfprefect-cron"]


def test_prune_deletes_only_what_this_set_owns_and_no_longer_declares(fake: FakePrefect) -> None:
    linear, trigger, switch = (
        _pipeline("linear_flow"),
        _pipeline("trigger_flow"),
        _pipeline("switch_flow"),
    )
    _apply(fake, [linear, trigger], apply_set="a")
    _apply(fake, [switch], apply_set="b")
    _apply(fake, [_pipeline("split_join_flow")])  # owned, in no set
    # Not mfprefect's, though named like a pipeline of set a and tagged with the set.
    hand_made = asyncio.run(fake.create_flow_from_name("HandMade"))
    theirs = ["mfprefect-set:a"]
    asyncio.run(fake.create_deployment(hand_made, "LinearFlow", work_pool_name=POOL, tags=theirs))
    fake.writes.clear()

    pruned = _apply(fake, [linear], apply_set="a", prune=True)
    assert _actions(pruned) == [("delete", "deployment TriggerFlow/TriggerFlow")]
    assert pruned.notes == [
        "1 mfprefect deployment(s) in no apply set are left alone by prune: "
        "SplitJoinFlow/SplitJoinFlow (apply their manifests once with a set, or `mfprefect "
        "delete` them)"
    ]
    # Its automation goes with it (Prefect would keep it, pointing at nothing).
    assert fake.writes == [
        "delete_deployment TriggerFlow",
        "delete_automation mfprefect TriggerFlow/TriggerFlow trigger 0",
    ]
    left = sorted(f"{fake.flows[d.flow_id].name}/{d.name}" for d in fake.deployments.values())
    assert left == [
        "HandMade/LinearFlow",
        "LinearFlow/LinearFlow",
        "SplitJoinFlow/SplitJoinFlow",
        "SwitchFlow/SwitchFlow",
    ]
    # A set with nothing declared prunes all its own and nothing else.
    assert _actions(_plan(fake, [], apply_set="b", prune=True)) == [
        ("delete", "deployment SwitchFlow/SwitchFlow")
    ]
    assert _plan(fake, [], apply_set="c", prune=True).pending == []
    with pytest.raises(RuntimeFailure, match="prune needs an apply set"):
        _plan(fake, [linear], prune=True)


def test_an_unowned_object_of_the_same_name_is_a_conflict_until_adopted(fake: FakePrefect) -> None:
    linear = _pipeline("linear_flow")
    theirs = asyncio.run(fake.create_flow_from_name(linear.flow_name))
    asyncio.run(fake.create_deployment(theirs, linear.name, work_pool_name=POOL, tags=["team"]))
    asyncio.run(fake.create_work_pool(WorkPoolCreate(name="gpu", type="process")))
    limit = GlobalConcurrencyLimitCreate(name="tag:mfprefect:gpu", limit=1)
    asyncio.run(fake.create_global_concurrency_limit(limit))
    asyncio.run(fake.create_variable(VariableCreate(name="model_bucket", value="x", tags=[])))
    workspace = _workspace()
    fake.writes.clear()

    planned = _plan(fake, [linear], resources=workspace, apply_set="a")
    assert _actions(planned) == [
        ("conflict", "work pool gpu"),
        ("conflict", "concurrency limit tag:mfprefect:gpu"),
        ("conflict", "variable model_bucket"),
        ("conflict", "deployment LinearFlow/LinearFlow"),
    ]
    assert planned.text().splitlines()[0] == (
        "! work pool gpu: exists and is not managed by mfprefect (--adopt takes it over)"
    )
    with pytest.raises(RuntimeFailure, match="not managed by mfprefect already exist") as refused:
        _apply(fake, [linear], resources=workspace, apply_set="a")
    assert "--adopt" in (refused.value.hint or "") and fake.writes == []

    adopted = _apply(fake, [linear], resources=workspace, apply_set="a", adopt=True)
    assert [c.action for c in adopted.changes] == ["update"] * 4
    assert fake.writes[0] == f"create_variable {marker_name('WorkPool', 'gpu')}"  # marker first
    assert OWNER in fake.deployment("LinearFlow").tags
    assert fake.work_pools["gpu"].description == "GPU machines (managed by mfprefect)"
    assert fake.limits["tag:mfprefect:gpu"].limit == 2
    assert OWNER in fake.variables["model_bucket"].tags
    assert _plan(fake, [linear], resources=workspace, apply_set="a").changes == []


def test_schedules_are_added_changed_and_removed_by_slug(fake: FakePrefect) -> None:
    def cron(value: str | None) -> Callable[[dict[str, Any]], None]:
        def edit(data: dict[str, Any]) -> None:
            data["schedule"] = None if value is None else {"cron": value, "timezone": "UTC"}

        return edit

    _apply(fake, [_pipeline("schedule_flow", cron(None))])
    assert fake.deployment("ScheduleFlow").schedules == []
    fake.writes.clear()

    added = _apply(fake, [_pipeline("schedule_flow", cron("0 6 * * *"))])
    assert ("schedule mfprefect-cron", None, "0 6 * * * (UTC, active)") in [
        (f.field, f.old, f.new) for f in added.pending[0].changes
    ]
    assert [s.op for s in added.pending[0].schedule_ops] == ["create"]
    assert "create_schedules ScheduleFlow ['mfprefect-cron']" in fake.writes
    first = fake.deployment("ScheduleFlow").schedules[0]

    changed = _apply(fake, [_pipeline("schedule_flow", cron("30 7 * * *"))])
    assert [s.op for s in changed.pending[0].schedule_ops] == ["update"]
    (now,) = fake.deployment("ScheduleFlow").schedules
    assert now.id == first.id and now.schedule.cron == "30 7 * * *"  # type: ignore[union-attr]

    # One made by hand beside ours is not the manifest's: removed with ours.
    deployment_id = fake.deployment("ScheduleFlow").id
    other = DeploymentScheduleCreate(schedule=CronSchedule(cron="1 1 * * *"), slug="by-hand")
    asyncio.run(fake.create_deployment_schedules(deployment_id, [other]))
    removed = _apply(fake, [_pipeline("schedule_flow", cron(None))])
    assert sorted(str(s.slug) for s in removed.pending[0].schedule_ops) == [
        "by-hand",
        "mfprefect-cron",
    ]
    assert {s.op for s in removed.pending[0].schedule_ops} == {"delete"}
    assert fake.deployment("ScheduleFlow").schedules == []


def test_automations_are_upserted_in_place_by_name_and_removed(fake: FakePrefect) -> None:
    def event(name: str | None) -> Callable[[dict[str, Any]], None]:
        def edit(data: dict[str, Any]) -> None:
            data["triggers"] = (
                [] if name is None else [{"kind": "event", "event": name, "parameters": {}}]
            )

        return edit

    _apply(fake, [_pipeline("trigger_flow")])
    (ident,) = fake.automations
    fake.writes.clear()

    changed = _apply(fake, [_pipeline("trigger_flow", event("data.moved"))])
    (op,) = changed.pending[0].automation_ops
    assert (op.op, op.name) == ("update", "mfprefect TriggerFlow/TriggerFlow trigger 0")
    assert list(fake.automations) == [ident]  # the same automation, its history kept
    assert fake.automations[ident].trigger.expect == {"data.moved"}  # type: ignore[union-attr]

    # A copy of ours (a create the client re-sent, say): one of them goes, always the same one.
    copy = asyncio.run(fake.create_automation(fake.automations[ident]))
    kept, extra = sorted([str(ident), str(copy)])
    copies = _plan(fake, [_pipeline("trigger_flow", event("data.moved"))])
    (change,) = copies.pending
    assert [(o.op, o.have.id if o.have else None) for o in change.automation_ops] == [
        ("delete", extra)
    ]
    _apply(fake, [_pipeline("trigger_flow", event("data.moved"))])
    assert [str(i) for i in fake.automations] == [kept]

    removed = _apply(fake, [_pipeline("trigger_flow", event(None))])
    assert [o.op for o in removed.pending[0].automation_ops] == ["delete"]
    assert fake.automations == {}

    added = _apply(fake, [_pipeline("trigger_flow")])
    assert [o.op for o in added.pending[0].automation_ops] == ["create"]
    (automation,) = fake.automations.values()
    assert automation.actions[0].deployment_id == fake.deployment("TriggerFlow").id  # type: ignore[union-attr]
    assert automation.trigger.expect == {"data.ready"}  # type: ignore[union-attr]


def test_pools_limits_and_variables_are_created_updated_and_pruned_with_their_markers(
    fake: FakePrefect,
) -> None:
    pipeline = _pipeline("linear_flow", work_pool="gpu")
    _apply(fake, [pipeline], resources=_workspace(), apply_set="ws")
    other_set = _resource(
        "apiVersion: mfprefect/v1\nkind: Variable\nmetadata: {name: b_only}\nspec: {value: 1}\n"
    )
    _apply(fake, [], resources=[other_set], apply_set="b")
    fake.edit_limit("tag:mfprefect:gpu", limit=9)
    fake.edit_pool("gpu", is_paused=True)
    fake.edit_variable("model_bucket", value="edited")
    fake.writes.clear()

    drift = _plan(fake, [pipeline], resources=_workspace(), apply_set="ws")
    assert [(c.label, [(f.field, f.old, f.new) for f in c.changes]) for c in drift.pending] == [
        ("work pool gpu", [("paused", True, False)]),
        ("concurrency limit tag:mfprefect:gpu", [("limit", 9, 2)]),
        (
            "variable model_bucket",
            [("value", "edited", {"bucket": "s3://models", "region": "eu-west-1"})],
        ),
    ]
    _apply(fake, [pipeline], resources=_workspace(), apply_set="ws")
    assert fake.writes == [
        "update_work_pool gpu ['is_paused']",
        "update_limit tag:mfprefect:gpu ['limit']",
        "update_variable model_bucket",
    ]

    # A job variable's new default reaches the pool's template, its job configuration kept.
    pool = _resource(
        "apiVersion: mfprefect/v1\nkind: WorkPool\nmetadata: {name: gpu}\n"
        "spec: {type: process, description: GPU machines (managed by mfprefect),"
        " concurrency_limit: 4, job_variables: {stream_output: false}}\n"
    )
    _apply(fake, [pipeline], resources=[pool], apply_set="ws", prune=True)
    template = fake.work_pools["gpu"].base_job_template
    assert template["variables"]["properties"]["stream_output"]["default"] is False
    assert "command" in template["job_configuration"]
    # The limit and the variable were pruned, the limit's marker with it; the pool's stays.
    assert fake.limits == {}
    assert sorted(fake.variables) == ["b_only", marker_name("WorkPool", "gpu")]

    # Moving to another set rewrites the pool's marker (the pool itself is not written) and
    # the deployment's set tag.
    fake.writes.clear()
    moved = _apply(fake, [pipeline], resources=[pool], apply_set="other")
    assert [(f.field, f.old, f.new) for f in moved.changes[0].changes] == [
        ("apply_set", "ws", "other")
    ]
    assert fake.writes == [
        f"update_variable {marker_name('WorkPool', 'gpu')}",
        "update_deployment LinearFlow ['tags', 'version']",
    ]
    assert "mfprefect-set:other" in fake.variables[marker_name("WorkPool", "gpu")].tags

    # Pipeline and pool pruned together: the deployment goes first, the pool after it.
    fake.writes.clear()
    _apply(fake, [], apply_set="other", prune=True)
    assert fake.writes == [
        "delete_deployment LinearFlow",
        "delete_work_pool gpu",
        f"delete_variable {marker_name('WorkPool', 'gpu')}",
    ]


def test_plan_errors_are_found_before_anything_is_written(fake: FakePrefect) -> None:
    nowhere = _pipeline("linear_flow", work_pool="no-such-pool")
    with pytest.raises(ManifestError) as missing:
        _plan(fake, [nowhere])
    (problem,) = missing.value.diagnostics
    assert problem.rule == "deployment.work-pool"
    assert "neither the server nor the manifests have it" in problem.message

    typo = _pipeline("linear_flow", job_variables={"stream_outptu": True})
    with pytest.raises(ManifestError) as unknown:
        _apply(fake, [typo])
    (problem,) = unknown.value.diagnostics
    assert problem.rule == "deployment.job-variable"
    assert "has no job variable `stream_outptu`" in problem.message
    assert "stream_output" in problem.message  # did you mean
    assert fake.writes == []

    # The pool a pipeline still uses cannot be pruned from under it.
    on_gpu = _pipeline("linear_flow", work_pool="gpu")
    _apply(fake, [on_gpu], resources=_workspace(), apply_set="ws")
    fake.writes.clear()
    with pytest.raises(ManifestError) as deleted:
        _apply(fake, [on_gpu], apply_set="ws", prune=True)
    assert "this plan deletes it" in deleted.value.diagnostics[0].message
    assert fake.writes == [] and "gpu" in fake.work_pools


def _saved(result: Plan) -> saved.SavedPlan:
    return saved.SavedPlan(
        paths=("m",),
        manifests={},
        server=saved.server_digest("http://fake-prefect/api"),
        apply_set="a",
        prune=True,
        adopt=False,
        observed=result.observed,
        plan=result.as_json(),
    )


@pytest.mark.parametrize(
    "edit",
    [
        lambda fake: fake.edit_deployment("LinearFlow", description="by hand"),
        lambda fake: fake.edit_pool("gpu", concurrency_limit=1),
        lambda fake: fake.edit_variable("model_bucket", tags=[OWNER, "mfprefect-set:a"]),
        lambda fake: asyncio.run(
            fake.create_variable(VariableCreate(name="model_bucket_2", value=1, tags=[OWNER]))
        ),
    ],
    ids=["deployment", "pool", "variable", "new-owned-variable"],
)
def test_a_saved_plan_goes_stale_when_the_server_changes(
    fake: FakePrefect, edit: Callable[[FakePrefect], None]
) -> None:
    specs = [_pipeline("linear_flow")]
    _apply(fake, specs, resources=_workspace(), apply_set="a")
    specs = [_pipeline("linear_flow", paused=True)]
    reviewed = _saved(_plan(fake, specs, resources=_workspace(), apply_set="a", prune=True))
    fresh = _plan(fake, specs, resources=_workspace(), apply_set="a", prune=True)
    reviewed.check_plan(fresh)  # nothing changed yet

    edit(fake)
    fake.writes.clear()
    with pytest.raises(PlanRejected, match="the server changed since the plan was made"):
        _apply(
            fake,
            specs,
            resources=_workspace(),
            apply_set="a",
            prune=True,
            expect=reviewed.check_plan,
        )
    assert fake.writes == []


def test_a_ui_edit_of_a_field_left_to_the_ui_keeps_a_saved_plan_good(fake: FakePrefect) -> None:
    specs = [_pipeline("schedule_flow", unmanaged=["paused", "schedule.active"])]
    _apply(fake, specs, apply_set="a")
    edited = [_pipeline("schedule_flow", unmanaged=["paused", "schedule.active"], tags=["new"])]
    reviewed = _saved(_plan(fake, edited, apply_set="a", prune=True))
    # Between review and merge, someone pauses the deployment and its schedule in the UI.
    fake.edit_deployment("ScheduleFlow", paused=True)
    fake.edit_schedule("ScheduleFlow", "mfprefect-cron", active=False)
    fake.writes.clear()
    applied = _apply(fake, edited, apply_set="a", prune=True, expect=reviewed.check_plan)
    assert [u.field for u in applied.unmanaged] == ["paused", "schedule.active"]
    assert fake.writes == ["update_deployment ScheduleFlow ['job_variables', 'tags', 'version']"]
    kept = fake.deployment("ScheduleFlow")
    assert kept.paused is True and kept.schedules[0].active is False


def test_apply_converges_when_another_apply_writes_between_its_plan_and_its_writes(
    fake: FakePrefect,
) -> None:
    def unscheduled(data: dict[str, Any]) -> None:
        data["schedule"] = None

    def triggered(data: dict[str, Any]) -> None:
        data["triggers"] = [{"kind": "event", "event": "data.ready", "parameters": {}}]

    before = [_pipeline("schedule_flow", unscheduled), _pipeline("trigger_flow")]
    _apply(fake, before, apply_set="a")
    wanted = [_pipeline("schedule_flow", triggered), _pipeline("trigger_on_finish_flow")]

    def race(result: Plan) -> None:
        """The same apply from another CI job, done first: the deployment this one creates,
        the schedule and automations it adds exist, the deployment it prunes is gone."""
        assert _actions(result) == [
            ("update", "deployment ScheduleFlow/ScheduleFlow"),
            ("create", "deployment TriggerOnFinishFlow/TriggerOnFinishFlow"),
            ("delete", "deployment TriggerFlow/TriggerFlow"),
        ]
        with ThreadPoolExecutor(1) as other:  # apply's own event loop is running here
            other.submit(_apply, fake, wanted, apply_set="a", prune=True).result()

    _apply(fake, wanted, apply_set="a", prune=True, expect=race)
    (schedule,) = fake.deployment("ScheduleFlow").schedules
    assert schedule.schedule.cron == "0 6 * * *"  # type: ignore[union-attr]
    assert sorted(d.name for d in fake.deployments.values()) == [
        "ScheduleFlow",
        "TriggerOnFinishFlow",
    ]
    assert _owned_automations(fake) == [
        "mfprefect ScheduleFlow/ScheduleFlow trigger 0",
        "mfprefect TriggerOnFinishFlow/TriggerOnFinishFlow trigger 0",
    ]
    assert _plan(fake, wanted, apply_set="a", prune=True).changes == []


def test_a_server_error_is_one_line_naming_the_request(
    fake: FakePrefect, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refuse(*args: Any, **kwargs: Any) -> None:
        raise http_error(500, "PATCH", "/deployments/x", "database is on fire")

    _apply(fake, [_pipeline("linear_flow")])
    monkeypatch.setattr(fake, "update_deployment", refuse)
    with pytest.raises(RuntimeFailure) as failed:
        _apply(fake, [_pipeline("linear_flow", paused=True)])
    assert failed.value.message == (
        "apply failed: PATCH /api/deployments/x answered 500 Internal Server Error: "
        "database is on fire"
    )


def test_delete_removes_a_sets_objects_deployments_first_and_nothing_of_other_sets(
    fake: FakePrefect,
) -> None:
    _apply(
        fake, [_pipeline("trigger_flow", work_pool="gpu")], resources=_workspace(), apply_set="a"
    )
    _apply(fake, [_pipeline("linear_flow")], apply_set="b")
    fake.writes.clear()
    removed = apply.delete([], apply_set="a", client=fake)
    assert removed == [
        "deployment TriggerFlow/TriggerFlow",
        "variable model_bucket",
        "concurrency limit tag:mfprefect:gpu",
        "work pool gpu",
    ]
    assert fake.writes[:2] == [
        "delete_deployment TriggerFlow",
        "delete_automation mfprefect TriggerFlow/TriggerFlow trigger 0",
    ]
    assert [d.name for d in fake.deployments.values()] == ["LinearFlow"]
    assert sorted(fake.work_pools) == [POOL] and fake.limits == {} and fake.automations == {}
    assert not [v for v in fake.variables.values() if MARKER_TAG in v.tags]
