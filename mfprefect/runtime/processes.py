"""Process plumbing the runtime shares: tying a process's life to its parent's, signalling and
stopping process groups, and passing descriptors with a request."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

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


def peer_uid(conn: socket.socket) -> int:
    """The user id of the process at the other end of a Unix socket."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


def send_with_fds(conn: socket.socket, message: Mapping[str, Any], fds: Sequence[int]) -> None:
    """Send `message` as one JSON line with `fds` attached to its last byte (SCM_RIGHTS), so
    the receiver has them once it has read the whole line (with no `fds`: just the line)."""
    payload = (json.dumps(message) + "\n").encode()
    conn.sendall(payload[:-1])
    socket.send_fds(conn, [payload[-1:]], list(fds))


def receive_with_fds(
    conn: socket.socket, count: int, limit: int
) -> tuple[dict[str, Any], list[int]] | None:
    """Read one JSON line sent by `send_with_fds` with exactly `count` descriptors (0 for a
    plain line); None (and
    no descriptor left open) if the sender went away, sent more than `limit` bytes or another
    number of descriptors."""
    buffer = b""
    received: list[int] = []
    while not buffer.endswith(b"\n"):
        data, fds, _flags, _addr = socket.recv_fds(conn, 1 << 20, count + 1)
        received += fds
        buffer += data
        if not data or len(buffer) > limit:
            break
    if not buffer.endswith(b"\n") or len(received) != count:
        for fd in received:
            os.close(fd)
        return None
    message: dict[str, Any] = json.loads(buffer)
    return message, received
