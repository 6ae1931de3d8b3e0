"""Which files in a repository are mfprefect manifests, and which manifests belong to which flow.

pre-commit hands the hooks every changed file of a kind (`.yaml`, `.py`), most of them nothing to
do with mfprefect: CI configs, helper modules. This module sorts them. It reads files but imports
neither Metaflow nor Prefect, and paths keep the form they were given in (relative stays relative),
so what the hooks print names files as the user knows them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from . import yamlsafe
from .kinds import RESOURCE_KINDS, kind_of

MANIFEST_SUFFIXES = (".yaml", ".yml")
FLOW_SUFFIX = ".py"
API_GROUP = "mfprefect/"

# A top-level `apiVersion: mfprefect/...` line, for files that do not parse: a broken manifest is
# still a manifest (validate must report it), while a file without the line is someone else's.
_API_VERSION_LINE = re.compile(r"""^apiVersion:[ \t]*["']?mfprefect/""", re.MULTILINE)


@dataclass(frozen=True)
class _Parsed:
    """One file's text and its YAML (None when it does not parse or is too big to)."""

    text: str
    data: object

    @property
    def is_manifest(self) -> bool:
        if isinstance(self.data, dict):
            version = self.data.get("apiVersion")
            return isinstance(version, str) and version.startswith(API_GROUP)
        return bool(_API_VERSION_LINE.search(self.text))

    @property
    def flow_file(self) -> str | None:
        flow = self.data.get("flow") if isinstance(self.data, dict) else None
        file = flow.get("file") if isinstance(flow, dict) else None
        return file if isinstance(file, str) and file else None

    @property
    def exported(self) -> bool:
        return kind_of(self.data) not in RESOURCE_KINDS


def _parsed(blob: bytes) -> _Parsed:
    text = blob.decode("utf-8", errors="replace")
    if len(blob) > yamlsafe.MAX_BYTES:
        return _Parsed(text, None)  # validate reports it; its first lines still say what it is
    try:
        return _Parsed(text, yamlsafe.parse(blob, "<file>").data)
    except yamlsafe.LoadError:
        return _Parsed(text, None)


def _read(path: str) -> _Parsed:
    """The file at `path`, read once (at most yamlsafe's size limit and a byte) and parsed."""
    try:
        with open(path, "rb") as handle:
            return _parsed(handle.read(yamlsafe.MAX_BYTES + 1))
    except OSError:
        return _Parsed("", None)


def declares_manifest(text: str) -> bool:
    """Whether YAML text is an mfprefect manifest: its top level has `apiVersion: mfprefect/...`."""
    return _parsed(text.encode("utf-8", "surrogatepass")).is_manifest


def named_flow_file(text: str) -> str | None:
    """The manifest's `flow.file` (relative to the manifest), or None when it names none."""
    return _parsed(text.encode("utf-8", "surrogatepass")).flow_file


def exports_from_a_flow(text: str) -> bool:
    """Whether a manifest is one export writes (a Pipeline): workspace kinds (WorkPool,
    ConcurrencyLimit, Variable) are written by hand and have no flow to compare with."""
    return _parsed(text.encode("utf-8", "surrogatepass")).exported


def is_manifest(path: str) -> bool:
    """Whether the file at `path` declares an mfprefect manifest (whatever its name ends in)."""
    return _read(path).is_manifest


def yaml_files_in(folder: str) -> list[str]:
    """The YAML files directly inside `folder`, sorted, as paths joined onto `folder` as given."""
    names = sorted(
        entry.name
        for entry in os.scandir(folder)
        if entry.name.endswith(MANIFEST_SUFFIXES) and entry.is_file()
    )
    return [os.path.normpath(os.path.join(folder, name)) for name in names]


def flow_of(manifest: str, flow_file: str) -> str:
    """Where a manifest's `flow.file` is, in the same form (relative or not) as `manifest`."""
    return os.path.normpath(os.path.join(os.path.dirname(manifest), flow_file))


@dataclass(frozen=True)
class ExportCheck:
    """One manifest to compare with what exporting its flow gives now."""

    flow: str
    manifest: str


@dataclass
class Selection:
    """What `export --check PATH...` checks, and what it passed over or could not follow."""

    checks: list[ExportCheck] = field(default_factory=list)
    # YAML files that are not manifests, and .py files that no manifest beside them names.
    skipped: list[str] = field(default_factory=list)
    # One line each: a manifest whose flow file is missing, or that names no flow file.
    problems: list[str] = field(default_factory=list)


class NotCheckable(ValueError):
    """A path that is neither a flow file, a manifest nor a folder (or does not exist)."""


def export_checks(paths: list[str] | tuple[str, ...]) -> Selection:
    """The (flow, manifest) pairs to check for manifests, flow files and folders, each once.

    A manifest stands for itself; a flow file for the manifests beside it (same folder) that name
    it; a folder for every manifest directly inside it. Raises NotCheckable for any other path.
    """
    selection = Selection()
    seen: set[tuple[str, str]] = set()
    files: dict[str, _Parsed] = {}  # each file read and parsed once for the whole call

    def read(path: str) -> _Parsed:
        if path not in files:
            files[path] = _read(path)
        return files[path]

    def add(flow: str, manifest: str) -> None:
        key = (os.path.realpath(flow), os.path.realpath(manifest))
        if key not in seen:
            seen.add(key)
            selection.checks.append(ExportCheck(flow, manifest))

    def add_manifest(manifest: str) -> None:
        parsed = read(manifest)
        if not parsed.exported:
            if manifest not in selection.skipped:
                selection.skipped.append(manifest)
            return
        named = parsed.flow_file
        if named is None:
            selection.problems.append(
                f"{manifest}: names no flow file (flow.file); run `mfprefect validate {manifest}`"
            )
            return
        flow = flow_of(manifest, named)
        if not os.path.isfile(flow):
            selection.problems.append(f"{manifest}: its flow file {flow} does not exist")
            return
        add(flow, manifest)

    for given in paths:
        if os.path.isdir(given):
            for candidate in yaml_files_in(given):
                if read(candidate).is_manifest:
                    add_manifest(candidate)
        elif not os.path.isfile(given):
            raise NotCheckable(f"no such file or folder: {given}")
        elif given.endswith(MANIFEST_SUFFIXES):
            if read(given).is_manifest:
                add_manifest(given)
            else:
                selection.skipped.append(given)
        elif given.endswith(FLOW_SUFFIX):
            manifests = manifests_naming(given, read)
            if not manifests:
                selection.skipped.append(given)
            for manifest in manifests:
                add(given, manifest)
        else:
            raise NotCheckable(f"not a flow file, a manifest or a folder: {given}")
    return selection


def manifests_naming(flow: str, read: Callable[[str], _Parsed] = _read) -> list[str]:
    """The manifests in the flow file's folder whose `flow.file` is that flow file (`read`
    lets a caller that asks for several flows of one folder read each file once)."""
    folder = os.path.dirname(flow) or "."
    target = os.path.realpath(flow)
    found = []
    for candidate in yaml_files_in(folder):
        parsed = read(candidate)
        if not parsed.is_manifest:
            continue
        named = parsed.flow_file
        if named is not None and os.path.realpath(flow_of(candidate, named)) == target:
            # Shown beside the flow path as given: `flows/a.py` pairs with `flows/a.yaml`.
            found.append(os.path.join(os.path.dirname(flow), os.path.basename(candidate)))
    return found
