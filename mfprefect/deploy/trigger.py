"""Starting runs of deployed pipelines: `mfprefect trigger`, plain or as a resume of an earlier run.

A resume is checked here, before any flow run exists: the deployment, the step to re-run, and the
origin run (that it is this pipeline's, has finished, and left data in the datastore). The flow
run then decides on its worker what it clones (see `runtime.deployed.resumed`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from ..errors import RuntimeFailure, UsageError
from .apply import _guarded, _is_connection_error, _unreachable
from .desired import MANIFEST_ENV, decode_manifest, parameter_key

# A deployed run's Metaflow id names its flow run (see runtime.prefect_flow._in_flow_run).
_DEPLOYED_RUN_ID = re.compile(r"prefect-([0-9a-f]{32})")
# Prefect state types of a flow run that has not finished.
_UNFINISHED = ("SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING")


def trigger(deployment: str, parameters: dict[str, Any]) -> str:
    """Start a run of a deployed pipeline; return the flow run id as soon as it exists."""
    from prefect.deployments import run_deployment

    # Prefect's server reads a mapping holding "__prefect_kind" anywhere in a parameter as an
    # instruction (render a template, read a variable). JSON values go as text, which it leaves
    # alone and the deployed pipeline parses (see runtime.deployed).
    parameters = {
        name: json.dumps(value) if isinstance(value, (dict, list)) else value
        for name, value in parameters.items()
    }
    try:
        flow_run = run_deployment(name=deployment, parameters=parameters, timeout=0)
    except Exception as exc:  # noqa: BLE001
        if _is_connection_error(exc):
            raise _unreachable(exc) from None
        raise RuntimeFailure(
            f"cannot trigger {deployment}: {' '.join(str(exc).split())[:300]}"
        ) from None
    return str(flow_run.id)  # type: ignore[union-attr]


def trigger_with_strings(deployment: str, pairs: Sequence[tuple[str, str]]) -> str:
    """Trigger with `--param name=value` strings, typed by the deployment's parameter schema."""
    found = _guarded(lambda: _read_deployment(deployment))
    return trigger(deployment, typed_parameters(deployment, found, pairs))


def resume(
    deployment: str,
    origin_run_id: str,
    step_to_rerun: str | None = None,
    pairs: Sequence[tuple[str, str]] = (),
) -> str:
    """Start a flow run of `deployment` that resumes Metaflow run `origin_run_id`: it clones
    every task that succeeded there (except in `step_to_rerun` and after it) and runs the rest,
    with the origin's parameter values overlaid with `pairs`. Returns the flow run id."""
    from ..manifest import from_data
    from ..runtime.resume import RESUME_PARAMETER, read_origin, rerun_steps

    found = _guarded(lambda: _read_deployment(deployment))
    manifest = from_data(decode_manifest(found.job_variables["env"][MANIFEST_ENV]), deployment)
    rerun_steps(manifest, step_to_rerun)  # an unknown step is a usage error, said now
    _guarded(lambda: _check_origin_flow_run(found, origin_run_id, manifest.flow_class))
    # The tasks to clone are the worker's to read; here, that the run is there, and its values.
    origin = read_origin(manifest, origin_run_id, _datastore(manifest, found), only_parameters=True)
    values = {parameter_key(name): value for name, value in origin.parameters.items()}
    values.update(typed_parameters(deployment, found, pairs))
    values[RESUME_PARAMETER] = {"origin_run_id": origin_run_id, "step_to_rerun": step_to_rerun}
    return trigger(deployment, values)


async def _read_deployment(deployment: str) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        try:
            return await client.read_deployment_by_name(deployment)
        except ObjectNotFound:
            raise RuntimeFailure(
                f"no deployment named {deployment}",
                hint="mfprefect plan/apply shows what is deployed",
            ) from None


async def _check_origin_flow_run(deployment: Any, run_id: str, flow_class: str) -> None:
    """A deployed origin run must be of this deployment's flow and must have finished."""
    matched = _DEPLOYED_RUN_ID.fullmatch(run_id)
    if matched is None:
        return
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        try:
            flow_run = await client.read_flow_run(UUID(matched.group(1)))
        except ObjectNotFound:
            return  # not a flow run of this server: the datastore decides
        if flow_run.flow_id != deployment.flow_id:
            other = await client.read_flow(flow_run.flow_id)
            raise UsageError(
                f"run {run_id} is a run of {other.name}, not of {flow_class}",
                hint="give a run id of this pipeline (its runs are tagged prefect_flow_run:...)",
            )
        state = flow_run.state.type.value if flow_run.state else "PENDING"
        if state in _UNFINISHED:
            raise UsageError(
                f"run {flow_class}/{run_id} has not finished (its flow run is {state.lower()})",
                hint="resume it once it has finished, or cancel it first",
            )


def _datastore(manifest: Any, deployment: Any) -> Any:
    """Where the origin's data is: the manifest's root, else the one apply stored the package
    in (the worker's runs use it), else what this machine's Metaflow configuration says."""
    from ..runtime.datastore import Datastore

    if manifest.runtime.datastore_root is None:
        for step in deployment.pull_steps or []:
            for options in step.values():
                if isinstance(options, dict) and options.get("root"):
                    return Datastore(manifest.flow_class, options["datastore"], options["root"])
    return Datastore.for_manifest(manifest)


def typed_parameters(
    deployment: str, found: Any, pairs: Sequence[tuple[str, str]]
) -> dict[str, Any]:
    """`name=value` strings as the deployment's parameter schema types them."""
    properties = dict(found.parameter_openapi_schema or {}).get("properties", {})
    values: dict[str, Any] = {}
    for name, text in pairs:
        key = parameter_key(name)
        if key not in properties:
            raise UsageError(
                f"unknown parameter {name!r} for {deployment}",
                hint="known: " + ", ".join(properties),
            )
        values[key] = _typed(text, properties[key].get("type"), name)
    return values


def _typed(text: str, kind: str | None, name: str) -> Any:
    try:
        if kind == "integer":
            return int(text)
        if kind == "number":
            return float(text)
        if kind == "boolean":
            if text.lower() in ("true", "false"):
                return text.lower() == "true"
            raise ValueError(text)
        if kind == "string":
            return text
        return json.loads(text)
    except ValueError:
        raise UsageError(
            f"parameter {name}: {text!r} is not a valid {kind or 'JSON value'}"
        ) from None
