"""Metaflow flow → manifest data. The only module that reads Metaflow's flow internals.

It runs inside a Metaflow CLI command (`python flow.py prefect export`), where configs are resolved,
mutators have run, `--with` decorators are attached and flow decorators are initialised.
"""

from __future__ import annotations

import inspect
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import cron
from .errors import ManifestError, UsageError
from .manifest import API_VERSION, KIND, file_sha256

# Decorators that move a step somewhere mfprefect cannot launch it, with the reason we print.
LOCK_WITH_UV = (
    "lock the flow's packages with uv (pyproject.toml and uv.lock) and run with --environment=uv"
)
UNSUPPORTED_STEP_DECORATORS = {
    "parallel": "@parallel needs gang-scheduled workers (num_parallel), which mfprefect does not run",
    "pytorch_parallel": "@pytorch_parallel needs gang-scheduled workers, which mfprefect does not run",
    "batch": "@batch runs the step on AWS Batch; mfprefect runs steps through Prefect workers",
    "kubernetes": "@kubernetes runs the step on Kubernetes; use a Prefect Kubernetes work pool instead",
    "slurm": "@slurm runs the step on Slurm, which mfprefect cannot launch",
    "snowpark": "@snowpark runs the step on Snowpark, which mfprefect cannot launch",
    "nvidia": "@nvidia runs the step on NVIDIA cloud, which mfprefect cannot launch",
    "nvct": "@nvct runs the step on NVIDIA cloud, which mfprefect cannot launch",
    "skypilot_step": "@skypilot_step runs the step through SkyPilot, which mfprefect cannot launch",
    "conda": f"@conda environments are not built by mfprefect; {LOCK_WITH_UV}",
    "pypi": f"@pypi environments are not built by mfprefect; {LOCK_WITH_UV}",
}
UNSUPPORTED_FLOW_DECORATORS = {
    "exit_hook": "@exit_hook is not supported yet; run the hook as the last step instead",
    "conda_base": f"@conda_base environments are not built by mfprefect; {LOCK_WITH_UV}",
    "pypi_base": f"@pypi_base environments are not built by mfprefect; {LOCK_WITH_UV}",
}
DEFAULT_PARALLELISM = 16
# Names that usually hold credentials: if such a variable's value is the exporter's own environment
# value, the manifest refers to the variable instead of copying the secret into the file.
SECRET_NAME = re.compile(
    r"TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|CREDENTIAL", re.I
)

_NODE_KINDS = {
    "start": "linear",
    "linear": "linear",
    "join": "join",
    "split": "split",
    "foreach": "foreach",
    "split-switch": "switch",
    "end": "end",
}


@dataclass
class ExportOptions:
    """What the user asked for on the export command line (None: keep what the manifest has)."""

    deployment_name: str | None = None
    work_pool: str | None = None
    work_queue: str | None = None
    tags: tuple[str, ...] = ()
    workflow_timeout: int | None = None
    notes: list[str] = field(default_factory=list)


def flow_file_of(flow: Any) -> Path:
    """The .py file that defines the flow class."""
    return Path(inspect.getfile(flow.__class__)).resolve()


def build(obj: Any, manifest_path: str | None, options: ExportOptions) -> dict[str, Any]:
    """The manifest, as plain data, for the flow in this Metaflow CLI context.

    `manifest_path` is where it will be written (None for stdout): the flow file is recorded
    relative to it, so the manifest and the flow can move together.
    """
    flow, graph = obj.flow, obj.graph
    problems = unsupported(flow, graph, obj.environment.TYPE)
    if problems:
        raise ManifestError(
            f"{graph.name} uses what mfprefect cannot run",
            hint="\n".join(problems),
        )
    flow_file = flow_file_of(flow)
    base = Path(manifest_path).resolve().parent if manifest_path else Path.cwd()
    relative = Path(os.path.relpath(flow_file, base)).as_posix()

    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": graph.name, "labels": {}},
        "flow": {
            "class": graph.name,
            "file": relative,
            "sha256": file_sha256(flow_file),
            "description": _doc(graph.doc),
            "project": _project(flow),
        },
        "parameters": _parameters(flow),
        "configs": _configs(flow),
        "steps": {node.name: _step(node, options) for node in _ordered_nodes(graph)},
        "schedule": _schedule(flow),
        "triggers": _triggers(flow),
        "deployment": {
            "name": options.deployment_name,
            "work_pool": options.work_pool,
            "work_queue": options.work_queue,
            "tags": list(options.tags),
            "paused": False,
            "concurrency_limit": None,
            "timeout_seconds": options.workflow_timeout,
            "parallelism": DEFAULT_PARALLELISM,
            "environment": {},
        },
        "runtime": {
            "metadata": obj.metadata.TYPE,
            "datastore": obj.flow_datastore.TYPE,
            # A local root is a path on the exporter's machine: leave it to be resolved where it runs.
            "datastore_root": None
            if obj.flow_datastore.TYPE == "local"
            else obj.flow_datastore.datastore_root,
            "environment": obj.environment.TYPE,
        },
    }


def unsupported(flow: Any, graph: Any, environment: str | None = None) -> list[str]:
    """One line per step or flow decorator (or environment) that mfprefect cannot run."""
    lines = []
    if environment in ("conda", "pypi"):
        lines.append(
            f"flow `{graph.name}`: --environment={environment} is not built by mfprefect; "
            + LOCK_WITH_UV
        )
    for node in graph.sorted_nodes:
        step = graph[node]
        for deco in step.decorators:
            reason = UNSUPPORTED_STEP_DECORATORS.get(deco.name)
            if reason is None and getattr(deco, "IS_PARALLEL", False):
                reason = f"@{deco.name} is a parallel decorator, which mfprefect does not run"
            if reason:
                lines.append(f"step `{step.name}`: {reason}")
        if step.parallel_foreach:
            lines.append(
                f"step `{step.name}`: self.next(..., num_parallel=...) needs gang scheduling, which mfprefect does not run"
            )
    for name, reason in UNSUPPORTED_FLOW_DECORATORS.items():
        if flow._flow_decorators.get(name):
            lines.append(f"flow `{graph.name}`: {reason}")
    for _, param in flow._get_parameters():
        if getattr(param, "IS_CONFIG_PARAMETER", False):
            continue
        if type(param).__name__ == "IncludeFile":
            lines.append(
                f"parameter `{param.name}`: IncludeFile is not supported yet; pass a path as a str parameter"
            )
    return lines


def _ordered_nodes(graph: Any) -> list[Any]:
    return [graph[name] for name in graph.sorted_nodes]


def _doc(text: str | None) -> str | None:
    text = (text or "").strip()
    return text or None


def _number(value: Any) -> int | float:
    number = float(value)
    return int(number) if number.is_integer() else number


def _step(node: Any, options: ExportOptions) -> dict[str, Any]:
    kind = _NODE_KINDS[node.type]
    out: dict[str, Any] = {"kind": kind}
    if kind == "switch":
        out["condition"] = node.condition
        out["cases"] = {str(k): v for k, v in node.switch_cases.items()}
    elif kind != "end":
        out["next"] = list(node.out_funcs)
    if kind == "foreach":
        out["foreach"] = node.foreach_param
    decos = {deco.name: deco for deco in node.decorators}
    if "retry" in decos:
        attrs = decos["retry"].attributes
        out["retries"] = {
            "times": int(attrs["times"]),
            "delay_seconds": int(round(float(attrs["minutes_between_retries"]) * 60)),
        }
    if "catch" in decos:
        out["catch"] = {"var": decos["catch"].attributes.get("var")}
    if "timeout" in decos:
        out["timeout_seconds"] = int(decos["timeout"].secs)
    if "environment" in decos:
        out["environment"] = _environment(
            node.name, decos["environment"].attributes.get("vars") or {}, options
        )
    if "resources" in decos:
        attrs = decos["resources"].attributes
        out["resources"] = {
            key: _number(attrs[key]) if key == "cpu" else int(_number(attrs[key]))
            for key in ("cpu", "memory", "gpu", "disk")
            if attrs.get(key) not in (None, "", 0, "0")
            or (key == "gpu" and attrs.get(key) in (0, "0"))
        }
    dynamic = [
        deco.make_decorator_spec()
        for deco in node.decorators
        if not getattr(deco, "statically_defined", True) and not getattr(deco, "inserted_by", None)
    ]
    if dynamic:
        out["with"] = dynamic
    doc = _doc(node.doc)
    if doc:
        out["doc"] = doc
    return out


def _environment(step: str, variables: dict[str, Any], options: ExportOptions) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in sorted(variables):
        value = str(variables[name])
        if SECRET_NAME.search(name) and os.environ.get(name) == value:
            out[name] = {"env": name}
            options.notes.append(
                f"step `{step}`: {name} looks like a secret and matches your environment, "
                f"so the manifest reads it from the worker's environment ({{env: {name}}})"
            )
        else:
            out[name] = value
            if SECRET_NAME.search(name) and value:
                # Written as it is (it is not your environment's value), so say so, without it.
                options.notes.append(
                    f"step `{step}`: {name} looks like a secret but is written into the "
                    f"manifest as a literal value; refer to it instead with {{env: {name}}} "
                    "or {secret: block-name}"
                )
    return out


def _parameter_type(param: Any, default: Any) -> str:
    declared = param.kwargs.get("type")
    if declared is None:
        declared = type(default) if default is not None else str
    if declared is bool:
        return "bool"
    if declared is int:
        return "int"
    if declared is float:
        return "float"
    if declared is str:
        return "str"
    if getattr(declared, "name", None) == "JSON":
        return "json"
    raise ManifestError(
        f"parameter `{param.name}` has type {getattr(declared, '__name__', declared)!r}",
        hint="mfprefect supports str, int, float, bool and JSONType parameters",
    )


def _parameters(flow: Any) -> dict[str, Any]:
    from metaflow.parameters import deploy_time_eval

    out: dict[str, Any] = {}
    for _, param in flow._get_parameters():
        if getattr(param, "IS_CONFIG_PARAMETER", False):
            continue
        default = deploy_time_eval(param.kwargs.get("default"))
        kind = _parameter_type(param, default)
        if kind == "json" and isinstance(default, str):
            try:
                default = json.loads(default)
            except ValueError as exc:
                raise ManifestError(
                    f"parameter `{param.name}`: default is not valid JSON ({exc})"
                ) from None
        elif kind == "float" and isinstance(default, int) and not isinstance(default, bool):
            default = float(default)
        out[param.name] = {
            "type": kind,
            "default": _plain(default),
            "required": bool(param.kwargs.get("required", False)),
            "help": param.kwargs.get("help") or None,
        }
    return out


def _plain(value: Any) -> Any:
    """JSON-shaped copy of a value (ConfigValue, tuples and the like become dicts and lists)."""
    return json.loads(json.dumps(value, default=_to_jsonable, sort_keys=False))


def _to_jsonable(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise UsageError(f"cannot write a {type(value).__name__} into a manifest")


def _configs(flow: Any) -> dict[str, Any]:
    from metaflow.flowspec import FlowStateItems

    state = flow.__class__._flow_state.get(FlowStateItems.CONFIGS, {})
    out: dict[str, Any] = {}
    for name in state:
        value, _plain_flag = state[name]
        out[name] = {"value": _plain(value)}
    return out


def _project(flow: Any) -> dict[str, Any] | None:
    if not flow._flow_decorators.get("project"):
        return None
    from metaflow import current

    return {
        "name": current.get("project_name"),
        # A user branch is `user.<who exported>`: not something a shared, reviewed file may hold.
        # null means "the user branch of whoever runs it".
        "branch": None if current.get("is_user_branch") else current.get("branch_name"),
        "production": bool(current.get("is_production")),
    }


def _schedule(flow: Any) -> dict[str, Any] | None:
    decos = flow._flow_decorators.get("schedule")
    if not decos or not decos[0].schedule:
        return None
    deco = decos[0]
    return {"cron": cron.to_standard_cron(deco.schedule), "timezone": deco.timezone or None}


def _triggers(flow: Any) -> list[dict[str, Any]]:
    from metaflow import current

    out: list[dict[str, Any]] = []
    parameter_names = [
        p.name for _, p in flow._get_parameters() if not getattr(p, "IS_CONFIG_PARAMETER", False)
    ]
    for deco in flow._flow_decorators.get("trigger") or []:
        deco.format_deploytime_value()
        events = list(deco.triggers)
        for event in events:
            mapping = {str(k): str(v) for k, v in (event.get("parameters") or {}).items()}
            if not mapping and len(events) == 1:
                # Metaflow's rule: one event and no mapping fills each parameter from the
                # payload field of the same name. Written out, so reviewers see it.
                mapping = {name: name for name in parameter_names}
            out.append({"kind": "event", "event": str(event["name"]), "parameters": mapping})
    for deco in flow._flow_decorators.get("trigger_on_finish") or []:
        deco.format_deploytime_value()
        for trig in deco.triggers:
            project = trig.get("project") or current.get("project_name")
            branch = trig.get("branch") or (
                None if current.get("is_user_branch") else current.get("branch_name")
            )
            out.append(
                {
                    "kind": "flow_finished",
                    "flow": trig["flow"],
                    "project": project,
                    "branch": branch if project else None,
                }
            )
    return out
