"""A run's steps on a Dask cluster (`deployment.executor: {kind: dask}`), through
prefect-dask's DaskTaskRunner: each Metaflow task is a Prefect task run that Dask places on a
worker whose resources fit the step's @resources. The walk itself stays in the flow run's
process; see `cluster_task` for the worker's side.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import RuntimeFailure, UsageError
from ..manifest import EnvRef, Executor, Manifest, Resources, SecretRef
from . import commands, engine, step_tasks
from .cluster_task import ATTEMPT, flush_logs, one_line, run_step
from .resolved import ResolvedRun

# Dask resource names for @resources. A worker advertises what it has with
# `dask worker --resources "GPU=1,MEMORY=16384"` (memory and disk in MB, as Metaflow counts).
RESOURCE_NAMES = (("cpu", "CPU"), ("memory", "MEMORY"), ("disk", "DISK"), ("gpu", "GPU"))
# Dask meters only what workers declare: these restrict a step only on a cluster where some
# worker declares them. A GPU is a requirement everywhere.
METERED = frozenset({"CPU", "MEMORY", "DISK"})
CONNECT_TIMEOUT = "10s"


def resolve_address(executor: Executor, env: Mapping[str, str]) -> str:
    """The scheduler address, reading an `{env: NAME}` reference from `env`."""
    address = executor.address
    if isinstance(address, EnvRef):
        value = env.get(address.name, "").strip()
        if not value:
            raise UsageError(
                f"environment variable {address.name} is not set where the flow runs, and "
                "deployment.executor.address refers to it",
                hint=f"set {address.name} to the Dask scheduler's address (tcp://HOST:8786)",
            )
        return value
    if not address:
        raise UsageError(
            "the dask executor needs a scheduler address",
            hint="set deployment.executor.address, or pass --address tcp://HOST:8786",
        )
    return address


def restrictions(resources: Resources | None, declared: Sequence[str]) -> dict[str, float]:
    """The Dask resources a step asks for, on a cluster whose workers declare `declared`."""
    if resources is None:
        return {}
    need: dict[str, float] = {}
    for attribute, name in RESOURCE_NAMES:
        value = getattr(resources, attribute)
        if value and (name not in METERED or name in declared):
            need[name] = float(value)
    return need


def unplaceable(
    manifest: Manifest, workers: Sequence[Mapping[str, float]], address: str
) -> str | None:
    """Why some step can run on none of the cluster's workers (None when every step can)."""
    declared = sorted({name for worker in workers for name in worker})
    if not workers:
        return f"the Dask cluster at {address} has no workers"
    for step, spec in manifest.steps.items():
        need = restrictions(spec.resources, declared)
        if not need or any(_fits(need, worker) for worker in workers):
            continue
        for name, amount in need.items():
            most = max(worker.get(name, 0.0) for worker in workers)
            if most < amount:
                return (
                    f"step `{step}` needs {name}={amount:g}, and no worker of the Dask cluster "
                    f"at {address} has that much (the most any worker has: {name}={most:g})"
                )
        return (
            f"step `{step}` needs {_text(need)}, and no single worker of the Dask cluster at "
            f"{address} has all of it"
        )
    return None


def _fits(need: Mapping[str, float], worker: Mapping[str, float]) -> bool:
    return all(worker.get(name, 0.0) >= amount for name, amount in need.items())


def _text(need: Mapping[str, float]) -> str:
    return ",".join(f"{name}={amount:g}" for name, amount in need.items())


def run_code(manifest: Manifest, env: Mapping[str, str]) -> dict[str, str]:
    """The code package the cluster's workers start steps from: the deployment's (named in the
    run's METAFLOW_CODE_* variables), or for a run started here, one built and stored now."""
    key, url = env.get("METAFLOW_CODE_SHA"), env.get("METAFLOW_CODE_URL")
    flow = manifest.flow_class
    marker = f"/{flow}/data/"
    if key and url and marker in url:
        return {
            "datastore": env.get("METAFLOW_CODE_DS") or manifest.runtime.datastore,
            "root": url.rsplit(marker, 1)[0],
            "flow": flow,
            "key": key,
            "url": url,
            "metadata": env.get("METAFLOW_CODE_METADATA", ""),
        }
    from ..deploy.code import content_hash
    from ..package import build_for

    return build_for(manifest, content_hash(manifest.flow_path().parent))


def code_variables(code: Mapping[str, str]) -> dict[str, str]:
    """What Metaflow's `Run(...).code` reads, as the deployment itself sets it."""
    return {
        "METAFLOW_CODE_SHA": code["key"],
        "METAFLOW_CODE_URL": code["url"],
        "METAFLOW_CODE_DS": code["datastore"],
        "METAFLOW_CODE_METADATA": code.get("metadata", ""),
    }


class ClusterSteps:
    """Runs Metaflow tasks as Prefect task runs on a Dask cluster, for one Runner."""

    def __init__(self, run: ResolvedRun, address: str, code: Mapping[str, str]) -> None:
        from prefect_dask import DaskTaskRunner

        self.manifest = run.manifest
        self.datastore = run.datastore
        self.address = address
        self.code = dict(code)
        self.task_runner = DaskTaskRunner(
            address=address, client_kwargs={"timeout": CONNECT_TIMEOUT, "set_as_default": False}
        )
        self.semaphore = asyncio.Semaphore(run.manifest.deployment.step_slots)
        self.declared: list[str] = []
        self.reports = step_tasks.StepReports()

    def __enter__(self) -> ClusterSteps:
        try:
            self.task_runner.__enter__()
            workers = self.task_runner.client.scheduler_info(n_workers=-1)["workers"]
        except (OSError, TimeoutError) as exc:
            self.task_runner.__exit__(None, None, None)
            raise RuntimeFailure(
                f"cannot reach the Dask scheduler at {self.address}: {one_line(exc)}",
                hint="check deployment.executor.address and that the scheduler is running",
            ) from None
        offered = [
            {name: float(v) for name, v in (info.get("resources") or {}).items()}
            for info in workers.values()
        ]
        self.declared = sorted({name for worker in offered for name in worker})
        problem = unplaceable(self.manifest, offered, self.address)
        if problem:
            self.task_runner.__exit__(None, None, None)
            raise RuntimeFailure(
                problem,
                hint="start a worker with `dask worker --resources ...`, or change the "
                "step's @resources",
            )
        return self

    def __exit__(self, *exc: Any) -> None:
        with contextlib.suppress(Exception):
            # Every worker's step logs are in Metaflow's datastore before the run ends.
            self.task_runner.client.run(flush_logs, wait=True)
        with contextlib.suppress(Exception):
            self.task_runner.__exit__(*exc)

    def request(
        self,
        runner: engine.Runner,
        step: str,
        task_id: str,
        inputs: list[str],
        split_index: int | None,
        clone_of: str | None,
    ) -> dict[str, Any]:
        """Everything the worker needs for one task, as plain data (no secret values)."""
        ctx = runner.ctx
        argv = runner.task_command(step, task_id, inputs, split_index, clone_of, ATTEMPT)
        spec = self.manifest.steps.get(step)  # None for `_parameters`
        max_attempt = commands.max_retries(self.manifest, step)[1] if spec else None
        plain, refs = commands.remote_environment(ctx, step if spec else None)
        plain.update(code_variables(self.code))
        store = self.datastore
        inspect = None
        if spec is not None:
            inspect = {
                "read": step_tasks.WALK_READS.get(spec.kind, []),
                "names": self.reports.claim(step),
            }
        return {
            "flow": self.manifest.flow_class,
            "pathspec": f"{ctx.run_id}/{step}/{task_id}",
            # The interpreter and flow file are the worker's: the package unpacked there.
            "argv": argv[2:],
            "flow_file": Path(ctx.flow_file).name,
            "env": plain,
            "refs": {
                name: ["secret", ref.block] if isinstance(ref, SecretRef) else ["env", ref.name]
                for name, ref in refs.items()
            },
            "code": self.code,
            "datastore": {"flow_name": store.flow_name, "kind": store.kind, "root": store.root},
            "inspect": inspect,
            "timeout": engine.hard_timeout(spec),
            "max_attempt": max_attempt,
        }

    async def __call__(
        self,
        runner: engine.Runner,
        step: str,
        task_id: str,
        inputs: list[str],
        split_index: int | None,
        indices: tuple[int, ...],
        clone_of: str | None = None,
    ) -> engine.TaskResult:
        import dask
        from prefect import task

        request = self.request(runner, step, task_id, inputs, split_index, clone_of)
        options = step_tasks.task_options(self.manifest, step, indices, clone_of)
        make_task: Any = task
        prefect_task = make_task(run_step, persist_result=False, **options)
        spec = self.manifest.steps.get(step)
        need = restrictions(spec.resources if spec else None, self.declared)
        async with self.semaphore:
            annotations = dask.annotate(resources=need) if need else contextlib.nullcontext()
            with annotations:
                future = self.task_runner.submit(prefect_task, parameters={"request": request})
            state = await self._settled(future, f"{self.manifest.flow_class}/{request['pathspec']}")
        try:
            done: dict[str, Any] = await state.aresult()
        except BaseException:
            if request["inspect"] is not None and request["inspect"]["names"]:
                self.reports.release(step)
            raise
        result = engine.TaskResult(done["pathspec"], done["attempt"], done["values"])
        if request["inspect"] is not None and request["inspect"]["names"]:
            from prefect.artifacts import acreate_markdown_artifact

            await acreate_markdown_artifact(
                markdown=step_tasks.artifacts_markdown(
                    self.manifest.flow_class, done["pathspec"], done["names"], done["cards"]
                )
                + f"\nRan on Dask worker `{done['worker']}`.\n",
                key=step_tasks.artifact_key(f"{step}-artifacts"),
                description=f"Artifacts of {self.manifest.flow_class}/{done['pathspec']}",
            )
        return result

    async def _settled(self, future: Any, pathspec: str) -> Any:
        """The task run's final state, awaited without a thread per waiting step."""
        dask_future = future.wrapped_future
        loop = asyncio.get_running_loop()
        settled: asyncio.Future[None] = loop.create_future()

        def settle() -> None:
            if not settled.done():
                settled.set_result(None)

        def wake(_: Any) -> None:
            loop.call_soon_threadsafe(settle)

        dask_future.add_done_callback(wake)
        try:
            await settled
        except asyncio.CancelledError:
            # Dask then tells the worker, whose step stops (see cluster_task._while_wanted).
            with contextlib.suppress(Exception):
                dask_future.cancel()
            raise
        try:
            return dask_future.result()
        except Exception as exc:  # noqa: BLE001 - reported as one line
            raise RuntimeFailure(
                f"step {pathspec} did not finish on the Dask cluster at {self.address}: "
                f"{one_line(exc)}",
                hint="if the scheduler or its workers went away, `mfprefect resume` re-runs "
                "only what did not finish",
            ) from None
