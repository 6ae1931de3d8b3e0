"""Work pools, global concurrency limits and variables as apply wants them and as the server has
them, and the field differences between the two. Pure: no Prefect here.

Variables carry tags, so they are owned the way deployments are (`mfprefect` and the set's tag).
Work pools and concurrency limits have no tags or labels; mfprefect records each one it owns in
a *marker*: a Prefect variable named after the object and tagged with the apply set.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..kinds import CONCURRENCY_LIMIT, LABELS, VARIABLE, WORK_POOL, Resource
from .desired import OWNER_TAG
from .sets import SET_TAG_PREFIX, set_tag

MARKER_TAG = "mfprefect-marker"
_MARKED = {WORK_POOL: "work-pool", CONCURRENCY_LIMIT: "concurrency-limit"}
# The kinds owned through a marker (they have no tags of their own).
MARKED_KINDS = tuple(_MARKED)
# The order apply writes kinds in: pools and limits before the deployments that use them
# (and deleted after them, in reverse).
ORDER = (WORK_POOL, CONCURRENCY_LIMIT, VARIABLE)


@dataclass(frozen=True)
class ResourceSpec:
    """A work pool, concurrency limit or variable as apply should leave it."""

    kind: str
    name: str
    fields: Mapping[str, Any]
    path: str | None = None
    # A work pool's type's default job template (None: not known where plan runs).
    base_template: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)
    # The job variables the manifest itself names (the rest are the template's defaults).
    declared: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return self.name

    @property
    def label(self) -> str:
        return f"{LABELS[self.kind]} {self.name}"


@dataclass(frozen=True)
class LiveResource:
    """One such object as read from the server (what plan compares, and its owner)."""

    kind: str
    name: str
    id: str
    fields: Mapping[str, Any]
    owned: bool
    apply_set: str | None
    # A work pool's whole job template, which apply edits in place.
    template: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def key(self) -> str:
        return self.name


def spec_for(resource: Resource, base_template: Mapping[str, Any] | None = None) -> ResourceSpec:
    """What a validated workspace manifest should become on the server."""
    spec = resource.spec
    fields: dict[str, Any]
    if resource.kind == WORK_POOL:
        fields = {
            "type": spec["type"],
            "description": spec["description"],
            "concurrency_limit": spec["concurrency_limit"],
            "paused": bool(spec["paused"]),
            "job_variables": job_defaults(base_template, spec["job_variables"]),
        }
    elif resource.kind == CONCURRENCY_LIMIT:
        fields = {
            "limit": int(spec["limit"]),
            "active": bool(spec["active"]),
            "slot_decay_per_second": float(spec["slot_decay_per_second"]),
        }
    else:
        fields = {"value": spec["value"], "tags": sorted(set(spec["tags"]) | {OWNER_TAG})}
    declared = tuple(sorted(spec["job_variables"])) if resource.kind == WORK_POOL else ()
    return ResourceSpec(
        resource.kind, resource.name, fields, resource.path, base_template, declared
    )


def job_defaults(template: Mapping[str, Any] | None, declared: Mapping[str, Any]) -> dict[str, Any]:
    """Every job variable's default: the template's, with the manifest's in their place."""
    defaults = {name: prop.get("default") for name, prop in template_variables(template).items()}
    defaults.update(json.loads(json.dumps(dict(declared))))
    return defaults


def template_variables(template: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The job variables a job template declares, by name."""
    variables = (template or {}).get("variables") or {}
    properties = variables.get("properties") if isinstance(variables, dict) else None
    if not isinstance(properties, dict):
        return {}
    return {str(k): v if isinstance(v, dict) else {} for k, v in properties.items()}


def with_set(spec: ResourceSpec, apply_set: str | None) -> ResourceSpec:
    """A variable's tags name its apply set (pools and limits keep theirs in the marker)."""
    if spec.kind != VARIABLE:
        return spec
    tags = [t for t in spec.fields["tags"] if not t.startswith(SET_TAG_PREFIX)]
    if apply_set is not None:
        tags.append(set_tag(apply_set))
    return replace(spec, fields={**spec.fields, "tags": sorted(tags)})


def field_diffs(spec: ResourceSpec, live: LiveResource) -> list[tuple[str, Any, Any]]:
    """(field, live value, wanted value) for every field that differs."""
    out = []
    for name, wanted in spec.fields.items():
        have = live.fields.get(name)
        if name == "job_variables":
            have = have or {}
            for variable in sorted(wanted):
                if _canonical(have.get(variable)) != _canonical(wanted[variable]):
                    out.append((f"job_variables.{variable}", have.get(variable), wanted[variable]))
        elif name == "tags":
            if sorted(have or []) != sorted(wanted):
                out.append((name, sorted(have or []), sorted(wanted)))
        elif _canonical(have) != _canonical(wanted):
            out.append((name, have, wanted))
    return out


def _canonical(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps(value, sort_keys=True, default=str)


def marker_name(kind: str, name: str) -> str:
    """The Prefect variable recording that mfprefect owns this pool or limit (variable names
    are lowercase letters, digits, `-` and `_`, so the object's name goes in as a digest)."""
    digest = hashlib.sha256(f"{kind}\0{name}".encode()).hexdigest()[:20]
    return f"mfprefect-owns-{_MARKED[kind]}-{digest}"


def marker_value(kind: str, name: str) -> dict[str, str]:
    return {"kind": kind, "name": name}


def marker_tags(apply_set: str | None) -> list[str]:
    return sorted([MARKER_TAG] + ([set_tag(apply_set)] if apply_set is not None else []))
