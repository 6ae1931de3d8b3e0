"""Where mfprefect keeps its per-user state (the local server's and the runners' folders)."""

from __future__ import annotations

import os
from pathlib import Path


def state_dir() -> Path:
    """mfprefect's per-user state directory: $MFPREFECT_HOME or ~/.mfprefect."""
    configured = os.environ.get("MFPREFECT_HOME")
    return Path(configured).expanduser() if configured else Path.home() / ".mfprefect"
