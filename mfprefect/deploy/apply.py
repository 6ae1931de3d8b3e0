"""Read live state, plan, apply the plan: the only module that writes deployments to a Prefect
server (work pools, limits and variables are written by apply_workspace, which it calls; flow
runs are started by `trigger`)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

from ..errors import ManifestError, MfprefectError, RuntimeFailure
from ..kinds import LABELS, WORK_POOL, Resource
from . import apply_workspace
from .code import CodeRef, code_env, package_ref
from .desired import OWNER_TAG, AutomationSpec, DeploymentSpec, ScheduleSpec
from .plan import (
    Change,
    LiveAutomation,
    LiveDeployment,
    LiveSchedule,
    Plan,
    ScheduleOp,
    plan,
)
from .resources import ResourceSpec, spec_for

if TYPE_CHECKING:
    from prefect.client.schemas.responses import DeploymentResponse
    from prefect.events.schemas.automations import Automation, AutomationCore

    from .server import PrefectAPI

# Stores a deployment's code package and says where it is (see mfprefect.package).
BuildCode = Callable[[DeploymentSpec], CodeRef]

DEPLOYMENT_TAG_PREFIX = "mfprefect-deployment:"

Echo = Callable[[str], None]


def _unreachable(exc: BaseException) -> RuntimeFailure:
    import os

    url = os.environ.get("PREFECT_API_URL", "the Prefect server")
    return RuntimeFailure(
        f"cannot reach {url}: {type(exc).__name__}: {' '.join(str(exc).split())[:160]}",
        hint="check PREFECT_API_URL and that the server is up (`prefect server start`)",
    )


def run(
    desired: Sequence[DeploymentSpec],
    *,
    prune: bool = False,
    adopt: bool = False,
    apply_set: str | None = None,
    dry_run: bool = False,
    echo: Echo = lambda _: None,
    build_code: BuildCode | None = None,
    expect: Callable[[Plan], None] | None = None,
    resources: Sequence[Resource] = (),
    client: PrefectAPI | None = None,
) -> Plan:
    """Plan against the server and, unless dry_run, apply; raise RuntimeFailure on any error.

    `expect` sees the plan before anything is written and may refuse it (a saved plan's check).
    Code packages are built and stored (`build_code`) before anything is written to the server,
    so a package that cannot be stored leaves every deployment as it was. The server is the one
    PREFECT_API_URL names, unless a `client` is given (the tests' in-memory fake)."""
    work = functools.partial(
        _run,
        desired=desired,
        prune=prune,
        adopt=adopt,
        apply_set=apply_set,
        dry_run=dry_run,
        echo=echo,
        build=build_code or store_package,
        expect=expect,
        resources=resources,
    )
    result: Plan = _guarded(
        lambda: _connected(work, client),
        what="apply failed",
        hint="run `mfprefect apply` again: it completes what is missing",
    )
    return result


def _is_connection_error(exc: BaseException) -> bool:
    import httpx

    # TransportError: refused, reset, timed out, or hung up mid-answer (a server killed mid-apply).
    return isinstance(exc, (httpx.TransportError, OSError))


def _is_status(exc: BaseException, *codes: int) -> bool:
    """True if exc is the server answering one of these HTTP status codes."""
    import httpx
    from prefect.exceptions import ObjectNotFound

    if isinstance(exc, ObjectNotFound):
        return 404 in codes
    return isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code in codes


def _describe(exc: BaseException) -> str:
    """One line for a failed server call: which request got which answer, else the exception."""
    import httpx
    from prefect.exceptions import ObjectNotFound

    if isinstance(exc, ObjectNotFound) and isinstance(exc.http_exc, httpx.HTTPStatusError):
        exc = exc.http_exc
    if isinstance(exc, httpx.HTTPStatusError):
        response = exc.response
        try:
            detail = response.json().get("detail", "")
        except (ValueError, AttributeError):
            detail = response.text
        said = f"{exc.request.method} {exc.request.url.path} answered {response.status_code}"
        said += f" {response.reason_phrase}" if response.reason_phrase else ""
        return said + (f": {detail}" if detail else "")
    return f"{type(exc).__name__}: {exc}"


def store_package(spec: DeploymentSpec) -> CodeRef:
    """Build and store a deployment's code package (runs the flow's own CLI: apply only)."""
    from ..package import build_for

    assert spec.source is not None and spec.code is not None
    return package_ref(build_for(spec.source, spec.code.digest))


Answer = TypeVar("Answer")


async def _connected(
    use: Callable[[PrefectAPI], Awaitable[Answer]], client: PrefectAPI | None = None
) -> Answer:
    """`use` with this client, else with one of the server PREFECT_API_URL names."""
    if client is not None:
        return await use(client)
    from prefect.client.orchestration import get_client

    async with get_client() as connected:
        return await use(connected)


async def _run(
    client: PrefectAPI,
    desired: Sequence[DeploymentSpec],
    *,
    prune: bool,
    adopt: bool,
    apply_set: str | None,
    dry_run: bool,
    echo: Echo,
    build: BuildCode,
    expect: Callable[[Plan], None] | None,
    resources: Sequence[Resource],
) -> Plan:
    declared = await _resource_specs(resources)
    live = await read_live(client, desired)
    live_resources, server_pools = await apply_workspace.read_live(client, declared)
    await _check_job_variables(client, desired, declared)
    result = plan(
        desired,
        live,
        prune=prune,
        adopt=adopt,
        apply_set=apply_set,
        resources=declared,
        live_resources=live_resources,
    )
    apply_workspace.check(result.changes, declared, desired, server_pools)
    if expect is not None:
        expect(result)
    if result.conflicts and not dry_run:
        keys = ", ".join(c.label for c in result.conflicts)
        raise RuntimeFailure(
            f"object(s) not managed by mfprefect already exist: {keys}",
            hint="rename yours, delete theirs, or pass --adopt to take them over",
        )
    if not dry_run:
        code = await _store_packages(result.pending, build, echo)
        total = len(result.pending)
        for number, change in enumerate(result.pending, start=1):
            echo(f"[{number}/{total}] {change.action} {change.label}")
            if change.kind == "deployment":
                await _apply_one(client, change, code.get(change.key))
            else:
                await apply_workspace.apply_one(client, change)
    return result


async def _resource_specs(resources: Sequence[Resource]) -> list[ResourceSpec]:
    """The manifests' pools, limits and variables; pools with their type's job template."""
    types = [str(r.spec["type"]) for r in resources if r.kind == WORK_POOL]
    templates = await apply_workspace.base_templates(types) if types else {}
    return [
        spec_for(r, templates.get(str(r.spec["type"])) if r.kind == WORK_POOL else None)
        for r in resources
    ]


# Package builds run at once, this many at a time (each is a short-lived `python flow.py`).
PARALLEL_BUILDS = 4


async def _store_packages(
    pending: Sequence[Change], build: BuildCode, echo: Echo
) -> dict[str, CodeRef]:
    """Build and store every package the pending changes need, before anything is written to
    the server. Manifests of one flow with one runtime share a package."""
    wanted: dict[str, DeploymentSpec] = {}
    keys: dict[str, str] = {}
    for change in pending:
        if _needs_code(change):
            assert change.spec is not None
            same = _package_identity(change.spec)
            wanted.setdefault(same, change.spec)
            keys[change.key] = same
    slots = asyncio.Semaphore(PARALLEL_BUILDS)

    async def one(spec: DeploymentSpec) -> CodeRef:
        async with slots:
            echo(f"store code package for {spec.key} ({spec.code.describe()})")  # type: ignore[union-attr]
            return await asyncio.to_thread(build, spec)

    built = dict(zip(wanted, await asyncio.gather(*(one(s) for s in wanted.values())), strict=True))
    return {key: built[same] for key, same in keys.items()}


def _package_identity(spec: DeploymentSpec) -> str:
    """What a package depends on: the code, where it is stored, and the baked-in configs."""
    import json

    assert spec.code is not None
    source = spec.manifest
    return json.dumps(
        [
            spec.code.digest,
            spec.code.flow_dir,
            spec.code.flow_file,
            source.get("flow", {}).get("class"),
            source.get("runtime"),
            source.get("configs"),
        ],
        sort_keys=True,
        default=str,
    )


def _needs_code(change: Change) -> bool:
    """A package is stored for a new deployment and for one whose code changed."""
    spec = change.spec
    if spec is None or spec.code is None or spec.code_ref is not None:
        return False
    return change.action == "create" or any(f.field == "code" for f in change.changes)


async def _check_job_variables(
    client: PrefectAPI, desired: Sequence[DeploymentSpec], declared: Sequence[ResourceSpec] = ()
) -> None:
    """Every job variable a manifest sets must be one its work pool's job template declares
    (the template a WorkPool manifest gives it, else the server's pool's)."""
    from ..diagnostics import did_you_mean
    from ..manifest import diagnostic_at
    from .plan import user_job_variables
    from .resources import template_variables

    templates: dict[str, set[str] | None] = {
        r.name: set(template_variables(r.base_template)) | set(r.declared)
        for r in declared
        if r.kind == WORK_POOL and r.base_template is not None
    }
    problems = []
    for spec in desired:
        given = user_job_variables(spec.fields.get("job_variables"))
        pool = str(spec.fields.get("work_pool_name"))
        if not given:
            continue
        if pool not in templates:
            templates[pool] = await _pool_variables(client, pool)
        known = templates[pool]
        if known is None:
            continue  # no such pool: apply says so before writing anything
        for name in given:
            if name in known:
                continue
            message = f"work pool `{pool}` has no job variable `{name}`" + (
                did_you_mean(name, sorted(known)) or f" (it has: {', '.join(sorted(known))})"
            )
            path = spec.source.path if spec.source is not None else None
            problems.append(
                diagnostic_at(
                    path,
                    ("deployment", "job_variables", name),
                    "deployment.job-variable",
                    message,
                    spec.key,
                )
            )
    if problems:
        raise ManifestError(
            f"{len(problems)} problem(s) in the manifests; nothing was applied", problems
        )


async def _pool_variables(client: PrefectAPI, pool: str) -> set[str] | None:
    from prefect.exceptions import ObjectNotFound

    try:
        found = await client.read_work_pool(pool)
    except ObjectNotFound:
        return None
    template = found.base_job_template or {}
    return set(((template.get("variables") or {}).get("properties") or {}).keys())


async def read_live(client: PrefectAPI, desired: Sequence[DeploymentSpec]) -> list[LiveDeployment]:
    """Every owned deployment, plus any (owned or not) with a desired name; a few batched reads."""
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterName,
        DeploymentFilterTags,
        FlowFilter,
        FlowFilterId,
    )

    found: dict[str, DeploymentResponse] = {}
    offset = 0
    while True:
        page = await client.read_deployments(
            deployment_filter=DeploymentFilter(tags=DeploymentFilterTags(all_=[OWNER_TAG])),
            limit=200,
            offset=offset,
        )
        found.update({str(d.id): d for d in page})
        if len(page) < 200:
            break
        offset += 200
    names = sorted({spec.name for spec in desired})
    for start in range(0, len(names), 200):
        page = await client.read_deployments(
            deployment_filter=DeploymentFilter(
                name=DeploymentFilterName(any_=names[start : start + 200])
            )
        )
        found.update({str(d.id): d for d in page})
    flow_ids = sorted({d.flow_id for d in found.values()}, key=str)
    flows = {}
    if flow_ids:
        for flow in await client.read_flows(flow_filter=FlowFilter(id=FlowFilterId(any_=flow_ids))):
            flows[flow.id] = flow.name
    automations: dict[str, list[LiveAutomation]] = {}
    for automation in await _owned_automations(client, OWNER_TAG):
        tags = list(getattr(automation, "tags", []) or [])
        for tag in tags:
            if tag.startswith(DEPLOYMENT_TAG_PREFIX):
                automations.setdefault(tag[len(DEPLOYMENT_TAG_PREFIX) :], []).append(
                    _live_automation(automation)
                )
    lives = []
    for deployment in found.values():
        live = _live(deployment, flows.get(deployment.flow_id, "?"))
        lives.append(replace(live, automations=tuple(automations.get(live.key, []))))
    return lives


async def _owned_automations(client: PrefectAPI, *tags: str) -> list[Automation]:
    """Every automation carrying all these tags, page by page: the server caps a page at 200."""
    from prefect.client.schemas.sorting import AutomationSort
    from prefect.events.filters import AutomationFilter, AutomationFilterTags

    wanted = AutomationFilter(tags=AutomationFilterTags(all_=list(tags)))
    found: dict[str, Automation] = {}
    offset = 0
    while True:
        # Newest first: an automation made meanwhile shifts the pages down (seen twice, kept
        # once by id) rather than up (skipped).
        page = await client.read_automations(
            automations=wanted, sort=AutomationSort.CREATED_DESC, limit=200, offset=offset
        )
        found.update({str(a.id): a for a in page})
        if len(page) < 200:
            return list(found.values())
        offset += 200


def _live_automation(automation: Automation) -> LiveAutomation:
    trigger: Any = automation.trigger  # an EventTrigger: the only kind mfprefect makes
    related = trigger.model_dump(mode="json").get("match_related") or {}
    if isinstance(related, list):
        related = related[0] if len(related) == 1 else {}
    view = {
        "expect": sorted(trigger.expect),
        "match_related": related,
        "posture": getattr(trigger.posture, "value", trigger.posture),
        "threshold": trigger.threshold,
        "within": int(trigger.within.total_seconds()),
    }
    actions = list(automation.actions or [])
    parameters = getattr(actions[0], "parameters", None) if actions else None
    return LiveAutomation(
        str(automation.id), automation.name, view, parameters, bool(automation.enabled)
    )


def _live(deployment: DeploymentResponse, flow_name: str) -> LiveDeployment:
    limit = getattr(deployment, "global_concurrency_limit", None)
    fields = {
        "description": deployment.description,
        "tags": list(deployment.tags or []),
        "work_pool_name": deployment.work_pool_name,
        "work_queue_name": deployment.work_queue_name,
        "parameters": dict(deployment.parameters or {}),
        "parameter_openapi_schema": deployment.parameter_openapi_schema,
        "enforce_parameter_schema": deployment.enforce_parameter_schema,
        "job_variables": dict(deployment.job_variables or {}),
        "concurrency_limit": limit.limit if limit is not None else None,
        "paused": deployment.paused,
        "entrypoint": deployment.entrypoint,
        "path": deployment.path,
        "pull_steps": deployment.pull_steps,
        "version": deployment.version,
    }
    schedules = tuple(
        LiveSchedule(
            id=str(s.id),
            slug=s.slug,
            cron=getattr(s.schedule, "cron", None),
            timezone=getattr(s.schedule, "timezone", None),
            active=bool(s.active),
        )
        for s in deployment.schedules or []
    )
    return LiveDeployment(str(deployment.id), flow_name, deployment.name, fields, schedules)


def _with_code(fields: dict[str, Any], ref: CodeRef) -> dict[str, Any]:
    """Deployment fields pointing at this code: pull steps, path, and its environment."""
    out = dict(fields)
    out["pull_steps"] = ref.pull_steps
    out["path"] = ref.path
    job_variables = dict(out.get("job_variables") or {})
    job_variables["env"] = {**(job_variables.get("env") or {}), **ref.env}
    out["job_variables"] = job_variables
    return out


async def _apply_one(client: PrefectAPI, change: Change, built: CodeRef | None = None) -> None:
    from prefect.client.schemas.actions import DeploymentScheduleCreate, DeploymentUpdate

    if change.action == "delete":
        assert change.live is not None
        await _gone(client.delete_deployment(UUID(change.live.id)))
        # Prefect keeps a deployment's automations when it is deleted; we do not.
        await client.delete_resource_owned_automations(f"prefect.deployment.{change.live.id}")
        for owned in change.live.automations:
            await _gone(client.delete_automation(UUID(owned.id)))
        return
    spec = change.spec
    assert spec is not None
    fields = dict(spec.fields)
    ref = built or spec.code_ref
    if ref is not None:
        fields = _with_code(fields, ref)
    elif change.live is not None:
        # Code unchanged: keep the package the deployment points at.
        live_env = code_env(change.live.fields.get("job_variables"))
        fields = _with_code(
            fields,
            CodeRef(
                list(change.live.fields.get("pull_steps") or []),
                change.live.fields.get("path"),
                live_env,
            ),
        )
    if change.action == "create":
        flow_id = await client.create_flow_from_name(spec.flow_name)
        schedules = [
            DeploymentScheduleCreate(schedule=_cron(s), active=s.active, slug=s.slug)
            for s in spec.schedules
        ]
        deployment_id = await client.create_deployment(
            flow_id=flow_id, name=spec.name, schedules=schedules, **fields
        )
        for wanted in spec.automations:
            await client.create_automation(_automation_core(spec, wanted, str(deployment_id)))
        if spec.automations:
            await _one_automation_per_name(client, spec.key)
        return
    assert change.live is not None
    changed = {f.field for f in change.changes}
    update: dict[str, Any] = {name: fields[name] for name in fields if name in changed}
    if "code" in changed:
        update["pull_steps"] = fields["pull_steps"]
        update["path"] = fields["path"]
        update["job_variables"] = fields["job_variables"]
    if any(name.startswith("manifest.") for name in changed):
        update["job_variables"] = fields["job_variables"]
    if update:
        update["version"] = fields["version"]
        await client.update_deployment(UUID(change.live.id), DeploymentUpdate(**update))
    for schedule in change.schedule_ops:
        await _apply_schedule(client, UUID(change.live.id), schedule)
    for automation in change.automation_ops:
        if automation.op == "create" and automation.want is not None:
            await client.create_automation(_automation_core(spec, automation.want, change.live.id))
        elif automation.op == "update" and automation.want is not None and automation.have:
            # In place, so the automation keeps its id (and its history).
            await client.update_automation(
                UUID(automation.have.id), _automation_core(spec, automation.want, change.live.id)
            )
        elif automation.op == "delete" and automation.have is not None:
            await _gone(client.delete_automation(UUID(automation.have.id)))
    if any(automation.op == "create" for automation in change.automation_ops):
        await _one_automation_per_name(client, spec.key)


def _cron(want: ScheduleSpec) -> Any:
    from prefect.client.schemas.schedules import CronSchedule

    return CronSchedule(cron=want.cron, timezone=want.timezone or "UTC")


async def _apply_schedule(client: PrefectAPI, deployment_id: UUID, schedule: ScheduleOp) -> None:
    """Create, update or delete one of a deployment's schedules."""
    from prefect.client.schemas.actions import DeploymentScheduleCreate

    op, want = schedule.op, schedule.want
    have_id = UUID(schedule.have.id) if schedule.have is not None else None
    if op == "create" and want is not None:
        try:
            await client.create_deployment_schedules(
                deployment_id,
                [
                    DeploymentScheduleCreate(
                        schedule=_cron(want), active=want.active, slug=want.slug
                    )
                ],
            )
        except Exception as exc:  # noqa: BLE001
            # Slugs are unique per deployment: another apply added it first; set it to ours.
            if not _is_status(exc, 409):
                raise
            current = await client.read_deployment_schedules(deployment_id)
            found = next((s for s in current if s.slug == want.slug), None)
            if found is None:
                raise
            op, have_id = "update", found.id
    if op == "update" and want is not None and have_id is not None:
        await client.update_deployment_schedule(
            deployment_id, have_id, active=want.active, schedule=_cron(want)
        )
    elif op == "delete" and have_id is not None:
        await _gone(client.delete_deployment_schedule(deployment_id, have_id))


async def _one_automation_per_name(client: PrefectAPI, key: str) -> None:
    """Leave one automation of each name on this deployment: the lowest id, as plan() keeps.

    The server has no upsert for automations, so two applies that both found one missing each
    make it, and so does a create that the client re-sends after losing the answer. Re-reading
    after creating and deleting all but the lowest id converges: every apply makes the same
    choice, the last one to create sees every copy, and no apply ever deletes the survivor.
    """
    by_name: dict[str, list[str]] = {}
    for automation in await _owned_automations(client, OWNER_TAG, DEPLOYMENT_TAG_PREFIX + key):
        by_name.setdefault(automation.name, []).append(str(automation.id))
    for ids in by_name.values():
        for extra in sorted(ids)[1:]:
            await _gone(client.delete_automation(UUID(extra)))


async def _gone(deletion: Awaitable[object]) -> None:
    """Await a delete; already gone (another apply deleted it first) is what we wanted."""
    try:
        await deletion
    except Exception as exc:  # noqa: BLE001
        if not _is_status(exc, 404):
            raise


def _automation_core(
    spec: DeploymentSpec, automation: AutomationSpec, deployment_id: str
) -> AutomationCore:
    from datetime import timedelta

    from prefect.events.actions import RunDeployment
    from prefect.events.schemas.automations import AutomationCore, EventTrigger

    view = automation.trigger
    trigger = EventTrigger(
        expect=set(view["expect"]),
        match_related=dict(view["match_related"]),  # type: ignore[arg-type]
        posture="Reactive",  # type: ignore[arg-type]
        threshold=int(view["threshold"]),
        within=timedelta(seconds=int(view["within"])),
    )
    action = RunDeployment(
        source="selected",
        deployment_id=UUID(deployment_id),
        parameters=dict(automation.parameters) if automation.parameters is not None else None,
        job_variables=None,
    )
    return AutomationCore(
        name=automation.name,
        description=f"Runs {spec.key} (managed by mfprefect)",
        enabled=True,
        tags=[OWNER_TAG, DEPLOYMENT_TAG_PREFIX + spec.key],
        trigger=trigger,
        actions=[action],
    )


def delete(
    desired: Sequence[DeploymentSpec],
    echo: Echo = lambda _: None,
    apply_set: str | None = None,
    resources: Sequence[Resource] = (),
    client: PrefectAPI | None = None,
) -> list[str]:
    """Delete the owned objects these manifests name (deployments with their automations, work
    pools, limits, variables); return what was deleted. With an apply set, only objects of that
    set; with a set and no manifests, all of the set's: deployments first, then pools last.
    The server is PREFECT_API_URL's unless a `client` is given, as for `run`."""
    everything = apply_set is not None and not desired and not resources
    wanted = {spec.key for spec in desired}
    named = {(r.kind, r.name) for r in resources}

    def chosen(owned: bool, in_set: str | None, key: Any, listed: set[Any]) -> bool:
        if not owned or (apply_set is not None and in_set != apply_set):
            return False
        return key in listed or everything

    async def _delete(client: PrefectAPI) -> list[str]:
        from .resources import ORDER

        declared = [spec_for(r) for r in resources]
        live = [
            d
            for d in await read_live(client, desired)
            if chosen(d.owned, d.apply_set, d.key, wanted)
        ]
        others = [
            r
            for r in (await apply_workspace.read_live(client, declared))[0]
            if chosen(r.owned, r.apply_set, (r.kind, r.name), named)
        ]
        removed = []
        for current in sorted(live, key=lambda d: d.key):
            echo(f"delete deployment {current.key}")
            await _apply_one(client, Change("delete", current.key, live=current))
            removed.append(f"deployment {current.key}")
        for other in sorted(others, key=lambda r: (-ORDER.index(r.kind), r.name)):
            change = Change("delete", other.key, kind=LABELS[other.kind], live_resource=other)
            echo(f"delete {change.label}")
            await apply_workspace.apply_one(client, change)
            removed.append(change.label)
        return removed

    return _guarded(lambda: _connected(_delete, client))


def _guarded(make: Callable[[], Any], what: str = "request failed", hint: str | None = None) -> Any:
    """Run a coroutine; connection and HTTP errors become one RuntimeFailure line."""
    try:
        return asyncio.run(make())
    except MfprefectError:
        raise
    except Exception as exc:  # noqa: BLE001
        if _is_connection_error(exc):
            raise _unreachable(exc) from None
        detail = " ".join(_describe(exc).split())[:300]
        raise RuntimeFailure(f"{what}: {detail}", hint=hint) from None
