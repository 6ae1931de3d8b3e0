"""Step processes forked from an interpreter that has Metaflow imported already.

A fresh `python flow.py step ...` spends most of its time starting Python and importing Metaflow.
One run starts one *zygote*: a small single-threaded process, with the run's environment, that
imports Metaflow once and then forks a child per step. The child becomes exactly what the fresh
command would be (its own session, the step's environment, working directory and argv, stdout and
stderr on the runner's pipes) and runs the flow file as `__main__`.

Environment variables that Metaflow or Python read at import time cannot change after the fork,
so a step whose environment differs from the zygote's in any of them (see `fork_compatible`) is
started with `exec` instead, still as a child of the zygote. Either way the zygote reaps its
children, kills whatever each left behind in its process group, and reports each exit status;
when the runner goes away (its end of the zygote's stdin closes, and the kernel sends SIGTERM)
the zygote kills every step's process group before it exits.

Protocol, one Unix-socket connection per step: the runner sends one JSON line
`{"args": [...], "env": {...}, "cwd": "...", "exec": bool}` with the step's stdout and stderr
descriptors attached (SCM_RIGHTS); the zygote answers `{"pid": N}` and later `{"exit": CODE}`,
negative for a signal, as Popen reports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from functools import partial
from typing import Any

from .processes import (
    die_with_parent,
    peer_uid,
    receive_with_fds,
    send_with_fds,
    signal_group,
)

# Read by Python or Metaflow when they start; a step that changes one of these cannot be forked.
_STARTUP_PREFIXES = ("METAFLOW_", "PYTHON")
_STARTUP_NAMES = frozenset({"USER", "USERNAME", "LOGNAME", "HOME", "TMPDIR", "LANG", "LC_ALL"})
_MAX_REQUEST = 8 * 1024 * 1024
# A stop signal's number on the wakeup pipe ends the zygote's loop (see `serve`).
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
# Blocked around each fork, so that none is handled in the child before it resets them.
_HANDLED_SIGNALS = {signal.SIGCHLD, *_STOP_SIGNALS}
_CAN_PEEK = hasattr(os, "waitid")  # not on macOS before Python 3.13


# MFPREFECT_FORK_STEPS=0 starts every step as a fresh interpreter instead.
FORK_ENV = "MFPREFECT_FORK_STEPS"


def forking_enabled() -> bool:
    return os.environ.get(FORK_ENV, "1") != "0" and hasattr(os, "fork")


def startup_variables(env: Mapping[str, str]) -> dict[str, str]:
    """The variables of `env` that Python or Metaflow read at import time."""
    return {
        name: value
        for name, value in env.items()
        if name.startswith(_STARTUP_PREFIXES) or name in _STARTUP_NAMES
    }


def fork_compatible(step_env: Mapping[str, str], zygote_env: Mapping[str, str]) -> bool:
    """True when every variable read at import time has the same value in both environments."""
    names = {
        name
        for name in (*step_env, *zygote_env)
        if name.startswith(_STARTUP_PREFIXES) or name in _STARTUP_NAMES
    }
    return all(step_env.get(name) == zygote_env.get(name) for name in names)


# ---------------------------------------------------------------------------------------------
# The zygote process


# What a step command imports after `import metaflow`, short of metaflow.cli (it builds its
# options from the flow class defined before its import, and step_cmd imports it), found by
# comparing sys.modules in a step before and after it ran. Imported once in the template,
# each step shares them instead of importing (and owning) a copy of its own.
_STEP_MODULES = (
    "metaflow.cli_components.utils",
    "metaflow.clone_util",
    "metaflow.lint",
    "metaflow.procpoll",
    "metaflow.pylint_wrapper",
    "metaflow.runtime",
    "metaflow.system",
    "metaflow.task",
)


def _preload() -> dict[str, Any]:
    """Import what every step command and datastore call imports, so a forked child starts
    with it loaded.

    Returns what the imports put into `__main__` (Metaflow puts its picklable named tuples
    there), to be given to the flow file's own `__main__`.
    """
    import importlib

    main = vars(sys.modules["__main__"])
    before = set(main)
    import metaflow  # noqa: F401

    for name in _STEP_MODULES:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    # Each step's report and each log save call the datastore module.
    from . import datastore  # noqa: F401

    freeze_heap()
    return {name: main[name] for name in set(main) - before}


def freeze_heap() -> None:
    """Move every object alive now out of the garbage collector's reach, before forking.

    A collection in a forked child walks (and writes to) every tracked object's header, which
    copies each page of the parent's heap that holds one: a forked step would soon own a copy
    of most of what its zygote imported. Frozen objects are never collected, so those pages
    stay shared."""
    gc.collect()
    gc.freeze()


def _ask_git_once(flow_dir: str) -> None:
    """Every Metaflow task records the flow folder's git state and Metaflow's own version,
    asking git for them (several processes each) and caching the answers per process. Asked
    once here, the answers are the run's: every forked step inherits them, as of its start."""
    with contextlib.suppress(Exception):
        from metaflow import metaflow_git, metaflow_version

        metaflow_git.get_repository_info(flow_dir)
        metaflow_version.get_version()
        metaflow_version.get_version(public=True)


def _child(
    request: dict[str, Any], fds: list[int], keep: set[int], main_globals: dict[str, Any]
) -> None:
    """In the forked child: become the step command and run it. Never returns."""
    code = 1
    try:
        # The zygote's handlers and wakeup pipe are not the step's; its signals stay blocked
        # (as `start` forked) until they are reset, so none reaches the zygote's pipe.
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _HANDLED_SIGNALS)
        os.setsid()
        die_with_parent()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
        report_fd = fds[2] if len(fds) > 2 else None
        for fd in (null, *fds[:2], *keep):
            with contextlib.suppress(OSError):
                os.close(fd)
        os.chdir(request["cwd"])
        env = request["env"]
        args = request["args"]
        os.environ.clear()
        os.environ.update(env)
        if request.get("call"):
            # A datastore call on the runner's behalf (it does not import Metaflow itself).
            from . import datastore

            sys.stdout.write(json.dumps(datastore.call(request["call"], request["call_args"])))
            code = 0
            return
        if request.get("exec"):
            os.execve(args[0], args, env)
        flow_file = os.path.abspath(args[1])
        sys.argv = args[1:]
        sys.path[0] = os.path.dirname(flow_file)
        import runpy

        try:
            runpy.run_path(flow_file, init_globals=main_globals, run_name="__main__")
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            if stop.code is not None and not isinstance(stop.code, int):
                print(stop.code, file=sys.stderr)
        except BaseException:  # noqa: BLE001 - a step's own failure, reported as Python would
            import traceback

            traceback.print_exc()
            code = 1
        import atexit

        with contextlib.suppress(BaseException):
            atexit._run_exitfuncs()
        if report_fd is not None and code == 0:
            _report(request["report"], report_fd)
    except BaseException:  # noqa: BLE001 - the child must never return into the zygote's loop
        with contextlib.suppress(BaseException):
            import traceback

            traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
        with contextlib.suppress(BaseException):
            sys.stderr.flush()
        os._exit(code & 0xFF if code >= 0 else 1)


def _report(what: dict[str, Any], fd: int) -> None:
    """After a successful step: what the runner needs from its task, read here, where Metaflow
    is loaded, so that the runner itself never has to import it."""
    from . import datastore

    with contextlib.suppress(Exception), os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(datastore.call("inspect", what)))


def _send(conn: socket.socket, message: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        conn.sendall((json.dumps(message) + "\n").encode())


def _wake(_signum: int, _frame: object) -> None:
    """The Python-level handler of SIGCHLD and the stop signals: it does nothing. It exists
    so that the signal's number is written to the wakeup pipe, where the loop reads it; doing
    the work there, between two steps of the loop, cannot interrupt the loop's own."""


def _wake_pipe() -> tuple[int, int]:
    """The pipe the handled signals' numbers are written to (see `_wake`): (read, write)."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    for sig in _HANDLED_SIGNALS:
        signal.signal(sig, _wake)
    return wake_r, wake_w


def serve(address: str, flow_dir: str) -> int:
    """Preload Metaflow, say ready on stdout, then fork steps until stdin closes.

    If the runner dies, the kernel sends SIGTERM, and the steps' process groups are killed on
    the way out, as when stdin closes or the zygote is sent SIGTERM or SIGINT. Until the loop's
    wakeup pipe exists (during the preload, before any step) SIGTERM simply ends the zygote.
    """
    die_with_parent(signal.SIGTERM)
    main_globals = _preload()
    return _serve_run(address, flow_dir, sys.stdin.fileno(), sys.stdout.fileno(), main_globals)


def _serve_run(
    address: str, flow_dir: str, control: int, ready: int, main_globals: dict[str, Any]
) -> int:
    """One run's zygote, Metaflow loaded: listen at `address`, say ready, fork steps until
    `control` closes or a stop signal comes."""
    _ask_git_once(flow_dir)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen(64)
    wake_r, wake_w = _wake_pipe()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _HANDLED_SIGNALS)
    os.write(ready, b"ready\n")

    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "accept")
    selector.register(wake_r, selectors.EVENT_READ, "signal")
    selector.register(control, selectors.EVENT_READ, "control")
    children: dict[int, socket.socket] = {}
    pending: dict[socket.socket, bytearray] = {}
    private = {listener.fileno(), wake_r, wake_w, control}

    def reap() -> None:
        while children:
            status = 0
            try:
                if _CAN_PEEK:
                    # Looked at now, reaped below: until then the step's pid, which is also its
                    # process group's id, cannot be reused, so the group killed is the step's.
                    found = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
                    pid = 0 if found is None else found.si_pid
                else:
                    pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in children:
                # Anything the step left behind in its process group dies with it.
                signal_group(pid)
            if _CAN_PEEK:
                _, status = os.waitpid(pid, 0)
            conn = children.pop(pid, None)
            if conn is not None:
                _send(conn, {"exit": os.waitstatus_to_exitcode(status)})
                conn.close()

    def start(conn: socket.socket, request: dict[str, Any], fds: list[int]) -> None:
        keep = private | {c.fileno() for c in children.values()} | {conn.fileno()}
        keep |= {c.fileno() for c in pending}
        signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                _child(request, fds, keep, main_globals)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _HANDLED_SIGNALS)
        for fd in fds:
            os.close(fd)
        children[pid] = conn
        _send(conn, {"pid": pid})

    try:
        while True:
            for key, _ in selector.select():
                if key.data == "control":
                    if not os.read(control, 4096):
                        return 0
                elif key.data == "signal":
                    signals = b""
                    with contextlib.suppress(BlockingIOError):
                        signals = os.read(wake_r, 4096)
                    reap()
                    if _STOP_SIGNALS.intersection(signals):
                        return 0
                elif key.data == "accept":
                    conn, _ = listener.accept()
                    pending[conn] = bytearray()
                    selector.register(conn, selectors.EVENT_READ, "request")
                else:
                    conn = key.fileobj  # type: ignore[assignment]
                    buffer = pending[conn]
                    data, fds, _flags, _addr = socket.recv_fds(conn, 65536, 3)
                    buffer += data
                    if not data or len(buffer) > _MAX_REQUEST:
                        for fd in fds:
                            os.close(fd)
                        selector.unregister(conn)
                        del pending[conn]
                        conn.close()
                    elif fds:
                        selector.unregister(conn)
                        del pending[conn]
                        if len(fds) not in (2, 3) or not buffer.endswith(b"\n"):
                            for fd in fds:
                                os.close(fd)
                            conn.close()
                            continue
                        start(conn, json.loads(buffer), fds)
            reap()
    finally:
        for pid in list(children):
            # The step first: one that has not yet made its own session (and group) is in none
            # to kill, and once killed it cannot make one.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
            signal_group(pid)


def serve_template(listening: int, runner: int) -> int:
    """A zygote shared by the runs of one runner: preload Metaflow once, then fork a run's
    zygote (`_serve_run`) for each connection to the socket `listening` (bound and listened on
    by the runner, so a run can connect before the preload is done), until stdin closes or the
    runner dies.

    A connection sends one JSON line `{"address", "flow_dir", "cwd"}` and stays open for the
    run: the forked zygote says ready on it, and stops (killing its steps) when it closes. The
    runner keeps one template per startup environment (see `template_key`).
    """
    die_with_parent(signal.SIGTERM, parent=runner)
    listener = socket.socket(fileno=listening)
    main_globals = _preload()
    wake_r, _ = _wake_pipe()
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "accept")
    selector.register(wake_r, selectors.EVENT_READ, "signal")
    selector.register(sys.stdin.fileno(), selectors.EVENT_READ, "control")
    runs: set[int] = set()
    template = os.getpid()
    try:
        while True:
            for key, _ in selector.select():
                if key.data == "control":
                    if not os.read(sys.stdin.fileno(), 4096):
                        return 0
                elif key.data == "signal":
                    signals = b""
                    with contextlib.suppress(BlockingIOError):
                        signals = os.read(wake_r, 4096)
                    if _STOP_SIGNALS.intersection(signals):
                        return 0
                else:
                    conn, _ = listener.accept()
                    with contextlib.suppress(OSError, ValueError):
                        conn.settimeout(10)
                        received = receive_with_fds(conn, 0, _MAX_REQUEST)
                        conn.settimeout(None)
                        if received is not None and peer_uid(conn) == os.getuid():
                            runs.add(_fork_run_zygote(conn, received[0], main_globals, template))
                    conn.close()
            for pid in list(runs):
                with contextlib.suppress(ChildProcessError):
                    if os.waitpid(pid, os.WNOHANG)[0] == 0:
                        continue
                runs.discard(pid)
    finally:
        for pid in runs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


def _fork_run_zygote(
    conn: socket.socket, request: dict[str, Any], main_globals: dict[str, Any], template: int
) -> int:
    """Fork one run's zygote from the template; return its pid."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED_SIGNALS)
    try:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                # The template's wakeup pipe, listener and stdin are not the run zygote's.
                signal.set_wakeup_fd(-1)
                die_with_parent(signal.SIGTERM, parent=template)
                os.closerange(3, conn.fileno())
                os.closerange(conn.fileno() + 1, 1 << 16)
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                os.close(null)
                os.chdir(request["cwd"])
                control = conn.fileno()
                code = _serve_run(
                    request["address"], request["flow_dir"], control, control, main_globals
                )
            except BaseException:  # noqa: BLE001 - never return into the template's loop
                with contextlib.suppress(BaseException):
                    import traceback

                    traceback.print_exc()
            finally:
                os._exit(code)
        return pid
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _HANDLED_SIGNALS)


def template_key(env: Mapping[str, str], cwd: str) -> str:
    """Which template can fork a run's zygote: the same variables read at import, the same
    folder (first on sys.path), the same Metaflow configuration files and installed packages
    (a `pip install` changes its site-packages folder)."""
    parts = [cwd, json.dumps(sorted(startup_variables(env).items()))]
    home = env.get("METAFLOW_HOME") or os.path.join(env.get("HOME", "~"), ".metaflowconfig")
    folders = [os.path.expanduser(home), *(p for p in sys.path if p)]
    for folder in folders:
        with contextlib.suppress(OSError):
            parts.append(f"{folder}:{os.stat(folder).st_mtime_ns}")
    with contextlib.suppress(OSError):
        for entry in sorted(os.scandir(os.path.expanduser(home)), key=lambda e: e.name):
            stat = entry.stat()
            parts.append(f"{entry.name}:{stat.st_mtime_ns}:{stat.st_size}")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]


# ---------------------------------------------------------------------------------------------
# The runner's side


class ForkedProcess:
    """A step process started by the zygote, with the parts of asyncio's Process that we use."""

    def __init__(
        self,
        pid: int,
        conn: socket.socket,
        stdout: asyncio.StreamReader,
        stderr: asyncio.StreamReader,
        buffered: bytes,
        report: asyncio.StreamReader | None = None,
    ) -> None:
        self.pid = pid
        self._report = report
        self.stdout: asyncio.StreamReader | None = stdout
        self.stderr: asyncio.StreamReader | None = stderr
        self.returncode: int | None = None
        self._conn = conn
        self._buffer = buffered
        self._waiter: asyncio.Future[int] | None = None

    async def _read_exit(self) -> int:
        loop = asyncio.get_running_loop()
        while b"\n" not in self._buffer:
            data = await loop.sock_recv(self._conn, 4096)
            if not data:
                # The zygote died: nobody will reap the step, so stop its group ourselves.
                signal_group(self.pid)
                return -signal.SIGKILL
            self._buffer += data
        return int(json.loads(self._buffer.split(b"\n", 1)[0])["exit"])

    async def report(self) -> dict[str, Any] | None:
        """What a successful forked step reported (after `wait`); None if it reported nothing."""
        if self._report is None:
            return None
        raw = await self._report.read()
        try:
            found: dict[str, Any] = json.loads(raw)
        except ValueError:
            return None
        return found

    async def wait(self) -> int:
        if self.returncode is not None:
            return self.returncode
        if self._waiter is None:
            self._waiter = asyncio.ensure_future(self._read_exit())
        self.returncode = await asyncio.shield(self._waiter)
        self._conn.close()
        return self.returncode


class Zygote:
    """The runner's handle on one run's zygote; `spawn` falls back to exec when it must."""

    def __init__(
        self, env: Mapping[str, str], cwd: str, flow_dir: str, template: str | None = None
    ) -> None:
        """Start a zygote process of this run's own, or, with `template` (the abstract socket
        name of a `serve_template` process), have that one fork it."""
        self.env = dict(env)
        self._folder = tempfile.mkdtemp(prefix="mfprefect-zygote-")
        self.address = os.path.join(self._folder, "socket")
        self._proc: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        try:
            if template is None:
                self._proc = subprocess.Popen(
                    [sys.executable, "-m", "mfprefect.runtime.zygote", self.address, flow_dir],
                    env=self.env,
                    cwd=cwd,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=None,
                )
                assert self._proc.stdout is not None
                self._answers = self._proc.stdout
            else:
                self._control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self._control.connect("\0" + template)
                request = {"address": self.address, "flow_dir": flow_dir, "cwd": cwd}
                send_with_fds(self._control, request, [])
                self._answers = self._control.makefile("rb")
        except BaseException:
            self.close()
            raise
        self._ready: bool | None = None

    async def ready(self) -> bool:
        """Wait for the preload to finish; False if the zygote could not start."""
        if self._ready is None:
            line = await asyncio.get_running_loop().run_in_executor(None, self._answers.readline)
            self._ready = line.strip() == b"ready"
        return self._ready

    def wait_ready(self) -> bool:
        """`ready`, blocking this thread (for a caller that has no event loop of its own yet)."""
        if self._ready is None:
            self._ready = self._answers.readline().strip() == b"ready"
        return self._ready

    def alive(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return self._control is not None and self._ready is not False

    async def spawn(
        self,
        args: list[str],
        env: Mapping[str, str],
        cwd: str,
        report: Mapping[str, Any] | None = None,
    ) -> ForkedProcess:
        """Start one step; forked if its environment allows, exec'd otherwise.

        A forked step that succeeds also reports `Datastore.inspect(**report)`, read by
        `ForkedProcess.report()`.
        """
        forkable = args[0] == sys.executable and fork_compatible(env, self.env)
        request = {"args": list(args), "env": dict(env), "cwd": cwd, "exec": not forkable}
        if forkable and report is not None:
            request["report"] = dict(report)
        return await self._start(request)

    async def call(self, op: str, args: Mapping[str, Any], lines: Any = None) -> Any:
        """A datastore call (see datastore.call) in a child forked for it; `lines` (step
        output) travels in a file."""
        call_args = dict(args)
        if lines is not None:
            fd, call_args["lines_file"] = tempfile.mkstemp(dir=self._folder, suffix=".json")
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(lines, handle)
        request = {
            "args": [],
            "env": self.env,
            "cwd": self._folder,
            "call": op,
            "call_args": call_args,
        }
        try:
            proc = await self._start(request)
        except BaseException:
            if "lines_file" in call_args:
                with contextlib.suppress(OSError):
                    os.unlink(call_args["lines_file"])
            raise
        assert proc.stdout is not None and proc.stderr is not None
        output, errors = await asyncio.gather(proc.stdout.read(), proc.stderr.read())
        if await proc.wait() != 0:
            tail = errors.decode("utf-8", "replace").strip().splitlines()[-1:]
            raise OSError(f"reading the datastore failed: {' '.join(tail) or proc.returncode}")
        return json.loads(output)

    async def _start(self, request: dict[str, Any]) -> ForkedProcess:
        loop = asyncio.get_running_loop()
        pipes = [os.pipe() for _ in range(3 if "report" in request else 2)]
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(self.address)
            send_with_fds(conn, request, [w for _, w in pipes])
        except BaseException:
            conn.close()
            for r, _ in pipes:
                os.close(r)
            raise
        finally:
            for _, w in pipes:
                os.close(w)
        (out_r, _), (err_r, _) = pipes[:2]
        report_r = pipes[2][0] if len(pipes) > 2 else None
        conn.setblocking(False)
        buffer = b""
        while b"\n" not in buffer:
            data = await loop.sock_recv(conn, 4096)
            if not data:
                conn.close()
                for r, _ in pipes:
                    os.close(r)
                raise OSError("the step launcher stopped before starting the step")
            buffer += data
        first, rest = buffer.split(b"\n", 1)
        pid = int(json.loads(first)["pid"])
        readers = []
        for fd in (out_r, err_r) if report_r is None else (out_r, err_r, report_r):
            reader = asyncio.StreamReader(limit=2**20)
            pipe = os.fdopen(fd, "rb", buffering=0)
            await loop.connect_read_pipe(partial(asyncio.StreamReaderProtocol, reader), pipe)
            readers.append(reader)
        report = readers[2] if report_r is not None else None
        return ForkedProcess(pid, conn, readers[0], readers[1], rest, report)

    def close(self) -> None:
        """Stop the zygote (it kills any step still running) and remove its socket.

        Closing its stdin (or, for one forked by a template, the connection) is the signal;
        nothing waits for it to exit, which would delay the end of every run by the zygote's
        own shutdown.
        """
        if self._proc is not None:
            with contextlib.suppress(OSError):
                if self._proc.stdin is not None:
                    self._proc.stdin.close()
            self._proc.poll()
            if self._proc.stdout is not None:
                self._proc.stdout.close()
        if self._control is not None:
            with contextlib.suppress(AttributeError, OSError):
                self._answers.close()
            self._control.close()
        with contextlib.suppress(OSError):
            os.unlink(self.address)
        with contextlib.suppress(OSError):
            os.rmdir(self._folder)


if __name__ == "__main__":
    if sys.argv[1] == "--template":
        sys.exit(serve_template(int(sys.argv[2]), int(sys.argv[3])))
    sys.exit(serve(sys.argv[1], sys.argv[2]))
