"""One run of a manifest, resolved once and passed down: the datastore, the parameter values,
the run id and tags, what a resume clones, the environment and interpreter its steps start from.

Built by `resolve` before the flow run starts (for a deployment, as its flow run begins); what
only the flow run knows (its id, the secrets read from Prefect blocks, a locked environment, the
id a metadata service recorded) is added in one place inside it (`prefect_flow._in_flow_run`).
No Prefect and no processes here.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..manifest import Manifest
from . import commands, resume
from .datastore import Datastore

if TYPE_CHECKING:
    from .zygote import Zygote


@dataclass(frozen=True)
class ResolvedRun:
    """Everything the parts of one run share; never recomputed below `resolve`."""

    manifest: Manifest
    datastore: Datastore
    # Defaults overlaid with the origin run's values (on resume) and the values given; validated.
    parameters: Mapping[str, Any]
    # None until the flow run names it (a deployment's run is named after its flow run).
    run_id: str | None = None
    tags: tuple[str, ...] = ()
    # Resume: the earlier run and its tasks to copy, by (step, foreach indices, nth time).
    clone_run_id: str | None = None
    clones: resume.Clones = field(default_factory=dict)
    # The environment and interpreter every step process starts from.
    base_env: Mapping[str, str] = field(default_factory=dict, repr=False)
    python: str = sys.executable
    # Known only inside the flow run.
    flow_run_id: str | None = None
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    # Every value that came from a reference (secret or environment), masked in every log.
    masked: tuple[str, ...] = field(default=(), repr=False)
    # The step launcher, started before the flow run so its imports overlap with ours.
    zygote: Zygote | None = field(default=None, compare=False, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        """The run as it travels: a local run's flow holds it, and Prefect pickles the flow
        into every task run it sends to a Dask worker. This process's environment, the secrets,
        the launcher (and what the datastore has open: see Datastore) stay here."""
        state = dict(self.__dict__)
        state.pop("context", None)
        state.update(base_env={}, secrets={}, masked=(), zygote=None)
        return state

    @property
    def on_cluster(self) -> bool:
        """Whether the steps run on a Dask cluster (their references resolved there)."""
        return self.manifest.deployment.executor.kind == "dask"

    @property
    def pathspec(self) -> str:
        return f"{self.manifest.flow_class}/{self.run_id}"

    @cached_property
    def context(self) -> commands.RunContext:
        """What every step command line of the run shares."""
        return commands.RunContext(
            manifest=self.manifest,
            python=self.python,
            flow_file=str(self.manifest.flow_path()),
            datastore_root=self.datastore.root,
            run_id=self.run_id or "",
            tags=self.tags,
            base_env=self.base_env,
        )


# A check of the run's usage that must pass before its datastore is resolved.
UsageCheck = Callable[[Manifest, Mapping[str, str]], None]


def resolve(
    manifest: Manifest,
    parameters: Mapping[str, Any],
    *,
    env: Mapping[str, str],
    run_id: str | None = None,
    tags: tuple[str, ...] = (),
    clone_run_id: str | None = None,
    step_to_rerun: str | None = None,
    check: UsageCheck | None = None,
) -> ResolvedRun:
    """The run of `manifest` with `parameters` (a resume of `clone_run_id` with a step to
    re-run); UsageError for unknown or missing parameters, an unknown origin run or step, and
    whatever `check` refuses. A fresh run's local datastore folder is made only after all of
    them (a resume reads its origin from the datastore, so that comes first there)."""
    datastore = None
    origin_parameters: Mapping[str, Any] = {}
    clones: resume.Clones = {}
    if clone_run_id:
        datastore = Datastore.for_manifest(manifest)
        origin = resume.read_origin(manifest, clone_run_id, datastore)
        clones = resume.reused(manifest, origin, step_to_rerun, parameters)
        origin_parameters = origin.parameters
    elif step_to_rerun:
        raise UsageError("a step to re-run needs the run to resume (--clone-run-id)")
    values = commands.parameter_values(manifest, {**origin_parameters, **parameters})
    if check is not None:
        check(manifest, env)
    return ResolvedRun(
        manifest=manifest,
        datastore=datastore or Datastore.for_manifest(manifest),
        parameters=values,
        run_id=run_id,
        tags=tuple(manifest.deployment.tags) + tuple(tags),
        clone_run_id=clone_run_id or None,
        clones=clones,
        base_env=dict(env),
    )
