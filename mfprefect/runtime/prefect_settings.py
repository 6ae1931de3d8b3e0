"""What Prefect 3 builds its settings from, as a value two processes can compare.

Prefect reads its settings once, at import, from `PREFECT_*` variables (in any case), the
working folder's `.env`, `prefect.toml` and `pyproject.toml` (`[tool.prefect]`), and the
profiles file. The runner imports Prefect once, in its own folder; a run forked from it
rebuilds the settings (about 20 ms and 5 MB of its own memory) only when its sources differ.
"""

from __future__ import annotations

import os
from collections.abc import Mapping


def sources(cwd: str, env: Mapping[str, str]) -> tuple[object, ...]:
    """Everything the settings depend on, besides Prefect's own files and the user's home
    (which the runner shares with its commands): equal sources, equal settings."""
    variables = tuple(sorted((k, v) for k, v in env.items() if k.upper().startswith("PREFECT_")))
    folder = (
        _content(os.path.join(cwd, ".env")),
        _content(os.path.join(cwd, "prefect.toml")),
        _prefect_table(os.path.join(cwd, "pyproject.toml")),
    )
    profiles = profiles_path(env)
    return variables, folder, profiles, _content(profiles)


def profiles_path(env: Mapping[str, str]) -> str:
    """Where Prefect looks for its profiles file, by the variables alone (a folder's settings
    files may say otherwise; for sources() they count anyway)."""
    if env.get("PREFECT_PROFILES_PATH"):
        return env["PREFECT_PROFILES_PATH"]
    home = env.get("PREFECT_HOME") or os.path.join(env.get("HOME", "~"), ".prefect")
    return os.path.join(os.path.expanduser(home), "profiles.toml")


def _content(path: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"unreadable: {exc.errno}".encode()


def _prefect_table(path: str) -> object:
    """pyproject.toml's `[tool.prefect]` (the only part Prefect reads), or its bytes when it
    cannot be parsed (Prefect would then complain in its own way)."""
    raw = _content(path)
    if raw is None:
        return None
    try:
        import tomllib
    except ImportError:  # Python 3.10
        return raw
    try:
        table = tomllib.loads(raw.decode("utf-8")).get("tool", {}).get("prefect")
    except (UnicodeDecodeError, ValueError):
        return raw
    return repr(table) if table is not None else None
