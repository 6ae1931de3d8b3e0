"""Metaflow step-command lines and environments for a manifest's steps. Pure: no processes here.

Top-level options go before the subcommand and step options after it; every value is its own
argument (nothing from a manifest ever passes through a shell).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError
from ..manifest import EnvRef, EnvValue, Manifest, ParameterSpec, SecretRef
from .datastore import cards_root

# Metaflow gives up past this many attempts of one task (metaflow_config.MAX_ATTEMPTS).
MAX_ATTEMPTS = 6
# What @catch adds to a step's retry budget (catch_decorator.NUM_FALLBACK_RETRIES).
CATCH_FALLBACK_RETRIES = 3
# A step process exiting with this code asks not to be retried (Metaflow's convention).
NO_RETRY_EXIT_CODE = 202


@dataclass(frozen=True)
class RunContext:
    """What every step command of one run shares."""

    manifest: Manifest
    python: str
    flow_file: str
    datastore_root: str
    run_id: str
    tags: tuple[str, ...] = ()
    namespace: str | None = None
    base_env: Mapping[str, str] = field(default_factory=dict)


def project_options(manifest: Manifest) -> list[str]:
    """`--branch` / `--production` as @project expects them, from the recorded branch name."""
    project = manifest.project
    if project is None or project.branch is None:
        return []
    branch = project.branch
    if branch == "prod":
        return ["--production"]
    if branch.startswith("prod."):
        return ["--production", "--branch", branch[len("prod.") :]]
    if branch.startswith("test."):
        return ["--branch", branch[len("test.") :]]
    return ["--branch", branch]


def top_level(ctx: RunContext, decospecs: tuple[str, ...] = ()) -> list[str]:
    """The interpreter, flow file and the options before the subcommand."""
    runtime = ctx.manifest.runtime
    args = [
        ctx.python,
        ctx.flow_file,
        "--quiet",
        "--no-pylint",
        f"--metadata={runtime.metadata}",
        f"--environment={runtime.environment}",
        f"--datastore={runtime.datastore}",
        f"--datastore-root={ctx.datastore_root}",
        "--event-logger=nullSidecarLogger",
        "--monitor=nullSidecarMonitor",
    ]
    for spec in decospecs:
        args.append(f"--with={spec}")
    return args + project_options(ctx.manifest)


def parameter_value(spec: ParameterSpec, value: Any) -> str:
    """A parameter value as Metaflow's command line reads it."""
    if spec.type == "json":
        return value if isinstance(value, str) else json.dumps(value)
    if spec.type == "bool":
        if isinstance(value, str):
            return value.lower()
        return "true" if value else "false"
    return str(value)


def parameter_values(manifest: Manifest, given: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults overlaid with the values given; refuses unknown and missing required parameters."""
    unknown = sorted(set(given) - set(manifest.parameters))
    if unknown:
        known = ", ".join(manifest.parameters) or "none"
        raise UsageError(
            f"unknown parameter(s): {', '.join(unknown)}",
            hint=f"this pipeline's parameters: {known}",
        )
    values = {name: spec.default for name, spec in manifest.parameters.items()}
    values.update(given)
    missing = [
        name
        for name, spec in manifest.parameters.items()
        if spec.required and values.get(name) is None
    ]
    if missing:
        raise UsageError(
            f"missing required parameter(s): {', '.join(missing)}",
            hint="pass them as " + " ".join(f"--param {name}=VALUE" for name in missing),
        )
    return values


def parse_value(spec: ParameterSpec, text: str) -> Any:
    """A command-line string as a value of the parameter's type; UsageError when it is not one."""
    try:
        if spec.type == "int":
            return int(text)
        if spec.type == "float":
            return float(text)
        if spec.type == "json":
            return json.loads(text)
    except ValueError:
        raise UsageError(f"parameter {spec.name}: {text!r} is not a valid {spec.type}") from None
    if spec.type == "bool":
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes", "y", "on"):
            return True
        if lowered in ("false", "0", "no", "n", "off"):
            return False
        raise UsageError(f"parameter {spec.name}: {text!r} is not a valid bool (true or false)")
    return text


def parse_pairs(items: Sequence[str], option: str = "--param") -> list[tuple[str, str]]:
    """`NAME=VALUE` strings as (name, value) pairs; UsageError naming `option` otherwise."""
    pairs = []
    for item in items:
        name, sep, text = item.partition("=")
        if not sep:
            raise UsageError(f"{option} {item!r} is not NAME=VALUE")
        pairs.append((name, text))
    return pairs


def parse_assignments(manifest: Manifest, assignments: tuple[str, ...]) -> dict[str, Any]:
    """`--param name=value` pairs, typed by the manifest's parameter specs."""
    values: dict[str, Any] = {}
    for name, text in parse_pairs(assignments):
        spec = manifest.parameters.get(name) or manifest.parameters.get(name.replace("_", "-"))
        if spec is None:
            known = ", ".join(manifest.parameters) or "none"
            raise UsageError(
                f"unknown parameter {name!r}", hint=f"this pipeline's parameters: {known}"
            )
        values[spec.name] = parse_value(spec, text)
    return values


def init_command(ctx: RunContext, task_id: str, values: Mapping[str, Any]) -> list[str]:
    """`init`: creates the `_parameters` task that holds the run's parameter values."""
    args = top_level(ctx) + ["init", "--run-id", ctx.run_id, "--task-id", task_id]
    for tag in ctx.tags:
        args += ["--tag", tag]
    for name, spec in ctx.manifest.parameters.items():
        value = values.get(name)
        if value is not None:
            args += [f"--{name}", parameter_value(spec, value)]
    return args


def register_command(ctx: RunContext) -> list[str] | None:
    """Registers the run with a metadata service before `init` (None: nothing to register)."""
    if ctx.manifest.runtime.metadata != "service":
        return None
    # mfprefect's own command: run by this interpreter, not a locked environment's.
    here = dataclasses.replace(ctx, python=sys.executable)
    args = top_level(here) + ["prefect", "register-run", "--run-id", ctx.run_id]
    for tag in ctx.tags:
        args += ["--tag", tag]
    return args


def max_retries(manifest: Manifest, step: str) -> tuple[int, int]:
    """(user-code retries, total retries) for a step, as Metaflow's own runtime counts them."""
    spec = manifest.steps[step]
    user = spec.retries.times if spec.retries else 0
    errors = CATCH_FALLBACK_RETRIES if spec.catch else 0
    return user, min(user + errors, MAX_ATTEMPTS - 1)


def step_command(
    ctx: RunContext,
    step: str,
    task_id: str,
    input_paths: list[str],
    *,
    split_index: int | None = None,
    retry_count: int | str = 0,
    clone_only: str | None = None,
    clone_run_id: str | None = None,
) -> list[str]:
    """`step`: runs one Metaflow task (or, with clone_only, copies one from an earlier run)."""
    spec = ctx.manifest.steps[step]
    user_retries, _ = max_retries(ctx.manifest, step)
    args = top_level(ctx, spec.with_) + ["step", step, "--run-id", ctx.run_id, "--task-id", task_id]
    args += ["--input-paths", ",".join(input_paths)]
    if split_index is not None:
        args += ["--split-index", str(split_index)]
    args += ["--retry-count", str(retry_count), "--max-user-code-retries", str(user_retries)]
    for tag in ctx.tags:
        args += ["--tag", tag]
    args += ["--namespace", ctx.namespace or ""]
    if clone_only:
        args += ["--clone-only", clone_only]
    if clone_run_id:
        args += ["--clone-run-id", clone_run_id]
    return args


# Where Metaflow's card writer finds its root on a remote datastore (metaflow_config). A local
# datastore has no such setting that works: `CardDatastore.get_storage_root("local")` returns
# None when METAFLOW_CARD_LOCALROOT is set, and otherwise looks for `.metaflow` from the working
# directory up (see `fetch.pull_package` for deployed runs).
CARD_ROOT_VARIABLES = {
    "s3": "METAFLOW_CARD_S3ROOT",
    "azure": "METAFLOW_CARD_AZUREROOT",
    "gs": "METAFLOW_CARD_GSROOT",
}


def card_variables(ctx: RunContext) -> dict[str, str]:
    """Where every step writes its cards: the run's datastore root + `mf.cards`, where
    Metaflow's client reads a task's cards (its recorded `ds-root`). Left to itself the writer
    takes the root from the machine's configuration (METAFLOW_DATASTORE_SYSROOT_S3), so on a
    worker that knows only the manifest's root the cards went where no client looks."""
    name = CARD_ROOT_VARIABLES.get(ctx.manifest.runtime.datastore)
    if name is None or not ctx.datastore_root:
        return {}
    return {name: cards_root(ctx.datastore_root)}


def runtime_environment(ctx: RunContext) -> dict[str, str]:
    """The runner's environment plus what every step of the run shares (no manifest variables)."""
    env = dict(ctx.base_env)
    if ctx.manifest.runtime.datastore == "local":
        # Local metadata finds its folder through this variable, not --datastore-root.
        env["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = os.path.dirname(ctx.datastore_root.rstrip("/"))
    env.update(card_variables(ctx))
    if ctx.manifest.configs:
        env["METAFLOW_FLOW_CONFIG_VALUE"] = json.dumps(dict(ctx.manifest.configs))
    return env


def environment(ctx: RunContext, step: str | None, resolve_secret: Any = None) -> dict[str, str]:
    """The environment of a step process: the runner's, the datastore, configs, then the
    deployment's and the step's own variables (references resolved here, at run time)."""
    env = runtime_environment(ctx)
    manifest = ctx.manifest
    layers: list[Mapping[str, EnvValue]] = [manifest.deployment.environment]
    if step is not None:
        layers.append(manifest.steps[step].environment)
    for layer in layers:
        for name, value in layer.items():
            env[name] = resolve(value, env, resolve_secret)
    return env


def resolve(value: EnvValue, env: Mapping[str, str], resolve_secret: Any = None) -> str:
    """A literal, a worker variable or a Prefect Secret block's value."""
    if isinstance(value, EnvRef):
        if value.name not in env:
            raise UsageError(
                f"environment variable {value.name} is not set where the pipeline runs",
                hint=f"set {value.name} in the worker's environment (the manifest refers to it with {{env: {value.name}}})",
            )
        return env[value.name]
    if isinstance(value, SecretRef):
        if resolve_secret is None:
            raise UsageError(f"no way to read Prefect Secret block `{value.block}` here")
        return str(resolve_secret(value.block))
    return value


def secret_values(env: Mapping[str, str], manifest: Manifest, step: str | None) -> list[str]:
    """The values in `env` that came from references: to be masked in every log line."""
    refs: list[str] = []
    layers: list[Mapping[str, EnvValue]] = [manifest.deployment.environment]
    if step is not None:
        layers.append(manifest.steps[step].environment)
    for layer in layers:
        for name, value in layer.items():
            if isinstance(value, (EnvRef, SecretRef)) and env.get(name):
                refs.append(env[name])
    return refs


def run_secret_values(ctx: RunContext, resolve_secret: Any = None) -> list[str]:
    """Every value that came from a reference, for any step of the run: each step inherits the
    runner's environment, so a value read for one step must be masked in all of them."""
    found: dict[str, None] = {}
    for step in [None, *ctx.manifest.steps]:
        for value in secret_values(environment(ctx, step, resolve_secret), ctx.manifest, step):
            found[value] = None
    return list(found)


def remote_environment(
    ctx: RunContext, step: str | None
) -> tuple[dict[str, str], dict[str, EnvRef | SecretRef]]:
    """What a step running on another machine adds to that machine's own environment: plain
    values, and the references it resolves there (so secret values never travel with the task).
    A later layer's literal replaces an earlier reference, and the other way round."""
    plain: dict[str, str] = {}
    refs: dict[str, EnvRef | SecretRef] = {}
    user = next(
        (ctx.base_env[n] for n in USER_VARIABLES if ctx.base_env.get(n, "root") != "root"), None
    )
    if user:
        # Every task of the run records the same user, whichever machine runs it.
        plain["METAFLOW_USER"] = user
    plain.update(card_variables(ctx))
    if ctx.manifest.configs:
        plain["METAFLOW_FLOW_CONFIG_VALUE"] = json.dumps(dict(ctx.manifest.configs))
    layers: list[Mapping[str, EnvValue]] = [ctx.manifest.deployment.environment]
    if step is not None:
        layers.append(ctx.manifest.steps[step].environment)
    for layer in layers:
        for name, value in layer.items():
            if isinstance(value, (EnvRef, SecretRef)):
                refs[name] = value
                plain.pop(name, None)
            else:
                plain[name] = value
                refs.pop(name, None)
    return plain, refs


# Where Metaflow finds the user's name, in its own order (metaflow.util.get_username).
USER_VARIABLES = ("METAFLOW_USER", "SUDO_USER", "USERNAME", "USER")
