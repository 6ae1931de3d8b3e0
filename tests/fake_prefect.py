"""An in-memory Prefect server for plan and apply: the calls of `mfprefect.deploy.server.PrefectAPI`
over dicts, and nothing more.

It answers with Prefect's own client schema objects (DeploymentResponse, WorkPool, Automation...),
built by validating what the real client would have received, so a field the code reads that
Prefect does not have fails here too. It raises what Prefect's client raises for the same call:
ObjectNotFound or ObjectAlreadyExists where the client translates the server's 404 or 409, else
the HTTP error itself. Filters it is not written for are refused rather than ignored.

Every successful write is logged in `writes` ("create_deployment LinearFlow/linear_flow", ...),
so a test can ask how many an apply made. Edits in `edit_*` are what a person does in the UI:
they change state without being logged.

Known simplifications: a deployment's concurrency limit lives on the deployment only (the real
server also lists it as a global limit `deployment:<id>`, which apply never reads), there are no
work queues, and job variables are not checked against the pool's template.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar
from uuid import UUID, uuid4

import httpx
from prefect.client.schemas.actions import (
    DeploymentCreate,
    DeploymentScheduleCreate,
    DeploymentUpdate,
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
    VariableCreate,
    VariableUpdate,
    WorkPoolCreate,
    WorkPoolUpdate,
)
from prefect.client.schemas.filters import DeploymentFilter, FlowFilter
from prefect.client.schemas.objects import DeploymentSchedule, Flow, Variable, WorkPool
from prefect.client.schemas.responses import DeploymentResponse, GlobalConcurrencyLimitResponse
from prefect.client.schemas.schedules import CronSchedule
from prefect.client.schemas.sorting import AutomationSort
from prefect.events.filters import AutomationFilter
from prefect.events.schemas.automations import Automation, AutomationCore
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from pydantic import BaseModel

Model = TypeVar("Model", bound=BaseModel)

# The server's largest page.
PAGE = 200


def http_error(status: int, method: str, path: str, detail: str) -> httpx.HTTPStatusError:
    """The error Prefect's client raises for an answer with this status."""
    request = httpx.Request(method, f"http://fake-prefect/api{path}")
    response = httpx.Response(status, json={"detail": detail}, request=request)
    return httpx.HTTPStatusError(
        f"{status} for {method} {path}", request=request, response=response
    )


def _page(items: Iterable[Model], limit: int | None, offset: int) -> list[Model]:
    chosen = list(items)[offset:]
    return [item.model_copy(deep=True) for item in chosen[: min(limit or PAGE, PAGE)]]


def _filter(given: BaseModel | None, allowed: dict[str, str]) -> dict[str, list[Any]]:
    """A filter's set fields as {field: values}, refusing any the fake does not implement."""
    if given is None:
        return {}
    out = {}
    for name, condition in given.model_dump(exclude_unset=True).items():
        operator = allowed.get(name)
        if operator is None or set(condition) != {operator}:
            raise NotImplementedError(f"the fake has no filter {name} {condition}")
        out[name] = list(condition[operator])
    return out


class FakePrefect:
    """Deployments, flows, schedules, automations, work pools, global concurrency limits and
    variables, by id or name; see the module docstring."""

    def __init__(self) -> None:
        self.flows: dict[UUID, Flow] = {}
        self.deployments: dict[UUID, DeploymentResponse] = {}
        self.automations: dict[UUID, Automation] = {}  # in creation order
        self.work_pools: dict[str, WorkPool] = {}
        self.limits: dict[str, GlobalConcurrencyLimitResponse] = {}
        self.variables: dict[str, Variable] = {}
        self.writes: list[str] = []
        self._clock = itertools.count(1)

    def _now(self) -> datetime:
        return datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=next(self._clock))

    def _wrote(self, call: str, what: object) -> None:
        self.writes.append(f"{call} {what}")

    # What a person does in the UI (not logged as writes).

    def deployment(self, name: str) -> DeploymentResponse:
        (found,) = [d for d in self.deployments.values() if d.name == name]
        return found

    def edit_deployment(self, name: str, **changes: Any) -> None:
        found = self.deployment(name)
        self.deployments[found.id] = found.model_copy(update=changes)

    def edit_schedule(self, name: str, slug: str, **changes: Any) -> None:
        found = self.deployment(name)
        schedules = [s.model_copy(update=changes) if s.slug == slug else s for s in found.schedules]
        self.deployments[found.id] = found.model_copy(update={"schedules": schedules})

    def edit_pool(self, name: str, **changes: Any) -> None:
        self.work_pools[name] = self.work_pools[name].model_copy(update=changes)

    def edit_limit(self, name: str, **changes: Any) -> None:
        self.limits[name] = self.limits[name].model_copy(update=changes)

    def edit_variable(self, name: str, **changes: Any) -> None:
        self.variables[name] = self.variables[name].model_copy(update=changes)

    # Reads.

    async def read_deployments(
        self,
        *,
        deployment_filter: DeploymentFilter | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[DeploymentResponse]:
        where = _filter(deployment_filter, {"tags": "all_", "name": "any_"})
        found = [
            d
            for d in sorted(self.deployments.values(), key=lambda d: (d.name, str(d.id)))
            if set(where.get("tags", [])) <= set(d.tags)
            and ("name" not in where or d.name in where["name"])
        ]
        return _page(found, limit, offset)

    async def read_flows(self, *, flow_filter: FlowFilter | None = None) -> list[Flow]:
        where = _filter(flow_filter, {"id": "any_"})
        ids = {str(i) for i in where.get("id", self.flows)}
        return _page((f for f in self.flows.values() if str(f.id) in ids), None, 0)

    async def read_deployment_schedules(self, deployment_id: UUID) -> list[DeploymentSchedule]:
        found = self._deployment(deployment_id, "GET", "/schedules", translated=True)
        return [s.model_copy(deep=True) for s in found.schedules]

    async def read_automations(
        self,
        *,
        automations: AutomationFilter | None = None,
        sort: AutomationSort | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Automation]:
        where = _filter(automations, {"tags": "all_"})
        if sort not in (None, AutomationSort.CREATED_DESC):
            raise NotImplementedError(f"the fake has no automation sort {sort}")
        newest_first = reversed(list(self.automations.values()))
        found = [a for a in newest_first if set(where.get("tags", [])) <= set(a.tags)]
        return _page(found, limit, offset)

    async def read_work_pool(self, work_pool_name: str) -> WorkPool:
        if work_pool_name not in self.work_pools:
            raise ObjectNotFound(
                http_error(404, "GET", f"/work_pools/{work_pool_name}", "Not found")
            )
        return self.work_pools[work_pool_name].model_copy(deep=True)

    async def read_work_pools(self, *, limit: int | None = None, offset: int = 0) -> list[WorkPool]:
        return _page(sorted(self.work_pools.values(), key=lambda p: p.name), limit, offset)

    async def read_global_concurrency_limits(
        self, *, limit: int = 10, offset: int = 0
    ) -> list[GlobalConcurrencyLimitResponse]:
        return _page(sorted(self.limits.values(), key=lambda c: c.name), limit, offset)

    async def request(self, method: str, path: str, *, json: Any) -> httpx.Response:
        """Only the raw call apply makes: POST /variables/filter by tags or names."""
        if (method, path) != ("POST", "/variables/filter") or json.get("sort") != "NAME_ASC":
            raise NotImplementedError(f"the fake does not answer {method} {path} {json}")
        where = json.get("variables") or {}
        if not set(where) <= {"tags", "name"}:
            raise NotImplementedError(f"the fake has no variable filter {where}")
        tags = set((where.get("tags") or {}).get("all_", []))
        names = (where.get("name") or {}).get("any_")
        found = [
            v
            for v in sorted(self.variables.values(), key=lambda v: v.name)
            if tags <= set(v.tags) and (names is None or v.name in names)
        ]
        body = [v.model_dump(mode="json") for v in _page(found, json["limit"], json["offset"])]
        return httpx.Response(200, json=body, request=httpx.Request(method, path))

    # Deployments, flows, schedules.

    def _deployment(
        self, deployment_id: UUID, method: str, tail: str = "", translated: bool = False
    ) -> DeploymentResponse:
        found = self.deployments.get(UUID(str(deployment_id)))
        if found is None:
            error = http_error(404, method, f"/deployments/{deployment_id}{tail}", "Not found")
            raise ObjectNotFound(error) if translated else error
        return found

    async def create_flow_from_name(self, flow_name: str) -> UUID:
        for flow in self.flows.values():
            if flow.name == flow_name:
                return flow.id
        flow = Flow.model_validate({"id": uuid4(), "name": flow_name, "created": self._now()})
        self.flows[flow.id] = flow
        self._wrote("create_flow", flow_name)
        return flow.id

    async def create_deployment(self, flow_id: UUID, name: str, **fields: Any) -> UUID:
        """An upsert by (flow, name), as the server's: the same id on a second create. The
        fields are checked as Prefect's client checks them (a DeploymentCreate)."""
        given = DeploymentCreate(flow_id=flow_id, name=name, **fields)
        pool = given.work_pool_name
        if pool is not None and pool not in self.work_pools:
            raise http_error(404, "POST", "/deployments/", f'Work pool "{pool}" not found.')
        same = [d for d in self.deployments.values() if (d.flow_id, d.name) == (flow_id, name)]
        ident = same[0].id if same else uuid4()
        body = given.model_dump(exclude={"schedules", "concurrency_limit"}, exclude_none=True)
        deployment = DeploymentResponse.model_validate(
            {
                **body,
                "id": ident,
                "created": same[0].created if same else self._now(),
                "updated": self._now(),
                "schedules": [self._schedule(ident, s) for s in given.schedules],
            }
        )
        self.deployments[ident] = self._with_limit(deployment, given.concurrency_limit)
        self._wrote("create_deployment", name)
        return ident

    def _with_limit(self, deployment: DeploymentResponse, limit: int | None) -> DeploymentResponse:
        gcl = None
        if limit is not None:
            gcl = GlobalConcurrencyLimitResponse(
                id=uuid4(), name=f"deployment:{deployment.id}", limit=limit, active_slots=0
            )
        # As the server answers: the limit as a global one (`concurrency_limit` is deprecated).
        return deployment.model_copy(update={"global_concurrency_limit": gcl})

    def _schedule(self, deployment_id: UUID, given: DeploymentScheduleCreate) -> DeploymentSchedule:
        return DeploymentSchedule.model_validate(
            {
                "id": uuid4(),
                "deployment_id": deployment_id,
                "schedule": given.schedule,
                "active": given.active,
                "slug": given.slug,
                "created": self._now(),
                "updated": self._now(),
            }
        )

    async def update_deployment(self, deployment_id: UUID, deployment: DeploymentUpdate) -> None:
        found = self._deployment(deployment_id, "PATCH")
        # What the client sends: the fields set, less those it never sends.
        changes = deployment.model_dump(exclude_unset=True, exclude={"name", "flow_name"})
        if "schedules" in changes:
            raise NotImplementedError("the fake does not replace schedules on update")
        self._wrote("update_deployment", f"{found.name} {sorted(changes)}")
        gcl = found.global_concurrency_limit
        limit = changes.pop("concurrency_limit", gcl.limit if gcl is not None else None)
        updated = found.model_copy(update={**changes, "updated": self._now()})
        self.deployments[found.id] = self._with_limit(updated, limit)

    async def delete_deployment(self, deployment_id: UUID) -> None:
        found = self._deployment(deployment_id, "DELETE", translated=True)
        del self.deployments[found.id]  # its schedules with it; its automations stay
        self._wrote("delete_deployment", found.name)

    async def create_deployment_schedules(
        self, deployment_id: UUID, schedules: list[DeploymentScheduleCreate]
    ) -> list[DeploymentSchedule]:
        found = self._deployment(deployment_id, "POST", "/schedules")
        slugs = {s.slug for s in found.schedules if s.slug is not None}
        if any(s.slug in slugs for s in schedules):
            raise http_error(
                409,
                "POST",
                f"/deployments/{deployment_id}/schedules",
                "Schedule slugs must be unique within a deployment.",
            )
        made = [self._schedule(found.id, s) for s in schedules]
        self.deployments[found.id] = found.model_copy(update={"schedules": found.schedules + made})
        self._wrote("create_schedules", f"{found.name} {[s.slug for s in made]}")
        return [s.model_copy(deep=True) for s in made]

    def _schedule_of(
        self, deployment_id: UUID, schedule_id: UUID, method: str
    ) -> tuple[DeploymentResponse, DeploymentSchedule]:
        found = self._deployment(deployment_id, method, "/schedules", translated=True)
        for schedule in found.schedules:
            if schedule.id == UUID(str(schedule_id)):
                return found, schedule
        path = f"/deployments/{deployment_id}/schedules/{schedule_id}"
        raise ObjectNotFound(http_error(404, method, path, "Schedule not found."))

    async def update_deployment_schedule(
        self,
        deployment_id: UUID,
        schedule_id: UUID,
        *,
        active: bool | None = None,
        schedule: CronSchedule | None = None,
    ) -> None:
        found, old = self._schedule_of(deployment_id, schedule_id, "PATCH")
        changes: dict[str, Any] = {"updated": self._now()}
        if active is not None:
            changes["active"] = active
        if schedule is not None:
            changes["schedule"] = schedule
        schedules = [s.model_copy(update=changes) if s.id == old.id else s for s in found.schedules]
        self.deployments[found.id] = found.model_copy(update={"schedules": schedules})
        self._wrote("update_schedule", f"{found.name} {old.slug}")

    async def delete_deployment_schedule(self, deployment_id: UUID, schedule_id: UUID) -> None:
        found, old = self._schedule_of(deployment_id, schedule_id, "DELETE")
        schedules = [s for s in found.schedules if s.id != old.id]
        self.deployments[found.id] = found.model_copy(update={"schedules": schedules})
        self._wrote("delete_schedule", f"{found.name} {old.slug}")

    # Automations.

    def _automation(self, ident: UUID, automation: AutomationCore) -> Automation:
        # As the wire carries it: the client sends model_dump(mode="json"), reads back JSON.
        return Automation.model_validate({**automation.model_dump(mode="json"), "id": str(ident)})

    async def create_automation(self, automation: AutomationCore) -> UUID:
        ident = uuid4()
        self.automations[ident] = self._automation(ident, automation)
        self._wrote("create_automation", automation.name)
        return ident

    async def update_automation(self, automation_id: UUID, automation: AutomationCore) -> None:
        ident = UUID(str(automation_id))
        if ident not in self.automations:
            raise http_error(404, "PUT", f"/automations/{ident}", "Automation not found")
        self.automations[ident] = self._automation(ident, automation)
        self._wrote("update_automation", automation.name)

    async def delete_automation(self, automation_id: UUID) -> None:
        # Prefect's client answers a 404 here with None.
        gone = self.automations.pop(UUID(str(automation_id)), None)
        if gone is not None:
            self._wrote("delete_automation", gone.name)

    async def delete_resource_owned_automations(self, resource_id: str) -> None:
        for ident, automation in list(self.automations.items()):
            if automation.owner_resource == resource_id:
                del self.automations[ident]
                self._wrote("delete_automation", automation.name)

    # Work pools, global concurrency limits, variables: by name, as the client addresses them.

    def _named(self, store: dict[str, Model], name: str, method: str, path: str) -> Model:
        if name not in store:
            raise ObjectNotFound(http_error(404, method, f"{path}/{name}", "Not found"))
        return store[name]

    def _made(self, answer: type[Model], given: BaseModel, **defaults: Any) -> Model:
        """What the server stores for a create: what the client sent, with an id and times."""
        sent = given.model_dump(mode="json", exclude_unset=True)
        now = self._now()
        return answer.model_validate(
            {**defaults, **sent, "id": str(uuid4()), "created": now, "updated": now}
        )

    def _unique(self, store: dict[str, Any], name: str, path: str) -> None:
        if name in store:
            raise ObjectAlreadyExists(http_error(409, "POST", path, f"{name} already exists"))

    async def create_work_pool(self, work_pool: WorkPoolCreate) -> WorkPool:
        self._unique(self.work_pools, work_pool.name, "/work_pools/")
        pool = self._made(WorkPool, work_pool)
        self.work_pools[pool.name] = pool
        self._wrote("create_work_pool", pool.name)
        return pool.model_copy(deep=True)

    async def update_work_pool(self, work_pool_name: str, work_pool: WorkPoolUpdate) -> None:
        pool = self._named(self.work_pools, work_pool_name, "PATCH", "/work_pools")
        changes = work_pool.model_dump(exclude_unset=True)
        self.work_pools[pool.name] = pool.model_copy(update={**changes, "updated": self._now()})
        self._wrote("update_work_pool", f"{pool.name} {sorted(changes)}")

    async def delete_work_pool(self, work_pool_name: str) -> None:
        self._named(self.work_pools, work_pool_name, "DELETE", "/work_pools")
        del self.work_pools[work_pool_name]
        self._wrote("delete_work_pool", work_pool_name)

    async def create_global_concurrency_limit(
        self, concurrency_limit: GlobalConcurrencyLimitCreate
    ) -> UUID:
        self._unique(self.limits, concurrency_limit.name, "/v2/concurrency_limits/")
        limit = self._made(GlobalConcurrencyLimitResponse, concurrency_limit, active_slots=0)
        self.limits[limit.name] = limit
        self._wrote("create_limit", limit.name)
        return limit.id

    async def update_global_concurrency_limit(
        self, name: str, concurrency_limit: GlobalConcurrencyLimitUpdate
    ) -> httpx.Response:
        limit = self._named(self.limits, name, "PATCH", "/v2/concurrency_limits")
        changes = concurrency_limit.model_dump(exclude_unset=True)
        self.limits[name] = limit.model_copy(update={**changes, "updated": self._now()})
        self._wrote("update_limit", f"{name} {sorted(changes)}")
        return httpx.Response(204)

    async def delete_global_concurrency_limit_by_name(self, name: str) -> httpx.Response:
        self._named(self.limits, name, "DELETE", "/v2/concurrency_limits")
        del self.limits[name]
        self._wrote("delete_limit", name)
        return httpx.Response(204)

    async def create_variable(self, variable: VariableCreate) -> Variable:
        self._unique(self.variables, variable.name, "/variables/")
        made = self._made(Variable, variable)
        self.variables[made.name] = made
        self._wrote("create_variable", made.name)
        return made.model_copy(deep=True)

    async def update_variable(self, variable: VariableUpdate) -> None:
        # Prefect's client passes this 404 on as it is (no ObjectNotFound).
        if variable.name not in self.variables:
            raise http_error(404, "PATCH", f"/variables/name/{variable.name}", "Not found")
        changes = variable.model_dump(mode="json", exclude_unset=True)
        old = self.variables[variable.name]
        self.variables[variable.name] = old.model_copy(update={**changes, "updated": self._now()})
        self._wrote("update_variable", variable.name)

    async def delete_variable_by_name(self, name: str) -> None:
        self._named(self.variables, name, "DELETE", "/variables/name")
        del self.variables[name]
        self._wrote("delete_variable", name)
