"""Saved plans: `plan --out plan.json` writes one, `apply plan.json` applies exactly it.

A saved plan records what it was computed from (each manifest's sha256, a digest of the server
state plan() read, which server, the apply set and options) and what it would do. Applying it
recomputes the plan from the same inputs and refuses, before any write, when an input changed or
the recomputed plan differs, as Terraform refuses a stale saved plan. A checksum over the file
catches edits and truncation. Pure apart from reading and writing the plan file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import PlanRejected
from .plan import Plan

KIND = "mfprefect-plan"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class SavedPlan:
    paths: tuple[str, ...]  # the manifest files and folders, as given to `plan`
    manifests: Mapping[str, str]  # each manifest file read (as shown) -> sha256 of its bytes
    server: str  # sha256 of the API URL: which server, without writing its address down
    apply_set: str | None
    prune: bool
    adopt: bool
    observed: str  # Plan.observed
    plan: Mapping[str, Any]  # Plan.as_json()

    def as_json(self) -> dict[str, Any]:
        body = {
            "kind": KIND,
            "format_version": FORMAT_VERSION,
            "paths": list(self.paths),
            "manifests": dict(sorted(self.manifests.items())),
            "server": self.server,
            "apply_set": self.apply_set,
            "prune": self.prune,
            "adopt": self.adopt,
            "observed": self.observed,
            "plan": self.plan,
        }
        return {**body, "checksum": _checksum(body)}

    def check_inputs(self, manifests: Mapping[str, str], server: str) -> None:
        """Refuse when the manifests or the server are not the ones the plan was made from."""
        if server != self.server:
            raise PlanRejected(
                "the plan was made against another Prefect server than PREFECT_API_URL names",
                hint="point PREFECT_API_URL at the plan's server, or make a new plan",
            )
        changed = sorted(
            f"{name} ({_how(self.manifests.get(name), manifests.get(name))})"
            for name in set(self.manifests) | set(manifests)
            if self.manifests.get(name) != manifests.get(name)
        )
        if changed:
            raise PlanRejected(
                "the manifests changed since the plan was made: " + ", ".join(changed),
                hint="make a new plan (`mfprefect plan ... --out FILE`) and review it",
            )

    def check_plan(self, fresh: Plan) -> None:
        """Refuse when the server changed since the plan, or the plan would now differ."""
        if fresh.observed != self.observed:
            raise PlanRejected(
                "the server changed since the plan was made (a deployment, schedule, "
                "automation, work pool, limit or variable it reads was edited, added or "
                "deleted); nothing was applied",
                hint="make a new plan (`mfprefect plan ... --out FILE`) and review it",
            )
        if _canonical(_reviewed(fresh.as_json())) != _canonical(_reviewed(self.plan)):
            raise PlanRejected(
                "the plan would now differ from the saved one; nothing was applied",
                hint="make a new plan (`mfprefect plan ... --out FILE`) and review it",
            )


def manifest_digests(files: Sequence[tuple[str, str]]) -> dict[str, str]:
    """(path to open, name shown) -> {name shown: sha256 of the file's bytes}."""
    return {shown: hashlib.sha256(Path(path).read_bytes()).hexdigest() for path, shown in files}


def server_digest(url: str) -> str:
    return hashlib.sha256(url.rstrip("/").encode("utf-8")).hexdigest()[:16]


def text(saved: SavedPlan) -> str:
    """The plan file's text (the caller writes it, atomically)."""
    return json.dumps(saved.as_json(), indent=2, sort_keys=False, default=str) + "\n"


def read(path: str) -> SavedPlan:
    """A saved plan from its file, or PlanRejected saying in one line why it is not one."""
    name = Path(path).as_posix()
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise PlanRejected(f"{name}: cannot read the saved plan: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise PlanRejected(
            f"{name}: not a saved plan: not JSON ({exc}); truncated or not written by `plan --out`",
            hint="make a new plan with `mfprefect plan ... --out FILE`",
        ) from None
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise PlanRejected(
            f"{name}: not a saved plan (no `kind: {KIND}`)",
            hint="apply takes manifests (.yaml) or a plan written by `mfprefect plan --out`",
        )
    if data.get("format_version") != FORMAT_VERSION:
        raise PlanRejected(
            f"{name}: saved plan format_version {data.get('format_version')!r} is not one this "
            f"mfprefect reads ({FORMAT_VERSION})",
            hint="make the plan again with the mfprefect that will apply it",
        )
    body = {k: v for k, v in data.items() if k != "checksum"}
    if data.get("checksum") != _checksum(body):
        raise PlanRejected(
            f"{name}: the saved plan's checksum does not match its content: it was edited",
            hint="make a new plan instead of editing one",
        )
    try:
        return SavedPlan(
            paths=tuple(str(p) for p in data["paths"]),
            manifests={str(k): str(v) for k, v in data["manifests"].items()},
            server=str(data["server"]),
            apply_set=data["apply_set"],
            prune=bool(data["prune"]),
            adopt=bool(data["adopt"]),
            observed=str(data["observed"]),
            plan=data["plan"],
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise PlanRejected(f"{name}: not a saved plan: missing or wrong field {exc}") from None


def _how(before: str | None, now: str | None) -> str:
    if before is None:
        return "new"
    if now is None:
        return "removed"
    return "edited"


def _reviewed(plan: Mapping[str, Any]) -> dict[str, Any]:
    """What a saved plan must still say: the live values of fields left to the UI may move."""
    return {k: v for k, v in plan.items() if k != "unmanaged"}


def _canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))


def _checksum(body: Mapping[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(_canonical(body).encode("utf-8")).hexdigest()
