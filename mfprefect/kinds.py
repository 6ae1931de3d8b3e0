"""The workspace kinds beside `Pipeline`: `WorkPool`, `ConcurrencyLimit` and `Variable` manifests.

Their shape is in the same JSON Schema as a pipeline's; this module holds their typed form, the
rules a schema cannot express, and which object each manifest declares (so two manifests that
declare one object are one validation error). Pure: no Prefect here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from . import yamlsafe
from .diagnostics import ERROR, Diagnostic

PIPELINE = "Pipeline"
WORK_POOL = "WorkPool"
CONCURRENCY_LIMIT = "ConcurrencyLimit"
VARIABLE = "Variable"
RESOURCE_KINDS = (WORK_POOL, CONCURRENCY_LIMIT, VARIABLE)

# How plans and messages name each kind of object.
Label = Literal["deployment", "work pool", "concurrency limit", "variable"]
LABELS: dict[str, Label] = {
    PIPELINE: "deployment",
    WORK_POOL: "work pool",
    CONCURRENCY_LIMIT: "concurrency limit",
    VARIABLE: "variable",
}

# Prefect keeps a variable's value as JSON of at most this many characters.
MAX_VARIABLE_JSON = 5000

_DEFAULTS: dict[str, dict[str, Any]] = {
    WORK_POOL: {
        "description": None,
        "concurrency_limit": None,
        "paused": False,
        "job_variables": {},
    },
    CONCURRENCY_LIMIT: {"active": True, "slot_decay_per_second": 0.0},
    VARIABLE: {"tags": []},
}

# Names under which people keep credentials, and shapes credentials have.
_SECRET_NAME = re.compile(
    r"passw(or)?d|secret|token|api[_-]?key|private[_-]?key|credential|auth", re.IGNORECASE
)
_SECRET_VALUE = re.compile(
    r"AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY-----|gh[pousr]_[A-Za-z0-9]{30,}"
    r"|xox[abposr]-[A-Za-z0-9-]{10,}|sk-[A-Za-z0-9_-]{20,}"
)


@dataclass(frozen=True)
class Resource:
    """A validated workspace manifest: which object, and its spec with the defaults filled in."""

    kind: str
    name: str
    spec: Mapping[str, Any] = field(default_factory=dict)
    # The manifest file it came from, as shown to people (None when built in memory).
    path: str | None = None

    @property
    def label(self) -> str:
        return f"{LABELS[self.kind]} {self.name}"


def kind_of(data: Any) -> str | None:
    """The manifest's `kind` when it is a string, else None."""
    kind = data.get("kind") if isinstance(data, dict) else None
    return kind if isinstance(kind, str) else None


def resource_from_data(data: Mapping[str, Any], path: str | None = None) -> Resource:
    """The typed form of a validated workspace manifest."""
    kind = str(data["kind"])
    spec = {**_DEFAULTS[kind], **json.loads(json.dumps(data["spec"]))}
    return Resource(kind=kind, name=str(data["metadata"]["name"]), spec=spec, path=path)


def resource_rules(doc: yamlsafe.Document) -> list[Diagnostic]:
    """What the schema cannot say about a workspace manifest (the schema has passed or not)."""
    if kind_of(doc.data) != VARIABLE:
        return []
    spec = doc.data.get("spec")
    if not isinstance(spec, dict) or "value" not in spec:
        return []
    out = []
    name = (
        doc.data.get("metadata", {}).get("name")
        if isinstance(doc.data.get("metadata"), dict)
        else None
    )
    value = spec["value"]
    if isinstance(name, str) and _SECRET_NAME.search(name) and _holds_text(value):
        out.append(_secret(doc, ("metadata", "name"), f"the variable's name `{name}`"))
    for where, why in _secret_paths(value, ("spec", "value")):
        out.append(_secret(doc, where, why))
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False))
    if size > MAX_VARIABLE_JSON:
        out.append(
            doc.diagnostic(
                ("spec", "value"),
                "variable.size",
                f"the value is {size} characters as JSON; Prefect keeps at most {MAX_VARIABLE_JSON}",
            )
        )
    return out


def _holds_text(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _secret_paths(value: Any, path: tuple[Any, ...]) -> Iterable[tuple[tuple[Any, ...], str]]:
    """Places in a variable's value that look like a credential, and why."""
    if isinstance(value, dict):
        for key, item in value.items():
            if _SECRET_NAME.search(str(key)) and _holds_text(item):
                yield path + (key,), f"the key `{key}`"
            else:
                yield from _secret_paths(item, path + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _secret_paths(item, path + (index,))
    elif isinstance(value, str) and _SECRET_VALUE.search(value):
        yield path, "its shape"


def _secret(doc: yamlsafe.Document, where: tuple[Any, ...], why: str) -> Diagnostic:
    return doc.diagnostic(
        where,
        "variable.secret",
        f"this looks like a secret ({why}); Prefect variables are stored and shown in plain text: "
        "keep it in a Secret block and have pipelines read it as {secret: BLOCK}",
    )


def declared_object(data: Any) -> tuple[str, str, tuple[Any, ...]] | None:
    """(kind label, name, where in the document) of the object a valid manifest declares.

    A pipeline declares its deployment: `flow/deployment` as apply names it, with a user branch
    written `user.*` (the same for whoever applies)."""
    kind = kind_of(data)
    if kind in RESOURCE_KINDS:
        return LABELS[kind], str(data["metadata"]["name"]), ("metadata", "name")
    if kind != PIPELINE:
        return None
    flow = str(data["metadata"]["name"])
    project = (data.get("flow") or {}).get("project")
    if isinstance(project, dict) and project.get("name"):
        flow = f"{project['name']}.{project.get('branch') or 'user.*'}.{flow}"
    deployment = (data.get("deployment") or {}).get("name")
    where: tuple[Any, ...] = ("deployment", "name") if deployment else ("metadata", "name")
    return LABELS[PIPELINE], f"{flow}/{deployment or flow}", where


def duplicate_diagnostics(docs: Iterable[yamlsafe.Document]) -> list[Diagnostic]:
    """One error per manifest that declares an object an earlier manifest already declares,
    naming both files and lines."""
    first: dict[tuple[str, str], tuple[yamlsafe.Document, tuple[Any, ...]]] = {}
    out = []
    for doc in docs:
        declared = declared_object(doc.data)
        if declared is None:
            continue
        label, name, where = declared
        seen = first.setdefault((label, name), (doc, where))
        if seen[0] is doc:
            continue
        other, other_where = seen
        line, col = other.where(other_where)
        out.append(
            doc.diagnostic(
                where,
                "manifest.duplicate",
                f"{label} `{name}` is declared twice: here and in {other.file}:{line}:{col}; "
                "keep one (or give one another name)",
                severity=ERROR,
            )
        )
    return out
