"""A plan as a pull-request comment (markdown) or as GitHub annotations. Pure."""

from __future__ import annotations

import html
import json
import re
from typing import Any

from ..diagnostics import gh_data, gh_prop, printable
from .plan import Change, Plan

_WORDS = {"create": "add", "update": "change", "delete": "delete", "conflict": "conflict"}
_MARKERS = {"create": "+", "update": "~", "delete": "-", "conflict": "!"}


def summary_line(plan: Plan) -> str:
    """`2 to add, 1 to change, 1 to delete` (Terraform's words), conflicts when there are any."""
    counts = {a: sum(c.action == a for c in plan.changes) for a in _WORDS}
    line = ", ".join(f"{counts[a]} to {_WORDS[a]}" for a in ("create", "update", "delete"))
    if counts["conflict"]:
        line += f", {counts['conflict']} conflict(s)"
    return line


def markdown(plan: Plan, apply_set: str | None = None) -> str:
    """A summary line, then one collapsible field diff per object, and the step graph of each
    pipeline whose steps changed: ready to post as a pull-request comment."""
    title = "### mfprefect plan" + (f" (apply set `{_inline(apply_set)}`)" if apply_set else "")
    out = [title, "", f"**{summary_line(plan)}**", ""]
    if not plan.changes:
        out += ["The server matches the manifests.", ""]
    for change in plan.changes:
        out += _object(change)
    out += [f"> note: {_inline(item.text())}" for item in plan.unmanaged]
    out += [f"> note: {_inline(note)}" for note in plan.notes]
    return "\n".join(out).rstrip("\n") + "\n"


def _object(change: Change) -> list[str]:
    head = (
        f"<details><summary><code>{_MARKERS[change.action]}</code> {_WORDS[change.action]} "
        f"{change.kind} <code>{html.escape(printable(change.key))}</code></summary>"
    )
    lines = []
    if change.action == "conflict":
        lines.append(
            "! exists on the server and is not managed by mfprefect (--adopt takes it over)"
        )
    elif change.action == "delete":
        lines.append(
            "- deployment and its schedules and automations"
            if change.kind == "deployment"
            else f"- {change.kind}"
        )
    for item in change.changes:
        name = printable(item.field)
        if change.action == "update":
            lines.append(f"- {name}: {_value(item.old)}")
            lines.append(f"+ {name}: {_value(item.new)}")
        else:
            lines.append(f"+ {name}: {_value(item.new)}")
    out = [head, "", *_fenced("diff", "\n".join(lines))]
    graph = _graph(change)
    if graph is not None:
        out += ["Steps:", "", *_fenced("mermaid", graph)]
    return [*out, "</details>", ""]


def _graph(change: Change) -> str | None:
    """The Mermaid graph of the pipeline, when this change adds it or changes its steps."""
    from .. import mermaid

    spec = change.spec
    if spec is None or spec.source is None:
        return None
    stepped = change.action == "create" or any(
        f.field.startswith("manifest.steps") for f in change.changes
    )
    return mermaid.render(spec.source) if stepped else None


def _fenced(language: str, body: str) -> list[str]:
    """A code fence longer than any run of backticks in the body, so no value can close it."""
    longest = max((len(run) for run in re.findall(r"`+", body)), default=0)
    fence = "`" * max(3, longest + 1)
    return [f"{fence}{language}", body.rstrip("\n"), fence, ""]


def _value(value: Any) -> str:
    text = printable(json.dumps(value, sort_keys=True, default=str))
    return text if len(text) <= 200 else text[:197] + "..."


def _inline(text: str) -> str:
    return html.escape(printable(text)).replace("`", "&#96;")


def github(plan: Plan) -> str:
    """One workflow command per object, on its manifest's first line, and the summary."""
    lines = []
    for change in plan.changes:
        level = "error" if change.action == "conflict" else "notice"
        fields = ", ".join(f.field for f in change.changes) if change.action == "update" else ""
        body = f"{_WORDS[change.action]} {change.label}" + (f": {fields}" if fields else "")
        where = f"file={gh_prop(change.source_path)},line=1," if change.source_path else ""
        lines.append(f"::{level} {where}title=mfprefect plan::{gh_data(body)}")
    # Left to the UI by choice: worth a notice, not a warning.
    lines += [f"::notice title=mfprefect plan::{gh_data(item.text())}" for item in plan.unmanaged]
    lines += [f"::warning title=mfprefect plan::{gh_data(note)}" for note in plan.notes]
    lines.append(f"::notice title=mfprefect plan::{gh_data(summary_line(plan))}")
    return "\n".join(lines)
