"""The objects Metaflow's Deployer API hands back for Prefect: deployed flows and triggered runs."""

from __future__ import annotations

import json
import sys
import tempfile
from typing import Any, ClassVar

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
            content = handle_timeout(
                attribute_file_fd, command_obj, self.deployer.file_read_timeout
            )
            command_obj.sync_wait()
            if command_obj.process.returncode == 0:
                return PrefectTriggeredRun(deployer=self.deployer, content=content)
        raise RuntimeError(
            f"Error triggering {self.deployer.name} on Prefect for {self.deployer.flow_file}"
        )

    @classmethod
    def from_deployment(cls, identifier: str, metadata: str | None = None) -> PrefectDeployedFlow:
        """Recover a deployed flow from `Flow/deployment`, or from a pipeline name such as
        `project.branch.Flow` (whose deployment has the same name)."""
        import asyncio

        from metaflow import Deployer, get_metadata

        from .deploy.desired import MANIFEST_ENV, decode_manifest

        key = identifier if "/" in identifier else f"{identifier}/{identifier}"

        async def read() -> Any:
            from prefect.client.orchestration import get_client

            async with get_client() as client:
                return await client.read_deployment_by_name(key)

        try:
            deployment = asyncio.run(read())
        except Exception as exc:
            raise RuntimeError(f"no Prefect deployment {key}: {exc}") from None
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
        source = stand_in_flow(manifest)
        with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as handle:
            handle.write(source)
        deployer = Deployer(handle.name, **top_level).prefect()
        deployer.name = key
        deployer.flow_name = manifest["flow"]["class"]
        deployer.metadata = metadata if metadata is not None else get_metadata()
        return cls(deployer=deployer)


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
