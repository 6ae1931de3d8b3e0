"""The pipeline manifest: its typed model, and validation (JSON Schema plus graph rules).

Imports neither Metaflow nor Prefect: `mfprefect validate` and `graph` run from this module alone.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from .. import cron, kinds, yamlsafe
from ..diagnostics import ERROR, WARNING, Diagnostic, did_you_mean, value_text
from ..errors import ManifestError, UsageError

API_VERSION = "mfprefect/v1"
KIND = "Pipeline"
SCHEMA_NAME = "pipeline-v1.schema.json"
STEP_KINDS = ("linear", "split", "join", "foreach", "switch", "end")
PARAMETER_TYPES = ("str", "int", "float", "bool", "json")
# Deployment fields a manifest may leave to the Prefect UI (`deployment.unmanaged`).
UNMANAGEABLE = ("paused", "schedule.active", "concurrency_limit")

# ---------------------------------------------------------------------------------------------
# The typed model


@dataclass(frozen=True)
class SecretRef:
    """An environment value read from a Prefect Secret block when the step runs."""

    block: str


@dataclass(frozen=True)
class EnvRef:
    """An environment value read from the worker's own environment when the step runs."""

    name: str


EnvValue = str | SecretRef | EnvRef


@dataclass(frozen=True)
class Retries:
    times: int
    delay_seconds: int


@dataclass(frozen=True)
class Resources:
    cpu: float | None = None
    memory: int | None = None
    gpu: int | None = None
    disk: int | None = None


@dataclass(frozen=True)
class StepSpec:
    """One Metaflow step as the manifest describes it."""

    name: str
    kind: str
    next: tuple[str, ...] = ()
    foreach: str | None = None
    condition: str | None = None
    cases: Mapping[str, str] = field(default_factory=dict)
    retries: Retries | None = None
    catch: bool = False
    catch_var: str | None = None
    timeout_seconds: int | None = None
    environment: Mapping[str, EnvValue] = field(default_factory=dict)
    resources: Resources | None = None
    with_: tuple[str, ...] = ()
    doc: str | None = None

    @property
    def successors(self) -> tuple[str, ...]:
        """Every step this one may hand over to (switch cases included, in order, once each)."""
        if self.kind == "switch":
            return tuple(dict.fromkeys(self.cases.values()))
        return self.next


@dataclass(frozen=True)
class ParameterSpec:
    name: str
    type: str
    default: Any
    required: bool
    help: str | None = None


@dataclass(frozen=True)
class Project:
    name: str
    branch: str | None
    production: bool


@dataclass(frozen=True)
class Schedule:
    cron: str
    timezone: str | None


@dataclass(frozen=True)
class EventTrigger:
    event: str
    parameters: Mapping[str, str]
    kind: str = "event"


@dataclass(frozen=True)
class FlowFinishedTrigger:
    flow: str
    project: str | None
    branch: str | None
    kind: str = "flow_finished"


@dataclass(frozen=True)
class CodeSource:
    """Where a deployed run finds the flow's code (`deployment.code`)."""

    kind: str = "package"  # package | git | path
    url: str | None = None
    ref: str | None = None
    path: str | None = None
    credentials: SecretRef | None = None


@dataclass(frozen=True)
class Executor:
    """Where a run's step processes execute (`deployment.executor`)."""

    kind: str = "local"  # local | dask
    # The Dask scheduler: an address, or a variable of the machine that runs the flow.
    address: str | EnvRef | None = None
    # At most this many of one run's steps on the cluster at once (None: deployment.parallelism).
    max_concurrent_steps: int | None = None


@dataclass(frozen=True)
class Deployment:
    name: str | None
    work_pool: str | None
    work_queue: str | None
    tags: tuple[str, ...]
    paused: bool
    concurrency_limit: int | None
    timeout_seconds: int | None
    parallelism: int
    environment: Mapping[str, EnvValue]
    code: CodeSource = CodeSource()
    job_variables: Mapping[str, Any] = field(default_factory=dict)
    executor: Executor = Executor()
    # Fields left to people in the Prefect UI (UNMANAGEABLE): set on create, then never reset.
    unmanaged: tuple[str, ...] = ()

    @property
    def step_slots(self) -> int:
        """How many of one run's steps may run at once."""
        if self.executor.kind == "dask" and self.executor.max_concurrent_steps:
            return self.executor.max_concurrent_steps
        return self.parallelism


@dataclass(frozen=True)
class RuntimeSettings:
    metadata: str
    datastore: str
    datastore_root: str | None
    environment: str


@dataclass(frozen=True)
class Manifest:
    """A validated pipeline manifest; `path` is where it was read from (None when built in memory)."""

    name: str
    labels: Mapping[str, str]
    flow_class: str
    flow_file: str
    flow_sha256: str
    description: str | None
    project: Project | None
    parameters: Mapping[str, ParameterSpec]
    configs: Mapping[str, Any]
    steps: Mapping[str, StepSpec]
    schedule: Schedule | None
    triggers: tuple[EventTrigger | FlowFinishedTrigger, ...]
    deployment: Deployment
    runtime: RuntimeSettings
    path: str | None = None
    # The validated plain data this model was built from (what a runner process is sent).
    data: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def start_step(self) -> str:
        return _start_of({n: s.successors for n, s in self.steps.items()}) or next(iter(self.steps))

    @property
    def end_step(self) -> str:
        return next(name for name, step in self.steps.items() if step.kind == "end")

    def flow_path(self) -> Path:
        """The flow file as an absolute path, resolved against the manifest's folder."""
        base = Path(self.path).resolve().parent if self.path else Path.cwd()
        return (base / self.flow_file).resolve()


def _env_value(raw: Any) -> EnvValue:
    if isinstance(raw, dict):
        return SecretRef(raw["secret"]) if "secret" in raw else EnvRef(raw["env"])
    return str(raw)


def _code_source(raw: Any) -> CodeSource:
    if not raw:
        return CodeSource()
    credentials = raw.get("credentials")
    return CodeSource(
        kind=raw["kind"],
        url=raw.get("url"),
        ref=raw.get("ref"),
        path=raw.get("path"),
        credentials=SecretRef(credentials["secret"]) if credentials else None,
    )


def _executor(raw: Any) -> Executor:
    if not raw:
        return Executor()
    address = raw.get("address")
    return Executor(
        kind=raw["kind"],
        address=EnvRef(address["env"]) if isinstance(address, dict) else address,
        max_concurrent_steps=raw.get("max_concurrent_steps"),
    )


def _step(name: str, raw: dict[str, Any]) -> StepSpec:
    retries = raw.get("retries")
    resources = raw.get("resources")
    catch = raw.get("catch")
    return StepSpec(
        name=name,
        kind=raw["kind"],
        next=tuple(raw.get("next", ())),
        foreach=raw.get("foreach"),
        condition=raw.get("condition"),
        cases=dict(raw.get("cases", {})),
        retries=Retries(retries["times"], retries["delay_seconds"]) if retries else None,
        catch=catch is not None,
        catch_var=catch.get("var") if catch else None,
        timeout_seconds=raw.get("timeout_seconds"),
        environment={k: _env_value(v) for k, v in raw.get("environment", {}).items()},
        resources=Resources(**resources) if resources is not None else None,
        with_=tuple(raw.get("with", ())),
        doc=raw.get("doc"),
    )


def from_data(data: dict[str, Any], path: str | None = None) -> Manifest:
    """Build the typed model from plain data that has already passed `validate_data`."""
    flow = data["flow"]
    project = flow.get("project")
    schedule = data.get("schedule")
    deployment = data["deployment"]
    runtime = data["runtime"]
    triggers: list[EventTrigger | FlowFinishedTrigger] = []
    for raw in data.get("triggers", []):
        if raw["kind"] == "event":
            triggers.append(EventTrigger(raw["event"], dict(raw["parameters"])))
        else:
            triggers.append(FlowFinishedTrigger(raw["flow"], raw["project"], raw["branch"]))
    return Manifest(
        name=data["metadata"]["name"],
        labels=dict(data["metadata"].get("labels", {})),
        flow_class=flow["class"],
        flow_file=flow["file"],
        flow_sha256=flow["sha256"],
        description=flow.get("description"),
        project=Project(project["name"], project["branch"], project["production"])
        if project
        else None,
        parameters={
            name: ParameterSpec(name, p["type"], p["default"], p["required"], p.get("help"))
            for name, p in data["parameters"].items()
        },
        configs={name: c["value"] for name, c in data["configs"].items()},
        steps={name: _step(name, raw) for name, raw in data["steps"].items()},
        schedule=Schedule(schedule["cron"], schedule["timezone"]) if schedule else None,
        triggers=tuple(triggers),
        deployment=Deployment(
            name=deployment["name"],
            work_pool=deployment["work_pool"],
            work_queue=deployment["work_queue"],
            tags=tuple(deployment["tags"]),
            paused=deployment["paused"],
            concurrency_limit=deployment["concurrency_limit"],
            timeout_seconds=deployment["timeout_seconds"],
            parallelism=deployment["parallelism"],
            environment={k: _env_value(v) for k, v in deployment["environment"].items()},
            code=_code_source(deployment.get("code")),
            job_variables=dict(deployment.get("job_variables") or {}),
            executor=_executor(deployment.get("executor")),
            unmanaged=tuple(deployment.get("unmanaged") or ()),
        ),
        runtime=RuntimeSettings(
            runtime["metadata"],
            runtime["datastore"],
            runtime["datastore_root"],
            runtime["environment"],
        ),
        path=path,
        data=data,
    )


# ---------------------------------------------------------------------------------------------
# Loading


def load(path: str, display: str | None = None) -> Manifest:
    """Read, validate and type a manifest file; raise ManifestError with every diagnostic."""
    doc, diagnostics = check_file(path, display)
    errors = [d for d in diagnostics if d.severity == ERROR]
    if errors or doc is None:
        raise ManifestError(
            f"{display or path}: {len(errors)} problem(s) in the manifest",
            diagnostics,
            hint=f"run `mfprefect validate {display or path}` for the list",
        )
    kind = kinds.kind_of(doc.data)
    if kind != kinds.PIPELINE:
        raise ManifestError(
            f"{display or path}: a {kind} manifest declares a workspace object, not a pipeline",
            hint="run, compile and graph take a Pipeline manifest; plan and apply take both",
        )
    return from_data(doc.data, path)


def check_file(
    path: str, display: str | None = None
) -> tuple[yamlsafe.Document | None, list[Diagnostic]]:
    """Every diagnostic for one manifest file (the document too, when it could be parsed)."""
    try:
        doc = yamlsafe.load(path, display)
    except yamlsafe.LoadError as exc:
        return None, yamlsafe.problems_of(exc)
    diagnostics = validate_document(doc)
    if kinds.kind_of(doc.data) == kinds.PIPELINE and not any(
        d.severity == ERROR for d in diagnostics
    ):
        diagnostics += _flow_file_warnings(doc, Path(path).resolve().parent)
    return doc, sorted(set(diagnostics))


def diagnostic_at(
    path: str | None, where: tuple[Any, ...], rule: str, message: str, what: str
) -> Diagnostic:
    """An error found later (by plan, against the server) placed at `where` in the manifest
    file `path`; with no file to point into, one naming `what` instead."""
    doc = check_file(path)[0] if path else None
    if doc is not None:
        return doc.diagnostic(where, rule, message)
    return Diagnostic(what, 1, 1, ERROR, rule, "", message)


def check_text(
    text: str | bytes, file: str = "<manifest>"
) -> tuple[yamlsafe.Document | None, list[Diagnostic]]:
    """Every diagnostic for manifest text (no flow-file checks: there is no folder to look in)."""
    if isinstance(text, str):
        text = text.encode("utf-8", "surrogatepass")  # a lone surrogate: reported as bad bytes
    blob = text
    if len(blob) > yamlsafe.MAX_BYTES:
        return None, [
            Diagnostic(file, 1, 1, ERROR, "file.size", "", "text is larger than a manifest can be")
        ]
    try:
        doc = yamlsafe.parse(blob, file)
    except yamlsafe.LoadError as exc:
        return None, yamlsafe.problems_of(exc)
    return doc, sorted(set(validate_document(doc)))


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The content hash recorded in `flow.sha256`."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 16), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _flow_file_warnings(doc: yamlsafe.Document, folder: Path) -> list[Diagnostic]:
    flow = doc.data["flow"]
    target = folder / flow["file"]
    if not target.is_file():
        return [
            doc.diagnostic(
                ("flow", "file"),
                "flow.missing",
                f"flow file `{flow['file']}` not found beside the manifest",
                severity=WARNING,
            )
        ]
    if file_sha256(target) != flow["sha256"]:
        return [
            doc.diagnostic(
                ("flow", "sha256"),
                "flow.stale",
                f"`{flow['file']}` changed since this manifest was exported; run `mfprefect export` again",
                severity=WARNING,
            )
        ]
    return []


# ---------------------------------------------------------------------------------------------
# Validation: the schema


def schema_path() -> Path:
    """The JSON Schema file: the copy inside an installed wheel, else the checkout's `schema/`."""
    package = Path(__file__).resolve().parent.parent  # mfprefect/, where the wheel puts _schema/
    packaged = package / "_schema" / SCHEMA_NAME
    return packaged if packaged.is_file() else package.parent / "schema" / SCHEMA_NAME


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    """The parsed JSON Schema."""
    with open(schema_path(), encoding="utf-8") as handle:
        loaded: dict[str, Any] = json.load(handle)
    return loaded


@lru_cache(maxsize=1)
def _validator() -> Any:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(schema())


def validate_document(doc: yamlsafe.Document) -> list[Diagnostic]:
    """Schema and rule diagnostics for a parsed document."""
    if not isinstance(doc.data, dict):
        return [
            doc.diagnostic(
                (), "schema.type", "a manifest is a mapping (`apiVersion: mfprefect/v1`, ...)"
            )
        ]
    diagnostics = list(_schema_diagnostics(doc))
    kind = kinds.kind_of(doc.data)
    if kind == kinds.PIPELINE:
        diagnostics += _rule_diagnostics(doc)
    elif kind in kinds.RESOURCE_KINDS:
        diagnostics += kinds.resource_rules(doc)
    return diagnostics


def validate_data(data: dict[str, Any]) -> list[Diagnostic]:
    """Diagnostics for plain data built in memory (positions are all 1:1)."""
    return validate_document(yamlsafe.Document(data=data, file="<manifest>"))


def with_executor(manifest: Manifest, kind: str, address: str | None) -> Manifest:
    """The manifest with `deployment.executor` replaced (a run's `--executor`), checked again."""
    data = json.loads(json.dumps(dict(manifest.data)))
    executor: dict[str, Any] = {"kind": kind}
    if kind == "dask":
        old = data["deployment"].get("executor") or {}
        executor["address"] = address or old.get("address")
        if not executor["address"]:
            raise UsageError(
                "--executor dask needs the Dask scheduler's address",
                hint="pass --address tcp://HOST:8786",
            )
        if old.get("max_concurrent_steps"):
            executor["max_concurrent_steps"] = old["max_concurrent_steps"]
    data["deployment"]["executor"] = executor
    problems = [d for d in validate_data(data) if d.severity == ERROR]
    if problems:
        raise UsageError(f"--executor {kind}: {problems[0].path}: {problems[0].message}")
    return from_data(data, manifest.path)


_TYPE_WORDS = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "null": "null",
}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _expected(subschema: Mapping[str, Any]) -> str:
    if "x-expected" in subschema:
        return str(subschema["x-expected"])
    kind = subschema.get("type")
    if isinstance(kind, str):
        return _TYPE_WORDS.get(kind, kind)
    if "enum" in subschema:
        return "one of " + ", ".join(f"`{v}`" for v in subschema["enum"])
    return "a different value"


def _schema_diagnostics(doc: yamlsafe.Document) -> Iterator[Diagnostic]:
    for error in _validator().iter_errors(doc.data):
        yield from _map_error(doc, error)


def _map_error(doc: yamlsafe.Document, error: Any) -> Iterator[Diagnostic]:
    path = tuple(error.absolute_path)
    validator = error.validator
    instance = error.instance
    sub = error.schema if isinstance(error.schema, dict) else {}
    if validator == "additionalProperties" and isinstance(instance, dict):
        allowed = list(sub.get("properties", {}))
        for key in instance:
            if key not in allowed:
                yield doc.diagnostic(
                    path + (key,),
                    "schema.unknown-field",
                    f"unknown field `{key}`{did_you_mean(str(key), allowed)}"
                    + (
                        ""
                        if did_you_mean(str(key), allowed)
                        else f" (expected one of: {', '.join(allowed)})"
                    ),
                    key=True,
                )
        return
    if validator == "required" and isinstance(instance, dict):
        for name in error.validator_value:
            if name not in instance:
                yield doc.diagnostic(
                    path, "schema.required", f"missing required field `{name}`", key=True
                )
        return
    if "propertyNames" in error.relative_schema_path:
        # jsonschema reports the failing keyword (pattern, maxLength) with the key as instance.
        key = instance
        yield doc.diagnostic(
            path + (key,), "schema.name", f"{value_text(key)} is not {_expected(sub)}", key=True
        )
        return
    if validator in ("anyOf", "oneOf"):
        branches = [b for b in error.validator_value if isinstance(b, dict)]
        same_type = [
            b
            for b in branches
            if _json_type(instance) == b.get("type")
            or (
                b.get("type") == "number"
                and isinstance(instance, int)
                and not isinstance(instance, bool)
            )
        ]
        if len(same_type) > 1 and isinstance(instance, dict):
            same_type = [b for b in same_type if set(b.get("required", ())) <= set(instance)]
        if len(same_type) == 1 and error.context:
            index = branches.index(same_type[0])
            inner_errors = [e for e in error.context if e.schema_path and e.schema_path[0] == index]
            if inner_errors:
                for inner in inner_errors:
                    yield from _map_error(doc, inner)
                return
        yield doc.diagnostic(
            path, "schema.type", f"expected {_expected(sub)}, got {value_text(instance)}"
        )
        return
    if validator == "type":
        yield doc.diagnostic(
            path, "schema.type", f"expected {_expected(sub)}, got {value_text(instance)}"
        )
        return
    if validator == "enum":
        choices = [str(v) for v in error.validator_value]
        hint = did_you_mean(str(instance), choices) if isinstance(instance, str) else ""
        yield doc.diagnostic(
            path, "schema.enum", f"{value_text(instance)} is not one of: {', '.join(choices)}{hint}"
        )
        return
    if validator == "const":
        yield doc.diagnostic(
            path, "schema.const", f"must be `{error.validator_value}`, got {value_text(instance)}"
        )
        return
    if validator == "pattern":
        yield doc.diagnostic(
            path, "schema.pattern", f"{value_text(instance)} is not {_expected(sub)}"
        )
        return
    if validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        words = {
            "minimum": "at least",
            "maximum": "at most",
            "exclusiveMinimum": "more than",
            "exclusiveMaximum": "less than",
        }
        yield doc.diagnostic(
            path,
            "schema.range",
            f"{value_text(instance)} must be {words[validator]} {error.validator_value}",
        )
        return
    if validator in (
        "maxLength",
        "minLength",
        "maxItems",
        "minItems",
        "maxProperties",
        "minProperties",
    ):
        limit = error.validator_value
        what = {
            "maxLength": "characters",
            "minLength": "characters",
            "maxItems": "items",
            "minItems": "items",
            "maxProperties": "entries",
            "minProperties": "entries",
        }[validator]
        bound = "at most" if validator.startswith("max") else "at least"
        yield doc.diagnostic(path, "schema.size", f"must have {bound} {limit} {what}")
        return
    if validator == "uniqueItems":
        yield doc.diagnostic(path, "schema.unique", "items must not repeat")
        return
    yield doc.diagnostic(path, f"schema.{validator}", " ".join(str(error.message).split())[:200])


# ---------------------------------------------------------------------------------------------
# Validation: the rules a schema cannot express


def _mapping(data: Any, key: str) -> dict[str, Any]:
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, dict) else {}


def _names(values: Any) -> list[str]:
    return [v for v in values if isinstance(v, str)] if isinstance(values, list) else []


def _edges_of(raw: dict[str, Any]) -> list[tuple[str, tuple[str | int, ...]]]:
    """(target, path-of-the-reference) for every outgoing edge a step declares."""
    out: list[tuple[str, tuple[str | int, ...]]] = []
    nxt = raw.get("next")
    if isinstance(nxt, list):
        out += [(t, ("next", i)) for i, t in enumerate(nxt) if isinstance(t, str)]
    cases = raw.get("cases")
    if raw.get("kind") == "switch" and isinstance(cases, dict):
        out += [(t, ("cases", k)) for k, t in cases.items() if isinstance(t, str)]
    return out


def _start_of(successors: Mapping[str, tuple[str, ...] | list[str]]) -> str | None:
    incoming = {t for name, targets in successors.items() for t in targets if t != name}
    roots = [name for name in successors if name not in incoming]
    return roots[0] if roots else None


class _Hints:
    """ "Did you mean" suggestions, rationed: each one scans every name, so a file with thousands
    of dangling references must not cost thousands of scans."""

    def __init__(self, budget: int = 50) -> None:
        self.budget = budget

    def suggest(self, word: str, candidates: Any) -> str:
        if self.budget <= 0:
            return ""
        self.budget -= 1
        return did_you_mean(word, candidates)


def _rule_diagnostics(doc: yamlsafe.Document) -> list[Diagnostic]:
    data = doc.data
    out: list[Diagnostic] = []
    hints = _Hints()
    out += _graph_rules(doc, _mapping(data, "steps"), hints)
    out += _parameter_rules(doc, _mapping(data, "parameters"))
    out += _schedule_rules(doc, data.get("schedule"))
    out += _trigger_rules(doc, data.get("triggers"), _mapping(data, "parameters"), hints)
    out += _tag_rules(doc, _mapping(data, "deployment").get("tags"))
    out += _job_variable_rules(doc, _mapping(data, "deployment").get("job_variables"))
    out += _runtime_rules(doc, _mapping(data, "runtime"))
    out += _environment_rules(doc, _mapping(data, "runtime"))
    out += _executor_rules(doc, _mapping(data, "deployment"), _mapping(data, "runtime"))
    out += _unmanaged_rules(doc, _mapping(data, "deployment").get("unmanaged"), data)
    return out


def _unmanaged_rules(
    doc: yamlsafe.Document, unmanaged: Any, data: dict[str, Any]
) -> list[Diagnostic]:
    """`schedule.active` left to the UI means nothing without a schedule: say so, once."""
    names = _names(unmanaged)
    if "schedule.active" not in names or data.get("schedule") is not None:
        return []
    return [
        doc.diagnostic(
            ("deployment", "unmanaged", unmanaged.index("schedule.active")),
            "deployment.unmanaged",
            "`schedule.active` is left to the UI, but the manifest has no schedule",
            severity=WARNING,
        )
    ]


def _executor_rules(
    doc: yamlsafe.Document, deployment: dict[str, Any], runtime: dict[str, Any]
) -> list[Diagnostic]:
    """A cluster's workers start steps from the code package and share the run's data."""
    executor = deployment.get("executor")
    if not isinstance(executor, dict) or executor.get("kind") != "dask":
        return []
    out = []
    code = deployment.get("code")
    kind = code.get("kind") if isinstance(code, dict) else "package"
    if kind != "package":
        out.append(
            doc.diagnostic(
                ("deployment", "code", "kind"),
                "executor.code",
                f"the dask executor starts each step from the run's code package, not from "
                f"`{kind}`; use `kind: package` (or remove deployment.code)",
            )
        )
    if runtime.get("environment") == "uv":
        out.append(
            doc.diagnostic(
                ("runtime", "environment"),
                "executor.environment",
                "the dask executor does not build locked environments (uv) on its workers yet; "
                "use the local executor, or install the flow's packages on the Dask workers",
            )
        )
    if runtime.get("datastore") not in REMOTE_DATASTORES:
        out.append(
            doc.diagnostic(
                ("runtime", "datastore"),
                "executor.datastore",
                f"the dask executor's workers share the run's data through the datastore, and "
                f"`{runtime.get('datastore')}` is one machine's; use s3, azure or gs",
            )
        )
    return out


# Job-variable `env` names mfprefect sets itself on every deployment (see deploy.desired).
RESERVED_ENV_PREFIXES = ("MFPREFECT_", "METAFLOW_CODE_")
REMOTE_DATASTORES = ("s3", "azure", "gs")


def _job_variable_rules(doc: yamlsafe.Document, job_variables: Any) -> list[Diagnostic]:
    if not isinstance(job_variables, dict):
        return []
    env = job_variables.get("env")
    if env is None:
        return []
    where = ("deployment", "job_variables", "env")
    if not isinstance(env, dict):
        return [
            doc.diagnostic(
                where, "deployment.job-env", "must be a mapping of variable names to strings"
            )
        ]
    out = []
    for name, value in list(env.items())[:1000]:
        if str(name).startswith(RESERVED_ENV_PREFIXES):
            out.append(
                doc.diagnostic(
                    (*where, name),
                    "deployment.reserved",
                    f"`{name}` is set by mfprefect itself on every deployment; choose another name",
                )
            )
        elif not isinstance(value, str):
            out.append(
                doc.diagnostic(
                    (*where, name),
                    "deployment.job-env",
                    f"expected a string, got {value_text(value)} (quote it)",
                )
            )
    return out


def _environment_rules(doc: yamlsafe.Document, runtime: dict[str, Any]) -> list[Diagnostic]:
    kind = runtime.get("environment")
    if kind not in ("conda", "pypi"):
        return []
    return [
        doc.diagnostic(
            ("runtime", "environment"),
            "runtime.environment",
            f"`{kind}` environments are not built by mfprefect; lock the flow's packages with uv "
            "(pyproject.toml and uv.lock) and use `uv`",
        )
    ]


def runtime_warnings(data: dict[str, Any]) -> list[str]:
    """What export says about the runtime settings it wrote (validate reports them with places)."""
    doc = yamlsafe.Document(data=data, file="<manifest>")
    return [f"{d.path}: {d.message}" for d in _runtime_rules(doc, _mapping(data, "runtime"))]


def _runtime_rules(doc: yamlsafe.Document, runtime: dict[str, Any]) -> list[Diagnostic]:
    if runtime.get("datastore") in REMOTE_DATASTORES and runtime.get("metadata") == "local":
        return [
            doc.diagnostic(
                ("runtime", "metadata"),
                "runtime.local-metadata",
                f"a remote datastore ({runtime['datastore']}) with local metadata: a run on a "
                "worker is recorded only on that worker, so Metaflow's client elsewhere cannot "
                "find it; use `metadata: service` (METAFLOW_SERVICE_URL on every worker)",
                severity=WARNING,
            )
        ]
    return []


def _tag_rules(doc: yamlsafe.Document, tags: Any) -> list[Diagnostic]:
    # Checked here rather than with the schema's uniqueItems, which compares every pair.
    if not isinstance(tags, list):
        return []
    out: list[Diagnostic] = []
    first: dict[str, int] = {}
    for i, tag in enumerate(tags[:1000]):
        if isinstance(tag, str) and tag in first:
            message = f"tag `{tag}` is already listed at tags[{first[tag]}]"
            out.append(doc.diagnostic(("deployment", "tags", i), "deployment.tags", message))
        elif isinstance(tag, str):
            first[tag] = i
    return out


_KIND_FIELDS = {
    "linear": {"next"},
    "join": {"next"},
    "split": {"next"},
    "foreach": {"next", "foreach"},
    "switch": {"condition", "cases"},
    "end": set(),
}


def _graph_rules(doc: yamlsafe.Document, steps: dict[str, Any], hints: _Hints) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    well_formed = {
        n: s for n, s in steps.items() if isinstance(s, dict) and s.get("kind") in STEP_KINDS
    }
    if not steps:
        return out
    names = list(steps)

    # Per-kind shape: which fields a kind needs and which it must not have.
    for name, raw in well_formed.items():
        kind = raw["kind"]
        here = ("steps", name)
        needed = _KIND_FIELDS[kind]
        for key in sorted(needed - set(raw)):
            out.append(
                doc.diagnostic(here, "graph.kind", f"a `{kind}` step needs `{key}`", key=True)
            )
        for key in ("next", "foreach", "condition", "cases"):
            if key in raw and key not in needed:
                why = (
                    "the end step has no successor"
                    if kind == "end"
                    else f"`{key}` does not apply to a `{kind}` step"
                )
                out.append(doc.diagnostic(here + (key,), "graph.kind", why, key=True))
        nxt = _names(raw.get("next"))
        # A `next` that is not a list is the schema's finding; counting it here would add a
        # second, wrong one ("got 0").
        listed = isinstance(raw.get("next"), list)
        if kind in ("linear", "join", "foreach") and listed and len(nxt) != 1:
            out.append(
                doc.diagnostic(
                    here + ("next",),
                    "graph.kind",
                    f"a `{kind}` step has exactly one `next`, got {len(nxt)}",
                )
            )
        if kind == "split" and listed and len(nxt) < 2:
            out.append(
                doc.diagnostic(
                    here + ("next",),
                    "graph.kind",
                    f"a split has at least two branches, got {len(nxt)}",
                )
            )
        if len(set(nxt)) != len(nxt):
            out.append(
                doc.diagnostic(here + ("next",), "graph.kind", "a step appears twice in `next`")
            )
        if kind == "switch" and isinstance(raw.get("cases"), dict) and len(raw["cases"]) < 2:
            out.append(
                doc.diagnostic(
                    here + ("cases",),
                    "graph.switch",
                    f"a switch needs at least two cases, got {len(raw['cases'])}",
                )
            )

    # Every edge points at a step.
    successors: dict[str, list[str]] = {}
    for name, raw in well_formed.items():
        targets = []
        for target, ref in _edges_of(raw):
            if target in steps:
                targets.append(target)
            else:
                out.append(
                    doc.diagnostic(
                        ("steps", name) + ref,
                        "graph.next",
                        f"no step named `{target}`{hints.suggest(target, names)}",
                    )
                )
        successors[name] = list(dict.fromkeys(targets))
    for name in steps:
        successors.setdefault(name, [])

    ends = [n for n, s in well_formed.items() if s["kind"] == "end"]
    if not ends and len(well_formed) == len(steps):
        out.append(
            doc.diagnostic(
                ("steps",),
                "graph.end",
                "no step has `kind: end`; a pipeline ends in exactly one end step",
            )
        )
    for extra in ends[1:]:
        out.append(
            doc.diagnostic(
                ("steps", extra, "kind"),
                "graph.end",
                f"a second end step (the first is `{ends[0]}`)",
            )
        )

    incoming = {t for n, ts in successors.items() for t in ts if t != n}
    roots = [n for n in names if n not in incoming]
    if not roots:
        out.append(
            doc.diagnostic(
                ("steps",), "graph.start", "every step has a predecessor, so there is no start step"
            )
        )
        return out
    start = roots[0]
    for other in roots[1:]:
        out.append(
            doc.diagnostic(
                ("steps", other),
                "graph.start",
                f"nothing leads to `{other}`: a pipeline has one start step (`{start}`)",
                key=True,
            )
        )

    # Reachability and cycles, in one depth-first walk from the start.
    back_edges: set[tuple[str, str]] = set()
    seen: set[str] = set()
    on_path: set[str] = set()
    stack: list[tuple[str, Iterator[str]]] = [(start, iter(successors[start]))]
    seen.add(start)
    on_path.add(start)
    while stack:
        node, children = stack[-1]
        child = next(children, None)
        if child is None:
            stack.pop()
            on_path.discard(node)
            continue
        if child in on_path:
            back_edges.add((node, child))
            kind = well_formed.get(node, {}).get("kind")
            if kind != "switch":
                out.append(
                    doc.diagnostic(
                        ("steps", node, "next"),
                        "graph.cycle",
                        f"`{node}` → `{child}` closes a cycle; only a switch case may loop back",
                    )
                )
            continue
        if child not in seen:
            seen.add(child)
            on_path.add(child)
            stack.append((child, iter(successors[child])))
    for name in names:
        if name not in seen and name not in roots:
            out.append(
                doc.diagnostic(
                    ("steps", name),
                    "graph.reachable",
                    f"`{name}` cannot be reached from the start step `{start}`",
                    key=True,
                )
            )

    if out or len(well_formed) != len(steps):
        return out  # split/join analysis needs a sound graph
    out += _split_join_rules(doc, well_formed, successors, start, back_edges)
    return out


def _split_join_rules(
    doc: yamlsafe.Document,
    steps: dict[str, dict[str, Any]],
    successors: dict[str, list[str]],
    start: str,
    back_edges: set[tuple[str, str]],
) -> list[Diagnostic]:
    """Every join closes the innermost open split or foreach; nothing is left open at the end."""
    out: list[Diagnostic] = []
    forward = {n: [t for t in ts if (n, t) not in back_edges] for n, ts in successors.items()}
    indegree = {n: 0 for n in steps}
    parents: dict[str, list[str]] = {n: [] for n in steps}
    for n, ts in forward.items():
        for t in ts:
            indegree[t] += 1
            parents[t].append(n)
    order: list[str] = []
    ready = [start]
    remaining = dict(indegree)
    while ready:
        node = ready.pop(0)
        order.append(node)
        for t in forward[node]:
            remaining[t] -= 1
            if remaining[t] == 0:
                ready.append(t)
    below_switch = _below_switch(steps, forward, order)
    context: dict[str, tuple[str, ...]] = {start: ()}
    reported: set[str] = set()
    for node in order:
        kind = steps[node]["kind"]
        if kind == "join":
            tops = {context[p][-1] if context[p] else None for p in parents[node]}
            if None in tops or not tops:
                out.append(
                    doc.diagnostic(
                        ("steps", node, "kind"),
                        "graph.join",
                        f"join `{node}` has no split or foreach to close",
                    )
                )
                context[node] = ()
            elif len(tops) > 1:
                listed = ", ".join(f"`{t}`" for t in sorted(t for t in tops if t))
                out.append(
                    doc.diagnostic(
                        ("steps", node, "kind"),
                        "graph.join",
                        f"join `{node}` merges branches of different splits ({listed})",
                    )
                )
                context[node] = context[parents[node][0]][:-1]
            else:
                opener = tops.pop()
                assert opener is not None
                context[node] = context[parents[node][0]][:-1]
                width = len(forward[opener]) if steps[opener]["kind"] == "split" else 1
                if (
                    steps[opener]["kind"] == "split"
                    and len(parents[node]) != width
                    and not below_switch.get(node)
                ):
                    out.append(
                        doc.diagnostic(
                            ("steps", node, "kind"),
                            "graph.join",
                            f"join `{node}` closes split `{opener}` but receives {len(parents[node])} of its {width} branches",
                        )
                    )
        elif len(parents[node]) > 1 and not below_switch.get(node):
            out.append(
                doc.diagnostic(
                    ("steps", node, "kind"),
                    "graph.join",
                    f"`{node}` has {len(parents[node])} inputs, so it must be a join (`kind: join`)",
                )
            )
        mine = context.get(node, ())
        for child in forward[node]:
            passed = mine + (node,) if kind in ("split", "foreach") else mine
            if steps[child]["kind"] == "join":
                continue  # computed from all its parents when reached
            if child in context and context[child] != passed and child not in reported:
                reported.add(child)
                out.append(
                    doc.diagnostic(
                        ("steps", child),
                        "graph.join",
                        f"`{child}` is reached from inside and outside a split or foreach",
                        key=True,
                    )
                )
            context.setdefault(child, passed)
    for name, raw in steps.items():
        if raw["kind"] == "end" and context.get(name):
            opener = context[name][-1]
            out.append(
                doc.diagnostic(
                    ("steps", opener, "kind"),
                    "graph.join",
                    f"`{opener}` is never closed by a join before the end step `{name}`",
                )
            )
    return out


def _below_switch(
    steps: dict[str, dict[str, Any]], forward: dict[str, list[str]], order: list[str]
) -> dict[str, bool]:
    """Which steps a switch can reach: there, several inputs mean 'one of these branches ran'."""
    reached: dict[str, bool] = {}
    for node in order:
        flag = reached.get(node, False) or steps[node]["kind"] == "switch"
        for child in forward[node]:
            if flag:
                reached[child] = True
    return reached


# The deployed flow's own parameter (runtime.resume.RESUME_PARAMETER): no pipeline may have it.
RESERVED_PARAMETER = "mfprefect_resume"


def _parameter_rules(doc: yamlsafe.Document, parameters: dict[str, Any]) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    lowered: dict[str, str] = {}
    for name, raw in parameters.items():
        if not isinstance(raw, dict):
            continue
        key = name.lower().replace("-", "_")
        if key in lowered:
            out.append(
                doc.diagnostic(
                    ("parameters", name),
                    "parameters.name",
                    f"`{name}` clashes with `{lowered[key]}` (Metaflow compares parameter names ignoring case and `-`/`_`)",
                    key=True,
                )
            )
        lowered.setdefault(key, name)
        if key == RESERVED_PARAMETER:
            out.append(
                doc.diagnostic(
                    ("parameters", name),
                    "parameters.reserved",
                    f"`{name}` is the parameter mfprefect's deployed flows take to resume a run; "
                    "choose another name",
                    key=True,
                )
            )
        kind = raw.get("type")
        if "default" not in raw or kind not in PARAMETER_TYPES:
            continue
        default = raw["default"]
        if default is None:
            continue
        ok = {
            "str": isinstance(default, str),
            "int": isinstance(default, int) and not isinstance(default, bool),
            "float": isinstance(default, (int, float)) and not isinstance(default, bool),
            "bool": isinstance(default, bool),
            "json": True,
        }[kind]
        if not ok:
            out.append(
                doc.diagnostic(
                    ("parameters", name, "default"),
                    "parameters.default",
                    f"default {value_text(default)} is not a `{kind}`",
                )
            )
    return out


def _schedule_rules(doc: yamlsafe.Document, schedule: Any) -> list[Diagnostic]:
    if not isinstance(schedule, dict):
        return []
    out: list[Diagnostic] = []
    expr = schedule.get("cron")
    if isinstance(expr, str):
        problem = cron.cron_problem(expr)
        if problem:
            out.append(doc.diagnostic(("schedule", "cron"), "schedule.cron", problem))
    zone = schedule.get("timezone")
    if isinstance(zone, str):
        problem = cron.timezone_problem(zone)
        if problem:
            out.append(doc.diagnostic(("schedule", "timezone"), "schedule.timezone", problem))
    return out


def _trigger_rules(
    doc: yamlsafe.Document, triggers: Any, parameters: dict[str, Any], hints: _Hints
) -> list[Diagnostic]:
    if not isinstance(triggers, list):
        return []
    out: list[Diagnostic] = []
    seen_events: dict[str, int] = {}
    for i, raw in enumerate(triggers):
        if not isinstance(raw, dict):
            continue
        if raw.get("kind") == "event" and isinstance(raw.get("event"), str):
            if raw["event"] in seen_events:
                out.append(
                    doc.diagnostic(
                        ("triggers", i, "event"),
                        "triggers.duplicate",
                        f"event `{raw['event']}` is already listed at triggers[{seen_events[raw['event']]}]",
                    )
                )
            seen_events.setdefault(raw["event"], i)
        mapping = raw.get("parameters")
        if raw.get("kind") != "event" or not isinstance(mapping, dict):
            continue
        for name in mapping:
            if name not in parameters:
                out.append(
                    doc.diagnostic(
                        ("triggers", i, "parameters", name),
                        "triggers.parameter",
                        f"no parameter named `{name}`{hints.suggest(name, parameters)}",
                        key=True,
                    )
                )
    return out
