"""The Prefect side of a run: the flow, one task run per Metaflow task, logs and artifacts."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

from prefect import flow, get_run_logger, tags, task
from prefect.artifacts import acreate_markdown_artifact
from prefect.context import TagsContext
from prefect.runtime import flow_run as flow_run_info
from prefect.runtime import task_run as task_run_info
from prefect.utilities.annotations import quote

from ..manifest import Manifest
from . import cluster, commands, engine, locked_env, step_tasks
from .datastore import TaskRecord
from .engine import RunSummary
from .resolved import ResolvedRun, resolve
from .zygote import ForkedProcess, Zygote, forking_enabled


class PrefectSteps:
    """Runs Metaflow tasks as Prefect task runs for one Runner."""

    def __init__(self, run: ResolvedRun, zygote: Zygote | None = None) -> None:
        self.manifest = run.manifest
        self.datastore = run.datastore
        self.secrets = dict(run.secrets)
        self.zygote = zygote
        # Step output waiting to be saved, and the one batch save under way.
        self.unsaved: list[tuple[dict[str, Any], Any]] = []
        self.saver: asyncio.Future[None] | None = None
        self.semaphore = asyncio.Semaphore(run.manifest.deployment.parallelism)
        self.reports = step_tasks.StepReports()

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
        options = step_tasks.task_options(self.manifest, step, indices, clone_of)
        runnable: Any = task(_step_task, **options)
        # Prefect walks every argument of a task looking for futures and states; these two (the
        # whole resolved run, its manifest and environment) are quoted so that they are not:
        # about 1,200 objects visited per task otherwise, a second of CPU per 100 tasks. The
        # task receives them as they are.
        result: engine.TaskResult = await runnable(
            quote(self), quote(runner), step, task_id, inputs, split_index, clone_of
        )
        return result

    async def _attempt(
        self,
        runner: engine.Runner,
        step: str,
        task_id: str,
        inputs: list[str],
        split_index: int | None,
        clone_of: str | None = None,
    ) -> engine.TaskResult:
        attempt = max(int(task_run_info.run_count or 1) - 1, 0)
        ctx = runner.ctx
        pathspec = f"{ctx.run_id}/{step}/{task_id}"
        logger = get_run_logger()
        args = runner.task_command(step, task_id, inputs, split_index, clone_of, attempt)
        env = commands.environment(ctx, None if step == "_parameters" else step, self.secrets.get)
        masked = list(runner.resolved.masked)

        inspect: dict[str, Any] | None = None
        reports = False
        if step != "_parameters":
            reports = self.reports.claim(step)
            kind = self.manifest.steps[step].kind
            store = self.datastore
            inspect = {
                "flow_name": store.flow_name,
                "kind": store.kind,
                "root": store.root,
                "pathspec": pathspec,
                "attempt": attempt,
                "read": step_tasks.WALK_READS.get(kind, []),
                "names": reports,
            }
        launched: list[engine.StepProcess] = []

        async def launch(args: list[str], env: Mapping[str, str]) -> engine.StepProcess:
            proc = await self._launch(args, env, inspect)
            launched.append(proc)
            return proc

        async with self.semaphore:
            outcome = await engine.run_process(
                args,
                env,
                step_tasks.log_to(logger),
                timeout=engine.hard_timeout(self.manifest.steps.get(step)),
                secrets=masked,
                launch=launch,
            )
        record = None
        if inspect is not None:
            self._save_logs(pathspec, attempt, outcome, logger)
            if outcome.returncode == 0 and not outcome.timed_out:
                record = await self._inspect(inspect, launched)
        try:
            result = step_tasks.judge(self.manifest.flow_class, pathspec, attempt, outcome, record)
        except BaseException:
            if reports:
                self.reports.release(step)
            raise
        if reports and record is not None:
            await self._report_artifacts(step, pathspec, record)
        return result

    async def _launch(
        self, args: list[str], env: Mapping[str, str], inspect: Mapping[str, Any] | None
    ) -> engine.StepProcess:
        """Fork the step from the zygote if there is one (it also reports `inspect`)."""
        if self.zygote is not None and await self.zygote.ready():
            try:
                return await self.zygote.spawn(args, env, os.getcwd(), report=inspect)
            except OSError:
                pass
        return await engine.spawn_process(args, env)

    async def _inspect(
        self, inspect: dict[str, Any], launched: list[engine.StepProcess]
    ) -> TaskRecord:
        """What the walk needs from a successful task. A forked step reported it itself; else
        a child forked for it reads it (the runner process does not import Metaflow), or else
        it is read here."""
        if launched and isinstance(launched[-1], ForkedProcess):
            found = await launched[-1].report()
            if found is not None:
                return TaskRecord(**found)
        if self.zygote is not None and await self.zygote.ready():
            with contextlib.suppress(OSError):
                return TaskRecord(**await self.zygote.call("inspect", inspect))
        args = {k: v for k, v in inspect.items() if k not in ("flow_name", "kind", "root")}
        return self.datastore.inspect(**args)

    def _save_logs(
        self, pathspec: str, attempt: int, outcome: engine.ProcessOutcome, logger: Any
    ) -> None:
        """Keep the step's output in Metaflow's task logs, off the walk's critical path: saves
        queue up and one child at a time saves a batch (the run waits for all before it ends)."""
        task = {
            "pathspec": pathspec,
            "attempt": attempt,
            "stdout": outcome.stdout,
            "stderr": outcome.stderr,
        }
        self.unsaved.append((task, logger))
        if self.saver is None or self.saver.done():
            self.saver = asyncio.ensure_future(self._save_batches())

    async def _save_batches(self) -> None:
        while self.unsaved:
            # Saving takes a process like a step does, so it waits for a free slot too: the run
            # never has more than `parallelism` processes of its own at once.
            async with self.semaphore:
                await self._save_batch()

    async def _save_batch(self) -> None:
        store = self.datastore
        where = {"flow_name": store.flow_name, "kind": store.kind, "root": store.root}
        if self.unsaved:
            batch, self.unsaved = self.unsaved, []
            tasks = [task for task, _ in batch]
            try:
                if self.zygote is not None and await self.zygote.ready():
                    errors = (await self.zygote.call("save_logs", where, tasks))["errors"]
                else:
                    errors = store.save_all_logs(tasks)
            except OSError as exc:
                errors = {task["pathspec"]: str(exc) for task in tasks}
            for task, logger in batch:
                if task["pathspec"] in errors:  # a full disk must not hide the step's own error
                    logger.warning(
                        f"could not save the step's logs to the datastore: {errors[task['pathspec']]}"
                    )

    async def drain(self) -> None:
        """Wait until every step's output is saved."""
        while self.saver is not None and not self.saver.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(self.saver)

    async def _report_artifacts(self, step: str, pathspec: str, record: TaskRecord) -> None:
        full = f"{self.manifest.flow_class}/{pathspec}"
        await acreate_markdown_artifact(
            markdown=step_tasks.artifacts_markdown(
                self.manifest.flow_class, pathspec, record.names, record.cards
            ),
            key=step_tasks.artifact_key(f"{step}-artifacts"),
            description=f"Artifacts of {full}",
        )


async def _step_task(
    steps: PrefectSteps,
    runner: engine.Runner,
    step: str,
    task_id: str,
    inputs: list[str],
    split_index: int | None,
    clone_of: str | None = None,
) -> engine.TaskResult:
    """The body of every step's Prefect task. Prefect reads a task function's source each time a
    task is made (one per Metaflow task), so this is kept to a line."""
    return await steps._attempt(runner, step, task_id, inputs, split_index, clone_of)


async def execute(run: ResolvedRun) -> str:
    """Inside a flow run: run every step of the pipeline; return the Metaflow run's pathspec."""
    # The run's tags (`metaflow_run:...`, a deployment's) mark the flow run. Task runs carry
    # only their own (from @resources): Prefect takes a concurrency lease for every tag a task
    # run has, a request and a service thread per distinct set of tags.
    with TagsContext(current_tags=set()):
        return await _execute(run)


async def _execute(run: ResolvedRun) -> str:
    run = await _in_flow_run(run)
    manifest = run.manifest
    if run.on_cluster:
        address = cluster.resolve_address(manifest.deployment.executor, os.environ)
        code = await asyncio.to_thread(cluster.run_code, manifest, os.environ)
        with cluster.ClusterSteps(run, address, code) as on_workers:
            await _walk(run, on_workers, None)
        return run.pathspec
    zygote = run.zygote or _start_zygote(manifest, commands.runtime_environment(run.context))
    steps = PrefectSteps(run, zygote)
    try:
        await _walk(run, steps, steps)
    finally:
        if zygote is not None and zygote is not run.zygote:
            zygote.close()
    return run.pathspec


async def _in_flow_run(run: ResolvedRun) -> ResolvedRun:
    """The run with what only its flow run knows, added here once: the flow run's id, the
    secrets, the locked environment, and the run id a metadata service recorded."""
    manifest = run.manifest
    flow_run_id = str(flow_run_info.id)
    # On a cluster, references are resolved by the worker that runs the step.
    secrets = {} if run.on_cluster else await resolve_secrets(manifest)
    base_env = dict(run.base_env)
    python = run.python
    locked = await _locked_environment(manifest, base_env)
    if locked is not None:
        base_env.update(locked.env)
        python = locked.python
    run = dataclasses.replace(
        run,
        # A deployment's run is named after its flow run, so a trigger knows the pathspec at once.
        run_id=run.run_id or "prefect-" + flow_run_id.replace("-", ""),
        # The Metaflow run points back at the Prefect flow run that made it.
        tags=run.tags + (f"prefect_flow_run:{flow_run_id}",),
        base_env=base_env,
        python=python,
        flow_run_id=flow_run_id,
        secrets=secrets,
    )
    if not run.on_cluster:
        # Every step's environment, built once here: a reference that cannot be filled fails
        # the run now, and every value that came from one is masked in every log.
        found = commands.run_secret_values(run.context, secrets.get)
        run = dataclasses.replace(run, masked=(*dict.fromkeys([*secrets.values(), *found]),))
    return await _registered(run)


async def _walk(run: ResolvedRun, run_task: Any, local: PrefectSteps | None) -> None:
    """Walk the pipeline's graph, each task through `run_task`, until it ends, fails or the flow
    run is cancelled in Prefect."""
    runner = engine.Runner(run, run_task)
    work = asyncio.ensure_future(runner.run())
    watcher = asyncio.ensure_future(_cancel_when_requested(run.flow_run_id, work))
    try:
        await work
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled() and watcher.result():
            raise engine.RunCancelled(
                "the flow run was cancelled; its steps were stopped"
            ) from None
        raise
    finally:
        watcher.cancel()
        if local is not None:
            await local.drain()


async def _registered(run: ResolvedRun) -> ResolvedRun:
    """The run registered with a metadata service, under the id the service recorded. With
    steps on a cluster, the manifest's references are the workers' to resolve: registration
    uses this process's own environment (where the service settings are)."""
    ctx = run.context
    args = commands.register_command(ctx)
    if args is None:
        return run
    logger = get_run_logger()
    secrets = run.secrets
    env = (
        commands.runtime_environment(ctx)
        if run.on_cluster
        else commands.environment(ctx, None, secrets.get)
    )
    outcome = await engine.run_process(
        args,
        env,
        lambda stream, line: logger.warning(line) if stream == "stderr" else None,
        timeout=300,
        secrets=[*run.masked],
    )
    recorded = None
    for line in reversed(outcome.stdout):
        if line.startswith("{"):
            recorded = json.loads(line).get("run_id")
            break
    if outcome.returncode != 0 or not recorded:
        raise engine.RuntimeFailure(
            f"cannot register run {ctx.manifest.flow_class}/{ctx.run_id} with the metadata "
            f"service: {(outcome.stderr or ['no answer'])[-1]}"
        )
    if recorded != ctx.run_id:
        logger.warning(
            f"the metadata service does not take client-chosen run ids: this run is "
            f"{ctx.manifest.flow_class}/{recorded}"
        )
    return dataclasses.replace(run, run_id=recorded)


async def _locked_environment(
    manifest: Manifest, env: Mapping[str, str]
) -> locked_env.LockedEnv | None:
    """The flow's locked environment (`environment: uv`), built before the first step; a lock
    that cannot be installed fails the run here, said as one line in its log."""
    try:
        return await asyncio.to_thread(locked_env.prepare, manifest, env)
    except engine.RuntimeFailure as exc:
        get_run_logger().error(f"mfprefect: {exc.message}")
        raise


# How a run gets its step launcher: (environment, working directory, flow folder) -> zygote.
StartZygote = Callable[[Mapping[str, str], str, str], "Zygote | None"]


def _start_zygote(
    manifest: Manifest, env: Mapping[str, str], start: StartZygote = Zygote
) -> Zygote | None:
    """The run's step launcher, unless MFPREFECT_FORK_STEPS=0 asks for fresh processes."""
    if not forking_enabled():
        return None
    try:
        return start(env, os.getcwd(), str(manifest.flow_path().parent))
    except (OSError, ValueError):
        return None


def build_flow(run: ResolvedRun) -> Any:
    """A Prefect flow named after the pipeline that runs `run`; it takes the pipeline's
    parameters as a mapping (the values given, recorded on the flow run: `run` holds them
    resolved already)."""
    manifest = run.manifest

    async def pipeline(parameters: dict[str, Any]) -> str:
        return await execute(run)

    make_flow: Any = flow
    return make_flow(
        pipeline,
        name=manifest.name,
        flow_run_name=f"{manifest.name}",
        timeout_seconds=manifest.deployment.timeout_seconds,
        validate_parameters=False,
        persist_result=False,
        log_prints=False,
    )


CANCEL_POLL_SECONDS = 1.0


async def _cancel_when_requested(flow_run_id: Any, work: asyncio.Future[Any]) -> bool:
    """Cancel `work` (stopping every step process) once the flow run is cancelled in Prefect.

    A run started in-process has no worker to act on a cancellation, so it watches for one.
    """
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        while not work.done():
            await asyncio.sleep(CANCEL_POLL_SECONDS)
            try:
                state = (await client.read_flow_run(flow_run_id)).state
            except Exception:  # noqa: BLE001 - a missed poll is retried on the next one
                continue
            if state is not None and (state.is_cancelling() or state.is_cancelled()):
                work.cancel()
                return True
    return False


async def _mark_cancelled(flow_run_id: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled

    async with get_client() as client:
        await client.set_flow_run_state(flow_run_id, Cancelled(message="steps stopped"), force=True)


async def resolve_secrets(manifest: Manifest) -> dict[str, str]:
    """Values of the Prefect Secret blocks the manifest refers to, read once per run."""
    blocks = engine.secret_blocks(manifest)
    if not blocks:
        return {}
    from prefect.blocks.system import Secret

    values: dict[str, str] = {}
    for name in blocks:
        block: Any = await Secret.aload(name)
        values[name] = str(block.get())
    return values


def _check_references(manifest: Manifest, env: Mapping[str, str]) -> None:
    """UsageError for an environment reference (or a cluster's address) `env` cannot fill,
    before any flow run exists; secret blocks are read only inside the flow run."""
    if manifest.deployment.executor.kind == "dask":
        cluster.resolve_address(manifest.deployment.executor, env)
        return
    precheck = commands.RunContext(manifest, "", "", "", "", base_env=dict(env))
    for step in [None, *manifest.steps]:
        commands.environment(precheck, step, lambda _block: "")


def run_manifest(
    manifest: Manifest,
    parameters: Mapping[str, Any],
    *,
    echo: Callable[[str], None] = lambda _: None,
    run_id: str | None = None,
    tags_: tuple[str, ...] = (),
    clone_run_id: str | None = None,
    step_to_rerun: str | None = None,
    start_zygote: StartZygote = Zygote,
) -> RunSummary:
    """Run the whole pipeline as one Prefect flow run, in this process. Raises StepFailed.

    With `clone_run_id` it is a resume: tasks that succeeded in that run are copied (no user
    code runs), except in `step_to_rerun` and after it, and the rest run, with the original
    run's parameter values. `start_zygote` makes the run's step launcher (the local runner
    passes one that asks it for a fork of a shared template).
    """
    # Usage errors (parameters, environment references, an unknown run) before any flow run exists.
    run = resolve(
        manifest,
        parameters,
        env=os.environ,
        run_id=run_id or engine.new_run_id(),
        tags=tags_,
        clone_run_id=clone_run_id,
        step_to_rerun=step_to_rerun,
        check=_check_references,
    )
    pathspec = run.pathspec
    echo(f"Metaflow run {pathspec}")
    if not run.on_cluster:
        # Steps on a cluster start on its workers; the flow (sent with each task) holds no zygote.
        zygote = _start_zygote(manifest, commands.runtime_environment(run.context), start_zygote)
        run = dataclasses.replace(run, zygote=zygote)
    prefect_flow = build_flow(run)
    try:
        with tags("mfprefect", f"metaflow_run:{pathspec}"):
            state = asyncio.run(prefect_flow(parameters=dict(parameters), return_state=True))
    finally:
        if run.zygote is not None:
            run.zygote.close()
    flow_run_id = str(state.state_details.flow_run_id) if state.state_details.flow_run_id else None
    if state.is_cancelling() and flow_run_id:
        # The engine could not move a Cancelling run on; the steps are stopped, so say so.
        asyncio.run(_mark_cancelled(flow_run_id))
        raise engine.RunCancelled("the flow run was cancelled; its steps were stopped")
    if not state.is_completed():
        try:
            state.result()
        except engine.RuntimeFailure:  # a step, a cancellation, the cluster: said as it is
            raise
        except BaseException as exc:  # noqa: BLE001 - reported as one line
            if state.name == "TimedOut":
                raise engine.RunCancelled(
                    f"flow run timed out after {manifest.deployment.timeout_seconds} s "
                    "(deployment.timeout_seconds); its steps were stopped"
                ) from None
            raise engine.RuntimeFailure(f"flow run {state.name.lower()}: {exc}") from None
        raise engine.RuntimeFailure(f"flow run {state.name.lower()}")
    with contextlib.suppress(Exception):
        # A metadata service may have named the run itself (see _registered).
        recorded = state.result()
        if isinstance(recorded, str) and recorded.startswith(f"{manifest.flow_class}/"):
            pathspec = recorded
    return RunSummary(pathspec, flow_run_id)
