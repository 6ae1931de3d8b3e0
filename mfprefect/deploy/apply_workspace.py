"""Reads and writes work pools, global concurrency limits and variables (apply.py does the
deployments and calls this for the rest), and the checks that need the server to answer."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import ManifestError
from ..kinds import CONCURRENCY_LIMIT, VARIABLE, WORK_POOL
from ..manifest import diagnostic_at
from .desired import OWNER_TAG, DeploymentSpec
from .plan import Change
from .resources import (
    MARKED_KINDS,
    MARKER_TAG,
    LiveResource,
    ResourceSpec,
    marker_name,
    marker_tags,
    marker_value,
    template_variables,
)
from .sets import set_of

if TYPE_CHECKING:
    from prefect.client.schemas.objects import Variable, WorkPool

    from .server import PrefectAPI

PAGE = 200


async def base_templates(types: Sequence[str]) -> dict[str, dict[str, Any] | None]:
    """Each work pool type's default job template, as `prefect work-pool create` finds it."""
    from prefect.workers.utilities import get_default_base_job_template_for_infrastructure_type

    found: dict[str, dict[str, Any] | None] = {}
    for kind in sorted(set(types)):
        try:
            found[kind] = await get_default_base_job_template_for_infrastructure_type(kind)
        except Exception:  # noqa: BLE001 - a type nobody here knows: said by check_pools
            found[kind] = None
    return found


async def _variables(client: PrefectAPI, where: Mapping[str, Any]) -> list[Variable]:
    """Variables matching a server-side filter, page by page."""
    from prefect.client.schemas.objects import Variable

    found: dict[str, Variable] = {}
    offset = 0
    while True:
        response = await client.request(
            "POST",
            "/variables/filter",
            json={"variables": dict(where), "limit": PAGE, "offset": offset, "sort": "NAME_ASC"},
        )
        page = Variable.model_validate_list(response.json())
        found.update({str(v.id): v for v in page})
        if len(page) < PAGE:
            return list(found.values())
        offset += PAGE


Item = TypeVar("Item")


async def _paged(read: Callable[..., Awaitable[list[Item]]]) -> list[Item]:
    out: list[Item] = []
    offset = 0
    while True:
        page = await read(limit=PAGE, offset=offset)
        out += page
        if len(page) < PAGE:
            return out
        offset += PAGE


async def read_live(
    client: PrefectAPI, declared: Sequence[ResourceSpec]
) -> tuple[list[LiveResource], set[str]]:
    """The pools, limits and variables mfprefect owns or the manifests name, and the names of
    every work pool on the server."""
    markers: dict[tuple[str, str], str | None] = {}
    for marker in await _variables(client, {"tags": {"all_": [MARKER_TAG]}}):
        value = marker.value if isinstance(marker.value, dict) else {}
        kind, name = value.get("kind"), value.get("name")
        if (
            isinstance(kind, str)
            and isinstance(name, str)
            and marker.name == marker_name(kind, name)
        ):
            markers[(kind, name)] = set_of(marker.tags or [])
    wanted = {(r.kind, r.name) for r in declared}
    live: list[LiveResource] = []
    pools = await _paged(client.read_work_pools)
    for pool in pools:
        if (WORK_POOL, pool.name) in wanted or (WORK_POOL, pool.name) in markers:
            live.append(_live_pool(pool, markers))
    limits = await _paged(client.read_global_concurrency_limits)
    for limit in limits:
        if (CONCURRENCY_LIMIT, limit.name) in wanted or (CONCURRENCY_LIMIT, limit.name) in markers:
            owned = (CONCURRENCY_LIMIT, limit.name) in markers
            fields = {
                "limit": limit.limit,
                "active": bool(limit.active),
                "slot_decay_per_second": float(limit.slot_decay_per_second or 0.0),
            }
            live.append(
                LiveResource(
                    CONCURRENCY_LIMIT,
                    limit.name,
                    str(limit.id),
                    fields,
                    owned,
                    markers.get((CONCURRENCY_LIMIT, limit.name)),
                )
            )
    variables = {str(v.id): v for v in await _variables(client, {"tags": {"all_": [OWNER_TAG]}})}
    names = sorted(r.name for r in declared if r.kind == VARIABLE)
    for start in range(0, len(names), PAGE):
        chunk = {"name": {"any_": names[start : start + PAGE]}}
        variables.update({str(v.id): v for v in await _variables(client, chunk)})
    for variable in variables.values():
        tags = list(variable.tags or [])
        live.append(
            LiveResource(
                VARIABLE,
                variable.name,
                str(variable.id),
                {"value": variable.value, "tags": sorted(tags)},
                OWNER_TAG in tags,
                set_of(tags),
            )
        )
    return live, {pool.name for pool in pools}


def _live_pool(pool: WorkPool, markers: Mapping[tuple[str, str], str | None]) -> LiveResource:
    template = dict(pool.base_job_template or {})
    fields = {
        "type": pool.type,
        "description": pool.description,
        "concurrency_limit": pool.concurrency_limit,
        "paused": bool(pool.is_paused),
        "job_variables": {
            name: prop.get("default") for name, prop in template_variables(template).items()
        },
    }
    return LiveResource(
        WORK_POOL,
        pool.name,
        str(pool.id),
        fields,
        (WORK_POOL, pool.name) in markers,
        markers.get((WORK_POOL, pool.name)),
        template,
    )


def check(
    changes: Sequence[Change],
    declared: Sequence[ResourceSpec],
    deployments: Sequence[DeploymentSpec],
    server_pools: set[str],
) -> None:
    """Plan errors, before anything is written: a pool whose type would change, a job variable
    a pool's type does not have, a pipeline naming a pool nobody has."""
    from ..diagnostics import did_you_mean

    problems = []
    for change in changes:
        spec = change.resource
        if spec is None or spec.kind != WORK_POOL:
            continue
        if change.action == "update" and any(f.field == "type" for f in change.changes):
            problems.append(
                diagnostic_at(
                    spec.path,
                    ("spec", "type"),
                    "workpool.type",
                    f"work pool `{spec.name}` is of type `{change.live_resource.fields['type']}` "  # type: ignore[union-attr]
                    f"on the server and a pool's type cannot change: delete the pool or name a new one",
                    spec.label,
                )
            )
        known = template_variables(
            spec.base_template
            if spec.base_template is not None
            else (change.live_resource.template if change.live_resource is not None else None)
        )
        if change.action == "create" and spec.base_template is None:
            problems.append(
                diagnostic_at(
                    spec.path,
                    ("spec", "type"),
                    "workpool.type",
                    f"no job template is known here for work pool type `{spec.fields['type']}`: "
                    "install its Prefect worker package (e.g. prefect-kubernetes) where you plan",
                    spec.label,
                )
            )
            continue
        for name in spec.declared:
            if name not in known:
                problems.append(
                    diagnostic_at(
                        spec.path,
                        ("spec", "job_variables", name),
                        "workpool.job-variable",
                        f"work pool type `{spec.fields['type']}` has no job variable `{name}`"
                        + (
                            did_you_mean(name, sorted(known))
                            or f" (it has: {', '.join(sorted(known))})"
                        ),
                        spec.label,
                    )
                )
    deleted = {c.key for c in changes if c.kind == "work pool" and c.action == "delete"}
    available = (server_pools - deleted) | {r.name for r in declared if r.kind == WORK_POOL}
    for deployment in deployments:
        pool = str(deployment.fields.get("work_pool_name"))
        if pool in available:
            continue
        why = (
            "this plan deletes it"
            if pool in deleted
            else "neither the server nor the manifests have it"
        )
        path = deployment.source.path if deployment.source is not None else None
        problems.append(
            diagnostic_at(
                path,
                ("deployment", "work_pool"),
                "deployment.work-pool",
                f"work pool `{pool}` does not exist: {why}; declare it in a WorkPool manifest "
                f"or create it (prefect work-pool create {pool} --type process)",
                deployment.key,
            )
        )
    if problems:
        raise ManifestError(
            f"{len(problems)} problem(s) in the manifests; nothing was applied", problems
        )


def job_template(spec: ResourceSpec, live: LiveResource | None) -> dict[str, Any]:
    """The pool's job template with the wanted defaults: the live one edited in place (its job
    configuration kept), else the type's default."""
    template = json.loads(
        json.dumps(
            live.template if live is not None and live.template else spec.base_template or {}
        )
    )
    properties = template.setdefault("variables", {}).setdefault("properties", {})
    for name, value in spec.fields.get("job_variables", {}).items():
        prop = properties.setdefault(name, {})
        if value is None:
            prop.pop("default", None)
        else:
            prop["default"] = value
    return template


async def apply_one(client: PrefectAPI, change: Change) -> None:
    """Write one pool, limit or variable change (markers first on the way in, last on the way
    out, so an interrupted apply never leaves an object mfprefect made that it does not own)."""
    spec, live = change.resource, change.live_resource
    if change.action == "delete":
        assert live is not None
        await _delete(client, live)
        return
    assert spec is not None
    changed = {f.field.split(".", 1)[0] for f in change.changes}
    if spec.kind in MARKED_KINDS and (change.action == "create" or "apply_set" in changed):
        wanted_set = next(f.new for f in change.changes if f.field == "apply_set")
        await _upsert_marker(client, spec.kind, spec.name, wanted_set)
    if spec.kind == WORK_POOL:
        await _write_pool(client, change, spec, live, changed)
    elif spec.kind == CONCURRENCY_LIMIT:
        await _write_limit(client, change, spec, changed)
    else:
        await _write_variable(client, change, spec)


async def _write_pool(
    client: PrefectAPI,
    change: Change,
    spec: ResourceSpec,
    live: LiveResource | None,
    changed: set[str],
) -> None:
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate

    fields = spec.fields
    if change.action == "create":
        await client.create_work_pool(
            WorkPoolCreate(
                name=spec.name,
                type=fields["type"],
                description=fields["description"],
                base_job_template=job_template(spec, None),
                is_paused=fields["paused"],
                concurrency_limit=fields["concurrency_limit"],
            )
        )
        return
    update: dict[str, Any] = {}
    if "description" in changed:
        update["description"] = fields["description"]
    if "paused" in changed:
        update["is_paused"] = fields["paused"]
    if "concurrency_limit" in changed:
        update["concurrency_limit"] = fields["concurrency_limit"]
    if "job_variables" in changed:
        update["base_job_template"] = job_template(spec, live)
    if update:
        await client.update_work_pool(spec.name, WorkPoolUpdate(**update))


async def _write_limit(
    client: PrefectAPI, change: Change, spec: ResourceSpec, changed: set[str]
) -> None:
    from prefect.client.schemas.actions import (
        GlobalConcurrencyLimitCreate,
        GlobalConcurrencyLimitUpdate,
    )

    fields = spec.fields
    if change.action == "create":
        await client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(
                name=spec.name,
                limit=fields["limit"],
                active=fields["active"],
                slot_decay_per_second=fields["slot_decay_per_second"],
            )
        )
        return
    update = {
        name: fields[name]
        for name in ("limit", "active", "slot_decay_per_second")
        if name in changed
    }
    if update:
        await client.update_global_concurrency_limit(
            spec.name, GlobalConcurrencyLimitUpdate(**update)
        )


async def _write_variable(client: PrefectAPI, change: Change, spec: ResourceSpec) -> None:
    from prefect.client.schemas.actions import VariableCreate, VariableUpdate

    value, tags = spec.fields["value"], list(spec.fields["tags"])
    if change.action == "create":
        await client.create_variable(VariableCreate(name=spec.name, value=value, tags=tags))
    else:
        await client.update_variable(VariableUpdate(name=spec.name, value=value, tags=tags))


async def _upsert_marker(client: PrefectAPI, kind: str, name: str, apply_set: str | None) -> None:
    from prefect.client.schemas.actions import VariableCreate, VariableUpdate
    from prefect.exceptions import ObjectAlreadyExists

    marker = marker_name(kind, name)
    value, tags = marker_value(kind, name), marker_tags(apply_set)
    try:
        await client.create_variable(VariableCreate(name=marker, value=value, tags=tags))
    except ObjectAlreadyExists:
        await client.update_variable(VariableUpdate(name=marker, value=value, tags=tags))


async def _delete(client: PrefectAPI, live: LiveResource) -> None:
    from prefect.exceptions import ObjectNotFound

    try:
        if live.kind == WORK_POOL:
            await client.delete_work_pool(live.name)
        elif live.kind == CONCURRENCY_LIMIT:
            await client.delete_global_concurrency_limit_by_name(live.name)
        else:
            await client.delete_variable_by_name(live.name)
    except ObjectNotFound:
        pass  # another apply deleted it first: what we wanted
    try:
        if live.kind in MARKED_KINDS:
            await client.delete_variable_by_name(marker_name(live.kind, live.name))
    except ObjectNotFound:
        pass
