"""What every Metaflow task's Prefect task run shares, wherever its process runs: the task's
options (name, tags, retries) and how a finished step process is judged."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from prefect.cache_policies import NO_CACHE

from ..manifest import Manifest
from . import commands, engine
from .datastore import TaskRecord

# What the walk reads from a finished task of each kind of step.
WALK_READS = {"foreach": ["_foreach_num_splits"], "switch": ["_transition"]}


class StepReports:
    """Which task of each step reports the step's artifacts and cards (which costs reads of
    the datastore): the first one launched, not every task of a foreach launched before any
    has finished. A claim whose task does not succeed goes to the next task launched."""

    def __init__(self) -> None:
        self._claimed: set[str] = set()

    def claim(self, step: str) -> bool:
        if step in self._claimed:
            return False
        self._claimed.add(step)
        return True

    def release(self, step: str) -> None:
        self._claimed.discard(step)


def log_to(logger: Any) -> Any:
    """A step-output callback for `engine.run_process` that writes to a Prefect run logger."""

    def on_line(stream: str, line: str) -> None:
        (logger.warning if stream == "stderr" else logger.info)(line)

    return on_line


def retry_allowed(_task: Any, _task_run: Any, state: Any) -> bool:
    exc = getattr(state, "data", None)
    return not (isinstance(exc, engine.StepFailed) and not exc.retryable)


def task_run_name(step: str, indices: tuple[int, ...]) -> str:
    return step + (f"[{'.'.join(str(i) for i in indices)}]" if indices else "")


def artifact_key(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:100] or "step"


def task_options(
    manifest: Manifest, step: str, indices: tuple[int, ...], clone_of: str | None
) -> dict[str, Any]:
    """Prefect task options for one Metaflow task: its name, @resources tags and @retry."""
    spec = manifest.steps.get(step)
    options: dict[str, Any] = {
        "name": step,
        "task_run_name": task_run_name(step, indices),
        "cache_policy": NO_CACHE,
        "retry_condition_fn": retry_allowed,
        "tags": engine.resource_tags(spec) if spec else [],
    }
    if spec is not None:
        _, total = commands.max_retries(manifest, step)
        options["retries"] = total
        options["retry_delay_seconds"] = spec.retries.delay_seconds if spec.retries else 0
    if clone_of is not None:
        options["task_run_name"] += " (cloned)"
    return options


def judge(
    flow_name: str,
    pathspec: str,
    attempt: int,
    outcome: engine.ProcessOutcome,
    record: TaskRecord | None,
) -> engine.TaskResult:
    """The task's result, or StepFailed saying why the step process did not finish its task."""
    full = f"{flow_name}/{pathspec}"
    if outcome.timed_out:
        raise engine.StepFailed(full, "timed out and was stopped", outcome.stderr)
    if outcome.returncode != 0:
        reason = f"exited with code {outcome.returncode}"
        if outcome.returncode < 0:
            reason = f"killed by signal {-outcome.returncode}"
        retryable = outcome.returncode != commands.NO_RETRY_EXIT_CODE
        raise engine.StepFailed(full, reason, outcome.stderr, retryable)
    if record is None:
        return engine.TaskResult(pathspec, attempt)
    if not record.ok:
        raise engine.StepFailed(full, "exited 0 but did not finish its task", outcome.stderr)
    return engine.TaskResult(pathspec, attempt, record.values)


def artifacts_markdown(
    flow_name: str, pathspec: str, names: list[str], cards: Sequence[Mapping[str, Any]] = ()
) -> str:
    """The body of a step's Prefect artifact: its Metaflow artifacts and cards, and how to
    read them."""
    full = f"{flow_name}/{pathspec}"
    listed = "\n".join(f"- `{name}`" for name in names) or "(none)"
    text = (
        f"### Metaflow task `{full}`\n\nArtifacts:\n{listed}\n\n"
        "```python\nfrom metaflow import Task, namespace\nnamespace(None)\n"
        f"task = Task({full!r})\n" + "".join(f"task.data.{name}\n" for name in names[:20]) + "```\n"
    )
    if cards:
        step = full.rsplit("/", 1)[0]
        shown = "\n".join(
            f"- `{card['type']}`"
            + (f" (id `{card['id']}`)" if card.get("id") else "")
            + f": [{card['location']}]({_link(card['location'])})"
            for card in cards
        )
        text += (
            f"\nCards:\n{shown}\n\nOpen them with `mfprefect card {full}`; every task's "
            f"cards of this step with `mfprefect card {step}`.\n"
        )
    return text


def _link(location: str) -> str:
    """A card's location as a link target: a local file as a file:// URL."""
    return location if "://" in location else "file://" + location
