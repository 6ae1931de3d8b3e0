"""Compile a manifest into a standalone Python file: `python out.py --alpha x` runs the pipeline.

The file holds the manifest as data (a JSON string literal) and calls into mfprefect; nothing
from the manifest is ever written as code.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TEMPLATE = '''\
#!/usr/bin/env python3
"""Runs the {name} pipeline on Prefect (compiled by `mfprefect compile`; do not edit by hand).

Usage: python {script} [--PARAMETER VALUE ...]   (add --help for the list)
"""

import json
import sys

from mfprefect.compile import main

MANIFEST = json.loads({manifest!r})

if __name__ == "__main__":
    sys.exit(main(MANIFEST, __file__, sys.argv[1:]))
'''


def render(data: dict[str, Any], manifest_path: str | None, out_path: str) -> str:
    """The compiled file's text; the flow file is re-pointed relative to where the file goes."""
    data = copy.deepcopy(data)
    base = Path(manifest_path).resolve().parent if manifest_path else Path.cwd()
    flow_file = (base / data["flow"]["file"]).resolve()
    data["flow"]["file"] = Path(
        os.path.relpath(flow_file, Path(out_path).resolve().parent)
    ).as_posix()
    text = json.dumps(data, sort_keys=False, separators=(",", ":"))
    return TEMPLATE.format(
        name=_docstring_text(data["metadata"]["name"]),
        script=_docstring_text(Path(out_path).name),
        manifest=text,
    )


def _docstring_text(text: str) -> str:
    """Text that can neither end the docstring it goes in nor break its escapes (`out\\N.py`)."""
    printable = "".join(ch for ch in text if ch.isprintable())
    return printable.replace("\\", "\\\\").replace('"', '\\"')


def _argparse_text(text: str) -> str:
    """argparse %-formats help text: a literal `%` (`100% sure`) would garble it or crash."""
    return text.replace("%", "%%")


def main(data: dict[str, Any], script: str, argv: Sequence[str]) -> int:
    """Entry point of a compiled file: parse parameters, run, return the exit code."""
    from .errors import MfprefectError, error_lines
    from .manifest import from_data, validate_data
    from .runtime.commands import parse_value

    errors = [d for d in validate_data(data) if d.severity == "error"]
    if errors:
        for diagnostic in errors:
            print(diagnostic.text(), file=sys.stderr)
        return 1
    manifest = from_data(data, str(Path(script).resolve()))
    parser = argparse.ArgumentParser(
        prog=Path(script).name,
        description=f"Run the {manifest.name} pipeline on Prefect.",
    )
    for name, spec in manifest.parameters.items():
        parser.add_argument(
            f"--{name}",
            dest=name,
            default=None,
            help=_argparse_text(f"{spec.help or ''} ({spec.type})".strip()),
        )
    parser.add_argument(
        "--tag", dest="__tags", action="append", default=[], help="Metaflow tag (repeatable)"
    )
    args = vars(parser.parse_args(list(argv)))
    tags = tuple(args.pop("__tags"))
    try:
        values = {
            name: parse_value(manifest.parameters[name], text)
            for name, text in args.items()
            if text is not None
        }
        from .runtime.local import completed, run_locally

        summary = run_locally(
            manifest,
            values,
            echo=lambda line: print(line, file=sys.stderr),
            tags=tags,
            error_prefix="mfprefect: error: ",
        )
    except MfprefectError as exc:
        for line in error_lines(exc, "mfprefect: error: "):
            print(line, file=sys.stderr)
        return exc.exit_code
    print(completed(summary.pathspec), file=sys.stderr)
    return 0
