"""`mfprefect card`: a run's Metaflow cards, found through Metaflow's client and written as HTML.

The client finds each task's cards under its recorded datastore root (see
`runtime.commands.card_variables` for how every run writes them there), so this works for local,
deployed and cluster runs alike, from any machine whose Metaflow configuration reaches the run's
metadata and datastore.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .errors import MfprefectError, RuntimeFailure, UsageError


class NoCards(MfprefectError):
    """The run (or step) exists but has no cards: a finding, not a failure."""

    exit_code = 1


@dataclass(frozen=True)
class FoundCard:
    """One card of one task, its HTML read on demand."""

    task: str  # Flow/run/step/task
    type: str
    id: str | None
    card: Any  # metaflow.plugins.cards.card_client.Card

    @property
    def file_name(self) -> str:
        """A name that tells the card apart from every other of the run: step-task-type[-id]."""
        _, _, step, task = self.task.split("/")
        parts = [step, task, self.type] + ([self.id] if self.id else [])
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(parts)) + ".html"

    def html(self) -> str:
        return str(self.card.get())


def find(pathspec: str, step: str | None = None, card_id: str | None = None) -> list[FoundCard]:
    """The cards of a run, a step or a task (`Flow/run[/step[/task]]`, or a run and `step`)."""
    parts = [p for p in pathspec.strip("/").split("/") if p]
    if step is not None:
        if len(parts) != 2:
            raise UsageError(
                f"{pathspec}: give a run (Flow/run) when you also name a step",
                hint=f"e.g. mfprefect card {'/'.join(parts[:2])} {step}",
            )
        parts.append(step)
    if not 2 <= len(parts) <= 4:
        raise UsageError(
            f"{pathspec!r} is not a run, step or task pathspec",
            hint="give Flow/run, Flow/run/step or Flow/run/step/task",
        )
    from metaflow import namespace
    from metaflow.exception import MetaflowNotFound

    namespace(None)
    try:
        found = [
            FoundCard(task.pathspec, card.type, card.id, card)
            for task in _tasks("/".join(parts))
            for card in _cards_of(task)
            if card_id is None or card.id == card_id
        ]
    except MetaflowNotFound as exc:
        raise UsageError(
            f"{'/'.join(parts)}: not found ({' '.join(str(exc).split())})",
            hint="check the pathspec, and that your Metaflow metadata settings reach the run "
            "(METAFLOW_DEFAULT_METADATA, METAFLOW_SERVICE_URL)",
        ) from None
    except Exception as exc:  # noqa: BLE001 - an unreachable datastore, said in one line
        raise RuntimeFailure(
            f"cannot read the cards of {'/'.join(parts)}: {type(exc).__name__}: "
            + " ".join(str(exc).split())[:300],
            hint="check that this machine can read the run's datastore",
        ) from None
    if not found:
        which = f" with id {card_id!r}" if card_id else ""
        raise NoCards(f"{'/'.join(parts)} has no cards{which}")
    return found


def _tasks(pathspec: str) -> Iterator[Any]:
    from metaflow import Run, Step, Task

    depth = pathspec.count("/")
    if depth == 3:
        yield Task(pathspec)
    elif depth == 2:
        yield from sorted(Step(pathspec), key=lambda t: t.pathspec)
    else:
        for step in Run(pathspec):
            yield from sorted(step, key=lambda t: t.pathspec)


def _cards_of(task: Any) -> list[Any]:
    from metaflow.cards import get_cards
    from metaflow.plugins.cards.exception import CardNotPresentException

    try:
        return list(get_cards(task))
    except CardNotPresentException:
        return []


def pages(cards: list[FoundCard]) -> list[tuple[str, str]]:
    """(file name, HTML) for each card, led by an `index.html` that links them when there
    are several: the first is the page to open."""
    out = [(card.file_name, card.html()) for card in cards]
    if len(cards) > 1:
        out.insert(0, ("index.html", index_page(cards)))
    return out


def index_page(cards: list[FoundCard]) -> str:
    """A page that links every card, by task."""
    rows = "\n".join(
        f'<li><a href="{html.escape(card.file_name)}">{html.escape(card.task)}</a>: '
        f"{html.escape(card.type)}" + (f" ({html.escape(card.id)})" if card.id else "") + "</li>"
        for card in cards
    )
    run = "/".join(cards[0].task.split("/")[:2])
    return (
        f"<!doctype html>\n<html><head><meta charset='utf-8'><title>Cards of {html.escape(run)}"
        f"</title></head>\n<body><h1>Cards of {html.escape(run)}</h1>\n<ul>\n{rows}\n</ul>"
        "</body></html>\n"
    )
