"""Read a YAML file that may be hostile into plain data plus the line and column of every value.

Manifests arrive in pull requests, so this reader assumes the worst: it caps the file size, the
nesting depth and how far anchors/aliases may expand, refuses duplicate keys, custom tags and
non-UTF-8 bytes, and always answers with diagnostics rather than an exception from the parser.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import CollectionEndEvent, CollectionStartEvent, NodeEvent, StreamEndEvent
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.reader import ReaderError

from .diagnostics import ERROR, Diagnostic, path_text

MAX_BYTES = 5 * 1024 * 1024
MAX_DEPTH = 64
MAX_NODES = 200_000
MAX_NUMBER_CHARS = 40

Path = tuple[str | int, ...]

_NULL = "tag:yaml.org,2002:null"
_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
# YAML 1.2 resolves these from plain scalars; a manifest has no use for them, so keep the text.
_SURROGATE = re.compile("[\ud800-\udfff]")
_AS_TEXT = {"tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:binary"}


@dataclass
class Document:
    """Plain data (dicts, lists, str, int, float, bool, None) and where each piece was written."""

    data: Any
    file: str
    values: dict[Path, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def where(self, path: Path, *, key: bool = False) -> tuple[int, int]:
        """1-based line and column of the value (or key) at `path`, or of its nearest ancestor."""
        table = self.keys if key else self.values
        probe = tuple(path)
        while probe:
            if probe in table:
                return table[probe]
            if probe in self.values:
                return self.values[probe]
            probe = probe[:-1]
        return self.values.get((), (1, 1))

    def diagnostic(
        self, path: Path, rule: str, message: str, *, key: bool = False, severity: str = ERROR
    ) -> Diagnostic:
        """A diagnostic placed at `path` in this document."""
        line, col = self.where(path, key=key)
        return Diagnostic(self.file, line, col, severity, rule, path_text(path), message)


class YamlProblem(Exception):
    """The file could not be read as YAML at all; `diagnostic` says where and why."""

    def __init__(self, diagnostic: Diagnostic) -> None:
        super().__init__(diagnostic.text())
        self.diagnostic = diagnostic


def read_bytes(path: str, display: str | None = None) -> bytes:
    """The file's bytes, refusing (with a diagnostic) anything over MAX_BYTES without reading it all."""
    name = display or path
    try:
        with open(path, "rb") as handle:
            blob = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise YamlProblem(
            Diagnostic(name, 1, 1, ERROR, "file", "", f"cannot read: {reason}")
        ) from None
    if len(blob) > MAX_BYTES:
        raise YamlProblem(
            Diagnostic(
                name,
                1,
                1,
                ERROR,
                "file.size",
                "",
                f"file is larger than {MAX_BYTES // (1024 * 1024)} MiB; a manifest is far smaller",
            )
        )
    return blob


def parse(blob: bytes, file: str) -> Document:
    """Parse YAML bytes into a Document, or raise YamlProblem with one diagnostic."""
    text = _decode(blob, file)
    if not text.strip() or all(
        not line.strip() or line.lstrip().startswith("#") for line in text.splitlines()
    ):
        raise YamlProblem(Diagnostic(file, 1, 1, ERROR, "file.empty", "", "file is empty"))
    try:
        root = _compose(text)
    except ReaderError as exc:
        line, col = _position(text, int(exc.position))
        message = f"character U+{int(exc.character):04X} is not allowed in YAML"
        raise YamlProblem(Diagnostic(file, line, col, ERROR, "yaml", "", message)) from None
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        parts = [part for part in (exc.context, exc.problem) if part]
        problem = ", ".join(parts) if parts else "invalid YAML"
        raise YamlProblem(
            Diagnostic(file, line, col, ERROR, "yaml", "", _one_line(problem))
        ) from None
    except _TooDeep as exc:
        message = f"nesting deeper than {MAX_DEPTH} levels"
        raise YamlProblem(
            Diagnostic(file, exc.line, exc.col, ERROR, "yaml.depth", "", message)
        ) from None
    except RecursionError:
        raise YamlProblem(
            Diagnostic(file, 1, 1, ERROR, "yaml.depth", "", "nesting is too deep to be a manifest")
        ) from None
    except YAMLError as exc:
        raise YamlProblem(Diagnostic(file, 1, 1, ERROR, "yaml", "", _one_line(str(exc)))) from None
    if root is None:
        raise YamlProblem(Diagnostic(file, 1, 1, ERROR, "file.empty", "", "file is empty"))
    doc = Document(data=None, file=file)
    walker = _Walker(doc)
    doc.data = walker.convert(root, (), 0)
    if walker.problems:
        raise _Problems(walker.problems)
    return doc


class _Problems(Exception):
    """Several problems found while converting nodes (duplicate keys, tags, numbers)."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        super().__init__(diagnostics[0].text())
        self.diagnostics = diagnostics


def load(path: str, display: str | None = None) -> Document:
    """Read and parse a file; raise YamlProblem or _Problems (see `problems_of`)."""
    return parse(read_bytes(path, display), display or path)


def problems_of(exc: BaseException) -> list[Diagnostic]:
    """The diagnostics carried by an exception from `load` / `parse`."""
    if isinstance(exc, YamlProblem):
        return [exc.diagnostic]
    if isinstance(exc, _Problems):
        return exc.diagnostics
    raise TypeError(type(exc).__name__)


LoadError = (YamlProblem, _Problems)


_LINE_BREAK = re.compile(r"\r\n|\r|\n")


# The C composer recurses on the C stack without a limit: some 30,000 nested `[` (a 30 KB file)
# crash the process (SIGSEGV). So a text that might nest deeper than this is first walked with
# the C parser's event stream (iterative, and fast), which finds where it gets too deep.
C_COMPOSER_MAX_NESTING = 1000


def _nesting_bound(text: str) -> int:
    """A cheap upper bound on how deeply `text` nests: open flow brackets, plus what one line can
    open in block style (indentation, `- `, `? ` and `: ` indicators). Brackets in strings and
    comments count too; overcounting only costs one extra pass over the events."""
    flow = 0
    worst = 0
    for line in text.splitlines():
        body = line.lstrip()
        opened = body.count("[") + body.count("{")
        block = 2 * (len(line) - len(body)) + body.count("- ") + body.count("? ")
        block += body.count(": ") + body.count(":\t") + 1
        worst = max(worst, flow + opened + block)
        flow = max(0, flow + opened - body.count("]") - body.count("}"))
    return worst


def _too_deep_at(text: str) -> tuple[int, int] | None:
    """1-based line and column of the first value nested deeper than MAX_DEPTH, found without
    composing; None when nothing is (or the C parser is missing or stops at an error first,
    which it does before nesting any deeper)."""
    try:
        from ruamel.yaml.cyaml import CParser
    except ImportError:  # no ruamel.yaml.clib: the pure parser's RecursionError still guards
        return None
    parser = CParser(text)
    depth = 0
    try:
        while True:
            event = parser.get_event()
            if event is None or isinstance(event, StreamEndEvent):
                return None
            if isinstance(event, CollectionEndEvent):
                depth -= 1
                continue
            if isinstance(event, NodeEvent) and depth > MAX_DEPTH:
                mark = event.start_mark
                return mark.line + 1, mark.column + 1
            if isinstance(event, CollectionStartEvent):
                depth += 1
    except YAMLError:
        return None
    finally:
        parser.dispose()


def _compose(text: str) -> Node | None:
    """Compose with the C parser (ruamel.yaml.clib) when present, about ten times faster; it
    follows YAML 1.1 (libyaml), so what it refuses is tried again by the pure YAML 1.2 parser,
    whose verdict and error positions are the ones reported."""
    if _nesting_bound(text) > C_COMPOSER_MAX_NESTING:
        where = _too_deep_at(text)
        if where is not None:
            raise _TooDeep(*where)
    try:
        fast: Node | None = YAML(typ="safe").compose(text)
        return fast
    except (YAMLError, RecursionError):
        pass
    exact: Node | None = YAML(typ="safe", pure=True).compose(text)
    return exact


class _TooDeep(Exception):
    def __init__(self, line: int, col: int) -> None:
        super().__init__(f"too deep at {line}:{col}")
        self.line = line
        self.col = col


def _position(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column (in characters) of `offset` in `text`, for any line-break style."""
    breaks = list(_LINE_BREAK.finditer(text, 0, offset))
    line_start = breaks[-1].end() if breaks else 0
    return len(breaks) + 1, offset - line_start + 1


def _decode(blob: bytes, file: str) -> str:
    if blob.startswith(b"\xef\xbb\xbf"):
        blob = blob[3:]
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = blob[: exc.start].decode("utf-8", "replace")
        line, col = _position(before, len(before))
        raise YamlProblem(
            Diagnostic(
                file,
                line,
                col,
                ERROR,
                "file.encoding",
                "",
                f"byte 0x{blob[exc.start]:02x} is not UTF-8; save the file as UTF-8",
            )
        ) from None
    if "\x00" in text:
        line, col = _position(text, text.index("\x00"))
        raise YamlProblem(
            Diagnostic(file, line, col, ERROR, "file.encoding", "", "NUL byte in file")
        )
    return text


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


class _Walker:
    """Turns composed nodes into plain data, recording positions and enforcing the limits."""

    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.nodes = 0
        self.seen: set[int] = set()
        self.aliased = False
        self.problems: list[Diagnostic] = []
        self.stopped = False

    def _problem(self, node: Node, path: Path, rule: str, message: str) -> None:
        mark = node.start_mark
        self.problems.append(
            Diagnostic(
                self.doc.file, mark.line + 1, mark.column + 1, ERROR, rule, path_text(path), message
            )
        )

    def convert(self, node: Node, path: Path, depth: int) -> Any:
        if self.stopped:
            return None
        self.nodes += 1
        if id(node) in self.seen:
            self.aliased = True
        self.seen.add(id(node))
        if self.nodes > MAX_NODES:
            self._problem(
                node,
                path,
                "yaml.size",
                "document expands to too many values (an anchor/alias bomb?); "
                "write the values out instead of repeating aliases",
            )
            self.stopped = True
            return None
        if depth > MAX_DEPTH:
            self._problem(node, path, "yaml.depth", f"nesting deeper than {MAX_DEPTH} levels")
            self.stopped = True
            return None
        self.doc.values.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
        tag = str(node.tag)
        if isinstance(node, MappingNode):
            if tag != _MAP:
                self._problem(
                    node, path, "yaml.tag", f"custom tag `{tag}` is not allowed in a manifest"
                )
            return self._mapping(node, path, depth)
        if isinstance(node, SequenceNode):
            if tag != _SEQ:
                self._problem(
                    node, path, "yaml.tag", f"custom tag `{tag}` is not allowed in a manifest"
                )
            return [self.convert(item, path + (i,), depth + 1) for i, item in enumerate(node.value)]
        assert isinstance(node, ScalarNode)
        return self._scalar(node, path, tag)

    def _mapping(self, node: MappingNode, path: Path, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        merge_keys = [k for k, _ in node.value if str(k.tag) == "tag:yaml.org,2002:merge"]
        if merge_keys:
            self._problem(
                merge_keys[0], path, "yaml.merge", "merge keys (`<<`) are not allowed in a manifest"
            )
        for key_node, value_node in node.value:
            if self.stopped:
                break
            if str(key_node.tag) == "tag:yaml.org,2002:merge":
                continue  # reported above, once
            if not isinstance(key_node, ScalarNode):
                self._problem(key_node, path, "yaml.key", "a key must be a plain string")
                continue
            key = self._scalar(key_node, path, str(key_node.tag))
            if not isinstance(key, str):
                # YAML reads `1:` or `true:` as non-strings; every manifest key is a name.
                key = key_node.value
            child = path + (key,)
            if key in out:
                first = self.doc.keys.get(child, (0, 0))[0]
                self._problem(
                    key_node,
                    child,
                    "yaml.duplicate-key",
                    f"duplicate key `{key}` (first at line {first})",
                )
                continue
            self.doc.keys[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            if _is_empty(value_node):
                # An empty value's mark is the next token's; the key's line is where it is.
                self.doc.values[child] = (key_node.end_mark.line + 1, key_node.end_mark.column + 2)
            out[key] = self.convert(value_node, child, depth + 1)
        return out

    def _scalar(self, node: ScalarNode, path: Path, tag: str) -> Any:
        text = node.value
        if _SURROGATE.search(text):
            self._problem(
                node, path, "yaml.unicode", "unpaired surrogate escape: not valid Unicode"
            )
            return ""
        if tag == _STR or tag in _AS_TEXT:
            return text
        if tag == _NULL:
            return None
        if tag == _BOOL:
            if text.lower() not in ("true", "false"):
                self._problem(
                    node, path, "yaml.bool", f"`{text}` is not a boolean; write true or false"
                )
                return None
            return text.lower() == "true"
        if tag in (_INT, _FLOAT):
            if len(text) > MAX_NUMBER_CHARS:
                self._problem(node, path, "yaml.number", "number is too long to be meaningful here")
                return None
            try:
                if tag == _INT:
                    return _parse_int(text)
                value = float(
                    text.replace("_", "")
                    .replace(".inf", "inf")
                    .replace(".Inf", "inf")
                    .replace(".INF", "inf")
                    .replace(".nan", "nan")
                    .replace(".NaN", "nan")
                    .replace(".NAN", "nan")
                )
            except ValueError:
                return text
            if not math.isfinite(value):
                self._problem(node, path, "yaml.number", f"`{text}` is not a finite number")
                return None
            return value
        self._problem(node, path, "yaml.tag", f"custom tag `{tag}` is not allowed in a manifest")
        return text


def _parse_int(text: str) -> int:
    cleaned = text.replace("_", "")
    sign = -1 if cleaned.startswith("-") else 1
    body = cleaned.lstrip("+-")
    for prefix, base in (("0x", 16), ("0o", 8), ("0b", 2)):
        if body.lower().startswith(prefix):
            return sign * int(body[2:], base)
    return sign * int(body, 10)


def _is_empty(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.value == "" and str(node.tag) == _NULL
