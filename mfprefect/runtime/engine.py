"""Run a manifest as one Prefect flow run: one Prefect task run per Metaflow task.

The walk follows the manifest's graph: static split branches and foreach bodies run concurrently
(bounded by `deployment.parallelism`), a switch continues where the step's `_transition` says,
and nothing downstream of a failed task is ever launched.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import RuntimeFailure
from ..manifest import Manifest, SecretRef, StepSpec
from . import commands
from .processes import die_with_parent
from .resolved import ResolvedRun

# Log lines kept per task for the failure message.
TAIL_LINES = 20
# A step's own @timeout fires first (inside the process); ours is the hard stop behind it.
HARD_TIMEOUT_GRACE = 5.0
KILL_GRACE = 5.0


class StepFailed(RuntimeFailure):
    """A Metaflow task failed; `pathspec` names it and `tail` holds its last output lines."""

    def __init__(
        self, pathspec: str, reason: str, tail: Sequence[str] = (), retryable: bool = True
    ) -> None:
        detail = "\n".join(f"  | {line}" for line in tail[-TAIL_LINES:])
        super().__init__(f"step failed: {pathspec}: {reason}", hint=detail or None)
        self.pathspec = pathspec
        self.retryable = retryable

    def __reduce__(self) -> tuple[Any, ...]:
        # Sent back from a Dask worker: rebuilt as it was, not from its message alone.
        return (_restore_step_failed, (self.message, self.hint, self.pathspec, self.retryable))


def _restore_step_failed(
    message: str, hint: str | None, pathspec: str, retryable: bool
) -> StepFailed:
    failed = StepFailed.__new__(StepFailed)
    RuntimeFailure.__init__(failed, message, hint=hint)
    failed.pathspec = pathspec
    failed.retryable = retryable
    return failed


class RunCancelled(RuntimeFailure):
    """The flow run was cancelled (in Prefect, or by its flow-level timeout)."""


def matching_join(steps: Mapping[str, StepSpec], opener: str) -> str:
    """The join that closes split or foreach `opener` (manifests are validated, so it exists)."""
    depth = 0
    node = steps[opener].next[0]
    seen: set[str] = set()
    while node not in seen:
        seen.add(node)
        spec = steps[node]
        if spec.kind == "join":
            if depth == 0:
                return node
            depth -= 1
        if spec.kind in ("split", "foreach"):
            depth += 1
        onward = [t for t in spec.successors if t != node]
        if not onward:
            break
        node = onward[0]
    raise RuntimeFailure(
        f"no join closes `{opener}`", hint="run `mfprefect validate` on the manifest"
    )


@dataclass
class RunSummary:
    """What a finished (or failed) run left behind: the Metaflow run and the Prefect flow run."""

    pathspec: str
    flow_run_id: str | None


@dataclass
class TaskResult:
    pathspec: str
    attempt: int
    # What the walk reads from the task: `_foreach_num_splits`, `_transition`.
    values: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Runner:
    """One pipeline run: launches step processes and walks the graph."""

    resolved: ResolvedRun
    run_task: Callable[..., Awaitable[TaskResult]]
    _counter: int = 0
    _occurrences: dict[tuple[str, tuple[int, ...]], int] = field(default_factory=dict)
    _fresh: set[str] = field(default_factory=set)

    @property
    def manifest(self) -> Manifest:
        return self.resolved.manifest

    @property
    def ctx(self) -> commands.RunContext:
        return self.resolved.context

    def new_task_id(self) -> str:
        self._counter += 1
        return f"t{self._counter}"

    def _clone_source(self, step: str, indices: tuple[int, ...], inputs: list[str]) -> str | None:
        """The origin task to copy instead of running `step`, on resume; None to run it.

        A task is cloned only if it succeeded in the origin run and none of its inputs was
        re-run here: once something re-runs, everything after it runs too.
        """
        key = (step, indices)
        nth = self._occurrences.get(key, 0)
        self._occurrences[key] = nth + 1
        clones = self.resolved.clones
        if not clones or any(path in self._fresh for path in inputs):
            return None
        return clones.get((step, indices, nth))

    async def _run_step(
        self, step: str, inputs: list[str], split_index: int | None, indices: tuple[int, ...]
    ) -> TaskResult:
        clone_of = self._clone_source(step, indices, inputs)
        result = await self.run_task(
            self, step, self.new_task_id(), inputs, split_index, indices, clone_of
        )
        if clone_of is None:
            self._fresh.add(result.pathspec)
        return result

    def task_command(
        self,
        step: str,
        task_id: str,
        inputs: list[str],
        split_index: int | None,
        clone_of: str | None,
        retry_count: int | str,
    ) -> list[str]:
        """The Metaflow command of one task: `init` for `_parameters`, else `step` (a clone of
        the origin run's task `clone_of` on resume)."""
        if step == "_parameters":
            return commands.init_command(self.ctx, task_id, self.resolved.parameters)
        origin = self.resolved.clone_run_id
        return commands.step_command(
            self.ctx,
            step,
            task_id,
            inputs,
            split_index=split_index,
            retry_count=retry_count,
            clone_only=f"{origin}/{step}/{clone_of}" if clone_of else None,
            clone_run_id=origin,
        )

    async def run(self) -> None:
        params = await self.run_task(self, "_parameters", "t0", [], None, (), None)
        await self.segment(self.manifest.start_step, [params.pathspec], None, None, ())

    async def segment(
        self,
        step: str,
        inputs: list[str],
        split_index: int | None,
        until: str | None,
        indices: tuple[int, ...],
    ) -> list[str]:
        """Run from `step` until reaching `until` (a join, not run here); return its input paths."""
        steps = self.manifest.steps
        current, current_inputs, index = step, inputs, split_index
        while current != until:
            spec = steps[current]
            result = await self._run_step(current, current_inputs, index, indices)
            index = None
            if spec.kind == "end":
                return []
            if spec.kind in ("linear", "join"):
                current, current_inputs = spec.next[0], [result.pathspec]
            elif spec.kind == "switch":
                transition = result.values["_transition"]
                current, current_inputs = transition[0][0], [result.pathspec]
            elif spec.kind == "split":
                join = matching_join(steps, current)
                branches = [
                    self.segment(b, [result.pathspec], None, join, indices) for b in spec.next
                ]
                current, current_inputs = join, _flatten(await gather_or_cancel(branches))
            elif spec.kind == "foreach":
                join = matching_join(steps, current)
                width = int(result.values.get("_foreach_num_splits") or 0)
                bodies = [
                    self.segment(spec.next[0], [result.pathspec], i, join, indices + (i,))
                    for i in range(width)
                ]
                current, current_inputs = join, _flatten(await gather_or_cancel(bodies))
        return current_inputs


def _flatten(groups: list[list[str]]) -> list[str]:
    return [path for group in groups for path in group]


async def gather_or_cancel(coroutines: Sequence[Awaitable[Any]]) -> list[Any]:
    """Run concurrently; on the first failure cancel the rest (their processes are killed)."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for pending in tasks:
            pending.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


# ---------------------------------------------------------------------------------------------
# Step processes


@dataclass
class ProcessOutcome:
    returncode: int
    stdout: list[str]
    stderr: list[str]
    timed_out: bool = False


class StepProcess(Protocol):
    """What run_process needs of a started step: asyncio's Process, or a forked one."""

    @property
    def pid(self) -> int: ...
    @property
    def returncode(self) -> int | None: ...
    @property
    def stdout(self) -> asyncio.StreamReader | None: ...
    @property
    def stderr(self) -> asyncio.StreamReader | None: ...

    async def wait(self) -> int: ...


Launcher = Callable[[list[str], Mapping[str, str]], Awaitable[StepProcess]]


async def spawn_process(
    args: list[str], env: Mapping[str, str], cwd: str | None = None, tied: bool = False
) -> StepProcess:
    """A fresh step process in its own session, with output on pipes. A `tied` one is killed
    by the kernel if the process that started it dies (a Dask worker killed mid-step)."""
    return await asyncio.create_subprocess_exec(
        *args,
        env=dict(env),
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        preexec_fn=die_with_parent if tied and sys.platform.startswith("linux") else None,
    )


def _mask(line: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            line = line.replace(secret, "***")
    return line


async def run_process(
    args: list[str],
    env: Mapping[str, str],
    on_line: Callable[[str, str], None],
    *,
    timeout: float | None = None,
    secrets: Sequence[str] = (),
    launch: Launcher | None = None,
) -> ProcessOutcome:
    """Run one step process in its own process group, streaming its lines as they come.

    `launch` starts the process (a fresh one by default; the zygote forks one). On timeout or
    cancellation the whole group is stopped (SIGTERM, then SIGKILL), so a step's children die
    with it.
    """
    proc = await (launch or spawn_process)(args, env)
    out: list[str] = []
    err: list[str] = []

    async def pump(stream: asyncio.StreamReader | None, sink: list[str], name: str) -> None:
        assert stream is not None
        while True:
            raw = await stream.readline()
            if not raw:
                return
            line = _mask(raw.decode("utf-8", "replace").rstrip("\n"), secrets)
            sink.append(line)
            on_line(name, line)

    pumps = asyncio.gather(pump(proc.stdout, out, "stdout"), pump(proc.stderr, err, "stderr"))
    timed_out = False
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except asyncio.TimeoutError:
        timed_out = True
        await _kill_group(proc)
    except BaseException:
        await _kill_group(proc)
        raise
    finally:
        if proc.returncode is None:
            await _kill_group(proc)
        # A step that exited may have left children behind in its group (holding its output
        # pipes open, too): none may outlive it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(pumps, 5)
    return ProcessOutcome(
        proc.returncode if proc.returncode is not None else -9, out, err, timed_out
    )


async def _kill_group(proc: StepProcess) -> None:
    for sig, wait in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, KILL_GRACE)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            await asyncio.wait_for(proc.wait(), wait)
        except asyncio.TimeoutError:
            continue
        # The leader is gone; make sure nothing it started lingers in the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        return


def hard_timeout(spec: StepSpec | None) -> float | None:
    if spec is None or spec.timeout_seconds is None:
        return None
    return spec.timeout_seconds + HARD_TIMEOUT_GRACE


def new_run_id() -> str:
    """A Metaflow run id: prefixed (never a plain integer) and unique."""
    return f"prefect-{uuid.uuid4().hex[:16]}"


def resource_tags(spec: StepSpec) -> list[str]:
    """Task tags from @resources; GPU steps share `mfprefect:gpu` so one concurrency limit bounds them."""
    res = spec.resources
    if res is None:
        return []
    tags = []
    if res.cpu is not None:
        tags.append(f"cpu:{res.cpu:g}")
    if res.memory is not None:
        tags.append(f"memory:{res.memory}")
    if res.gpu:
        tags += [f"gpu:{res.gpu}", "mfprefect:gpu"]
    if res.disk is not None:
        tags.append(f"disk:{res.disk}")
    return tags


def secret_blocks(manifest: Manifest) -> list[str]:
    """Every Prefect Secret block the manifest refers to."""
    layers = [manifest.deployment.environment] + [s.environment for s in manifest.steps.values()]
    return sorted({v.block for layer in layers for v in layer.values() if isinstance(v, SecretRef)})
