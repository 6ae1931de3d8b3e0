"""Local runs: make sure a Prefect server is there (starting mfprefect's own if needed), then run."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from ..manifest import Manifest


def run_locally(
    manifest: Manifest,
    parameters: Mapping[str, Any],
    *,
    echo: Callable[[str], None],
    tags: tuple[str, ...] = (),
    clone_run_id: str | None = None,
) -> Any:
    """Run the pipeline in this process against PREFECT_API_URL or mfprefect's local server."""
    from . import local_server

    if not os.environ.get("PREFECT_API_URL"):
        # A server named in the user's Prefect profile counts as "set up"; only without one do
        # we start (or reuse) mfprefect's own.
        from prefect.settings import get_current_settings

        configured = get_current_settings().api.url
        os.environ["PREFECT_API_URL"] = configured or local_server.ensure_server(echo)
    from .prefect_flow import run_manifest

    summary = run_manifest(manifest, parameters, echo=echo, tags_=tags, clone_run_id=clone_run_id)
    local_server.touch()
    return summary
