"""Checking and loading manifests: a file or text is read safely, checked against the JSON Schema
and the rules (and, for a file, its flow file), and every diagnostic returned; `load` gives the
typed Manifest or raises with all of them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .. import kinds, yamlsafe
from ..diagnostics import ERROR, WARNING, Diagnostic
from ..errors import ManifestError, UsageError
from .json_schema import schema_diagnostics
from .model import Manifest, from_data
from .rules import rule_diagnostics


def load(path: str, display: str | None = None) -> Manifest:
    """Read, validate and type a manifest file; raise ManifestError with every diagnostic."""
    doc, diagnostics = check_file(path, display)
    errors = [d for d in diagnostics if d.severity == ERROR]
    if errors or doc is None:
        raise ManifestError(
            f"{display or path}: {len(errors)} problem(s) in the manifest",
            diagnostics,
            hint=f"run `mfprefect validate {display or path}` for the list",
        )
    kind = kinds.kind_of(doc.data)
    if kind != kinds.PIPELINE:
        raise ManifestError(
            f"{display or path}: a {kind} manifest declares a workspace object, not a pipeline",
            hint="run, compile and graph take a Pipeline manifest; plan and apply take both",
        )
    return from_data(doc.data, path)


def check_file(
    path: str, display: str | None = None
) -> tuple[yamlsafe.Document | None, list[Diagnostic]]:
    """Every diagnostic for one manifest file (the document too, when it could be parsed)."""
    try:
        doc = yamlsafe.load(path, display)
    except yamlsafe.LoadError as exc:
        return None, yamlsafe.problems_of(exc)
    diagnostics = validate_document(doc)
    if kinds.kind_of(doc.data) == kinds.PIPELINE and not any(
        d.severity == ERROR for d in diagnostics
    ):
        diagnostics += _flow_file_warnings(doc, Path(path).resolve().parent)
    return doc, sorted(set(diagnostics))


def diagnostic_at(
    path: str | None, where: tuple[Any, ...], rule: str, message: str, what: str
) -> Diagnostic:
    """An error found later (by plan, against the server) placed at `where` in the manifest
    file `path`; with no file to point into, one naming `what` instead."""
    if path:
        # Only the position is wanted: parsing is enough (no schema, rules or flow file).
        try:
            return yamlsafe.load(path).diagnostic(where, rule, message)
        except yamlsafe.LoadError:
            pass
    return Diagnostic(what, 1, 1, ERROR, rule, "", message)


def check_text(
    text: str | bytes, file: str = "<manifest>"
) -> tuple[yamlsafe.Document | None, list[Diagnostic]]:
    """Every diagnostic for manifest text (no flow-file checks: there is no folder to look in)."""
    if isinstance(text, str):
        text = text.encode("utf-8", "surrogatepass")  # a lone surrogate: reported as bad bytes
    blob = text
    if len(blob) > yamlsafe.MAX_BYTES:
        return None, [
            Diagnostic(file, 1, 1, ERROR, "file.size", "", "text is larger than a manifest can be")
        ]
    try:
        doc = yamlsafe.parse(blob, file)
    except yamlsafe.LoadError as exc:
        return None, yamlsafe.problems_of(exc)
    return doc, sorted(set(validate_document(doc)))


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The content hash recorded in `flow.sha256`."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 16), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _flow_file_warnings(doc: yamlsafe.Document, folder: Path) -> list[Diagnostic]:
    flow = doc.data["flow"]
    target = folder / flow["file"]
    if not target.is_file():
        return [
            doc.diagnostic(
                ("flow", "file"),
                "flow.missing",
                f"flow file `{flow['file']}` not found beside the manifest",
                severity=WARNING,
            )
        ]
    if file_sha256(target) != flow["sha256"]:
        return [
            doc.diagnostic(
                ("flow", "sha256"),
                "flow.stale",
                f"`{flow['file']}` changed since this manifest was exported; run `mfprefect export` again",
                severity=WARNING,
            )
        ]
    return []


def validate_document(doc: yamlsafe.Document) -> list[Diagnostic]:
    """Schema and rule diagnostics for a parsed document."""
    if not isinstance(doc.data, dict):
        return [
            doc.diagnostic(
                (), "schema.type", "a manifest is a mapping (`apiVersion: mfprefect/v1`, ...)"
            )
        ]
    diagnostics = list(schema_diagnostics(doc))
    kind = kinds.kind_of(doc.data)
    if kind == kinds.PIPELINE:
        diagnostics += rule_diagnostics(doc)
    elif kind in kinds.RESOURCE_KINDS:
        diagnostics += kinds.resource_rules(doc)
    return diagnostics


def validate_data(data: dict[str, Any]) -> list[Diagnostic]:
    """Diagnostics for plain data built in memory (positions are all 1:1)."""
    return validate_document(yamlsafe.Document(data=data, file="<manifest>"))


def with_executor(manifest: Manifest, kind: str, address: str | None) -> Manifest:
    """The manifest with `deployment.executor` replaced (a run's `--executor`), checked again."""
    data = json.loads(json.dumps(dict(manifest.data)))
    executor: dict[str, Any] = {"kind": kind}
    if kind == "dask":
        old = data["deployment"].get("executor") or {}
        executor["address"] = address or old.get("address")
        if not executor["address"]:
            raise UsageError(
                "--executor dask needs the Dask scheduler's address",
                hint="pass --address tcp://HOST:8786",
            )
        if old.get("max_concurrent_steps"):
            executor["max_concurrent_steps"] = old["max_concurrent_steps"]
    data["deployment"]["executor"] = executor
    problems = [d for d in validate_data(data) if d.severity == ERROR]
    if problems:
        raise UsageError(f"--executor {kind}: {problems[0].path}: {problems[0].message}")
    return from_data(data, manifest.path)
