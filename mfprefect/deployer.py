"""Metaflow's Deployer API for Prefect: `Deployer("flow.py").prefect().create(...)`.

Imported when Metaflow is imported: keep module-level imports to Metaflow's own runner pieces.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from metaflow.runner.deployer_impl import DeployerImpl

if TYPE_CHECKING:
    from .deployer_objects import PrefectDeployedFlow


class PrefectDeployer(DeployerImpl):
    """Deploys a flow as an mfprefect deployment on the Prefect server named by PREFECT_API_URL."""

    TYPE: ClassVar[str | None] = "prefect"

    def __init__(self, deployer_kwargs: dict[str, str], **kwargs: Any) -> None:
        self._deployer_kwargs = deployer_kwargs
        super().__init__(**kwargs)

    @property
    def deployer_kwargs(self) -> dict[str, Any]:
        return self._deployer_kwargs

    @staticmethod
    def deployed_flow_type() -> type[PrefectDeployedFlow]:
        from .deployer_objects import PrefectDeployedFlow

        return PrefectDeployedFlow

    def from_deployment(self, identifier: str, metadata: str | None = None) -> PrefectDeployedFlow:
        """The deployed flow `identifier` names: `Flow/deployment`, or a pipeline name (`Flow`,
        `project.branch.Flow`), found on this deployer's Prefect server (its `env` may name one
        with PREFECT_API_URL)."""
        from .deployer_objects import PrefectDeployedFlow, recover

        return recover(PrefectDeployedFlow, identifier, metadata, dict(self.env_vars))

    def create(self, **kwargs: Any) -> PrefectDeployedFlow:
        """Export and apply: `name` (default: the pipeline name), `work_pool`, `work_queue`, `tags`, ..."""
        from .deployer_objects import PrefectDeployedFlow

        deployed: PrefectDeployedFlow = self._create(PrefectDeployedFlow, **kwargs)
        return deployed
