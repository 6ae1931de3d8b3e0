"""Process plumbing the runtime shares: tying a process's life to its parent's, and signalling
and stopping process groups."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL, parent: int | None = None) -> None:
    """Ask the kernel to send `sig` to this process when the one that started it dies (Linux;
    elsewhere a no-op). With `parent`, a parent already gone by then ends this process now."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def signal_group(pgid: int, sig: int = signal.SIGKILL) -> bool:
    """Send `sig` to a process group; False if the group is gone (or not ours to signal)."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def stop_group(pgid: int, grace: float, gone: Callable[[], bool] | None = None) -> None:
    """SIGTERM a process group, then SIGKILL whatever is left of it after `grace` seconds.

    `gone` says when to stop waiting early (for a child: that it has exited); by default, the
    group having no process left."""
    if not signal_group(pgid, signal.SIGTERM):
        return
    done = gone or (lambda: not signal_group(pgid, 0))
    deadline = time.monotonic() + grace
    while not done() and time.monotonic() < deadline:
        time.sleep(0.1)
    signal_group(pgid, signal.SIGKILL)
