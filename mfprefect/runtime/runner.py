"""The local runner: a long-lived process that starts pipelines for `run` and `resume` commands.

Importing Prefect costs about a second of CPU, which a three-step run cannot afford on every
command. The first local run starts a detached runner that imports Prefect once; every run after
that connects to it over a Unix socket and hands over the request, together with its own stdout
and stderr. The runner is single-threaded and never runs a pipeline itself: for each command it
forks a child (sharing the imported Prefect copy-on-write) that takes the command's environment,
working directory and standard streams before doing anything else, runs that one pipeline,
answers with one JSON line (the run's pathspec, or the error to report) and exits. Nothing is
swapped in or put back, and runs from several terminals run at the same time. The command stops
its run by going away: when its end of the socket closes, the child interrupts the run and every
step process dies with it; a child also dies with the runner.

A runner serves one installation and one Prefect configuration: its socket name is a hash of the
resolved interpreter and its virtualenv, mfprefect's source files, MFPREFECT_HOME, HOME and every
PREFECT_* variable, because Prefect reads those once, at import. Anything else comes with each
request; the runner never imports Metaflow (it reads its settings at import), the run's zygote
does. The socket is in Linux's abstract namespace and only connections from the same user are
served. The runner stops taking commands when it has been idle for MFPREFECT_RUNNER_IDLE_SECONDS
(default 30 minutes), when mfprefect's source changes, when its PREFECT_HOME or MFPREFECT_HOME
folder goes, and after 200 runs; it exits once its runs have finished.

MFPREFECT_RUNNER=0 runs pipelines in the command's own process instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ..errors import ManifestError, MfprefectError, RuntimeFailure, UsageError
from ..manifest import Manifest
from . import prefect_settings, waiter
from .datastore import Datastore
from .engine import RunSummary
from .processes import die_with_parent, peer_uid, receive_with_fds, send_with_fds
from .templates import Templates, zygote_from_runner
from .zygote import freeze_heap

ENABLE_ENV = "MFPREFECT_RUNNER"
IDLE_ENV = "MFPREFECT_RUNNER_IDLE_SECONDS"
DEFAULT_IDLE_SECONDS = 30 * 60
START_TIMEOUT_SECONDS = 30.0
CHECK_SECONDS = 2.0
# The run child answers this byte when it has taken the command's run.
ACCEPTED = b"+"
# A long-lived process starts afresh now and then.
RECYCLE_AFTER_RUNS = 200
_MAX_REQUEST = 64 * 1024 * 1024

Echo = Callable[[str], None]


def enabled() -> bool:
    return (
        os.environ.get(ENABLE_ENV, "1") != "0"
        and sys.platform.startswith("linux")
        and hasattr(os, "fork")
    )


def _source_stamp() -> str:
    """Changes whenever a source file of mfprefect does (an editable install being edited)."""
    package = Path(__file__).resolve().parent.parent
    stamps = []
    for path in sorted(package.rglob("*.py")):
        with contextlib.suppress(OSError):
            stat = path.stat()
            stamps.append(f"{path}:{stat.st_mtime_ns}:{stat.st_size}")
    return "\n".join(stamps)


def fingerprint(env: Mapping[str, str]) -> str:
    """What a runner must share with a command to serve it (see the module docstring)."""
    # The installation, not the spelling of the path that started it: `.venv/bin/python`,
    # `.venv/bin/python3` and the `mfprefect` script (whose shebang names one of them) are one
    # interpreter (the resolved binary) with one set of packages (sys.prefix: the virtualenv).
    parts = [os.path.realpath(sys.executable), sys.prefix, _source_stamp()]
    for name in sorted(env):
        if name.startswith("PREFECT_") or name in ("HOME", "MFPREFECT_HOME"):
            parts.append(f"{name}={env[name]}")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]


def _address(key: str) -> str:
    return f"\0mfprefect-runner-{os.getuid()}-{key}"


def _runner_dir() -> Path:
    from .state import state_dir

    return state_dir() / "runner"


def _log_path(key: str) -> Path:
    return _runner_dir() / f"{key}.log"


def stop_runners(timeout: float = 10.0) -> bool:
    """Stop every runner of this MFPREFECT_HOME (runs in progress carry on); True if any was."""
    stopped = []
    for pid_file in _runner_dir().glob("*.pid"):
        try:
            pid = int(pid_file.read_text().strip())
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                command = handle.read()
        except (OSError, ValueError):
            pid_file.unlink(missing_ok=True)
            continue
        if b"mfprefect.runtime.runner" not in command:
            pid_file.unlink(missing_ok=True)
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            stopped.append(pid)
    deadline = time.monotonic() + timeout
    for pid in stopped:
        while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            if _is_zombie(pid):
                break
            time.sleep(0.05)
    return bool(stopped)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


# ---------------------------------------------------------------------------------------------
# The command's side


def run(
    manifest: Manifest,
    parameters: Mapping[str, Any],
    *,
    echo: Echo,
    tags: tuple[str, ...] = (),
    clone_run_id: str | None = None,
    step_to_rerun: str | None = None,
    handoff: Handoff | None = None,
) -> RunSummary | None:
    """Run the pipeline in the local runner (starting it if needed); return its RunSummary, or
    None when the runner does not take the command (then run it in this process).

    With `handoff`, once the runner has the run this process becomes a small waiter (see
    waiter.py) that reports the outcome as the command would and exits with its code.
    """
    key = fingerprint(os.environ)
    conn = _connect(key, echo)
    # The runner forks a child for every command at once; no answer means it is wedged.
    conn.settimeout(START_TIMEOUT_SECONDS)
    try:
        accepted = conn.recv(1) == ACCEPTED
    except OSError:
        accepted = False
    if not accepted:
        conn.close()
        return None
    conn.settimeout(None)
    # The datastore root as Metaflow finds it from here, so the runner need not import Metaflow
    # before the run starts.
    data = json.loads(json.dumps(manifest.data))
    data["runtime"]["datastore_root"] = Datastore.for_manifest(manifest).root
    request = {
        "manifest": data,
        "path": manifest.path,
        "parameters": dict(parameters),
        "tags": list(tags),
        "clone_run_id": clone_run_id,
        "step_to_rerun": step_to_rerun,
        "env": dict(os.environ),
        "cwd": os.getcwd(),
    }
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        send_with_fds(conn, request, [sys.stdout.fileno(), sys.stderr.fileno()])
        if handoff is not None:
            _become_waiter(conn, handoff, key)
        reply = waiter.reply(conn, str(_log_path(key)))
    finally:
        conn.close()
    if "error" in reply:
        raise _error(reply["error"])
    return RunSummary(reply["pathspec"], reply.get("flow_run_id"))


@dataclass(frozen=True)
class Handoff:
    """How the command reports the end of a run: its error prefix, and a file to touch."""

    error_prefix: str
    touch: str = ""


def _become_waiter(conn: socket.socket, handoff: Handoff, key: str) -> None:
    """Replace this process with waiter.py, which keeps the connection to the runner."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = conn.fileno()
    os.set_inheritable(fd, True)
    args = [str(fd), handoff.error_prefix, handoff.touch, str(_log_path(key))]
    os.execv(sys.executable, [sys.executable, "-I", "-S", waiter.__file__, *args])


def _error(error: Mapping[str, Any]) -> MfprefectError:
    kind = {1: ManifestError, 2: UsageError}.get(int(error.get("exit_code", 3)), RuntimeFailure)
    return kind(str(error.get("message")), hint=error.get("hint"))


def start_early(echo: Echo) -> None:
    """Start the runner for this environment now, unless one answers, without waiting for it
    (the first run does this while the local server starts; `run` connects later)."""
    key = fingerprint(os.environ)
    conn = _try_connect(key)
    if conn is not None:
        conn.close()
        return
    _spawn(key, echo)


def _spawn(key: str, echo: Echo) -> subprocess.Popen[bytes]:
    echo("mfprefect: starting the local runner (it imports Prefect once; later runs reuse it) ...")
    log = _log_path(key)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "mfprefect.runtime.runner", key],
            # Fewer malloc arenas: Prefect's threads would otherwise each keep freed memory.
            env={**os.environ, "MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", "2")},
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=sink,
            cwd="/",
            start_new_session=True,
        )


def _connect(key: str, echo: Echo) -> socket.socket:
    """A connection to the runner for `key`, starting one if none answers."""
    conn = _try_connect(key)
    if conn is not None:
        return conn
    starter = _spawn(key, echo)
    log = _log_path(key)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        conn = _try_connect(key)
        if conn is not None:
            return conn
        if starter.poll() not in (None, 0):
            raise RuntimeFailure(
                f"the local runner could not start (exit {starter.returncode})",
                hint=f"see {log}; or set {ENABLE_ENV}=0 to run in this process",
            )
        time.sleep(0.02)
    raise RuntimeFailure(
        f"the local runner did not start within {START_TIMEOUT_SECONDS:.0f} s",
        hint=f"see {log}; or set {ENABLE_ENV}=0 to run in this process",
    )


def _try_connect(key: str) -> socket.socket | None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(_address(key))
    except OSError:
        conn.close()
        return None
    return conn


# ---------------------------------------------------------------------------------------------
# The runner process


def _idle_limit() -> float:
    try:
        return float(os.environ.get(IDLE_ENV, DEFAULT_IDLE_SECONDS))
    except ValueError:
        return float(DEFAULT_IDLE_SECONDS)


def serve(key: str) -> int:
    """Bind the runner's socket (losing a start race ends quietly), import Prefect, serve."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(_address(key))
    except OSError:
        return 0  # another runner for the same key won the start race
    listener.listen(64)
    pid_file = _runner_dir() / f"{key}.pid"
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(f"{os.getpid()}\n")
    try:
        return _serve(key, listener)
    finally:
        with contextlib.suppress(OSError):
            if pid_file.read_text().strip() == str(os.getpid()):
                pid_file.unlink()


# What the runner's Prefect settings were built from (see prefect_settings), taken before
# Prefect is imported: a change during the import can only make a run rebuild them.
_settings_sources: tuple[object, ...] = ()


def _preload() -> None:
    """Import Prefect once: its flow and task engines, and what they import during a run.

    The list comes from comparing sys.modules before and after a run. Only modules whose import does not read the command's environment may be
    here: Metaflow reads its settings at import, so each run process imports it itself.
    """
    import importlib

    global _settings_sources
    _settings_sources = prefect_settings.sources(os.getcwd(), os.environ)

    from . import prefect_flow  # noqa: F401

    for name in (
        "prefect.engine",
        "prefect.flow_engine",
        "prefect.task_engine",
        "prefect.concurrency.asyncio",
        "prefect.concurrency.v1.context",
        "prefect.telemetry.run_telemetry",
        "prefect.utilities.visualization",
        "prefect.client.orchestration",
        "prefect.events.clients",
        "fastapi.encoders",
        "starlette.applications",
        "anyio._backends._asyncio",
        "pydantic.v1",
        "requests",
        "http.cookies",
        "encodings.idna",
        "rich._emoji_codes",
    ):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    # Each run child is forked from here; see zygote.freeze_heap.
    freeze_heap()


def _serve(key: str, listener: socket.socket) -> int:
    _preload()

    stamp = _source_stamp()
    watched = [
        Path(os.environ[name]) for name in ("PREFECT_HOME", "MFPREFECT_HOME") if name in os.environ
    ]
    idle_limit = _idle_limit()
    last_used = time.monotonic()
    next_check = time.monotonic() + CHECK_SECONDS
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only a run's own command may interrupt it
    print(f"mfprefect runner {os.getpid()} serving {key}", flush=True)
    runs: dict[int, socket.socket] = {}  # run child -> its channel (see _Templates)
    templates = Templates(key)
    served = 0
    closing: str | None = None
    try:
        while True:
            for pid in _reap(runs):
                templates.release(pid)
                last_used = time.monotonic()
            if closing is not None:
                if not runs:
                    print(f"{closing}: exiting", flush=True)
                    return 0
                time.sleep(0.1)
                continue
            channels = {channel: pid for pid, channel in runs.items()}
            ready, _, _ = select.select(
                [listener, *channels], [], [], 0.2 if runs else CHECK_SECONDS
            )
            for readable in ready:
                if readable is not listener:
                    templates.answer(channels[readable], readable)
                    continue
                conn, _ = listener.accept()
                try:
                    if peer_uid(conn) == os.getuid():
                        pid, channel = _fork_run(conn, listener, list(channels))
                        runs[pid] = channel
                        served += 1
                finally:
                    conn.close()
                last_used = time.monotonic()
            if time.monotonic() < next_check:
                continue
            next_check = time.monotonic() + CHECK_SECONDS
            templates.evict(idle_limit)
            closing = _closing(served, stamp, watched, runs, last_used, idle_limit)
            if closing is not None:
                # A command from now on starts a new runner; this one waits for its runs.
                listener.close()
    finally:
        templates.stop_all()


def _closing(
    served: int,
    stamp: str,
    watched: list[Path],
    runs: Mapping[int, Any],
    last_used: float,
    idle_limit: float,
) -> str | None:
    """Why the runner should stop taking commands now, if it should."""
    if served >= RECYCLE_AFTER_RUNS:
        return f"served {served} runs (the next command starts afresh)"
    if _source_stamp() != stamp:
        return "mfprefect's source changed"
    if not all(folder.is_dir() for folder in watched):
        return "PREFECT_HOME or MFPREFECT_HOME is gone"
    if not runs and time.monotonic() - last_used > idle_limit:
        return f"idle for {idle_limit:.0f} s"
    return None


def _reap(runs: dict[int, socket.socket]) -> list[int]:
    """Collect the run children that have exited (closing their channels); return their pids."""
    done = []
    for pid in list(runs):
        try:
            finished, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            finished = pid
        if finished:
            runs.pop(pid).close()
            done.append(pid)
    return done


def _fork_run(
    conn: socket.socket, listener: socket.socket, others: list[socket.socket]
) -> tuple[int, socket.socket]:
    """Fork the child that runs this command's pipeline; return its pid and the runner's end
    of its channel (on which it asks for a step launcher)."""
    runner = os.getpid()
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid:
        theirs.close()
        return pid, ours
    code = 1
    try:
        listener.close()
        ours.close()
        for channel in others:
            channel.close()
        die_with_parent(signal.SIGKILL, parent=runner)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _serve_run(conn, theirs)
        code = 0
    except BaseException:  # noqa: BLE001 - the child reports and exits, whatever happened
        import traceback

        traceback.print_exc()
    finally:
        # Prefect sends its last logs and events from exit handlers; then leave without
        # unwinding into the runner's own loop.
        with contextlib.suppress(BaseException):
            import atexit

            atexit._run_exitfuncs()
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _serve_run(conn: socket.socket, channel: socket.socket) -> None:
    """In the run child: take the command's request and streams, run it, answer."""
    with contextlib.suppress(OSError):
        conn.sendall(ACCEPTED)
    try:
        request = _receive(conn)
    except (OSError, ValueError):
        return
    if request is None:
        return
    try:
        reply = _run_request(request, conn, channel)
    except Exception as exc:  # noqa: BLE001 - reported to the command
        import traceback

        traceback.print_exc()
        reply = {"error": {"exit_code": 3, "message": f"the local runner failed: {exc}"}}
    _answer(conn, reply)


def _receive(conn: socket.socket) -> dict[str, Any] | None:
    """The request line, with the command's stdout and stderr put in place as ours."""
    received = receive_with_fds(conn, 2, _MAX_REQUEST)
    if received is None:
        return None
    request, fds = received
    for target, fd in zip((1, 2), fds, strict=True):
        os.dup2(fd, target)
        os.close(fd)
    return request


def _run_request(
    request: Mapping[str, Any], conn: socket.socket, channel: socket.socket
) -> dict[str, Any]:
    from ..manifest import from_data
    from .prefect_flow import run_manifest

    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    if prefect_settings.sources(request["cwd"], request["env"]) != _settings_sources:
        import prefect.context

        prefect.context.refresh_global_settings_context()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    finished = threading.Event()
    threading.Thread(target=_stop_when_command_goes, args=(conn, finished), daemon=True).start()

    def echo(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        manifest = from_data(request["manifest"], request.get("path"))
        summary = run_manifest(
            manifest,
            request["parameters"],
            echo=echo,
            tags_=tuple(request.get("tags", ())),
            clone_run_id=request.get("clone_run_id"),
            step_to_rerun=request.get("step_to_rerun"),
            start_zygote=partial(zygote_from_runner, channel),
        )
    except MfprefectError as exc:
        return {"error": {"exit_code": exc.exit_code, "message": exc.message, "hint": exc.hint}}
    except KeyboardInterrupt:
        message = "the command was interrupted; the run's steps were stopped"
        return {"error": {"exit_code": 3, "message": message, "hint": None}}
    finally:
        finished.set()
    return {"pathspec": summary.pathspec, "flow_run_id": summary.flow_run_id}


def _stop_when_command_goes(conn: socket.socket, finished: threading.Event) -> None:
    """The command closed its end (Ctrl-C, killed): interrupt the run, which stops its steps."""
    with contextlib.suppress(OSError):
        while conn.recv(4096):
            pass
    if not finished.is_set():
        os.kill(os.getpid(), signal.SIGINT)


def _answer(conn: socket.socket, reply: Mapping[str, Any]) -> None:
    with contextlib.suppress(OSError):
        conn.sendall((json.dumps(reply) + "\n").encode())
        conn.shutdown(socket.SHUT_WR)


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1]))
