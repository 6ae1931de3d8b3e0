"""Diagnostics: one problem in a manifest, with where it is, and the three ways we print them."""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True, order=True)
class Diagnostic:
    """One problem: `file:line:col: severity[rule] path: message`."""

    file: str
    line: int
    col: int
    severity: str
    rule: str
    path: str
    message: str

    def text(self) -> str:
        """The one-line form people and editors read."""
        where = f" {printable(self.path)}:" if self.path else ""
        return f"{self.file}:{self.line}:{self.col}: {self.severity}[{self.rule}]{where} {printable(self.message)}"

    def github(self) -> str:
        """A GitHub Actions workflow command, so the problem shows on the pull request's diff."""
        level = "error" if self.severity == ERROR else "warning"
        body = f"{self.path}: {self.message}" if self.path else self.message
        return (
            f"::{level} file={gh_prop(self.file)},line={self.line},col={self.col},"
            f"title={gh_prop(self.rule)}::{gh_data(body)}"
        )


def printable(text: str) -> str:
    """Text safe to print on one terminal line: control characters, Unicode line separators and
    lone surrogates escaped, so a hostile key cannot forge extra lines (or CI workflow commands)
    or send terminal escapes in our output."""
    return "".join(_printable_char(ch) for ch in text)


def _printable_char(ch: str) -> str:
    code = ord(ch)
    if code < 0x20 or 0x7F <= code < 0xA0:
        return f"\\x{code:02x}"
    if 0xD800 <= code <= 0xDFFF or code in (0x2028, 0x2029):
        return f"\\u{code:04x}"
    return ch


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """A ` did you mean `x`?` suffix when a candidate is close to `word`, else an empty string."""
    matches = difflib.get_close_matches(word, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"; did you mean `{matches[0]}`?" if matches else ""


def path_text(path: Sequence[str | int]) -> str:
    """`steps.train.retries.times`, `triggers[0].event`: a path as people write it."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def value_text(value: Any) -> str:
    """A value as a message shows it: `null`, `true`, `a mapping`, a quoted string, cut at 60."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def render(diagnostics: Sequence[Diagnostic], fmt: str) -> str:
    """All diagnostics in one of `text`, `json` or `github`."""
    if fmt == "json":
        errors = sum(d.severity == ERROR for d in diagnostics)
        payload = {
            "format_version": 1,
            "valid": errors == 0,
            "errors": errors,
            "warnings": len(diagnostics) - errors,
            "diagnostics": [asdict(d) for d in diagnostics],
        }
        return json.dumps(payload, indent=2, sort_keys=False)
    lines = [d.github() if fmt == "github" else d.text() for d in diagnostics]
    return "\n".join(lines)


_GH_ESCAPES = {"%": "%25", "\r": "%0D", "\n": "%0A"}


def gh_data(value: str) -> str:
    """A workflow command's data: GitHub's own escapes for `%` and line ends, and the rest of the
    control characters (a terminal escape would reach the log viewer) as in `printable`."""
    return "".join(_GH_ESCAPES.get(ch) or _printable_char(ch) for ch in value)


def gh_prop(value: str) -> str:
    return gh_data(value).replace(":", "%3A").replace(",", "%2C")
