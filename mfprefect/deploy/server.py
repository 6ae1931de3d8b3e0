"""The Prefect client calls plan and apply make, and nothing else: the one seam between mfprefect's
GitOps logic and a Prefect server.

Prefect's own `get_client()` object satisfies `PrefectAPI` (mypy checks it where apply passes one
in); the tests pass an in-memory fake instead (tests/fake_prefect.py). Parameter names are
Prefect's, so a call reads the same against either. Imports no Prefect at run time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from uuid import UUID

    import httpx
    from prefect.client.orchestration.base import HTTP_METHODS
    from prefect.client.orchestration.routes import ServerRoutes
    from prefect.client.schemas.actions import (
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
    from prefect.client.schemas.responses import (
        DeploymentResponse,
        GlobalConcurrencyLimitResponse,
    )
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.client.schemas.sorting import AutomationSort
    from prefect.events.filters import AutomationFilter
    from prefect.events.schemas.automations import Automation, AutomationCore


class PrefectAPI(Protocol):
    """What plan and apply read from and write to a Prefect server."""

    # Reads: deployments, their flows and schedules, automations, pools, limits.
    async def read_deployments(
        self,
        *,
        deployment_filter: DeploymentFilter | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[DeploymentResponse]: ...

    async def read_flows(self, *, flow_filter: FlowFilter | None = None) -> list[Flow]: ...

    async def read_deployment_schedules(self, deployment_id: UUID) -> list[DeploymentSchedule]: ...

    async def read_automations(
        self,
        *,
        automations: AutomationFilter | None = None,
        sort: AutomationSort | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Automation]: ...

    async def read_work_pool(self, work_pool_name: str) -> WorkPool: ...

    async def read_work_pools(
        self, *, limit: int | None = None, offset: int = 0
    ) -> list[WorkPool]: ...

    async def read_global_concurrency_limits(
        self, *, limit: int = 10, offset: int = 0
    ) -> list[GlobalConcurrencyLimitResponse]: ...

    # The one raw call: variables filtered by tags or names (the client has no such read).
    async def request(
        self, method: HTTP_METHODS, path: ServerRoutes, *, json: Any
    ) -> httpx.Response: ...

    # Deployments and their flows and schedules.
    async def create_flow_from_name(self, flow_name: str) -> UUID: ...

    async def create_deployment(
        self,
        flow_id: UUID,
        name: str,
        *,
        version: str | None = None,
        schedules: list[DeploymentScheduleCreate] | None = None,
        concurrency_limit: int | None = None,
        parameters: dict[str, Any] | None = None,
        description: str | None = None,
        work_queue_name: str | None = None,
        work_pool_name: str | None = None,
        tags: list[str] | None = None,
        path: str | None = None,
        entrypoint: str | None = None,
        parameter_openapi_schema: dict[str, Any] | None = None,
        paused: bool | None = None,
        pull_steps: list[dict[str, Any]] | None = None,
        enforce_parameter_schema: bool | None = None,
        job_variables: dict[str, Any] | None = None,
    ) -> UUID: ...

    async def update_deployment(
        self, deployment_id: UUID, deployment: DeploymentUpdate
    ) -> None: ...

    async def delete_deployment(self, deployment_id: UUID) -> None: ...

    async def create_deployment_schedules(
        self, deployment_id: UUID, schedules: list[DeploymentScheduleCreate]
    ) -> list[DeploymentSchedule]: ...

    async def update_deployment_schedule(
        self,
        deployment_id: UUID,
        schedule_id: UUID,
        *,
        active: bool | None = None,
        schedule: CronSchedule | None = None,
    ) -> None: ...

    async def delete_deployment_schedule(self, deployment_id: UUID, schedule_id: UUID) -> None: ...

    # Automations.
    async def create_automation(self, automation: AutomationCore) -> UUID: ...

    async def update_automation(self, automation_id: UUID, automation: AutomationCore) -> None: ...

    async def delete_automation(self, automation_id: UUID) -> None: ...

    async def delete_resource_owned_automations(self, resource_id: str) -> None: ...

    # Work pools, global concurrency limits, variables (answers the callers do not read: object).
    async def create_work_pool(self, work_pool: WorkPoolCreate) -> WorkPool: ...

    async def update_work_pool(self, work_pool_name: str, work_pool: WorkPoolUpdate) -> None: ...

    async def delete_work_pool(self, work_pool_name: str) -> None: ...

    async def create_global_concurrency_limit(
        self, concurrency_limit: GlobalConcurrencyLimitCreate
    ) -> UUID: ...

    async def update_global_concurrency_limit(
        self, name: str, concurrency_limit: GlobalConcurrencyLimitUpdate
    ) -> object: ...

    async def delete_global_concurrency_limit_by_name(self, name: str) -> object: ...

    async def create_variable(self, variable: VariableCreate) -> Variable: ...

    async def update_variable(self, variable: VariableUpdate) -> None: ...

    async def delete_variable_by_name(self, name: str) -> None: ...
