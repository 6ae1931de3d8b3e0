"""plan(desired, live) → what apply would change. Pure: `plan` and `apply --dry-run` share it."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from ..diagnostics import printable
from ..kinds import LABELS, Label
from ..manifest import RESERVED_ENV_PREFIXES, UNMANAGEABLE
from . import resources
from .code import live_digest
from .desired import (
    MANIFEST_ENV,
    OWNER_TAG,
    PROJECT_TAG_PREFIX,
    AutomationSpec,
    DeploymentSpec,
    ScheduleSpec,
    decode_manifest,
)
from .resources import LiveResource, ResourceSpec
from .sets import SET_TAG_PREFIX, set_of, set_tag

FORMAT_VERSION = 1


@dataclass(frozen=True)
class LiveSchedule:
    id: str
    slug: str | None
    cron: str | None
    timezone: str | None
    active: bool


@dataclass(frozen=True)
class LiveAutomation:
    id: str
    name: str
    trigger: Mapping[str, Any]
    parameters: Mapping[str, Any] | None
    enabled: bool


@dataclass(frozen=True)
class LiveDeployment:
    """A deployment as read from the server (only what mfprefect compares)."""

    id: str
    flow_name: str
    name: str
    fields: Mapping[str, Any]
    schedules: tuple[LiveSchedule, ...] = ()
    automations: tuple[LiveAutomation, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.flow_name}/{self.name}"

    @property
    def owned(self) -> bool:
        return OWNER_TAG in (self.fields.get("tags") or [])

    @property
    def project(self) -> str | None:
        for tag in self.fields.get("tags") or []:
            if tag.startswith(PROJECT_TAG_PREFIX):
                return str(tag[len(PROJECT_TAG_PREFIX) :])
        return None

    @property
    def apply_set(self) -> str | None:
        return set_of(self.fields.get("tags") or [])


@dataclass(frozen=True)
class FieldChange:
    field: str
    old: Any
    new: Any


# What a plan does to an object; a conflict is an object it may not touch (not mfprefect's).
Action = Literal["create", "update", "delete", "conflict"]
# What an update does to one of a deployment's schedules or automations.
Op = Literal["create", "update", "delete"]
WRITES: tuple[Action, ...] = ("create", "update", "delete")


@dataclass(frozen=True)
class ScheduleOp:
    """One schedule to create (`want` only), update (both) or delete (`have` only)."""

    op: Op
    want: ScheduleSpec | None
    have: LiveSchedule | None

    @property
    def slug(self) -> str | None:
        if self.want is not None:
            return self.want.slug
        return self.have.slug if self.have is not None else "?"


@dataclass(frozen=True)
class AutomationOp:
    """One automation to create (`want` only), update in place (both) or delete (`have` only)."""

    op: Op
    want: AutomationSpec | None
    have: LiveAutomation | None

    @property
    def name(self) -> str:
        if self.want is not None:
            return self.want.name
        return self.have.name if self.have is not None else "?"


@dataclass(frozen=True)
class Change:
    action: Action
    key: str
    changes: tuple[FieldChange, ...] = ()
    spec: DeploymentSpec | None = None
    live: LiveDeployment | None = None
    schedule_ops: tuple[ScheduleOp, ...] = ()
    automation_ops: tuple[AutomationOp, ...] = ()
    # Pools, limits and variables carry their desired and live forms here instead of in spec
    # and live.
    kind: Label = "deployment"
    resource: ResourceSpec | None = None
    live_resource: LiveResource | None = None

    @property
    def label(self) -> str:
        return f"{self.kind} {self.key}"

    @property
    def source_path(self) -> str | None:
        """The manifest file this change comes from, when there is one."""
        if self.resource is not None:
            return self.resource.path
        if self.spec is not None and self.spec.source is not None:
            return self.spec.source.path
        return None


@dataclass(frozen=True)
class Unmanaged:
    """A field the manifest leaves to the Prefect UI, with its value on the server."""

    key: str
    field: str
    live: Any

    def text(self) -> str:
        return f"deployment {self.key}: {self.field} is left to the UI (now {_short(self.live)})"


@dataclass
class Plan:
    changes: list[Change] = field(default_factory=list)
    # What the plan chose not to do and a reviewer should know (one line each).
    notes: list[str] = field(default_factory=list)
    # Fields of existing deployments that plan neither compared nor would write.
    unmanaged: list[Unmanaged] = field(default_factory=list)
    # A digest of the server state it was planned against (a saved plan checks it is unchanged).
    observed: str = ""

    @property
    def pending(self) -> list[Change]:
        return [c for c in self.changes if c.action in WRITES]

    @property
    def conflicts(self) -> list[Change]:
        return [c for c in self.changes if c.action == "conflict"]

    def summary(self) -> str:
        counts = {action: sum(c.action == action for c in self.changes) for action in WRITES}
        if not any(counts.values()):
            return "No changes: the server matches the manifests."
        return f"Plan: {counts['create']} to create, {counts['update']} to update, {counts['delete']} to delete."

    def text(self) -> str:
        lines: list[str] = []
        for change in self.changes:
            marker = {"create": "+", "update": "~", "delete": "-", "conflict": "!"}[change.action]
            if change.action == "conflict":
                lines.append(
                    f"! {change.label}: exists and is not managed by mfprefect (--adopt takes it over)"
                )
                continue
            lines.append(f"{marker} {change.action} {change.label}")
            for item in change.changes:
                # Field names can hold manifest keys (a config value's own keys): one line each,
                # so a key cannot forge plan lines or terminal escapes in a reviewed CI log.
                name = printable(item.field)
                if change.action == "create":
                    lines.append(f"    {name}: {_short(item.new)}")
                elif change.action == "update":
                    lines.append(f"    {name}: {_short(item.old)} -> {_short(item.new)}")
        lines += [f"note: {printable(item.text())}" for item in self.unmanaged]
        lines += [f"note: {note}" for note in self.notes]
        lines.append(self.summary())
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "changes": [
                {
                    "action": c.action,
                    "kind": c.kind.replace(" ", "_"),
                    "key": c.key,
                    "fields": [{"field": f.field, "old": f.old, "new": f.new} for f in c.changes],
                }
                for c in self.changes
            ],
            "summary": {
                a: sum(c.action == a for c in self.changes)
                for a in ("create", "update", "delete", "conflict")
            },
            "notes": list(self.notes),
            "unmanaged": [
                {"kind": "deployment", "key": u.key, "field": u.field, "live": u.live}
                for u in self.unmanaged
            ],
        }


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


# Fields compared directly; job_variables is compared through the manifest it carries.
COMPARED = (
    "description",
    "tags",
    "work_pool_name",
    "work_queue_name",
    "parameters",
    "parameter_openapi_schema",
    "enforce_parameter_schema",
    "concurrency_limit",
    "paused",
    "entrypoint",
)
SHOWN_ON_CREATE = (
    "work_pool_name",
    "work_queue_name",
    "tags",
    "paused",
    "concurrency_limit",
    "parameters",
)


def plan(
    desired: Sequence[DeploymentSpec],
    live: Iterable[LiveDeployment],
    *,
    prune: bool = False,
    adopt: bool = False,
    apply_set: str | None = None,
    resources: Sequence[ResourceSpec] = (),
    live_resources: Iterable[LiveResource] = (),
) -> Plan:
    """What to create, update, delete (only owned objects) and what conflicts, in a stable order:
    work pools, limits and variables first, then deployments, then the deletions of the former
    (so pools exist before the deployments that use them and go after them).

    Objects are written into `apply_set` (with None, each keeps the set it has); `prune` deletes
    the owned objects of that set that `desired` no longer declares, and needs a set."""
    if prune and apply_set is None:
        raise ValueError("prune needs an apply set")
    live = list(live)
    live_resources = list(live_resources)
    by_key = {d.key: d for d in live}
    result = Plan(
        observed=observed_digest(live, {s.key: s.unmanaged for s in desired}, live_resources)
    )
    before, after = _resource_changes(
        resources, live_resources, prune=prune, adopt=adopt, apply_set=apply_set, notes=result.notes
    )
    result.changes += before
    for declared in sorted(desired, key=lambda s: s.key):
        current = by_key.get(declared.key)
        spec = in_set(declared, apply_set or (current.apply_set if current else None))
        if current is None:
            shown = [FieldChange(f, None, spec.fields.get(f)) for f in SHOWN_ON_CREATE]
            if spec.code is not None:
                shown.append(FieldChange("code", None, spec.code.describe()))
            shown += [
                FieldChange(f"schedule {s.slug}", None, _schedule_text(s)) for s in spec.schedules
            ]
            shown += [
                FieldChange(f"automation {a.name}", None, a.trigger.get("expect"))
                for a in spec.automations
            ]
            shown.append(FieldChange("steps", None, list(spec.manifest.get("steps", {}))))
            result.changes.append(Change("create", spec.key, tuple(shown), spec=spec))
            continue
        if not current.owned and not adopt:
            result.changes.append(Change("conflict", spec.key, spec=spec, live=current))
            continue
        diffs = [
            FieldChange(name, _norm(current.fields.get(name)), _norm(spec.fields.get(name)))
            for name in COMPARED
            if name not in spec.unmanaged
            and _norm(current.fields.get(name)) != _norm(spec.fields.get(name))
        ]
        wanted_code = spec.code.describe() if spec.code is not None else None
        live_code = live_digest(current.fields.get("pull_steps"), current.fields.get("path"))
        if wanted_code != live_code:
            diffs.append(FieldChange("code", live_code, wanted_code))
        own_old = user_job_variables(current.fields.get("job_variables"))
        own_new = user_job_variables(spec.fields.get("job_variables"))
        if _norm(own_old) != _norm(own_new):
            diffs.append(FieldChange("job_variables", _norm(own_old), _norm(own_new)))
        # The manifest's value of an unmanaged field is only the initial one: editing it changes
        # nothing on the server, so it is no diff either.
        diffs += [
            d
            for d in _manifest_diffs(current.fields.get("job_variables"), spec.manifest)
            if d.field.removeprefix("manifest.deployment.") not in spec.unmanaged
        ]
        ops = _schedule_ops(
            spec.schedules, current.schedules, keep_active="schedule.active" in spec.unmanaged
        )
        result.unmanaged += _unmanaged(spec, current)
        diffs += [
            FieldChange(
                f"schedule {op.slug}",
                _schedule_text(op.have) if op.have else None,
                _schedule_text(op.want) if op.want else None,
            )
            for op in ops
        ]
        automation_ops = _automation_ops(spec.automations, current.automations)
        diffs += [
            FieldChange(
                f"automation {op.name}",
                _automation_view(op.have) if op.have is not None else None,
                _automation_view(op.want) if op.want is not None else None,
            )
            for op in automation_ops
        ]
        if diffs:
            result.changes.append(
                Change(
                    "update",
                    spec.key,
                    tuple(diffs),
                    spec=spec,
                    live=current,
                    schedule_ops=ops,
                    automation_ops=automation_ops,
                )
            )
    if prune:
        wanted = {s.key for s in desired}
        gone = [d for d in by_key.values() if d.owned and d.key not in wanted]
        for current in sorted(gone, key=lambda d: d.key):
            if current.apply_set == apply_set:
                result.changes.append(Change("delete", current.key, live=current))
        unset = sorted(d.key for d in gone if d.apply_set is None)
        if unset:
            result.notes.append(
                f"{len(unset)} mfprefect deployment(s) in no apply set are left alone by prune: "
                + ", ".join(unset)
                + " (apply their manifests once with a set, or `mfprefect delete` them)"
            )
    result.changes += after
    return result


def _resource_changes(
    desired: Sequence[ResourceSpec],
    live: Sequence[LiveResource],
    *,
    prune: bool,
    adopt: bool,
    apply_set: str | None,
    notes: list[str],
) -> tuple[list[Change], list[Change]]:
    """Changes to pools, limits and variables: (written before deployments, deleted after)."""
    order = {kind: n for n, kind in enumerate(resources.ORDER)}
    by_id = {(r.kind, r.name): r for r in live}
    before: list[Change] = []
    for declared in sorted(desired, key=lambda r: (order[r.kind], r.name)):
        label = LABELS[declared.kind]
        current = by_id.get((declared.kind, declared.name))
        wanted_set = apply_set or (current.apply_set if current is not None else None)
        spec = resources.with_set(declared, wanted_set)
        if current is None:
            shown = [
                FieldChange(name, None, value)
                for name, value in spec.fields.items()
                if name != "job_variables"
            ]
            shown += [
                FieldChange(f"job_variables.{name}", None, spec.fields["job_variables"][name])
                for name in spec.declared
            ]
            if declared.kind in resources.MARKED_KINDS:
                shown.append(FieldChange("apply_set", None, wanted_set))
            before.append(Change("create", spec.key, tuple(shown), kind=label, resource=spec))
            continue
        if not current.owned and not adopt:
            before.append(
                Change("conflict", spec.key, kind=label, resource=spec, live_resource=current)
            )
            continue
        diffs = [FieldChange(n, old, new) for n, old, new in resources.field_diffs(spec, current)]
        if declared.kind in resources.MARKED_KINDS and (
            not current.owned or current.apply_set != wanted_set
        ):
            diffs.append(
                FieldChange("apply_set", current.apply_set if current.owned else None, wanted_set)
            )
        if diffs:
            before.append(
                Change(
                    "update",
                    spec.key,
                    tuple(diffs),
                    kind=label,
                    resource=spec,
                    live_resource=current,
                )
            )
    after: list[Change] = []
    if prune:
        wanted = {(r.kind, r.name) for r in desired}
        gone = [r for r in live if r.owned and (r.kind, r.name) not in wanted]
        for current in sorted(gone, key=lambda r: (-order[r.kind], r.name)):
            if current.apply_set == apply_set:
                after.append(
                    Change("delete", current.key, kind=LABELS[current.kind], live_resource=current)
                )
        unset = sorted(f"{LABELS[r.kind]} {r.name}" for r in gone if r.apply_set is None)
        if unset:
            notes.append(
                f"{len(unset)} mfprefect object(s) in no apply set are left alone by prune: "
                + ", ".join(unset)
                + " (apply their manifests once with a set, or `mfprefect delete` them)"
            )
    return before, after


def _unmanaged(spec: DeploymentSpec, current: LiveDeployment) -> list[Unmanaged]:
    out = []
    for name in (n for n in UNMANAGEABLE if n in spec.unmanaged):
        if name == "schedule.active":
            live = {s.slug: s for s in current.schedules}
            out += [
                Unmanaged(spec.key, name, live[s.slug].active)
                for s in spec.schedules
                if s.slug in live
            ]
        else:
            out.append(Unmanaged(spec.key, name, current.fields.get(name)))
    return out


def observed_digest(
    live: Iterable[LiveDeployment],
    unmanaged: Mapping[str, Iterable[str]] | None = None,
    live_resources: Iterable[LiveResource] = (),
) -> str:
    """The sha256 of everything plan() reads from the server, independent of read order.

    Fields left to the UI (`unmanaged`, by deployment key) are left out: a UI edit of one does
    not make a saved plan stale, since apply never writes it."""
    import hashlib
    from dataclasses import asdict

    views: list[Any] = [
        asdict(r) for r in sorted(live_resources, key=lambda r: (r.kind, r.name, r.id))
    ]
    for deployment in sorted(live, key=lambda d: d.id):
        view = asdict(deployment)
        ignored = set((unmanaged or {}).get(deployment.key, ()))
        for name in ignored - {"schedule.active"}:
            view["fields"].pop(name, None)
        if "schedule.active" in ignored:
            for schedule in view["schedules"]:
                schedule["active"] = None
        view["schedules"] = sorted(view["schedules"], key=lambda s: s["id"])
        view["automations"] = sorted(view["automations"], key=lambda a: a["id"])
        views.append(view)
    text = json.dumps(views, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def in_set(spec: DeploymentSpec, apply_set: str | None) -> DeploymentSpec:
    """The spec with its tags naming this apply set (and no other)."""
    tags = [t for t in spec.fields.get("tags") or [] if not t.startswith(SET_TAG_PREFIX)]
    if apply_set is not None:
        tags.append(set_tag(apply_set))
    return replace(spec, fields={**spec.fields, "tags": sorted(tags)})


def _automation_view(automation: AutomationSpec | LiveAutomation) -> dict[str, Any]:
    view = {"trigger": _norm(dict(automation.trigger)), "parameters": _norm(automation.parameters)}
    if isinstance(automation, LiveAutomation) and not automation.enabled:
        view["enabled"] = False
    return view


def _automation_ops(
    wanted: Sequence[AutomationSpec], present: Sequence[LiveAutomation]
) -> tuple[AutomationOp, ...]:
    """Upsert by name, in place (ids kept); extras owned by this deployment are deleted."""
    ops: list[AutomationOp] = []
    by_name: dict[str, list[LiveAutomation]] = {}
    for automation in present:
        by_name.setdefault(automation.name, []).append(automation)
    for want in wanted:
        matches = sorted(by_name.pop(want.name, []), key=lambda a: a.id)
        if not matches:
            ops.append(AutomationOp("create", want, None))
            continue
        keep, *duplicates = matches
        if _automation_view(keep) != _automation_view(want):
            ops.append(AutomationOp("update", want, keep))
        ops += [AutomationOp("delete", None, extra) for extra in duplicates]  # never two of one
    for leftovers in by_name.values():
        ops += [AutomationOp("delete", None, extra) for extra in leftovers]
    return tuple(ops)


def _schedule_text(schedule: ScheduleSpec | LiveSchedule) -> str:
    state = "active" if schedule.active else "paused"
    return f"{schedule.cron} ({schedule.timezone or 'UTC'}, {state})"


def _schedule_ops(
    wanted: Sequence[ScheduleSpec], present: Sequence[LiveSchedule], *, keep_active: bool = False
) -> tuple[ScheduleOp, ...]:
    """Upsert by slug: unchanged schedules (and their scheduled runs) are left alone.

    With `keep_active` (the UI owns the active flag) a schedule's flag is not compared, and an
    update sends the live one."""
    ops: list[ScheduleOp] = []
    by_slug = {s.slug: s for s in present}
    for want in wanted:
        have = by_slug.pop(want.slug, None)
        if have is not None and keep_active:
            want = replace(want, active=have.active)
        if have is None:
            ops.append(ScheduleOp("create", want, None))
        elif (have.cron, have.timezone or None, have.active) != (
            want.cron,
            want.timezone or None,
            want.active,
        ):
            ops.append(ScheduleOp("update", want, have))
    for leftover in by_slug.values():
        ops.append(ScheduleOp("delete", None, leftover))
    return tuple(ops)


def _norm(value: Any) -> Any:
    """Compare like with like: JSON round trip, sorted tags, empty strings as None."""
    if value == "":
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return sorted(value)
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def user_job_variables(job_variables: Any) -> dict[str, Any]:
    """A deployment's job variables less what mfprefect sets itself (its `env` entries)."""
    if not isinstance(job_variables, dict):
        return {}
    own = dict(job_variables)
    env = own.get("env")
    if isinstance(env, dict):
        env = {k: v for k, v in env.items() if not k.startswith(RESERVED_ENV_PREFIXES)}
        if env:
            own["env"] = env
        else:
            own.pop("env")
    return own


def _manifest_diffs(job_variables: Any, wanted: Mapping[str, Any]) -> list[FieldChange]:
    blob = (
        ((job_variables or {}).get("env") or {}).get(MANIFEST_ENV)
        if isinstance(job_variables, dict)
        else None
    )
    try:
        current = decode_manifest(blob) if isinstance(blob, str) else {}
    except (ValueError, OSError):
        current = {}
    old_flat, new_flat = _flatten(current), _flatten(json.loads(json.dumps(wanted)))
    return [
        FieldChange(f"manifest.{path}", old_flat.get(path), new_flat.get(path))
        for path in sorted(set(old_flat) | set(new_flat))
        if old_flat.get(path) != new_flat.get(path)
    ]


def _flatten(data: Any, prefix: str = "", depth: int = 0) -> dict[str, Any]:
    if isinstance(data, dict) and data and depth < 4:
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key), depth + 1))
        return out
    return {prefix: data} if prefix else {}
