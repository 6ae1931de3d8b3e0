"""The typed model of a pipeline manifest: frozen dataclasses, and `from_data`, which builds them
from plain data the schema and rules have passed.

Imports neither Metaflow nor Prefect, nor any other module of mfprefect: the schema, the rules and
everything that runs or deploys a manifest build on it, never the other way round.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

API_VERSION = "mfprefect/v1"
KIND = "Pipeline"
STEP_KINDS = ("linear", "split", "join", "foreach", "switch", "end")
PARAMETER_TYPES = ("str", "int", "float", "bool", "json")
# Deployment fields a manifest may leave to the Prefect UI (`deployment.unmanaged`).
UNMANAGEABLE = ("paused", "schedule.active", "concurrency_limit")


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


def _start_of(successors: Mapping[str, tuple[str, ...] | list[str]]) -> str | None:
    incoming = {t for name, targets in successors.items() for t in targets if t != name}
    roots = [name for name in successors if name not in incoming]
    return roots[0] if roots else None


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
