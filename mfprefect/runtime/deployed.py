"""The entrypoint of every mfprefect deployment: `mfprefect.runtime.deployed:pipeline`.

A worker imports this module and asks for `pipeline`; the flow is built then, from the manifest the
deployment carries in its environment (see `mfprefect.deploy.desired`).
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

from ..deploy.desired import MANIFEST_ENV, decode_manifest, parameter_key
from ..manifest import Manifest, from_data, validate_data
from .commands import parse_value
from .fetch import cleanup
from .prefect_flow import RunOptions, execute

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
            return await execute(manifest, parameters, RunOptions())
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


def __getattr__(name: str) -> Any:
    if name == "pipeline":
        return build(carried_manifest())
    raise AttributeError(name)
