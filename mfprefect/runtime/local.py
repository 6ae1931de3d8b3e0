"""Local runs: make sure a Prefect server is there (starting mfprefect's own if needed), then run."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..manifest import Manifest
from . import runner
from .engine import RunSummary
from .prefect_settings import profiles_path


def profile_api_url() -> str | None:
    """PREFECT_API_URL of the active Prefect profile, if the profile names one."""
    try:
        import tomllib
    except ImportError:  # Python 3.10: no TOML reader in the standard library
        return None
    try:
        profiles = tomllib.loads(Path(profiles_path(os.environ)).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active")
    url = profiles.get("profiles", {}).get(active, {}).get("PREFECT_API_URL")
    return str(url) if url else None


def completed(pathspec: str) -> str:
    """The line every local run ends with when it succeeds (waiter.py, which cannot import
    mfprefect, prints the same words)."""
    return f"mfprefect: run {pathspec} completed"


def run_locally(
    manifest: Manifest,
    parameters: Mapping[str, Any],
    *,
    echo: Callable[[str], None],
    tags: tuple[str, ...] = (),
    clone_run_id: str | None = None,
    step_to_rerun: str | None = None,
    error_prefix: str | None = None,
) -> RunSummary:
    """Run the pipeline against PREFECT_API_URL or mfprefect's local server.

    A command line passes its `error_prefix`: once the local runner has the run, this process
    becomes a small waiter that prints the outcome with that prefix and exits (no return).
    """
    from . import local_server

    if not os.environ.get("PREFECT_API_URL"):
        # A server named in the user's Prefect profile counts as "set up"; only without one do
        # we start (or reuse) mfprefect's own. Read the profile file rather than Prefect's
        # settings: importing those now would freeze them before PREFECT_API_URL is set.
        try:
            os.environ["PREFECT_API_URL"] = profile_api_url() or local_server.ensure_server(
                echo, starting=_start_runner_meanwhile(echo)
            )
        except BaseException:
            os.environ.pop("PREFECT_API_URL", None)  # a server that never answered
            raise
    summary = None
    if runner.enabled() and _real_stdio():
        # The long-lived runner has Prefect imported already; this process never imports it.
        # A command line that names its error prefix hands the waiting over (runtime/waiter.py).
        handoff = None
        if error_prefix is not None:
            handoff = runner.Handoff(error_prefix, str(local_server.last_used_file()))
        summary = runner.run(
            manifest,
            parameters,
            echo=echo,
            tags=tags,
            clone_run_id=clone_run_id,
            step_to_rerun=step_to_rerun,
            handoff=handoff,
        )
        if summary is None:
            echo("mfprefect: the local runner did not take the run; running in this process")
    if summary is None:
        from .prefect_flow import run_manifest

        summary = run_manifest(
            manifest,
            parameters,
            echo=echo,
            tags_=tags,
            clone_run_id=clone_run_id,
            step_to_rerun=step_to_rerun,
        )
    local_server.touch()
    return summary


def _start_runner_meanwhile(echo: Callable[[str], None]) -> Callable[[str], None] | None:
    """While a new local server starts (seconds), the runner can import Prefect."""
    if not (runner.enabled() and _real_stdio()):
        return None

    def starting(url: str) -> None:
        os.environ["PREFECT_API_URL"] = url  # part of the runner's identity
        runner.start_early(echo)

    return starting


def _real_stdio() -> bool:
    """The runner writes to our stdout and stderr directly, so they must be real descriptors."""
    try:
        sys.stdout.fileno()
        sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return True
