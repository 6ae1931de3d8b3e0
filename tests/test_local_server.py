"""The local Prefect server: started on first use, reused, stopped on request or when idle.

These run real supervisor and Prefect server processes, each test in its own MFPREFECT_HOME.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from mfprefect.errors import RuntimeFailure
from mfprefect.runtime import local_server
from mfprefect.runtime.local_server import ensure_server, server_status, stop_server

pytestmark = pytest.mark.slow

# Health checks must not go through a proxy from the environment.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _health(url: str) -> int:
    with _opener.open(f"{url}/health", timeout=5) as response:
        return int(response.status)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _wait_until(condition: object, timeout: float) -> bool:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return bool(condition())


def _processes_of(home: Path) -> dict[int, str]:
    """pid -> command line of every process started with this MFPREFECT_HOME (Linux /proc)."""
    found: dict[int, str] = {}
    marker = f"MFPREFECT_HOME={home}".encode()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in environ and int(entry.name) != os.getpid():
            found[int(entry.name)] = command
    return found


class Home:
    """A private MFPREFECT_HOME, and the pids of every server seen in it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pids: set[int] = set()

    @property
    def server(self) -> Path:
        return self.path / "server"

    def status(self) -> dict[str, object]:
        """The healthy server's status, remembering its pids for the final orphan check."""
        status = server_status()
        assert status is not None
        self.pids.update({int(str(status["pid"])), int(str(status["supervisor_pid"]))})
        return status


@pytest.fixture(scope="module")
def migrated_prefect_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A PREFECT_HOME whose database is already migrated, so later tests start in ~4 s, not ~12."""
    home = tmp_path_factory.mktemp("template")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MFPREFECT_HOME", str(home))
        patch.delenv("PREFECT_API_URL", raising=False)
        try:
            ensure_server()
        finally:
            stop_server()
    assert _wait_until(lambda: not _processes_of(home), 10), _processes_of(home)
    yield home / "server" / "prefect-home"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Home]:
    """A fresh MFPREFECT_HOME; on teardown, stop its server and check that no process is left."""
    monkeypatch.setenv("MFPREFECT_HOME", str(tmp_path))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv(local_server.IDLE_ENV, raising=False)
    result = Home(tmp_path)
    try:
        yield result
    finally:
        stop_server()
        assert _wait_until(lambda: all(_gone(pid) for pid in result.pids), 10), result.pids
        assert _wait_until(lambda: not _processes_of(tmp_path), 10), _processes_of(tmp_path)


@pytest.fixture
def migrated_home(home: Home, migrated_prefect_home: Path) -> Home:
    """`home` with a copy of an already-migrated database."""
    home.server.mkdir(parents=True)
    shutil.copytree(migrated_prefect_home, home.server / "prefect-home")
    return home


def test_first_use_starts_a_server_and_later_calls_reuse_it(home: Home) -> None:
    messages: list[str] = []
    url = ensure_server(messages.append)
    assert url.startswith("http://127.0.0.1:") and url.endswith("/api")
    assert _health(url) == 200
    assert "starting a local Prefect server for the first run" in messages[0]
    assert "ready" in messages[-1]
    first = home.status()
    assert first["url"] == url

    again: list[str] = []
    started = time.perf_counter()
    assert ensure_server(again.append) == url
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0, f"reusing the server took {elapsed:.2f} s"
    assert again == []
    assert home.status() == first


def test_a_configured_api_url_is_used_and_nothing_is_started(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "http://prefect.example:4200/api")
    messages: list[str] = []
    assert ensure_server(messages.append) == "http://prefect.example:4200/api"
    assert messages == []
    assert not home.server.exists()
    assert not _processes_of(home.path)


def test_the_server_stops_by_itself_when_idle(migrated_home: Home) -> None:
    ensure_server(idle_seconds=6)
    status = migrated_home.status()
    assert status["idle_seconds"] == 6
    assert _wait_until(lambda: server_status() is None, 40)
    assert _wait_until(lambda: all(_gone(pid) for pid in migrated_home.pids), 15)
    assert not (migrated_home.server / "server.json").exists()


def test_stop_then_start_again_reuses_the_database(migrated_home: Home) -> None:
    ensure_server()
    first = migrated_home.status()

    assert stop_server() is True
    assert not (migrated_home.server / "server.json").exists()
    assert server_status() is None
    assert _wait_until(lambda: all(_gone(pid) for pid in migrated_home.pids), 10)
    assert stop_server() is False

    messages: list[str] = []
    url = ensure_server(messages.append)
    assert _health(url) == 200
    assert "starting the local Prefect server" in messages[0]
    assert migrated_home.status()["pid"] != first["pid"]


def test_concurrent_callers_share_one_server(migrated_home: Home) -> None:
    urls: list[str] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            urls.append(ensure_server())
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert len(urls) == 2 and urls[0] == urls[1]
    migrated_home.status()
    commands = list(_processes_of(migrated_home.path).values())
    assert sum("local_server supervise" in command for command in commands) == 1, commands
    assert sum("mfprefect.runtime.prefect_server" in command for command in commands) == 1, commands


def test_concurrent_writes_wait_for_each_other_instead_of_failing(migrated_home: Home) -> None:
    """Flow runs created at once, the way runs from several terminals create theirs: each
    creation reads, then writes. With Prefect's DEFERRED SQLite transactions nearly all but one
    of a burst got 503 "database is locked" (and the client waits 2 s before trying again)."""
    import asyncio

    import httpx

    url = ensure_server()
    migrated_home.status()

    async def bursts() -> list[int]:
        async with httpx.AsyncClient(base_url=url, timeout=60, trust_env=False) as client:
            answer = await client.post("/flows/", json={"name": "concurrent-writes"})
            flow_id = answer.json()["id"]
            run = {"flow_id": flow_id, "state": {"type": "PENDING"}}
            codes: list[int] = []
            for _ in range(3):
                answers = await asyncio.gather(
                    *(client.post("/flow_runs/", json=run) for _ in range(16))
                )
                codes += [answer.status_code for answer in answers]
            return codes

    codes = asyncio.run(bursts())
    assert codes == [201] * 48, {code: codes.count(code) for code in set(codes)}


def test_a_stale_server_file_is_ignored_and_replaced(migrated_home: Home) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    # A live process that is not ours must survive: a stale file may name a reused pid.
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        stale_port = local_server._free_port()
        migrated_home.server.mkdir(parents=True, exist_ok=True)
        local_server._write_info(
            {
                "url": f"http://127.0.0.1:{stale_port}/api",
                "port": stale_port,
                "pid": bystander.pid,
                "supervisor_pid": dead.pid,
            }
        )
        messages: list[str] = []
        url = ensure_server(messages.append)
        assert url != f"http://127.0.0.1:{stale_port}/api"
        assert _health(url) == 200
        assert any("starting" in message for message in messages)
        status = migrated_home.status()
        assert status["url"] == url
        assert status["supervisor_pid"] != dead.pid
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_a_server_left_starting_by_an_interrupted_caller_is_waited_for(
    migrated_home: Home,
) -> None:
    # As if a caller had been interrupted right after launching the supervisor.
    migrated_home.server.mkdir(parents=True, exist_ok=True)
    port = local_server._free_port()
    with open(migrated_home.server / "server.log", "ab") as log:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "mfprefect.runtime.local_server", "supervise"]
            + ["--port", str(port), "--idle", "60"],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    try:
        assert _wait_until(lambda: (migrated_home.server / "server.json").exists(), 10)
        messages: list[str] = []
        assert ensure_server(messages.append) == f"http://127.0.0.1:{port}/api"
        assert messages == [
            "mfprefect: waiting for the local Prefect server to finish starting ..."
        ]
        assert migrated_home.status()["supervisor_pid"] == supervisor.pid
    finally:
        stop_server()
        supervisor.wait(15)


def test_a_server_that_cannot_start_is_reported_with_its_log(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    monkeypatch.setattr(local_server, "_free_port", lambda: taken.getsockname()[1])
    try:
        with pytest.raises(RuntimeFailure) as failure:
            ensure_server()
    finally:
        taken.close()
    assert "exited during start-up" in failure.value.message
    assert "already in use" in failure.value.message
    log = home.server / "server.log"
    assert failure.value.hint == f"see {log}"
    # A taken port is retried with another one, twice, before giving up.
    assert log.read_text().count("starting Prefect server") == 3
    assert server_status() is None


_SCHEMAS = r"""
import asyncio, json, sqlite3, sys
from pathlib import Path
from prefect.server.database import provide_database_interface
from mfprefect.runtime.prefect_server import migrate_file

database = provide_database_interface()
migrate_file(Path(sys.argv[1]), database)
asyncio.run(database.create_db())  # Prefect's own migration, into PREFECT_HOME/prefect.db


def schema(path):
    connection = sqlite3.connect(path)
    objects = {}
    for kind, name, sql in connection.execute("select type, name, sql from sqlite_master"):
        # Batch migrations re-create tables with their constraints in set order, which differs
        # from one process to the next: compare each statement's lines as a set.
        objects[f"{kind} {name}"] = sorted(
            line.strip().rstrip(",") for line in (sql or "").splitlines()
        )
    rows = {
        name: connection.execute(f'select count(*) from "{name}"').fetchone()[0]
        for kind, name in [key.split(" ", 1) for key in objects]
        if kind == "table"
    }
    version = connection.execute("select version_num from alembic_version").fetchall()
    return {"objects": objects, "rows": rows, "version": version}


print(json.dumps([schema(sys.argv[1]), schema(str(Path(sys.argv[2]) / "prefect.db"))]))
"""


def test_the_fast_database_set_up_makes_the_database_prefect_would(tmp_path: Path) -> None:
    """prefect_server.migrate_file runs Prefect's migrations without its async engine: the
    result must be the database Prefect's own start-up migration makes (tables, indexes,
    rows, head revision), for whichever Prefect is installed."""
    home = tmp_path / "prefect-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(home)
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", _SCHEMAS, str(tmp_path / "fast.db"), str(home)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    fast, prefects = json.loads(out.stdout)
    assert len(fast["objects"]) > 100  # tables, indexes and triggers of a real schema
    assert fast["objects"].keys() == prefects["objects"].keys()
    for name, statement in prefects["objects"].items():
        assert fast["objects"][name] == statement, name
    assert fast["rows"] == prefects["rows"]
    assert fast["version"] == prefects["version"] and len(fast["version"]) == 1


def test_a_first_start_sets_the_database_up_fast_and_prefect_finds_it_current(home: Home) -> None:
    url = ensure_server()
    home.status()
    # The API works on the database: a flow is written and read back.
    request = urllib.request.Request(
        f"{url}/flows/",
        data=json.dumps({"name": "fast-db"}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with _opener.open(request, timeout=10) as response:
        created = json.loads(response.read())
    with _opener.open(f"{url}/flows/{created['id']}", timeout=10) as response:
        assert json.loads(response.read())["name"] == "fast-db"
    log = (home.server / "server.log").read_text()
    assert "fast database set-up failed" not in log
    assert re.search(r"database set up at head in \d+\.\d s", log), log
    assert (home.server / "prefect-home" / "prefect.db").exists()
    assert not (home.server / "prefect-home" / "prefect.db.new").exists()


def test_the_first_run_starts_the_runner_while_the_server_starts(
    home: Home, tmp_path: Path
) -> None:
    """The runner imports Prefect (about a second) while the new server sets itself up, not
    after it: its start is announced before the server is ready, and the run finds it."""
    from mfprefect.runtime import runner

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        MFPREFECT_HOME=str(home.path),
        METAFLOW_DATASTORE_SYSROOT_LOCAL=str(tmp_path / "ds"),
        USER=os.environ.get("USER", "mfp-test-user"),
    )
    flow = Path(__file__).resolve().parent.parent / "examples" / "linear_flow.py"
    try:
        result = subprocess.run(
            [sys.executable, str(flow), "--no-pylint", "prefect", "run"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        lines = result.stderr.splitlines()

        def first(words: str) -> int:
            return next(i for i, line in enumerate(lines) if words in line)

        assert first("starting the local runner") < first("local Prefect server ready")
        assert first("local Prefect server ready") < first("Metaflow run LinearFlow/")
        assert len(list((home.path / "runner").glob("*.pid"))) == 1
        home.status()
    finally:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("MFPREFECT_HOME", str(home.path))
            runner.stop_runners()
