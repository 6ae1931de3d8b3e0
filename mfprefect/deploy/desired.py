"""Manifest → the Prefect objects it should become, as plain values. Pure: no Prefect here.

Everything a deployment needs travels with it: the manifest itself rides in the deployment's
job variables (compressed), so a worker needs only the flow's code and an installed mfprefect.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ManifestError, UsageError
from ..manifest import EventTrigger, FlowFinishedTrigger, Manifest
from .code import CodeRef, CodeSpec, code_spec, fixed_ref

OWNER_TAG = "mfprefect"
PROJECT_TAG_PREFIX = "mfprefect-project:"
NO_PROJECT = "-"
MANIFEST_ENV = "MFPREFECT_MANIFEST"
ENTRYPOINT = "mfprefect.runtime.deployed:pipeline"

_JSON_TYPES = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}


@dataclass(frozen=True)
class ScheduleSpec:
    slug: str
    cron: str
    timezone: str | None
    active: bool


@dataclass(frozen=True)
class AutomationSpec:
    """An automation that runs the deployment: its event trigger and the parameters it passes."""

    name: str
    trigger: Mapping[str, Any]
    parameters: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment as mfprefect wants it on the server (the fields mfprefect manages)."""

    flow_name: str
    name: str
    project: str
    fields: Mapping[str, Any] = field(default_factory=dict)
    schedules: tuple[ScheduleSpec, ...] = ()
    manifest: Mapping[str, Any] = field(default_factory=dict)
    automations: tuple[AutomationSpec, ...] = ()
    # The code its runs use; `code_ref` is None for a package until apply has stored it.
    code: CodeSpec | None = None
    code_ref: CodeRef | None = None
    # Set when the manifest came from a file: what to build a package from.
    source: Manifest | None = field(default=None, compare=False, repr=False)
    # Fields left to the Prefect UI (`deployment.unmanaged`): written on create, never on update.
    unmanaged: frozenset[str] = frozenset()

    @property
    def key(self) -> str:
        return f"{self.flow_name}/{self.name}"


def current_user() -> str:
    """Who applies: the name Metaflow would use for a user branch."""
    for variable in ("METAFLOW_USER", "USER", "USERNAME"):
        if os.environ.get(variable):
            return os.environ[variable]
    raise UsageError(
        "cannot tell who you are for a @project user branch",
        hint="set USER, or export with --branch",
    )


def qualified_name(manifest: Manifest) -> str:
    """The Prefect flow name: `project.branch.Name` under @project (user branch if none), else the name."""
    project = manifest.project
    if project is None:
        return manifest.name
    branch = project.branch or f"user.{current_user()}"
    return f"{project.name}.{branch}.{manifest.name}"


def parameter_key(name: str) -> str:
    """A Metaflow parameter name as a Prefect parameter (Prefect wants identifiers)."""
    return name.replace("-", "_")


def encode_manifest(data: Mapping[str, Any]) -> str:
    """The manifest as one environment value: compact JSON, zlib, base64."""
    raw = json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return "z:" + base64.b64encode(zlib.compress(raw, 9)).decode("ascii")


def decode_manifest(blob: str) -> dict[str, Any]:
    """The manifest a deployment carries (see `encode_manifest`)."""
    if not blob.startswith("z:"):
        raise ValueError("not an mfprefect manifest blob")
    decoded: dict[str, Any] = json.loads(
        zlib.decompress(base64.b64decode(blob[2:])).decode("utf-8")
    )
    return decoded


def prefect_would_render(value: Any) -> bool:
    """Whether Prefect would rewrite `value` as a deployment parameter: the server "hydrates"
    parameters when it stores a deployment update and when it makes a flow run, rendering any
    mapping with a `__prefect_kind` key (a Jinja template, a workspace variable, JSON text).
    Such a default would not reach the flow as the data it is, so it is never sent; the flow
    takes it from the manifest it carries instead."""
    if isinstance(value, dict):
        return "__prefect_kind" in value or any(prefect_would_render(v) for v in value.values())
    if isinstance(value, list):
        return any(prefect_would_render(v) for v in value)
    return False


def _sent_default(default: Any) -> bool:
    return default is not None and not prefect_would_render(default)


def openapi_schema(manifest: Manifest) -> dict[str, Any]:
    """The deployment's parameter schema, as Prefect shows and checks it."""
    properties: dict[str, Any] = {}
    required = []
    for position, (name, spec) in enumerate(manifest.parameters.items()):
        prop: dict[str, Any] = {"title": name, "position": position}
        if spec.type in _JSON_TYPES:
            prop["type"] = _JSON_TYPES[spec.type]
        if spec.help:
            prop["description"] = spec.help
        if _sent_default(spec.default):
            prop["default"] = spec.default
        properties[parameter_key(name)] = prop
        if spec.required and spec.default is None:
            required.append(parameter_key(name))
    schema: dict[str, Any] = {
        "title": "Parameters",
        "type": "object",
        "properties": properties,
        "definitions": {},
    }
    if required:
        schema["required"] = required
    return schema


def deployment_for(manifest: Manifest, data: Mapping[str, Any]) -> DeploymentSpec:
    """The deployment a validated manifest (typed and as plain data) should become."""
    if manifest.deployment.work_pool is None:
        raise UsageError(
            f"{manifest.path or manifest.name}: deployment.work_pool is not set",
            hint="set it in the manifest, or export with --work-pool",
        )
    flow_file = manifest.flow_path()
    code = code_spec(manifest)
    if "{{" in str(flow_file.parent):
        # The worker's pull step fills `{{ ... }}` in its directory from step outputs, Prefect
        # variables, blocks and the worker's environment (`{{ $AWS_SECRET_ACCESS_KEY }}`).
        raise ManifestError(
            f"{manifest.path or manifest.name}: the flow's folder {flow_file.parent} holds `{{{{`, "
            "which Prefect would read as a template on the worker",
            hint="keep the flow (and the checkout) in a folder whose path has no `{{`",
        )
    carried = json.loads(json.dumps(data))
    # The worker runs in the flow's folder (or the package unpacked), so the flow file is named
    # relative to it.
    carried["flow"]["file"] = flow_file.name
    flow_name = qualified_name(manifest)
    project = manifest.project.name if manifest.project else NO_PROJECT
    tags = sorted(set(manifest.deployment.tags) | {OWNER_TAG, PROJECT_TAG_PREFIX + project})
    blob = encode_manifest(carried)
    fields: dict[str, Any] = {
        "description": manifest.description,
        "version": hashlib.sha256(blob.encode("ascii")).hexdigest()[:12],
        "tags": tags,
        "work_pool_name": manifest.deployment.work_pool,
        "work_queue_name": manifest.deployment.work_queue or "default",
        "parameters": {
            parameter_key(n): s.default
            for n, s in manifest.parameters.items()
            if _sent_default(s.default)
        },
        "parameter_openapi_schema": openapi_schema(manifest),
        # Automations pass payload fields as text; the deployed flow types them (see deployed.py).
        "enforce_parameter_schema": False,
        "job_variables": job_variables(manifest, blob, flow_name),
        "concurrency_limit": manifest.deployment.concurrency_limit,
        "paused": manifest.deployment.paused,
        "entrypoint": ENTRYPOINT,
    }
    code_ref = fixed_ref(code)
    if code_ref is not None:
        fields["path"] = code_ref.path
        fields["pull_steps"] = code_ref.pull_steps
    schedules: tuple[ScheduleSpec, ...] = ()
    if manifest.schedule is not None:
        schedules = (
            ScheduleSpec(
                slug="mfprefect-cron",
                cron=manifest.schedule.cron,
                timezone=manifest.schedule.timezone,
                active=not manifest.deployment.paused,
            ),
        )
    name = manifest.deployment.name or flow_name
    return DeploymentSpec(
        flow_name=flow_name,
        name=name,
        project=project,
        fields=fields,
        schedules=schedules,
        manifest=carried,
        automations=automations_for(manifest, f"{flow_name}/{name}"),
        code=code,
        code_ref=code_ref,
        source=manifest,
        unmanaged=frozenset(manifest.deployment.unmanaged),
    )


def job_variables(manifest: Manifest, blob: str, flow_name: str) -> dict[str, Any]:
    """The manifest's job variables, handed to the work pool as they are, with mfprefect's own
    environment merged in (validation refuses a manifest that sets those names itself)."""
    merged = json.loads(json.dumps(dict(manifest.deployment.job_variables)))
    env = dict(merged.get("env") or {})
    env.update({MANIFEST_ENV: blob, "MFPREFECT_FLOW_NAME": flow_name})
    merged["env"] = env
    return merged


def automations_for(manifest: Manifest, key: str) -> tuple[AutomationSpec, ...]:
    """One automation per @trigger event and per @trigger_on_finish upstream flow."""
    out = []
    for number, trigger in enumerate(manifest.triggers):
        name = f"mfprefect {key} trigger {number}"
        if isinstance(trigger, EventTrigger):
            parameters = {
                parameter_key(param): {
                    "__prefect_kind": "jinja",
                    "template": "{{ event.payload." + field_name + " }}",
                }
                for param, field_name in sorted(trigger.parameters.items())
            }
            spec = {
                "expect": [trigger.event],
                "match_related": {},
                "posture": "Reactive",
                "threshold": 1,
                "within": 0,
            }
            out.append(AutomationSpec(name, spec, parameters))
        elif isinstance(trigger, FlowFinishedTrigger):
            upstream = trigger.flow
            if trigger.project:
                upstream = (
                    f"{trigger.project}.{trigger.branch or 'user.' + current_user()}.{trigger.flow}"
                )
            spec = {
                "expect": ["prefect.flow-run.Completed"],
                "match_related": {
                    "prefect.resource.role": "flow",
                    "prefect.resource.name": upstream,
                },
                "posture": "Reactive",
                "threshold": 1,
                "within": 0,
            }
            out.append(AutomationSpec(name, spec, None))
    return tuple(out)
