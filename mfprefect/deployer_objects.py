"""The objects Metaflow's Deployer API hands back for Prefect: deployed flows and triggered runs."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
import tempfile
from typing import Any, ClassVar

from metaflow.exception import MetaflowException
from metaflow.runner.deployer import DeployedFlow, TriggeredRun
from metaflow.runner.utils import get_lower_level_group, handle_timeout, temporary_fifo

# Prefect state type → the status words Metaflow's waiters understand.
_STATUS = {
    "SCHEDULED": "PENDING",
    "PENDING": "PENDING",
    "PAUSED": "PENDING",
    "RUNNING": "RUNNING",
    "COMPLETED": "SUCCEEDED",
    "FAILED": "FAILED",
    "CRASHED": "FAILED",
    "CANCELLING": "ABORTED",
    "CANCELLED": "ABORTED",
}


class PrefectTriggeredRun(TriggeredRun):
    """A run started through a deployment; `.run` is the Metaflow run, `.status` Prefect's view."""

    def __init__(self, deployer: Any, content: str) -> None:
        super().__init__(deployer, content)
        self.flow_run_id = json.loads(content).get("flow_run_id")

    @property
    def status(self) -> str | None:
        """PENDING, RUNNING, SUCCEEDED, FAILED, TIMED_OUT or ABORTED; None if it cannot be read."""
        import asyncio

        async def read() -> Any:
            from prefect.client.orchestration import get_client

            async with get_client() as client:
                return await client.read_flow_run(self.flow_run_id)

        try:
            state = asyncio.run(read()).state
        except Exception:  # noqa: BLE001 - an unreadable status is "unknown", as the API expects
            return None
        if state is None:
            return None
        if state.name == "TimedOut":
            return "TIMED_OUT"
        return _STATUS.get(state.type.value, state.type.value)

    @property
    def is_running(self) -> bool:
        return self.status in ("PENDING", "RUNNING")


class PrefectDeployedFlow(DeployedFlow):
    """A flow deployed with mfprefect."""

    TYPE: ClassVar[str | None] = "prefect"

    def trigger(self, **kwargs: Any) -> PrefectTriggeredRun:
        """Start a run; flow parameters are keyword arguments."""
        return self._start(kwargs)

    def resume(
        self, origin_run_id: str, step_to_rerun: str | None = None, **params: Any
    ) -> PrefectTriggeredRun:
        """Resume run `origin_run_id` on the deployment's workers: a new run that clones every
        task that succeeded there and runs the rest (`step_to_rerun` and everything after it
        run again in any case). It keeps the origin's parameter values; `params` change some,
        which re-runs from `start` (steps read parameters through their inputs)."""
        # The trigger command's `--resume` and `--step`, by their parameter names.
        options: dict[str, Any] = {"origin_run_id": origin_run_id}
        if step_to_rerun:
            options["step_to_rerun"] = step_to_rerun
        return self._start({**params, **options})

    def _start(self, kwargs: dict[str, Any]) -> PrefectTriggeredRun:
        if self.deployer.name and "/" in self.deployer.name:
            kwargs.setdefault("name", self.deployer.name.split("/", 1)[1])
        with temporary_fifo() as (attribute_file_path, attribute_file_fd):
            command = get_lower_level_group(
                self.deployer.api,
                self.deployer.top_level_kwargs,
                self.deployer.TYPE,
                self.deployer.deployer_kwargs,
            ).trigger(deployer_attribute_file=attribute_file_path, **kwargs)
            pid = self.deployer.spm.run_command(
                [sys.executable, *command],
                env=self.deployer.env_vars,
                cwd=self.deployer.cwd,
                show_output=self.deployer.show_output,
            )
            command_obj = self.deployer.spm.get(pid)
            try:
                content = handle_timeout(
                    attribute_file_fd, command_obj, self.deployer.file_read_timeout
                )
            except RuntimeError:
                content = None
            command_obj.sync_wait()
            if content is not None and command_obj.process.returncode == 0:
                return PrefectTriggeredRun(deployer=self.deployer, content=content)
        raise PrefectDeployerError(
            _said(command_obj)
            or f"cannot trigger {self.deployer.name} on Prefect for {self.deployer.flow_file}"
        )

    @classmethod
    def from_deployment(cls, identifier: str, metadata: str | None = None) -> PrefectDeployedFlow:
        """Recover a deployed flow from `Flow/deployment`, from a pipeline name (`Flow`, or
        `project.branch.Flow` under @project), whose deployment has the same name or is its
        only one."""
        return recover(cls, identifier, metadata)


class PrefectDeployerError(MetaflowException):
    """A deployed flow that cannot be found or triggered; the message is one line."""

    headline = "Prefect deployment"


def _said(command_obj: Any) -> str | None:
    """The one-line error the command printed (`mfprefect: ...`), if it printed one."""
    try:
        with open(command_obj.log_files["stderr"], encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (OSError, KeyError):
        return None
    said = [line[len("mfprefect: ") :] for line in lines if line.startswith("mfprefect: ")]
    return said[-1] if said else None


def recover(
    cls: type[PrefectDeployedFlow],
    identifier: str,
    metadata: str | None = None,
    env: dict[str, str] | None = None,
) -> PrefectDeployedFlow:
    """The deployed flow `identifier` names (see `PrefectDeployedFlow.from_deployment`), its
    deployer built from the deployment's own manifest and talking to the server in `env`."""
    from metaflow import Deployer, get_metadata

    from .deploy.desired import MANIFEST_ENV, decode_manifest

    deployment, flow_name = _find_deployment(identifier, (env or os.environ).get("PREFECT_API_URL"))
    manifest = decode_manifest(deployment.job_variables["env"][MANIFEST_ENV])
    project = manifest["flow"]["project"]
    top_level: dict[str, Any] = {}
    if project and project["branch"]:
        branch = project["branch"]
        if branch == "prod" or branch.startswith("prod."):
            top_level["production"] = True
            branch = branch[len("prod.") :] if branch.startswith("prod.") else None
        elif branch.startswith("test."):
            branch = branch[len("test.") :]
        if branch:
            top_level["branch"] = branch
    folder = tempfile.mkdtemp(prefix="mfprefect-deployed-")
    flow_file = os.path.join(folder, "deployed_flow.py")
    with open(flow_file, "w", encoding="utf-8") as handle:
        handle.write(stand_in_flow(manifest))
    # The stand-in flow is this process's to remove, once it is done with the deployed flow.
    atexit.register(shutil.rmtree, folder, True)
    deployer = Deployer(flow_file, env=env, **top_level).prefect()
    deployer.name = f"{flow_name}/{deployment.name}"
    deployer.flow_name = manifest["flow"]["class"]
    deployer.metadata = metadata if metadata is not None else get_metadata()
    return cls(deployer=deployer)


def _find_deployment(identifier: str, api_url: str | None) -> tuple[Any, str]:
    """The deployment `Flow/name` (and its flow's name), or for a plain or dotted pipeline name the one named after
    it, else the flow's only mfprefect deployment. PrefectDeployerError when there is none."""
    import asyncio

    async def read() -> Any:
        from prefect.client.orchestration import PrefectClient, get_client
        from prefect.client.schemas.filters import (
            DeploymentFilter,
            DeploymentFilterTags,
            FlowFilter,
            FlowFilterName,
        )
        from prefect.exceptions import ObjectNotFound

        from .deploy.desired import OWNER_TAG

        client = PrefectClient(api_url) if api_url else get_client()
        async with client:
            key = identifier if "/" in identifier else f"{identifier}/{identifier}"
            try:
                found = await client.read_deployment_by_name(key)
            except ObjectNotFound:
                found = None
            if found is not None or "/" in identifier:
                return found, key, []
            owned = await client.read_deployments(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[identifier])),
                deployment_filter=DeploymentFilter(tags=DeploymentFilterTags(all_=[OWNER_TAG])),
            )
            return (owned[0] if len(owned) == 1 else None), key, owned

    try:
        found, key, owned = asyncio.run(read())
    except Exception as exc:  # noqa: BLE001 - said as one line
        raise PrefectDeployerError(
            f"cannot read deployment {identifier} from Prefect "
            f"({api_url or 'PREFECT_API_URL'}): {type(exc).__name__}: "
            + " ".join(str(exc).split())[:200]
        ) from None
    if found is None:
        if owned:
            names = ", ".join(sorted(f"{identifier}/{d.name}" for d in owned))
            raise PrefectDeployerError(
                f"{identifier} has several deployments ({names}); name one as Flow/deployment"
            )
        raise PrefectDeployerError(
            f"no Prefect deployment {key}: give Flow/deployment, or the pipeline name "
            "(project.branch.Flow under @project) of a flow applied with mfprefect"
        )
    return found, key.split("/", 1)[0]


def stand_in_flow(manifest: dict[str, Any]) -> str:
    """A minimal flow file with the deployed flow's name, project and parameters, so `trigger`
    can run from it. Every value is written with repr(): nothing from a deployment becomes code."""
    types = {"str": "str", "int": "int", "float": "float", "bool": "bool", "json": "JSONType"}
    lines = ["from metaflow import FlowSpec, JSONType, Parameter, project, step", ""]
    project = manifest["flow"]["project"]
    if project:
        lines.append(f"@project(name={project['name']!r})")
    lines.append(f"class {manifest['flow']['class']}(FlowSpec):")
    for name, spec in manifest["parameters"].items():
        lines.append(
            f"    {name.replace('-', '_')} = Parameter({name!r}, type={types[spec['type']]}, required=False)"
        )
    lines += [
        "",
        "    @step",
        "    def start(self):",
        "        self.next(self.end)",
        "",
        "    @step",
        "    def end(self):",
        "        pass",
        "",
        "",
        "if __name__ == '__main__':",
        f"    {manifest['flow']['class']}()",
        "",
    ]
    return "\n".join(lines)
