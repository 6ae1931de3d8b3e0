"""Zygote templates: the runner's step launchers, shared by its runs.

Each run needs a zygote (zygote.py) with Metaflow imported, and importing Metaflow is the
largest part of a short run's CPU. The runner itself cannot import it (Metaflow reads its
settings at import, and the runner serves commands with different ones), so it keeps *template*
processes instead, one per `zygote.template_key`: each imports Metaflow once and forks a run's
zygote in a few milliseconds whenever a run asks.

The run child asks the runner over a channel (a socket pair made when the runner forks it): it
sends one JSON line `{"key", "env", "cwd"}` and reads back `{"template": NAME}`, the abstract
socket name of a template started with that environment and folder (or null: then the run
starts a zygote of its own). The runner binds and listens on the template's socket itself and
hands it over, so a run can connect at once, while the template is still importing. A template
is a child of the runner and dies with it; the runner stops one that no run has used for
TEMPLATE_IDLE_SECONDS, and keeps at most MAX_TEMPLATES that no run is using.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from .processes import receive_with_fds, send_with_fds
from .zygote import Zygote, template_key

TEMPLATE_IDLE_SECONDS = 10 * 60
MAX_TEMPLATES = 4
_MAX_MESSAGE = 16 * 1024 * 1024


@dataclass
class _Template:
    name: str
    proc: subprocess.Popen[bytes]
    users: set[int] = field(default_factory=set)
    last_used: float = field(default_factory=time.monotonic)


class Templates:
    """The runner's side: its templates, and the answers to its run children's requests."""

    def __init__(self, runner_key: str) -> None:
        self._prefix = f"mfprefect-zygote-{os.getuid()}-{runner_key}-"
        self._live: dict[str, _Template] = {}
        self._stopping: list[subprocess.Popen[bytes]] = []
        self._started = 0

    def answer(self, run: int, channel: socket.socket) -> None:
        """Answer the request the run child `run` sent on its channel (it sends the whole line
        at once); nothing if the child is gone (it is reaped and released then)."""
        try:
            received = receive_with_fds(channel, 0, _MAX_MESSAGE)
            if received is None:
                return
            request = received[0]
            name = self._template_for(run, request["key"], request["env"], request["cwd"])
        except (OSError, ValueError, KeyError, TypeError):
            name = None
        with contextlib.suppress(OSError):
            send_with_fds(channel, {"template": name}, [])

    def _template_for(self, run: int, key: str, env: Mapping[str, str], cwd: str) -> str:
        found = self._live.get(key)
        if found is not None and found.proc.poll() is not None:
            del self._live[key]
            found = None
        if found is None:
            self._make_room()
            # Numbered: a stopped template may still hold its name while it exits.
            self._started += 1
            name = f"{self._prefix}{key}-{self._started}"
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
                listener.bind("\0" + name)
                listener.listen(64)
                proc = subprocess.Popen(
                    [sys.executable, "-m", "mfprefect.runtime.zygote", "--template"]
                    + [str(listener.fileno()), str(os.getpid())],
                    env=dict(env),
                    cwd=cwd,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=None,  # the runner's log
                    pass_fds=[listener.fileno()],
                )
            found = self._live[key] = _Template(name, proc)
        found.users.add(run)
        found.last_used = time.monotonic()
        return found.name

    def release(self, run: int) -> None:
        """The run child `run` has exited: its template is free again (as far as it goes)."""
        for template in self._live.values():
            if run in template.users:
                template.users.discard(run)
                template.last_used = time.monotonic()

    def _make_room(self) -> None:
        unused = sorted((t.last_used, key) for key, t in self._live.items() if not t.users)
        while unused and len(self._live) >= MAX_TEMPLATES:
            self._stop(unused.pop(0)[1])

    def evict(self, idle_limit: float) -> None:
        """Stop templates no run has used for a while; reap those stopped earlier."""
        limit = min(idle_limit, TEMPLATE_IDLE_SECONDS)
        now = time.monotonic()
        for key, template in list(self._live.items()):
            if template.proc.poll() is not None or (
                not template.users and now - template.last_used > limit
            ):
                self._stop(key)
        self._stopping = [proc for proc in self._stopping if proc.poll() is None]

    def _stop(self, key: str) -> None:
        template = self._live.pop(key)
        with contextlib.suppress(OSError):
            if template.proc.stdin is not None:
                template.proc.stdin.close()  # its signal to exit
        self._stopping.append(template.proc)

    def stop_all(self) -> None:
        for key in list(self._live):
            self._stop(key)
        deadline = time.monotonic() + 5
        for proc in self._stopping:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, deadline - time.monotonic()))


def zygote_from_runner(
    channel: socket.socket, env: Mapping[str, str], cwd: str, flow_dir: str
) -> Zygote | None:
    """In a run child: this run's zygote, forked by the runner's template for `env` and `cwd`,
    or one of the run's own if the runner has none to give."""
    send_with_fds(channel, {"key": template_key(env, cwd), "env": dict(env), "cwd": cwd}, [])
    answer = receive_with_fds(channel, 0, _MAX_MESSAGE)
    name = answer[0].get("template") if answer is not None else None
    return Zygote(env, cwd, flow_dir, template=name or None)
