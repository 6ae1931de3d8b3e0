"""A Mermaid flowchart of a manifest's steps, for pull-request descriptions."""

from __future__ import annotations

from .manifest import Manifest

_SHAPES = {
    "linear": ('["', '"]'),
    "split": ('[/"', '"\\]'),
    "join": ('(["', '"])'),
    "foreach": ('[["', '"]]'),
    "switch": ('{"', '"}'),
    "end": ('(("', '"))'),
}


def _label(text: str) -> str:
    """Text safe inside a quoted Mermaid label (quotes, pipes and brackets as entities)."""
    replacements = {'"': "#quot;", "|": "#124;", "<": "#lt;", ">": "#gt;", "\n": " ", "\r": " "}
    return "".join(replacements.get(ch, ch) for ch in text)


def render(manifest: Manifest, *, markdown: bool = False) -> str:
    """`flowchart TD` text; node ids are prefixed because `end` is a Mermaid keyword."""
    lines = ["flowchart TD"]
    for name, step in manifest.steps.items():
        opening, closing = _SHAPES[step.kind]
        caption = name
        if step.kind == "foreach" and step.foreach:
            caption += f" (foreach {step.foreach})"
        if step.kind == "switch" and step.condition:
            caption += f" (switch on {step.condition})"
        lines.append(f"    s_{name}{opening}{_label(caption)}{closing}")
    for name, step in manifest.steps.items():
        if step.kind == "switch":
            for case, target in step.cases.items():
                lines.append(f'    s_{name} -->|"{_label(case)}"| s_{target}')
        else:
            for target in step.next:
                lines.append(f"    s_{name} --> s_{target}")
    text = "\n".join(lines) + "\n"
    return f"```mermaid\n{text}```\n" if markdown else text
