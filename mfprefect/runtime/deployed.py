"""The entrypoint of every mfprefect deployment: `mfprefect.runtime.deployed:pipeline`.

A worker imports this module and asks for `pipeline`; the flow is built then, from the manifest the
deployment carries in its environment (see `mfprefect.deploy.desired`).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..deploy.desired import MANIFEST_ENV, decode_manifest, parameter_key
from ..manifest import Manifest, from_data, validate_data
from .commands import parse_value
from .fetch import cleanup
from .prefect_flow import execute
from .resolved import ResolvedRun, resolve
from .resume import RESUME_PARAMETER

FLOW_NAME_ENV = "MFPREFECT_FLOW_NAME"
_ANNOTATIONS: dict[str, Any] = {"str": str, "int": int, "float": float, "bool": bool, "json": Any}


def carried_manifest() -> Manifest:
    """The manifest from this process's environment, validated again before anything runs."""
    blob = os.environ.get(MANIFEST_ENV)
    if not blob:
        raise RuntimeError(
            f"{MANIFEST_ENV} is not set: this flow runs only from an mfprefect deployment"
        )
    data = decode_manifest(blob)
    errors = [d.text() for d in validate_data(data) if d.severity == "error"]
    if errors:
        raise RuntimeError("the deployment's manifest is invalid:\n" + "\n".join(errors))
    return from_data(data, str(Path.cwd() / "deployed-manifest.yaml"))


def build(manifest: Manifest) -> Any:
    """A flow whose signature is the pipeline's parameters, so Prefect passes them by name."""
    from prefect import flow

    names = {parameter_key(name): name for name in manifest.parameters}

    async def pipeline(**given: Any) -> str:
        asked = given.pop(RESUME_PARAMETER, None)
        parameters = {}
        for key, value in given.items():
            spec = manifest.parameters[names[key]]
            if isinstance(value, str) and spec.type != "str":
                # An automation passes event payload fields as text: type them here. An absent
                # field renders as "" and leaves the default in place.
                if value == "":
                    continue
                value = parse_value(spec, value)
            if value is not None:
                parameters[spec.name] = value
        try:
            run = await asyncio.to_thread(this_run, manifest, asked, parameters)
            return await execute(run)
        finally:
            # The package this run was unpacked from (if any) is this run's alone.
            cleanup(os.getcwd())

    pipeline.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter(
                key,
                inspect.Parameter.KEYWORD_ONLY,
                default=manifest.parameters[name].default,
                annotation=_ANNOTATIONS[manifest.parameters[name].type],
            )
            for key, name in names.items()
        ]
        + [
            inspect.Parameter(
                RESUME_PARAMETER, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Any
            )
        ]
    )
    make_flow: Any = flow
    return make_flow(
        pipeline,
        name=os.environ.get(FLOW_NAME_ENV) or manifest.name,
        timeout_seconds=manifest.deployment.timeout_seconds,
        validate_parameters=False,
        persist_result=False,
        log_prints=False,
    )


def this_run(manifest: Manifest, asked: Any, parameters: Mapping[str, Any]) -> ResolvedRun:
    """This flow run's run, inside it; with `asked`, a resume of `asked["origin_run_id"]` (see
    `mfprefect trigger --resume`): what it clones is decided here, on the worker, from the
    datastore the run uses. Its environment references are checked with its secrets, later."""
    if isinstance(asked, str):  # a mapping travels as JSON text (see deploy.trigger)
        asked = json.loads(asked) if asked else None
    return resolve(
        manifest,
        parameters,
        env=os.environ,
        clone_run_id=str(asked["origin_run_id"]) if asked else None,
        step_to_rerun=asked.get("step_to_rerun") if asked else None,
    )


def __getattr__(name: str) -> Any:
    if name == "pipeline":
        return build(carried_manifest())
    raise AttributeError(name)
