"""Apply sets: which named group of owned objects a plan, apply or delete works on.

Every object apply writes carries the tag `mfprefect-set:<name>`; `--prune` deletes only objects of
the set being applied. The name comes from `--set`, else `MFPREFECT_SET`, else a `.mfprefect-set`
file in the manifests' folder, so it is the same on every checkout and every CI machine.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from ..errors import UsageError

SET_FILE = ".mfprefect-set"
SET_ENV = "MFPREFECT_SET"
SET_TAG_PREFIX = "mfprefect-set:"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def checked_name(name: str, where: str) -> str:
    """The set name if it is one, else a usage error naming where it came from."""
    if not _NAME.fullmatch(name):
        raise UsageError(
            f"{where}: `{name}` is not an apply set name",
            hint="use letters, digits, `.`, `_` and `-` (up to 63, starting with a letter or digit)",
        )
    return name


def set_tag(name: str) -> str:
    return SET_TAG_PREFIX + name


def set_of(tags: Iterable[str]) -> str | None:
    """The apply set named by an object's tags (None: applied before sets, or never)."""
    for tag in tags:
        if tag.startswith(SET_TAG_PREFIX):
            return tag[len(SET_TAG_PREFIX) :]
    return None


def resolve(given: str | None, paths: Iterable[str]) -> str | None:
    """The apply set: `--set`, else MFPREFECT_SET, else the `.mfprefect-set` beside the manifests."""
    if given is not None:
        return checked_name(given, "--set")
    if os.environ.get(SET_ENV):
        return checked_name(os.environ[SET_ENV], SET_ENV)
    found: dict[str, str] = {}
    for path in paths:
        folder = Path(path) if Path(path).is_dir() else Path(path).parent
        file = folder / SET_FILE
        if file.is_file():
            found[file.as_posix()] = _read(file)
    names = sorted(set(found.values()))
    if len(names) > 1:
        listed = ", ".join(f"{file} says `{name}`" for file, name in sorted(found.items()))
        raise UsageError(
            f"the manifests' folders name different apply sets: {listed}",
            hint="apply each folder on its own, or pass --set",
        )
    return names[0] if names else None


def _read(file: Path) -> str:
    """The one name in a set file; `#` starts a comment."""
    lines = [
        line.split("#", 1)[0].strip() for line in file.read_text(encoding="utf-8").splitlines()
    ]
    names = [line for line in lines if line]
    if len(names) != 1:
        raise UsageError(
            f"{file.as_posix()}: holds {len(names)} names; an apply set file holds one",
            hint="write the set's name on one line, e.g. `team-data-prod`",
        )
    return checked_name(names[0], file.as_posix())


def required(name: str | None, what: str) -> str:
    """The set, or a usage error saying how to name one (prune and set-wide delete need one)."""
    if name is None:
        raise UsageError(
            f"{what} needs an apply set: it deletes only what that set applied",
            hint=f"pass --set NAME, set {SET_ENV}, or write the name into {SET_FILE} beside the manifests",
        )
    return name
