"""What a resume reuses from its origin run, the same wherever it is decided (a local `resume`,
the trigger of a deployed resume, the deployed flow run on its worker).

Metaflow's rules: every task that succeeded in the origin run is cloned (matched by step, foreach
indices and the nth time it ran there), except in the step to re-run and everything downstream of
it; the run keeps the origin's parameter values. Steps read parameters through their inputs, so a
resume whose parameters differ from the origin's re-runs from `start`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError
from ..manifest import RESERVED_PARAMETER, Manifest
from .datastore import Datastore

# The deployed flow's parameter that makes a flow run a resume ({origin_run_id, step_to_rerun});
# validation keeps pipelines from having a parameter of that name.
RESUME_PARAMETER = RESERVED_PARAMETER

Clones = Mapping[tuple[str, tuple[int, ...], int], str]


@dataclass(frozen=True)
class Origin:
    """An origin run as a resume sees it."""

    run_id: str
    clones: Clones = field(default_factory=dict)
    parameters: Mapping[str, Any] = field(default_factory=dict)


def rerun_steps(manifest: Manifest, step: str | None) -> set[str]:
    """`step` and every step reachable from it (empty without a step)."""
    if step is None:
        return set()
    if step not in manifest.steps:
        from difflib import get_close_matches

        close = get_close_matches(step, list(manifest.steps), n=1)
        raise UsageError(
            f"no step named {step!r} in {manifest.name}",
            hint=f"did you mean {close[0]!r}?" if close else "steps: " + ", ".join(manifest.steps),
        )
    found, todo = set(), [step]
    while todo:
        current = todo.pop()
        if current not in found:
            found.add(current)
            todo.extend(manifest.steps[current].successors)
    return found


def read_origin(
    manifest: Manifest,
    run_id: str,
    datastore: Datastore | None = None,
    *,
    only_parameters: bool = False,
) -> Origin:
    """The origin run's successful tasks (none read with `only_parameters`) and parameter
    values; UsageError if the datastore has no such run."""
    store = datastore or Datastore.for_manifest(manifest)
    clones, stored = store.origin_tasks(run_id, only_parameters)
    return Origin(run_id, clones, parameters_from_artifacts(manifest, stored))


def reused(
    manifest: Manifest,
    origin: Origin,
    step_to_rerun: str | None,
    parameters: Mapping[str, Any] | None = None,
) -> Clones:
    """The origin tasks this resume clones, given the step to re-run and the parameter values
    the run was given (re-running from `start` when they differ from the origin's)."""
    if parameters and changed(origin.parameters, parameters):
        step_to_rerun = manifest.start_step
    again = rerun_steps(manifest, step_to_rerun)
    return {key: task for key, task in origin.clones.items() if key[0] not in again}


def changed(origin: Mapping[str, Any], given: Mapping[str, Any]) -> bool:
    """Whether any given value differs from the origin's (compared as JSON: a tuple read back
    from an artifact equals the list a flow run was given)."""

    def text(value: Any) -> str:
        return json.dumps(value, sort_keys=True, default=str)

    return any(text(origin.get(name)) != text(value) for name, value in given.items())


def parameters_from_artifacts(manifest: Manifest, stored: Mapping[str, Any]) -> dict[str, Any]:
    """Parameter values of an earlier run, found under their attribute names (`a-b` is `a_b`)."""
    values: dict[str, Any] = {}
    for name in manifest.parameters:
        for candidate in (name, name.replace("-", "_"), name.replace("-", "_").lower()):
            if candidate in stored:
                values[name] = stored[candidate]
                break
    return values
