"""A Dask worker's side of one Metaflow task: the Prefect task function that prefect-dask's
DaskTaskRunner ships to a worker of the cluster.

On the worker it unpacks the run's code package (once per worker and package), resolves the
step's `{env: ...}` and `{secret: ...}` references there (their values never travel with the
task), claims the attempt number, runs the step process from the package and reads back what
the flow run's walk needs. Everything it is given and returns is plain data.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Mapping
from typing import Any

from . import engine, fetch, step_tasks
from .datastore import Datastore, TaskRecord
from .zygote import ForkedProcess, Zygote, forking_enabled, startup_variables

# Stands for the attempt number in a request's argv; the worker knows the number, not the sender.
ATTEMPT = "{attempt}"
# How often a running step checks whether Dask still wants its result (cancelled run, lost client).
WANTED_POLL_SECONDS = 0.5
_GONE_STATES = frozenset({"cancelled", "released", "forgotten", "error"})


def code_folder(code: Mapping[str, str]) -> str:
    """The unpacked package, shared by every step of every run on this machine that uses it."""
    cache = os.path.join(tempfile.gettempdir(), f"mfprefect-code-{os.getuid()}")
    os.makedirs(cache, mode=0o700, exist_ok=True)
    target = os.path.join(cache, code["key"])
    if os.path.isfile(os.path.join(target, fetch.MARKER)):
        return target
    with open(os.path.join(cache, ".lock"), "w") as lock:
        # Worker processes on one machine (and threads of one) unpack each package once.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isfile(os.path.join(target, fetch.MARKER)):
            return target
        blob = fetch.download(code["datastore"], code["root"], code["flow"], code["key"])
        # Metaflow's content-addressed store names a blob by its sha1.
        if hashlib.sha1(blob).hexdigest() != code["key"]:
            raise fetch.PackageError(
                f"mfprefect: the code package {code['key']} in {code['root']} fails its check: "
                "it changed after it was stored; run `mfprefect apply` (or the run) again"
            )
        scratch = tempfile.mkdtemp(prefix=".unpack-", dir=cache)
        try:
            fetch.unpack(blob, scratch)
            with open(os.path.join(scratch, fetch.MARKER), "w", encoding="utf-8") as handle:
                handle.write(code["key"] + "\n")
            shutil.rmtree(target, ignore_errors=True)
            os.rename(scratch, target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return target


# Step launchers of this worker process, by package folder and startup environment: steps fork
# from one that has Metaflow imported, as local runs' steps do (see zygote.py).
_ZYGOTES: dict[tuple[str, str], Zygote] = {}
_ZYGOTES_LOCK = threading.Lock()
_MAX_ZYGOTES = 4


def _zygote_for(folder: str, env: Mapping[str, str]) -> Zygote | None:
    """This worker's launcher for steps from `folder` with `env`'s startup variables.

    Made in the calling thread, which must be the worker's own: the launcher dies with the
    thread that started it (PR_SET_PDEATHSIG), and Dask's task threads live as long as the
    worker."""
    if not forking_enabled():
        return None
    key = (folder, json.dumps(sorted(startup_variables(env).items())))
    with _ZYGOTES_LOCK:
        found = _ZYGOTES.get(key)
        if found is not None and found.alive():
            return found
        while len(_ZYGOTES) >= _MAX_ZYGOTES:
            _ZYGOTES.pop(next(iter(_ZYGOTES))).close()
        try:
            made = Zygote(env, folder, folder)
        except OSError:
            return None
        if not made.wait_ready():
            made.close()
            return None
        _ZYGOTES[key] = made
        return made


class _LogSaver:
    """Saves steps' output to Metaflow's task logs from one thread of this worker process, in
    batches (one datastore write per batch, not per step), off every task's own path. The flow
    run waits for it at its end (`flush_logs`)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._queue: list[tuple[tuple[str, str, str], dict[str, Any]]] = []
        self._saving = False
        self._thread: threading.Thread | None = None

    def add(self, where: tuple[str, str, str], task: dict[str, Any]) -> None:
        with self._changed:
            self._queue.append((where, task))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="mfprefect-log-saver", daemon=True
                )
                self._thread.start()
            self._changed.notify_all()

    def idle(self) -> bool:
        with self._changed:
            return not self._queue and not self._saving

    def _loop(self) -> None:
        while True:
            with self._changed:
                while not self._queue:
                    self._changed.wait()
                batch, self._queue = self._queue, []
                self._saving = True
            try:
                groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
                for where, task in batch:
                    groups.setdefault(where, []).append(task)
                for where, tasks in groups.items():
                    try:
                        errors = Datastore(*where).save_all_logs(tasks)
                    except Exception as exc:  # noqa: BLE001 - the steps' own results stand
                        errors = {task["pathspec"]: str(exc) for task in tasks}
                    for pathspec, error in errors.items():
                        _LOG.warning(f"could not save the logs of {pathspec}: {error}")
            finally:
                with self._changed:
                    self._saving = False


_LOG = logging.getLogger("mfprefect.cluster")
_SAVER = _LogSaver()


async def flush_logs() -> bool:
    """Wait until this worker has saved every step's logs (run on each worker by the flow run,
    through `Client.run`, before the run ends)."""
    while not _SAVER.idle():
        await asyncio.sleep(0.05)
    return True


def _dask_worker() -> tuple[Any, Any]:
    """This thread's Dask worker and the key of the Dask task it runs (None, None outside Dask)."""
    try:
        from distributed import get_worker

        worker = get_worker()
        return worker, worker.get_current_task()
    except (ImportError, ValueError):
        return None, None


def _claim_attempt(worker: Any, task_run_id: str, wanted: int) -> tuple[int, Any]:
    """The attempt number to run: `wanted` (Prefect's retries), or one past an attempt that a
    lost worker was running. Dask runs a task again elsewhere when its worker dies, and Metaflow
    must count the lost attempt as failed rather than run the same attempt number twice."""
    if worker is None:
        return wanted, None
    from distributed import Variable, get_client

    claim = Variable(f"mfprefect-attempt-{task_run_id}", client=get_client())
    try:
        earlier = int(claim.get(timeout=0))
    except TimeoutError:
        earlier = -1
    attempt = max(wanted, earlier + 1)
    claim.set(attempt)
    return attempt, claim


async def _while_wanted(worker: Any, key: Any, work: asyncio.Future[Any]) -> None:
    """Cancel `work` (and so stop the step's processes) once Dask no longer wants the result:
    the flow run was cancelled, or its process and Dask client went away."""
    if worker is None:
        return
    while not work.done():
        await asyncio.sleep(WANTED_POLL_SECONDS)
        state = getattr(worker.state.tasks.get(key), "state", None)
        if state is None or state in _GONE_STATES:
            work.cancel()
            return


async def _record(
    store: Datastore, report: Mapping[str, Any], launched: list[engine.StepProcess]
) -> TaskRecord:
    """What the walk needs from a finished task: reported by a forked step itself, or read."""
    if launched and isinstance(launched[-1], ForkedProcess):
        found = await launched[-1].report()
        if found is not None:
            return TaskRecord(**found)
    args = {k: v for k, v in report.items() if k not in ("flow_name", "kind", "root")}
    return await asyncio.to_thread(store.inspect, **args)


def _tag_task_run(tag: str) -> None:
    """Add a tag to this task run; Prefect records it with the run's next state."""
    with contextlib.suppress(Exception):
        from prefect.context import TaskRunContext

        context = TaskRunContext.get()
        if context is not None and tag not in context.task_run.tags:
            context.task_run.tags.append(tag)


async def _resolve(refs: Mapping[str, list[str]], env: dict[str, str], full: str) -> list[str]:
    """Set each referenced variable in `env`; return the values to mask in output."""
    from prefect.blocks.system import Secret

    masked = []
    for name, (kind, target) in refs.items():
        if kind == "env":
            if target not in env:
                raise engine.StepFailed(
                    full,
                    f"environment variable {target} is not set on this Dask worker "
                    f"(the manifest refers to it with {{env: {target}}})",
                    retryable=False,
                )
            value = env[target]
        else:
            try:
                block: Any = await Secret.aload(target)
            except Exception as exc:  # noqa: BLE001 - said as one line
                raise engine.StepFailed(
                    full,
                    f"cannot read Prefect Secret block `{target}` for {name} on this Dask "
                    f"worker: {one_line(exc)}",
                    retryable=False,
                ) from None
            value = str(block.get())
        env[name] = value
        if value:
            masked.append(value)
    return masked


async def run_step(request: dict[str, Any]) -> dict[str, Any]:
    """Run one Metaflow task on this Dask worker (see the module's docstring). Failures come
    back as StepFailed: whatever else went wrong here is said in one line (another exception
    might not even survive the way back to the flow run)."""
    try:
        return await _run_step(request)
    except engine.StepFailed:
        raise
    except Exception as exc:  # noqa: BLE001 - said as one line
        raise engine.StepFailed(
            f"{request['flow']}/{request['pathspec']}", f"on a Dask worker: {one_line(exc)}"
        ) from None


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


async def _run_step(request: dict[str, Any]) -> dict[str, Any]:
    from prefect import get_run_logger
    from prefect.runtime import task_run as task_run_info

    logger = get_run_logger()
    worker, key = _dask_worker()
    where = getattr(worker, "address", "this process")
    _tag_task_run(f"dask-worker:{where}")
    pathspec = request["pathspec"]
    wanted = max(int(task_run_info.run_count or 1) - 1, 0)
    attempt, claim = wanted, None
    if request["max_attempt"] is not None:
        attempt, claim = _claim_attempt(worker, str(task_run_info.id), wanted)
        if attempt > request["max_attempt"]:
            raise engine.StepFailed(
                f"{request['flow']}/{pathspec}",
                f"its Dask worker was lost during attempt {attempt - 1}, and that was its last "
                "retry",
                retryable=False,
            )
    logger.info(f"on Dask worker {where}, attempt {attempt}")
    folder = await asyncio.to_thread(code_folder, request["code"])
    env = dict(os.environ)
    env.update(request["env"])
    masked = await _resolve(request["refs"], env, f"{request['flow']}/{pathspec}")
    args = [sys.executable, os.path.join(folder, request["flow_file"])]
    args += [str(attempt) if arg == ATTEMPT else arg for arg in request["argv"]]

    store = Datastore(**request["datastore"])
    inspect = request["inspect"]
    report = None
    if inspect is not None:
        report = {
            "flow_name": store.flow_name,
            "kind": store.kind,
            "root": store.root,
            "pathspec": pathspec,
            "attempt": attempt,
            **inspect,
        }
    zygote = _zygote_for(folder, env)
    launched: list[engine.StepProcess] = []

    async def launch(argv: list[str], environ: Mapping[str, str]) -> engine.StepProcess:
        proc: engine.StepProcess | None = None
        if zygote is not None:
            with contextlib.suppress(OSError):
                proc = await zygote.spawn(argv, environ, folder, report=report)
        if proc is None:
            proc = await engine.spawn_process(argv, environ, cwd=folder, tied=True)
        launched.append(proc)
        return proc

    work = asyncio.ensure_future(
        engine.run_process(
            args,
            env,
            step_tasks.log_to(logger),
            timeout=request["timeout"],
            secrets=masked,
            launch=launch,
        )
    )
    watcher = asyncio.ensure_future(_while_wanted(worker, key, work))
    try:
        outcome = await work
    finally:
        watcher.cancel()
    record = None
    if report is not None:
        task = {
            "pathspec": pathspec,
            "attempt": attempt,
            "stdout": outcome.stdout,
            "stderr": outcome.stderr,
        }
        _SAVER.add((store.flow_name, store.kind, store.root), task)
        if outcome.returncode == 0 and not outcome.timed_out:
            record = await _record(store, report, launched)
    if claim is not None:
        with contextlib.suppress(Exception):
            claim.delete()
    result = step_tasks.judge(request["flow"], pathspec, attempt, outcome, record)
    return {
        "pathspec": result.pathspec,
        "attempt": result.attempt,
        "values": dict(result.values),
        "names": list(record.names) if record is not None else [],
        "cards": list(record.cards) if record is not None else [],
        "worker": where,
    }
