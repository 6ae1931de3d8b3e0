"""Faults during `apply`: a server that dies, restarts or fails mid-apply, and applies that race.

Every test runs real `mfprefect apply` processes against a real Prefect server started here (one per
module, plus a private one for the test that kills its server). Faults are injected either by
killing the server's process group or through `FaultyProxy`, a small HTTP proxy in front of the
server that breaks chosen requests. What is asserted is what the server holds afterwards: one
deployment per manifest, its schedule and automations exactly once, no automation left pointing at
a deployment that does not exist.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import EXAMPLES, flow_env, mfprefect, prefect_api

from mfprefect.deploy.desired import OWNER_TAG, DeploymentSpec, deployment_for
from mfprefect.manifest import check_file, from_data

pytestmark = pytest.mark.slow

POOL = "mfp-faults-pool"
HOST = "127.0.0.1"
DEPLOYMENT_TAG = "mfprefect-deployment:"
# One flow per kind of owned object: a schedule, event triggers (made two per deployment, and given
# a schedule too), an upstream-finished trigger.
SOURCES = ("schedule_flow", "trigger_flow", "trigger_on_finish_flow")

# Health checks and test reads must not go through a proxy from the environment.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class PrefectServer:
    """`prefect server start` on a fixed port and PREFECT_HOME, so it can be killed and restarted."""

    def __init__(self, home: Path, port: int) -> None:
        self.home = home
        self.port = port
        self.url = f"http://{HOST}:{port}/api"
        self.process: subprocess.Popen[bytes] | None = None
        home.mkdir(parents=True, exist_ok=True)

    def start(self, timeout: float = 60) -> None:
        env = dict(os.environ)
        for name in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE"):
            env.pop(name, None)
        env.update(
            PREFECT_HOME=str(self.home),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_UI_ENABLED="false",
            PREFECT_SERVER_UI_ENABLED="false",
        )
        with open(self.home / "server.log", "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "prefect", "server", "start", "--host", HOST]
                + ["--port", str(self.port), "--no-ui"],
                cwd=self.home,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                log_text = (self.home / "server.log").read_text(errors="replace")[-3000:]
                self.stop()
                raise AssertionError(f"Prefect server did not start:\n{log_text}")
            time.sleep(0.2)

    def healthy(self) -> bool:
        try:
            with _opener.open(f"{self.url}/health", timeout=1) as response:
                return bool(response.status == 200)
        except (OSError, http.client.HTTPException):
            return False

    def kill(self) -> None:
        """SIGKILL the whole server process group: no shutdown, no goodbye to clients."""
        self._signal_group([signal.SIGKILL])

    def stop(self) -> None:
        self._signal_group([signal.SIGTERM, signal.SIGKILL])

    def _signal_group(self, signals: list[signal.Signals]) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        for sig in signals:
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                continue
        # The group's other members (if any) go with the leader; make sure of it.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


Fault = str  # "pass" | "500" (answer 500, do nothing) | "500-after" (do it, then answer 500)
#               | "drop-after" (do it, then hang up without an answer)


class FaultyProxy:
    """An HTTP proxy in front of a Prefect server that breaks the requests `decide` picks."""

    def __init__(self, upstream_port: int | None) -> None:
        self.upstream_port = upstream_port
        self.decide: Callable[[str, str], Fault] = lambda method, path: "pass"
        self.seen: list[tuple[str, str, Fault]] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def handle_one(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with proxy._lock:
                    fault = proxy.decide(self.command, self.path)
                    proxy.seen.append((self.command, self.path, fault))
                if fault == "500" or proxy.upstream_port is None:
                    self.answer(500, b'{"detail": "injected failure"}')
                    return
                upstream = http.client.HTTPConnection(HOST, proxy.upstream_port, timeout=60)
                try:
                    headers = {
                        k: v
                        for k, v in self.headers.items()
                        if k.lower()
                        not in ("host", "connection", "content-length", "accept-encoding")
                    }
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                finally:
                    upstream.close()
                if fault == "drop-after":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                elif fault == "500-after":
                    self.answer(500, b'{"detail": "injected failure after the write"}')
                else:
                    self.answer(response.status, data, response.getheader("Content-Type"))

            def answer(self, status: int, data: bytes, kind: str | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind or "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = handle_one

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{HOST}:{self.server.server_address[1]}/api"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def break_nth(self, method: str, path: str, n: int, fault: Fault) -> None:
        """Break the n-th `method path` request from now (1-based) with `fault`; pass the rest."""
        count = 0

        def decide(got_method: str, got_path: str) -> Fault:
            nonlocal count
            if (got_method, got_path.split("?")[0]) != (method, path):
                return "pass"
            count += 1
            return fault if count == n else "pass"

        self.decide = decide

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------------------------------------
# Fixtures: exported manifests, a fleet of copies, a server


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The source flows' manifests, exported once with `mfprefect export` onto the test pool."""
    folder = tmp_path_factory.mktemp("exported")
    env = flow_env(folder)
    texts = {}
    for stem in SOURCES:
        shutil.copy(EXAMPLES / f"{stem}.py", folder / f"{stem}.py")
        made = mfprefect(
            "export",
            str(folder / f"{stem}.py"),
            "-o",
            str(folder / f"{stem}.yaml"),
            "--work-pool",
            POOL,
            env=env,
            cwd=folder,
        )
        assert made.returncode == 0, made.stderr
        texts[stem] = (folder / f"{stem}.yaml").read_text()
        assert "deployment:\n  name: null\n" in texts[stem]
    return texts


def _fleet(
    folder: Path,
    exported: dict[str, str],
    prefix: str,
    per_source: int = 12,
    extra_triggers: int = 1,
) -> list[DeploymentSpec]:
    """`per_source` copies of each source manifest under new deployment names, in `folder`.

    Trigger-flow copies get a schedule and `extra_triggers` more event triggers, so one deployment
    owns a schedule and several automations. Returns what each manifest should become.
    """
    folder.mkdir(parents=True, exist_ok=True)
    specs = []
    for stem, text in exported.items():
        shutil.copy(EXAMPLES / f"{stem}.py", folder / f"{stem}.py")
        for number in range(per_source):
            name = f"{prefix}-{stem.replace('_', '-')}-{number:02d}"
            copy = text.replace("deployment:\n  name: null\n", f"deployment:\n  name: {name}\n")
            if stem == "trigger_flow":
                copy = copy.replace(
                    "schedule: null\n", f"schedule:\n  cron: {number} 3 * * *\n  timezone: UTC\n"
                )
                more = "".join(
                    f"  - kind: event\n    event: other.ready.{n}\n    parameters: {{}}\n"
                    for n in range(extra_triggers)
                )
                copy = copy.replace("triggers:\n", "triggers:\n" + more, 1)
            path = folder / f"{name}.yaml"
            path.write_text(copy)
            doc, diagnostics = check_file(str(path))
            assert doc is not None and not [d for d in diagnostics if d.severity == "error"]
            specs.append(deployment_for(from_data(doc.data, str(path)), doc.data))
    return specs


@dataclass
class Stack:
    server: PrefectServer
    env: dict[str, str]  # for mfprefect processes: PREFECT_API_URL is the server


def _stack(home: Path) -> Stack:
    server = PrefectServer(home / "prefect-home", _free_port())
    server.start()
    prefect_api(server.url, "POST", "/work_pools/", {"name": POOL, "type": "process"})
    env = flow_env(home)
    env["PREFECT_HOME"] = str(home / "client-home")
    env["PREFECT_API_URL"] = server.url
    return Stack(server, env)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One server for the tests that do not kill it; each uses its own deployment names."""
    stack = _stack(tmp_path_factory.mktemp("faults"))
    try:
        yield stack
    finally:
        stack.server.stop()


@pytest.fixture
def private(tmp_path: Path) -> Iterator[Stack]:
    """A server of the test's own, which it may kill and restart."""
    stack = _stack(tmp_path / "stack")
    try:
        yield stack
    finally:
        stack.server.stop()


@pytest.fixture
def proxy(shared: Stack) -> Iterator[FaultyProxy]:
    faulty = FaultyProxy(shared.server.port)
    try:
        yield faulty
    finally:
        faulty.close()


# ---------------------------------------------------------------------------------------------
# Reading what the server holds


def _read_all(url: str, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Every object a filter endpoint returns, page by page (the server caps a page at 200)."""
    found: dict[str, dict[str, Any]] = {}
    offset = 0
    while True:
        page = prefect_api(url, "POST", path, dict(body, limit=200, offset=offset))
        found.update({item["id"]: item for item in page})
        if len(page) < 200:
            return list(found.values())
        offset += 200


def _problems(url: str, specs: list[DeploymentSpec]) -> list[str]:
    """Everything on the server that differs from one deployment per spec, each object once."""
    deployments = _read_all(
        url,
        "/deployments/filter",
        {"deployments": {"tags": {"all_": [OWNER_TAG]}}, "sort": "CREATED_DESC"},
    )
    flow_ids = sorted({d["flow_id"] for d in deployments})
    flows = {
        f["id"]: f["name"]
        for f in _read_all(url, "/flows/filter", {"flows": {"id": {"any_": flow_ids}}})
    }
    automations = _read_all(
        url,
        "/automations/filter",
        {"automations": {"tags": {"all_": [OWNER_TAG]}}, "sort": "CREATED_DESC"},
    )
    problems = []
    keys = Counter(f"{flows.get(d['flow_id'], '?')}/{d['name']}" for d in deployments)
    problems += [f"deployment {key} exists {n} times" for key, n in keys.items() if n > 1]
    by_key = {f"{flows.get(d['flow_id'], '?')}/{d['name']}": d for d in deployments}
    owned_by: dict[str, list[dict[str, Any]]] = {}
    for automation in automations:
        tags = [t for t in automation["tags"] if t.startswith(DEPLOYMENT_TAG)]
        key = tags[0][len(DEPLOYMENT_TAG) :] if len(tags) == 1 else f"?{tags}"
        owned_by.setdefault(key, []).append(automation)
        target = by_key.get(key)
        if target is None:
            problems.append(f"orphaned automation {automation['name']!r}: no deployment {key}")
        elif [a.get("deployment_id") for a in automation["actions"]] != [target["id"]]:
            problems.append(f"automation {automation['name']!r} runs another deployment")
    for spec in specs:
        found = by_key.get(spec.key)
        if found is None:
            problems.append(f"deployment {spec.key} is missing")
            continue
        slugs = sorted(s["slug"] for s in found["schedules"])
        if slugs != sorted(s.slug for s in spec.schedules):
            problems.append(f"deployment {spec.key} has schedules {slugs}")
        names = sorted(a["name"] for a in owned_by.get(spec.key, []))
        if names != sorted(a.name for a in spec.automations):
            problems.append(f"deployment {spec.key} has automations {names}")
    return problems


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("mfprefect: error:")]


def _assert_one_clear_error(result: subprocess.CompletedProcess[str] | Any, *needles: str) -> str:
    """Exit 3, exactly one error line (then at most a hint) at the end, no traceback."""
    stderr = result.stderr
    assert result.returncode == 3, (result.returncode, stderr[-3000:])
    assert "Traceback" not in stderr, stderr[-3000:]
    (line,) = _error_lines(stderr)
    tail = stderr.rstrip("\n").splitlines()
    assert line in tail[-2:], stderr[-3000:]  # the last line, or followed by one hint line
    for needle in needles:
        assert needle in line, line
    return line


def _converges(
    stack: Stack, folder: Path, specs: list[DeploymentSpec], env: dict[str, str]
) -> None:
    """apply → 0, a second apply changes nothing, plan → 0, and the server holds exactly specs."""
    applied = mfprefect("apply", str(folder), env=env)
    assert applied.returncode == 0, applied.stderr[-3000:]
    again = mfprefect("apply", str(folder), env=env)
    assert again.returncode == 0 and "No changes" in again.stdout, again.stdout[-3000:]
    planned = mfprefect("plan", str(folder), env=env)
    assert planned.returncode == 0, planned.stdout[-3000:]
    assert _problems(stack.server.url, specs) == []


def _apply_process(folder: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "mfprefect.cli", "apply", str(folder)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(
    process: subprocess.Popen[str], timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def _owned_count(url: str) -> int:
    try:
        return int(
            prefect_api(
                url, "POST", "/deployments/count", {"deployments": {"tags": {"all_": [OWNER_TAG]}}}
            )
        )
    except OSError:
        return 0


def _kill_once_a_deployment_exists(
    stack: Stack, apply: subprocess.Popen[str], timeout: float = 60
) -> int:
    """Wait until apply has written at least one deployment, then kill the server; return the count."""
    deadline = time.monotonic() + timeout
    while (count := _owned_count(stack.server.url)) == 0:
        assert apply.poll() is None, _finish(apply).stderr[-3000:]
        assert time.monotonic() < deadline, "apply wrote no deployment in time"
        time.sleep(0.02)
    stack.server.kill()
    return count


# ---------------------------------------------------------------------------------------------
# The server goes away mid-apply


def test_server_killed_mid_apply_then_next_apply_converges(
    private: Stack, exported: dict[str, str], tmp_path: Path
) -> None:
    folder = tmp_path / "fleet"
    specs = _fleet(folder, exported, "kill")
    # Prefect's client retries a lost connection 5 times over about a minute (2, 4, 8, 16, 32 s);
    # one retry keeps this test short and still exercises the retry path.
    env = dict(private.env, PREFECT_CLIENT_MAX_RETRIES="1")
    apply = _apply_process(folder, env)
    written = _kill_once_a_deployment_exists(private, apply)
    result = _finish(apply)
    line = _assert_one_clear_error(result, f"cannot reach {private.server.url}")
    progress = [text for text in result.stderr.splitlines() if text.startswith("[")]
    assert 0 < len(progress) < len(specs), result.stderr[-3000:]  # it stopped part way
    print(f"killed with {written} deployment(s) written, after {progress[-1]!r}: {line}")

    # Nothing answers while the server is down: plan and apply both say so, in one line.
    _assert_one_clear_error(mfprefect("plan", str(folder), env=env), "cannot reach")

    private.server.start()
    _converges(private, folder, specs, private.env)


def test_apply_rides_out_a_server_restart(
    private: Stack, exported: dict[str, str], tmp_path: Path
) -> None:
    """Killed and restarted within the client's retry window: the same apply finishes the job."""
    folder = tmp_path / "fleet"
    specs = _fleet(folder, exported, "blip")
    apply = _apply_process(folder, private.env)
    _kill_once_a_deployment_exists(private, apply)
    private.server.start()
    result = _finish(apply)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _problems(private.server.url, specs) == []
    _converges(private, folder, specs, private.env)


# ---------------------------------------------------------------------------------------------
# The server answers errors, or loses an answer, mid-apply


def test_a_server_answering_500_is_one_line(exported: dict[str, str], tmp_path: Path) -> None:
    broken = FaultyProxy(None)  # answers every request with 500
    try:
        specs = _fleet(tmp_path / "fleet", exported, "down", per_source=1)
        env = dict(flow_env(tmp_path), PREFECT_API_URL=broken.url)
        result = mfprefect("apply", str(tmp_path / "fleet"), env=env)
        _assert_one_clear_error(result, "500")
        assert len(specs) == 3 and broken.seen
    finally:
        broken.close()


def test_server_failing_mid_apply_then_next_apply_converges(
    shared: Stack, proxy: FaultyProxy, exported: dict[str, str], tmp_path: Path
) -> None:
    folder = tmp_path / "fleet"
    specs = _fleet(folder, exported, "fail", per_source=4)
    env = dict(shared.env, PREFECT_API_URL=proxy.url)
    # Refused outright: the 3rd automation is never made.
    proxy.break_nth("POST", "/api/automations/", 3, "500")
    _assert_one_clear_error(mfprefect("apply", str(folder), env=env), "500", "/automations/")
    # Made, but reported as failed: the 2nd deployment of this run exists, apply thinks it failed.
    proxy.break_nth("POST", "/api/deployments/", 2, "500-after")
    _assert_one_clear_error(mfprefect("apply", str(folder), env=env), "500", "/deployments/")
    proxy.decide = lambda method, path: "pass"
    _converges(shared, folder, specs, env)
    assert mfprefect("delete", str(folder), env=shared.env).returncode == 0


def test_a_lost_answer_does_not_duplicate_an_automation(
    shared: Stack, proxy: FaultyProxy, exported: dict[str, str], tmp_path: Path
) -> None:
    """The server makes the automation but the answer never arrives; the client sends it again."""
    folder = tmp_path / "fleet"
    specs = _fleet(folder, exported, "lost", per_source=2)
    env = dict(shared.env, PREFECT_API_URL=proxy.url)
    proxy.break_nth("POST", "/api/automations/", 2, "drop-after")
    applied = mfprefect("apply", str(folder), env=env)
    assert applied.returncode == 0, applied.stderr[-3000:]
    sent = [seen for seen in proxy.seen if seen[:2] == ("POST", "/api/automations/")]
    assert [fault for *_, fault in sent].count("drop-after") == 1
    assert _problems(shared.server.url, specs) == []
    assert mfprefect("delete", str(folder), env=shared.env).returncode == 0


# ---------------------------------------------------------------------------------------------
# Two applies at once


def _race(folder: Path, env: dict[str, str]) -> None:
    """Two `mfprefect apply` of the same folder, started together; both must succeed."""
    first, second = _apply_process(folder, env), _apply_process(folder, env)
    results = [_finish(first), _finish(second)]
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]


def test_two_applies_at_once_leave_no_duplicates(
    shared: Stack, exported: dict[str, str], tmp_path: Path
) -> None:
    everything: list[DeploymentSpec] = []
    folders = []
    # Fresh deployments: both applies plan "create" for every one of them.
    for round_number in range(3):
        folder = tmp_path / f"round{round_number}"
        specs = _fleet(folder, exported, f"race{round_number}", extra_triggers=4)
        _race(folder, shared.env)
        assert _problems(shared.server.url, specs) == [], f"round {round_number}"
        everything += specs
        folders.append(folder)
    # Existing deployments that lost their schedules and automations: both plan to add them back.
    for spec in everything[: len(everything) // 3]:
        found = prefect_api(shared.server.url, "GET", f"/deployments/name/{spec.key}")
        for schedule in found["schedules"]:
            prefect_api(
                shared.server.url,
                "DELETE",
                f"/deployments/{found['id']}/schedules/{schedule['id']}",
            )
    for automation in _read_all(
        shared.server.url, "/automations/filter", {"automations": {"tags": {"all_": [OWNER_TAG]}}}
    ):
        if any(t.startswith(DEPLOYMENT_TAG + "TriggerFlow/race0-") for t in automation["tags"]):
            prefect_api(shared.server.url, "DELETE", f"/automations/{automation['id']}")
    _race(folders[0], shared.env)
    # 3 x (12 x 5 + 12) automations: more than one page of the API (200); plan sees them all.
    assert sum(len(spec.automations) for spec in everything) > 200
    assert _problems(shared.server.url, everything) == []
    planned = mfprefect("plan", *map(str, folders), env=shared.env)
    assert planned.returncode == 0, planned.stdout[-3000:]
