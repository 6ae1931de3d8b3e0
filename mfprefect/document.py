"""Write manifests people review: stable order and style, and re-export that edits in place.

Code-derived fields are rewritten on every export; fields the flow code does not determine (the
pipeline name, labels, deployment and runtime settings, a schedule set by hand) are kept, and so
are comments. The merge walks mappings key by key, so a diff shows only what changed.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError
from ruamel.yaml.scalarstring import LiteralScalarString

from .errors import UsageError

TOP_LEVEL_ORDER = (
    "apiVersion",
    "kind",
    "metadata",
    "flow",
    "parameters",
    "configs",
    "steps",
    "schedule",
    "triggers",
    "deployment",
    "runtime",
)
# Rewritten on every export: what the flow's code determines.
CODE_DERIVED = ("apiVersion", "kind", "flow", "parameters", "configs", "steps", "triggers")
# Flow-style ("[a, b]") lists: short and read as one thing.
FLOW_STYLE_LISTS = {"next", "with", "tags"}

HEADER = (
    "Pipeline manifest written by `mfprefect export`. On re-export, the flow, parameters, configs,\n"
    "steps and triggers are rewritten from the code; everything else here is yours and is kept."
)


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096  # never fold long lines: a folded line diffs badly
    yaml.preserve_quotes = True
    # `key: null` rather than `key:`: a reviewer should see that the value is deliberately empty.
    yaml.representer.add_representer(
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    return yaml


def styled(value: Any, key: str | None = None) -> Any:
    """Plain data → ruamel objects with our style (literal blocks, flow-style edge lists)."""
    if isinstance(value, Mapping):
        out = CommentedMap()
        for k, v in value.items():
            out[k] = styled(v, str(k))
        return out
    if isinstance(value, list):
        seq = CommentedSeq(styled(v) for v in value)
        if key in FLOW_STYLE_LISTS or not value:
            seq.fa.set_flow_style()
        return seq
    if isinstance(value, str) and "\n" in value:
        return LiteralScalarString(value)
    return value


def render_new(data: Mapping[str, Any]) -> str:
    """The text of a manifest written from scratch."""
    doc = styled({key: data[key] for key in TOP_LEVEL_ORDER if key in data})
    doc.yaml_set_start_comment(HEADER)
    return _dump(doc)


def render_over(existing_text: str, data: Mapping[str, Any], overrides: Mapping[str, Any]) -> str:
    """The text of `existing_text` after a re-export: code-derived fields from `data`, the rest kept.

    `overrides` maps dotted paths (`deployment.work_pool`) to values the user gave on the export
    command line; they win over what the file has.
    """
    try:
        existing = _yaml().load(existing_text)
    except YAMLError as exc:
        raise UsageError(
            f"the existing manifest is not valid YAML ({' '.join(str(exc).split())[:200]})",
            hint="fix it or move it away, then export again",
        ) from None
    if not isinstance(existing, CommentedMap):
        raise UsageError(
            "the existing file is not a manifest (not a YAML mapping)",
            hint="move it away and export again",
        )
    desired = styled(data)
    for key in TOP_LEVEL_ORDER:
        if key not in desired:
            continue
        if key in CODE_DERIVED or key not in existing:
            _set(existing, key, desired[key], desired)
        elif key == "schedule" and data.get("schedule") is not None:
            _set(existing, key, desired[key], desired)  # @schedule in the code wins over the file
        elif key in ("metadata", "deployment", "runtime") and isinstance(
            existing[key], CommentedMap
        ):
            for sub, value in desired[key].items():
                if sub not in existing[key]:
                    _set(existing[key], sub, value, desired[key])
    for dotted, value in overrides.items():
        section, name = dotted.split(".", 1)
        if isinstance(existing.get(section), CommentedMap):
            _set(existing[section], name, styled(value, name), None)
    return _dump(existing)


def _set(target: CommentedMap, key: str, value: Any, order: Mapping[str, Any] | None) -> None:
    """Put `value` at `key`, editing in place so comments and untouched lines survive."""
    if key in target:
        current = target[key]
        if isinstance(current, CommentedMap) and isinstance(value, CommentedMap):
            _merge_map(current, value)
        elif not _same(current, value):
            target[key] = value
        return
    position = len(target)
    if order is not None:
        keys = list(order)
        earlier = keys[: keys.index(key)] if key in keys else []
        present = [k for k in earlier if k in target]
        position = list(target).index(present[-1]) + 1 if present else 0
    target.insert(position, key, value)


def _merge_map(current: CommentedMap, desired: CommentedMap) -> None:
    for key in [k for k in current if k not in desired]:
        del current[key]
    for key, value in desired.items():
        _set(current, key, value, desired)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if a != b:
        return False
    return type(a) is type(b) or (isinstance(a, str) and isinstance(b, str))


def _dump(doc: Any) -> str:
    buffer = io.StringIO()
    _yaml().dump(doc, buffer)
    return buffer.getvalue()
