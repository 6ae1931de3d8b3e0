"""A local Prefect server that mfprefect starts on first use, reuses, and stops after idling.

Prefect's own fallback without `PREFECT_API_URL` is an ephemeral server that costs 7-13 s on every
run. Instead, the first run starts a detached *supervisor* process, which runs the server
(prefect_server.py: Prefect's API and UI) in its own session and stops it once nobody has used
it for a while; later runs find it through `<state>/server/server.json` and only pay one HTTP round trip.

Files in `<state>/server/`:
- `server.json`: url, port and pids of the running server, written by its supervisor;
- `lock`: serialises start-up, so concurrent callers start one server between them;
- `supervisor.lock`: held by the live supervisor for its whole life, so "is a supervisor alive"
  never depends on a pid that may have been reused;
- `last-used`: its mtime is the idle clock;
- `server.log`: supervisor and server output;
- `prefect-home/`: the server's `PREFECT_HOME` (its SQLite database).

This module does not import Prefect: it talks HTTP with urllib and runs Prefect as a subprocess.
"""

from __future__ import annotations

import argparse
import fcntl
import http.client
import importlib.util
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from ..errors import RuntimeFailure, UsageError
from .processes import die_with_parent, stop_group
from .state import state_dir

HOST = "127.0.0.1"
DEFAULT_IDLE_SECONDS = 30 * 60
IDLE_ENV = "MFPREFECT_SERVER_IDLE_SECONDS"
# Prefect stops in about a second on SIGTERM; past this we stop asking.
KILL_GRACE_SECONDS = 10.0
# A stopping supervisor holds supervisor.lock until it exits; a new one waits this long for it.
SUPERVISOR_LOCK_WAIT_SECONDS = 30.0
LOG_ROTATE_BYTES = 2 * 1024 * 1024

Echo = Callable[[str], None]

# Local health checks must never go through an HTTP proxy from the environment.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def server_dir() -> Path:
    """Where the local server keeps its state, lock, log and database."""
    return state_dir() / "server"


def _info_path() -> Path:
    return server_dir() / "server.json"


def _log_path() -> Path:
    return server_dir() / "server.log"


def _last_used_path() -> Path:
    return server_dir() / "last-used"


def _read_info() -> dict[str, Any] | None:
    """The contents of server.json, or None if it is missing or unreadable."""
    try:
        data = json.loads(_info_path().read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("url"), str):
        return None
    return data


def _write_info(info: dict[str, Any]) -> None:
    """Write server.json atomically, so a reader never sees half a file."""
    path = _info_path()
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, path)


def _remove_info_if_ours(supervisor_pid: int) -> None:
    """Remove server.json unless a newer supervisor has already replaced it."""
    info = _read_info()
    if info is None or info.get("supervisor_pid") == supervisor_pid:
        _info_path().unlink(missing_ok=True)


def _healthy(url: str, timeout: float = 1.0) -> bool:
    """True if `GET {url}/health` answers 200."""
    try:
        with _opener.open(f"{url}/health", timeout=timeout) as response:
            return bool(response.status == 200)
    except (OSError, http.client.HTTPException, ValueError):
        return False


def _supervisor_alive() -> bool:
    """True while some supervisor holds supervisor.lock for this state directory."""
    try:
        fd = os.open(server_dir() / "supervisor.lock", os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _live_supervisor_pid() -> int | None:
    """The pid of the supervisor holding supervisor.lock, or None if there is none."""
    if not _supervisor_alive():
        return None
    try:
        pid = int((server_dir() / "supervisor.lock").read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _pid_alive(pid) else None


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _command_line(pid: int) -> str | None:
    """The command line of a process, or None if it cannot be read."""
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except FileNotFoundError:
        if Path("/proc/self").exists():
            return None
    except OSError:
        return None
    # No /proc (macOS): ask ps.
    try:
        out = subprocess.run(
            ["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _is_our_server(pid: object, port: object) -> bool:
    """True if `pid` is alive and still looks like the Prefect server on `port` (pids get reused)."""
    if not _pid_alive(pid):
        return False
    assert isinstance(pid, int)
    command = _command_line(pid)
    return command is not None and "prefect" in command and f"--port {port}" in command


def last_used_file() -> Path:
    """The file whose mtime is the idle clock (see `touch`)."""
    return _last_used_path()


def touch() -> None:
    """Mark the server as used now (resets the idle clock)."""
    path = _last_used_path()
    try:
        os.utime(path, None)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


def _idle_seconds(override: int | None) -> int:
    if override is not None:
        seconds = override
    else:
        configured = os.environ.get(IDLE_ENV)
        if not configured:
            return DEFAULT_IDLE_SECONDS
        try:
            seconds = int(configured)
        except ValueError:
            raise UsageError(
                f"{IDLE_ENV}={configured!r} is not a whole number of seconds",
                hint=f"unset it for the default ({DEFAULT_IDLE_SECONDS} s), or give e.g. 600",
            ) from None
    if seconds <= 0:
        raise UsageError(f"the local server's idle time must be positive, got {seconds} s")
    return seconds


def _describe_seconds(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    return f"{seconds:g} s"


def _display_path(path: Path) -> str:
    """`path` with the home directory shown as ~, as people type it."""
    try:
        return "~/" + str(path.relative_to(Path.home()))
    except ValueError:
        return str(path)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _server_command(port: int) -> list[str]:
    """The server process (prefect_server.py), run by the interpreter mfprefect runs in."""
    # find_spec locates the package without importing it (importing Prefect costs over a second).
    if importlib.util.find_spec("prefect") is None:
        raise RuntimeFailure(
            "Prefect is not installed in this Python environment",
            hint=f"install it next to mfprefect: {sys.executable} -m pip install prefect",
        )
    return [sys.executable, "-m", "mfprefect.runtime.prefect_server"] + [
        "--host",
        HOST,
        "--port",
        str(port),
    ]


def server_status() -> dict[str, Any] | None:
    """url, port, pid and supervisor_pid of a healthy local server, else None."""
    info = _read_info()
    if info is None or not _healthy(info["url"]):
        return None
    return {
        "url": info["url"],
        "port": info.get("port"),
        "pid": info.get("pid"),
        "supervisor_pid": info.get("supervisor_pid"),
        "idle_seconds": info.get("idle_seconds"),
    }


def ui_url(api_url: str) -> str:
    """The UI of the server whose API is at `api_url` (Prefect serves it at the root)."""
    return api_url[: -len("/api")] if api_url.endswith("/api") else api_url


@contextmanager
def _start_lock(echo: Echo, timeout: float) -> Iterator[None]:
    """Hold the exclusive start-up lock; say so once if another process has it."""
    path = server_dir() / "lock"
    with open(path, "a") as handle:
        deadline = time.monotonic() + timeout
        told = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told:
                    echo(
                        "mfprefect: waiting for another mfprefect process to start the local Prefect server ..."
                    )
                    told = True
                if time.monotonic() >= deadline:
                    raise RuntimeFailure(
                        f"timed out after {timeout:g} s waiting for another process to start the local Prefect server",
                        hint=f"see {_log_path()}",
                    ) from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_server(
    echo: Echo = lambda s: None,
    *,
    idle_seconds: int | None = None,
    timeout: float = 90.0,
    starting: Callable[[str], None] | None = None,
) -> str:
    """Return the API URL of a running local server, starting one if needed.

    `starting(url)` is called as soon as a new server's URL is known, before it answers, so
    the caller can start other work meanwhile (called again if a taken port means another)."""
    configured = os.environ.get("PREFECT_API_URL")
    if configured:
        return configured

    info = _read_info()
    if info is not None and _supervisor_alive() and _healthy(info["url"]):
        touch()
        return str(info["url"])

    directory = server_dir()
    directory.mkdir(parents=True, exist_ok=True)
    with _start_lock(echo, timeout):
        # Another caller may have started it while we waited for the lock.
        info = _read_info()
        if info is not None and _supervisor_alive() and _healthy(info["url"]):
            touch()
            return str(info["url"])
        if info is not None and _still_starting(info):
            # A caller that was interrupted left its server starting; finish waiting for it
            # rather than throwing away its migrations.
            echo("mfprefect: waiting for the local Prefect server to finish starting ...")
            started = time.monotonic()
            while _still_starting(info) and time.monotonic() - started < timeout:
                if _healthy(info["url"]):
                    touch()
                    return str(info["url"])
                time.sleep(0.2)
        _clear_stale(info)
        return _start(echo, _idle_seconds(idle_seconds), timeout, starting)


def _still_starting(info: dict[str, Any]) -> bool:
    """True if the supervisor and server that server.json names are alive (if not yet healthy)."""
    return _supervisor_alive() and _is_our_server(info.get("pid"), info.get("port"))


def _clear_stale(info: dict[str, Any] | None) -> None:
    """Stop whatever an unhealthy or unsupervised server.json still names, then forget it."""
    supervisor = _live_supervisor_pid()
    if supervisor is not None:
        # A supervisor whose server does not answer: hung, or its start-up was given up on.
        _stop_supervisor(supervisor, KILL_GRACE_SECONDS + 5)
    if info is not None and _is_our_server(info.get("pid"), info.get("port")):
        # A server whose supervisor was killed outright would never stop by itself.
        stop_group(int(info["pid"]), KILL_GRACE_SECONDS)
    _info_path().unlink(missing_ok=True)


def _start(
    echo: Echo, idle: int, timeout: float, starting: Callable[[str], None] | None = None
) -> str:
    """Start a supervisor (which starts the server) and wait until the server answers."""
    directory = server_dir()
    first_run = not (directory / "prefect-home" / "prefect.db").exists()
    which = "a local Prefect server for the first run" if first_run else "the local Prefect server"
    echo(
        f"mfprefect: starting {which} (state in {_display_path(directory)}; "
        f"it stops after {_describe_seconds(idle)} idle) ..."
    )
    started = time.monotonic()
    # The free port we picked can be taken before Prefect binds it; then try another one.
    for attempt in range(3):
        url = _start_once(
            idle, started + timeout, retry_if_port_taken=attempt < 2, starting=starting
        )
        if url is not None:
            touch()  # idle time counts from when the server could first be used
            elapsed = time.monotonic() - started
            echo(f"mfprefect: local Prefect server ready at {url} ({elapsed:.1f} s)")
            return url
    raise AssertionError("unreachable: the last attempt raises instead of returning None")


def _start_once(
    idle: int,
    deadline: float,
    *,
    retry_if_port_taken: bool,
    starting: Callable[[str], None] | None = None,
) -> str | None:
    """One start attempt: the URL once healthy, None if the port was taken and we may retry."""
    directory = server_dir()
    port = _free_port()
    url = f"http://{HOST}:{port}/api"
    log = _log_path()
    if log.exists() and log.stat().st_size > LOG_ROTATE_BYTES:
        os.replace(log, log.with_name(log.name + ".1"))
    log_offset = log.stat().st_size if log.exists() else 0
    touch()  # so the new supervisor does not see a previous server's idle time

    env = dict(os.environ)
    env["MFPREFECT_HOME"] = str(state_dir())
    with open(log, "ab") as log_file:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "mfprefect.runtime.local_server"]
            + ["supervise", "--port", str(port), "--idle", str(idle)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            cwd=directory,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    if starting is not None:
        starting(url)

    while not _healthy(url, timeout=1.0):
        code = supervisor.poll()
        if code is not None:
            output = _server_output(log, log_offset)
            if retry_if_port_taken and "already in use" in output:
                return None
            raise RuntimeFailure(
                f"the local Prefect server exited during start-up (supervisor exit code {code})"
                + (f": {output}" if output else ""),
                hint=f"see {log}",
            )
        if time.monotonic() > deadline:
            _stop_supervisor(supervisor.pid, KILL_GRACE_SECONDS + 5)
            supervisor.wait()
            raise RuntimeFailure(
                f"the local Prefect server did not answer at {url} in time; stopped it",
                hint=f"see {log}",
            )
        time.sleep(0.2)

    # The supervisor is our child until we exit; reap it when it stops so that a long-lived
    # caller keeps no zombie.
    reaper = threading.Thread(target=supervisor.wait, name="mfprefect-reaper", daemon=True)
    reaper.start()
    return url


def _server_output(log: Path, offset: int) -> str:
    """The last lines Prefect wrote to the log after `offset`, without the supervisor's own lines."""
    try:
        with open(log, "rb") as handle:
            handle.seek(offset)
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and " supervisor" not in line[:30]]
    return " ".join(lines[-3:])


def _stop_supervisor(pid: int, timeout: float) -> None:
    """SIGTERM a supervisor and wait for it to release supervisor.lock; SIGKILL if it does not."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while _supervisor_alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    if _supervisor_alive():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def stop_server(timeout: float = 15.0) -> bool:
    """Stop the local server and its supervisor; True if something was stopped."""
    info = _read_info()
    stopped = False
    supervisor = _live_supervisor_pid()
    if supervisor is not None:
        _stop_supervisor(supervisor, timeout)
        stopped = True
    if info is not None and _is_our_server(info.get("pid"), info.get("port")):
        stop_group(int(info["pid"]), KILL_GRACE_SECONDS)
        stopped = True
    _info_path().unlink(missing_ok=True)
    from . import runner

    return runner.stop_runners(timeout) or stopped


# --- the supervisor process ---------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the server child: get SIGTERM if the supervisor dies, even by SIGKILL (Linux only)."""
    die_with_parent(signal.SIGTERM, parent=os.getppid())


def _server_env(home: Path, api_url: str) -> dict[str, str]:
    env = dict(os.environ)
    # The server must not follow the user's client settings or a profile from their own home.
    for name in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE", "PREFECT_PROFILES_PATH"):
        env.pop(name, None)
    env["PREFECT_HOME"] = str(home)
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    # The UI is served, so that the "View at" links a run prints open the flow run.
    env.pop("PREFECT_UI_ENABLED", None)
    env["PREFECT_SERVER_UI_ENABLED"] = "true"
    # The UI's own calls go here (by default it would call 127.0.0.1:4200).
    env["PREFECT_UI_API_URL"] = api_url
    env.pop("PREFECT_UI_URL", None)
    return env


def _acquire_supervisor_lock(echo: Echo) -> IO[str] | None:
    """Hold supervisor.lock for the rest of this process; None if another supervisor keeps it."""
    handle = open(server_dir() / "supervisor.lock", "a")  # held until this process exits
    deadline = time.monotonic() + SUPERVISOR_LOCK_WAIT_SECONDS
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # A previous supervisor may still be stopping its server; it releases the lock on exit.
            if time.monotonic() >= deadline:
                echo("another supervisor is running for this state directory; exiting")
                handle.close()
                return None
            time.sleep(0.2)
            continue
        # The pid, for stop_server and for callers that find no server.json yet.
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        return handle


def supervise(port: int, idle: int, echo: Echo) -> int:
    """Run the Prefect server on `port` and stop it after `idle` seconds without use."""
    directory = server_dir()
    directory.mkdir(parents=True, exist_ok=True)
    lock = _acquire_supervisor_lock(echo)
    if lock is None:
        return 1

    # Signals only set a flag; the wake-up pipe makes the select() below return at once.
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    stop_signal: list[int] = []

    def on_stop(signum: int, frame: object) -> None:
        stop_signal.append(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_stop)
    # A handler (not SIG_IGN) so that the server's exit wakes us through the pipe.
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)

    home = directory / "prefect-home"
    home.mkdir(exist_ok=True)
    url = f"http://{HOST}:{port}/api"
    echo(f"supervisor {os.getpid()}: starting Prefect server at {url} (idle stop after {idle} s)")
    server = subprocess.Popen(
        _server_command(port),
        stdin=subprocess.DEVNULL,
        cwd=directory,  # not the user's project: Prefect reads prefect.toml and .env from the cwd
        env=_server_env(home, url),
        start_new_session=True,
        close_fds=True,
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
    )
    _write_info(
        {
            "url": url,
            "port": port,
            "pid": server.pid,
            "supervisor_pid": os.getpid(),
            "idle_seconds": idle,
            "prefect_home": str(home),
            "log": str(_log_path()),
            "started_at": time.time(),
        }
    )

    interval = max(0.5, min(5.0, idle / 4))
    ready = False
    start_lock: IO[str] | None = None
    code = 0
    try:
        while True:
            select.select([wake_read], [], [], interval if ready else 0.5)
            try:
                while os.read(wake_read, 512):
                    pass
            except BlockingIOError:
                pass
            if stop_signal:
                echo(f"supervisor: got signal {stop_signal[0]}; stopping the server")
                break
            status = _exit_status(server)
            if status is not None:
                echo(f"supervisor: the server exited by itself (code {status})")
                code = 1
                break
            if not ready and _healthy(url):
                ready = True
                echo(f"supervisor: server ready at {url}")
            if _idle_for() >= idle:
                start_lock = _try_start_lock()
                # Skip this round if someone is starting up, or touched the clock meanwhile.
                if start_lock is not None and _idle_for() >= idle:
                    echo(f"supervisor: unused for {_idle_for():.0f} s; stopping the server")
                    # Forget the server before stopping it, so nobody picks up a dying URL.
                    _remove_info_if_ours(os.getpid())
                    break
                _release(start_lock)
                start_lock = None
    finally:
        _stop_child_group(server)
        _remove_info_if_ours(os.getpid())
        _release(start_lock)
        echo("supervisor: stopped")
    return code


def _idle_for() -> float:
    try:
        return time.time() - _last_used_path().stat().st_mtime
    except FileNotFoundError:
        touch()
        return 0.0


def _try_start_lock() -> IO[str] | None:
    handle = open(server_dir() / "lock", "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _release(handle: IO[str] | None) -> None:
    if handle is not None:
        handle.close()  # closing the only descriptor releases the flock


def _exit_status(server: subprocess.Popen[bytes]) -> int | None:
    """The server's exit code (minus the signal if killed) once it has exited, else None."""
    if server.returncode is not None:
        return server.returncode
    if not hasattr(os, "waitid"):  # macOS before Python 3.13
        return server.poll()
    # Left unreaped, the server's pid (which is also its process group id) cannot be reused,
    # so the group kill in _stop_child_group can only reach the server's own processes.
    try:
        found = os.waitid(os.P_PID, server.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return server.poll()
    if found is None:
        return None
    return found.si_status if found.si_code == os.CLD_EXITED else -found.si_status


def _stop_child_group(server: subprocess.Popen[bytes]) -> None:
    """Stop the server's whole process group: SIGTERM, then SIGKILL after a grace period."""
    stop_group(server.pid, KILL_GRACE_SECONDS, gone=lambda: _exit_status(server) is not None)
    server.wait()


def _log_line(message: str) -> None:
    sys.stderr.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    """`python -m mfprefect.runtime.local_server supervise|start|status|stop`."""
    parser = argparse.ArgumentParser(
        prog="python -m mfprefect.runtime.local_server",
        description="The local Prefect server mfprefect starts on demand.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    sup = commands.add_parser("supervise", help="run the server and stop it when idle (internal)")
    sup.add_argument("--port", type=int, required=True)
    sup.add_argument("--idle", type=int, default=DEFAULT_IDLE_SECONDS)
    commands.add_parser("start", help="start the local server unless one is running")
    commands.add_parser("status", help="print the running server as JSON")
    commands.add_parser("stop", help="stop the local server")
    args = parser.parse_args(argv)

    if args.command == "supervise":
        return supervise(args.port, args.idle, _log_line)
    if args.command == "start":
        try:
            print(ensure_server(print))
        except (RuntimeFailure, UsageError) as error:
            print(
                f"error: {error.message}" + (f"\nhint: {error.hint}" if error.hint else ""),
                file=sys.stderr,
            )
            return error.exit_code
        return 0
    if args.command == "status":
        status = server_status()
        if status is None:
            print("no local server")
            return 1
        print(json.dumps(status, indent=2))
        return 0
    print("stopped the local server" if stop_server() else "no local server was running")
    return 0


if __name__ == "__main__":
    sys.exit(main())
