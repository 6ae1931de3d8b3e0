"""Which files in a repository are mfprefect manifests, and which manifests belong to which flow.

pre-commit hands the hooks every changed file of a kind (`.yaml`, `.py`), most of them nothing to
do with mfprefect: CI configs, helper modules. This module sorts them. It reads files but imports
neither Metaflow nor Prefect, and paths keep the form they were given in (relative stays relative),
so what the hooks print names files as the user knows them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from . import yamlsafe
from .kinds import RESOURCE_KINDS

MANIFEST_SUFFIXES = (".yaml", ".yml")
FLOW_SUFFIX = ".py"
API_GROUP = "mfprefect/"

# A top-level `apiVersion: mfprefect/...` line, for files that do not parse: a broken manifest is
# still a manifest (validate must report it), while a file without the line is someone else's.
_API_VERSION_LINE = re.compile(r"""^apiVersion:[ \t]*["']?mfprefect/""", re.MULTILINE)


def declares_manifest(text: str) -> bool:
    """Whether YAML text is an mfprefect manifest: its top level has `apiVersion: mfprefect/...`."""
    data = _data(text)
    if isinstance(data, dict):
        version = data.get("apiVersion")
        return isinstance(version, str) and version.startswith(API_GROUP)
    return bool(_API_VERSION_LINE.search(text))


def named_flow_file(text: str) -> str | None:
    """The manifest's `flow.file` (relative to the manifest), or None when it names none."""
    data = _data(text)
    flow = data.get("flow") if isinstance(data, dict) else None
    file = flow.get("file") if isinstance(flow, dict) else None
    return file if isinstance(file, str) and file else None


def exports_from_a_flow(text: str) -> bool:
    """Whether a manifest is one export writes (a Pipeline): workspace kinds (WorkPool,
    ConcurrencyLimit, Variable) are written by hand and have no flow to compare with."""
    data = _data(text)
    kind = data.get("kind") if isinstance(data, dict) else None
    return kind not in RESOURCE_KINDS


def _data(text: str) -> object:
    try:
        return yamlsafe.parse(text.encode("utf-8", "surrogatepass"), "<file>").data
    except yamlsafe.LoadError:
        return None


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def is_manifest(path: str) -> bool:
    """Whether the file at `path` declares an mfprefect manifest (whatever its name ends in)."""
    return declares_manifest(_read(path))


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

    def add(flow: str, manifest: str) -> None:
        key = (os.path.realpath(flow), os.path.realpath(manifest))
        if key not in seen:
            seen.add(key)
            selection.checks.append(ExportCheck(flow, manifest))

    def add_manifest(manifest: str) -> None:
        if not exports_from_a_flow(_read(manifest)):
            if manifest not in selection.skipped:
                selection.skipped.append(manifest)
            return
        named = named_flow_file(_read(manifest))
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
                if is_manifest(candidate):
                    add_manifest(candidate)
        elif not os.path.isfile(given):
            raise NotCheckable(f"no such file or folder: {given}")
        elif given.endswith(MANIFEST_SUFFIXES):
            if is_manifest(given):
                add_manifest(given)
            else:
                selection.skipped.append(given)
        elif given.endswith(FLOW_SUFFIX):
            manifests = manifests_naming(given)
            if not manifests:
                selection.skipped.append(given)
            for manifest in manifests:
                add(given, manifest)
        else:
            raise NotCheckable(f"not a flow file, a manifest or a folder: {given}")
    return selection


def manifests_naming(flow: str) -> list[str]:
    """The manifests in the flow file's folder whose `flow.file` is that flow file."""
    folder = os.path.dirname(flow) or "."
    target = os.path.realpath(flow)
    found = []
    for candidate in yaml_files_in(folder):
        text = _read(candidate)
        if not declares_manifest(text):
            continue
        named = named_flow_file(text)
        if named is not None and os.path.realpath(flow_of(candidate, named)) == target:
            # Shown beside the flow path as given: `flows/a.py` pairs with `flows/a.yaml`.
            found.append(os.path.join(os.path.dirname(flow), os.path.basename(candidate)))
    return found
