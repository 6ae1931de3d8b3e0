"""The local runner and the step zygote, on a real server: reuse, isolation, and faults mid-run.

Faults injected here: a step killed by SIGKILL, a step that exits 0 before finishing, a full
datastore disk (a 4 MiB tmpfs), the command killed mid-run, and the runner's run process killed
mid-run. Each must fail clearly with no downstream step, leave no step process running, and (for
the kills) let `resume` finish the run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import flow_cli, mfprefect, run
from prefect_stack import all_logs

from mfprefect.runtime.zygote import fork_compatible

HERE = Path(__file__).resolve().parent
FAULT_FLOW = HERE / "flows" / "fault_flow.py"


def test_fork_compatible_compares_only_what_is_read_at_import() -> None:
    base = {"USER": "a", "METAFLOW_X": "1", "PATH": "/bin", "GREETING": "hi"}
    assert fork_compatible(dict(base, GREETING="other", PATH="/usr/bin"), base)
    assert not fork_compatible(dict(base, METAFLOW_X="2"), base)
    assert not fork_compatible(dict(base, METAFLOW_NEW="1"), base)
    assert not fork_compatible(dict(base, PYTHONPATH="/x"), base)
    assert not fork_compatible(dict(base, USER="b"), base)
    assert not fork_compatible({k: v for k, v in base.items() if k != "USER"}, base)


def _env(server: dict[str, str], tmp_path: Path, **extra: str) -> dict[str, str]:
    return dict(
        server,
        METAFLOW_DATASTORE_SYSROOT_LOCAL=str(extra.pop("datastore", tmp_path / "ds")),
        FAULT_LOG=str(tmp_path / "ran"),
        FAULT_PIDS=str(tmp_path / "pids"),
        **extra,
    )


def _ran(tmp_path: Path) -> list[str]:
    log = tmp_path / "ran"
    return sorted(line.split()[0] for line in log.read_text().splitlines()) if log.exists() else []


def _dump(pathspec: str, env: dict[str, str]) -> dict:
    result = run([sys.executable, str(HERE / "dump_run.py"), pathspec], env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _processes_with(marker: str, server: dict[str, str]) -> list[int]:
    """Live processes whose environment holds `marker` (zygotes and exec'd steps of one test),
    except the runner itself, which a test's command may have started with its environment, and
    the runner's zygote templates, which outlive runs by design (runtime/templates.py)."""
    found = []
    skip = {os.getpid(), *_runner_pids(server), *_template_pids(server)}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in skip:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environ = handle.read().split(b"\0")
        except OSError:
            continue
        if marker.encode() in environ and _alive(int(entry)):
            found.append(int(entry))
    return found


def _wait_gone(pids: list[int], timeout: float = 20) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    return [p for p in pids if _alive(p)]


def _runner_pids(server: dict[str, str]) -> list[int]:
    files = (Path(server["MFPREFECT_HOME"]) / "runner").glob("*.pid")
    return [int(f.read_text()) for f in files if f.exists()]


def _template_pids(server: dict[str, str]) -> list[int]:
    """The runners' zygote templates: their children started as `zygote --template`."""
    runners = {str(pid) for pid in _runner_pids(server)}
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as handle:
                parent = handle.read().rsplit(")", 1)[1].split()[1]
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                template = b"mfprefect.runtime.zygote\0--template" in handle.read()
        except (OSError, IndexError):
            continue
        if parent in runners and template:
            found.append(int(entry))
    return found


def _runner_pid(server: dict[str, str]) -> int:
    pids = _runner_pids(server)
    assert len(pids) == 1, pids
    return pids[0]


def _run_id(text: str) -> str:
    match = re.search(r"Metaflow run FaultFlow/(prefect-[0-9a-f]+)", text)
    assert match, text[-3000:]
    return match.group(1)


pytestmark = pytest.mark.slow


def test_command_never_imports_prefect_and_reuses_the_runner(
    server: dict[str, str], tmp_path: Path
) -> None:
    env = _env(server, tmp_path)
    command = [sys.executable, "-X", "importtime", str(FAULT_FLOW), "--no-pylint"]
    first = run([*command, "prefect", "run"], env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    imported = [line for line in first.stderr.splitlines() if line.startswith("import time:")]
    assert any(re.search(r"\|\s+metaflow$", line) for line in imported)  # the check can see
    assert not [line for line in imported if re.search(r"\|\s+prefect(\.|$)", line)]
    runner = _runner_pid(server)
    second = flow_cli(FAULT_FLOW, "prefect", "run", env=env, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert _runner_pid(server) == runner
    assert _ran(tmp_path) == sorted(["start", "body0", "body1", "body2", "join", "end"] * 2)
    # The steps were forked from the zygote, not started as fresh interpreters.
    dumped = _dump(f"FaultFlow/{_run_id(second.stderr)}", env)
    assert all(
        "mfprefect.runtime.zygote" in t["data"]["orig_argv"] for t in dumped["steps"]["body"]
    )


def test_runs_fork_their_zygotes_from_one_template_per_startup_environment(
    server: dict[str, str], tmp_path: Path
) -> None:
    """Metaflow is imported once per startup environment, not once per run: each run's zygote
    is forked from the runner's template for that environment (runtime/templates.py)."""

    def lineage(env: dict[str, str]) -> tuple[set[int], set[int]]:
        (tmp_path / "ran").unlink(missing_ok=True)
        result = flow_cli(FAULT_FLOW, "prefect", "run", env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        lines = [line.split() for line in (tmp_path / "ran").read_text().splitlines()]
        assert len(lines) == 6
        return {int(line[2]) for line in lines}, {int(line[3]) for line in lines}

    env = _env(server, tmp_path)
    zygotes_1, templates_1 = lineage(env)
    zygotes_2, templates_2 = lineage(env)
    # One zygote per run, both forked by the same template, a child of the runner.
    assert len(zygotes_1) == 1 and len(zygotes_2) == 1 and zygotes_1 != zygotes_2
    assert templates_1 == templates_2 and len(templates_1) == 1
    (template,) = templates_1
    assert template in _template_pids(server)
    # A variable Metaflow reads at import makes (and then reuses) a template of its own.
    other = dict(env, METAFLOW_MFPREFECT_TEST_TEMPLATE="1")
    _, templates_3 = lineage(other)
    _, templates_4 = lineage(other)
    assert templates_3 == templates_4 and templates_3 != templates_1
    assert _alive(template)


def test_python_python3_and_the_mfprefect_script_share_one_runner(
    server: dict[str, str], tmp_path: Path
) -> None:
    """One runner per installation: the same virtualenv reached through `python`, `python3` and
    the `mfprefect` script (different paths to one interpreter) is served by one runner."""
    import shutil

    from conftest import EXAMPLES

    env = _env(server, tmp_path)
    for name in ("linear_flow.py", "linear_flow.yaml"):
        shutil.copy(EXAMPLES / name, tmp_path / name)
    bin_dir = Path(sys.executable).parent
    commands = [
        [str(bin_dir / "python"), "linear_flow.py", "--no-pylint", "prefect", "run"],
        [str(bin_dir / "python3"), "linear_flow.py", "--no-pylint", "prefect", "run"],
        [str(bin_dir / "mfprefect"), "run", "linear_flow.yaml"],
    ]
    runners = set()
    for command in commands:
        assert Path(command[0]).exists(), command[0]
        done = run(command, env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        runners.add(_runner_pid(server))  # exactly one runner alive, every time
    assert len(runners) == 1


def _ancestors(pid: int) -> list[int]:
    chain = []
    while pid > 1:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                pid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            break
        chain.append(pid)
    return chain


def test_runs_from_two_terminals_run_at_once_and_ctrl_c_stops_only_its_own(
    server: dict[str, str], tmp_path: Path
) -> None:
    """Each command's run is a child of the one runner (no busy fallback to the command's own
    process), both run at the same time, and Ctrl-C in one terminal stops that run's steps only."""
    flow = HERE / "flows" / "sleep_flow.py"
    commands, naps = [], []
    for name in ("one", "two"):
        folder = tmp_path / name
        (folder / "pids").mkdir(parents=True)
        env = _env(server, folder, SLEEP_PID_DIR=str(folder / "pids"), SLEEP_SECONDS="300")
        commands.append(
            subprocess.Popen(
                [sys.executable, str(flow), "--no-pylint", "prefect", "run"],
                env=env,
                cwd=folder,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a terminal of its own: Ctrl-C reaches only it
            )
        )
        naps.append(folder / "pids")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(
            (d / "a").exists() and (d / "b").exists() for d in naps
        ):
            time.sleep(0.2)
        steps = [
            [int((d / n).read_text().split()[0]) for n in ("a", "b")] for d in naps
        ]  # both runs are napping now: at the same time
        runner = _runner_pid(server)
        for command, pids in zip(commands, steps, strict=True):
            for pid in pids:
                chain = _ancestors(pid)
                # Under the runner, not under the command (which may have started the runner).
                assert runner in chain, (pid, chain)
                assert command.pid not in chain[: chain.index(runner)], (pid, chain)
        commands[0].send_signal(signal.SIGINT)
        out, _ = commands[0].communicate(timeout=60)
        assert commands[0].returncode == 3, out.decode()[-2000:]
        assert _wait_gone(steps[0]) == []
        assert all(_alive(pid) for pid in steps[1]), "the other terminal's run was stopped"
        assert commands[1].poll() is None
    finally:
        for command in commands:
            if command.poll() is None:
                command.send_signal(signal.SIGINT)
                command.communicate(timeout=60)
    assert _wait_gone([p for pids in steps for p in pids]) == []


def _flow_run_logs(server: dict[str, str], output: str) -> int:
    match = re.search(r"/runs/flow-run/([0-9a-f-]{36})", output)
    assert match, output[-3000:]
    return len(all_logs({"PREFECT_API_URL": server["_API_URL"]}, [match.group(1)]))


def test_a_run_takes_the_prefect_settings_of_its_own_folder(
    server: dict[str, str], tmp_path: Path
) -> None:
    """The runner built its Prefect settings once, in its own folder; a run from a folder
    whose prefect.toml says otherwise gets that folder's settings (runtime/prefect_settings.py),
    and the next run from a plain folder gets the runner's again."""
    quiet, plain = tmp_path / "quiet", tmp_path / "plain"
    for folder in (quiet, plain):
        folder.mkdir()
    (quiet / "prefect.toml").write_text("[logging.to_api]\nenabled = false\n")
    outputs = {}
    for folder in (quiet, plain):
        result = flow_cli(FAULT_FLOW, "prefect", "run", env=_env(server, folder), cwd=folder)
        assert result.returncode == 0, result.stderr[-3000:]
        outputs[folder] = result.stderr
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _flow_run_logs(server, outputs[plain]) == 0:
        time.sleep(0.5)
    assert _flow_run_logs(server, outputs[plain]) > 0
    # By now the quiet run's logs would have arrived too, had it sent any.
    assert _flow_run_logs(server, outputs[quiet]) == 0


def test_a_step_that_changes_metaflow_settings_gets_a_fresh_interpreter(
    server: dict[str, str], tmp_path: Path
) -> None:
    env = _env(server, tmp_path)
    manifest = tmp_path / "fault.yaml"
    exported = flow_cli(FAULT_FLOW, "prefect", "export", str(manifest), env=env)
    assert exported.returncode == 0, exported.stderr
    text = manifest.read_text()
    marker = "  body:\n"
    assert marker in text
    manifest.write_text(
        text.replace(marker, marker + "    environment:\n      METAFLOW_DEBUG_MARK: '1'\n", 1)
    )
    result = mfprefect("run", str(manifest), env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    dumped = _dump(f"FaultFlow/{_run_id(result.stderr)}", env)
    argvs = [t["data"]["orig_argv"] for t in dumped["steps"]["body"]]
    assert argvs and all("fault_flow.py" in a and "zygote" not in a for a in argvs)
    assert all("zygote" in t["data"]["orig_argv"] for t in dumped["steps"]["start"])


@pytest.mark.parametrize(
    ("mode", "reason"),
    [("sigkill", "killed by signal 9"), ("exit0", "exited 0 but did not finish its task")],
)
def test_a_broken_step_fails_clearly_and_nothing_runs_after_it(
    server: dict[str, str], tmp_path: Path, mode: str, reason: str
) -> None:
    env = _env(server, tmp_path, FAULT_MODE=mode)
    result = flow_cli(FAULT_FLOW, "prefect", "run", env=env, cwd=tmp_path)
    assert result.returncode == 3, result.stderr[-3000:]
    # The command's verdict is its last line; Prefect's log lines above it carry Prefect's
    # own tracebacks.
    last = result.stderr.strip().splitlines()[-1]
    pattern = rf"mfprefect: step failed: FaultFlow/prefect-[0-9a-f]+/body/t\d+: {reason}"
    assert re.fullmatch(pattern, last), result.stderr[-3000:]
    assert "join" not in _ran(tmp_path) and "end" not in _ran(tmp_path)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs for the datastore (root only: CI's containers run as root)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_datastore_disk_fails_the_step_clearly(
    server: dict[str, str], tmp_path: Path, small_disk: Path
) -> None:
    env = _env(server, tmp_path, FAULT_MODE="disk", datastore=str(small_disk))
    result = flow_cli(FAULT_FLOW, "prefect", "run", env=env, cwd=tmp_path)
    assert result.returncode == 3, result.stderr[-3000:]
    assert re.search(
        r"step failed: FaultFlow/prefect-[0-9a-f]+/body/t\d+: exited with code", result.stderr
    )
    assert "No space left on device" in result.stderr
    assert "join" not in _ran(tmp_path) and "end" not in _ran(tmp_path)


def _start_hanging_run(
    env: dict[str, str], tmp_path: Path
) -> tuple[subprocess.Popen[bytes], list[int], Path]:
    output = tmp_path / "command-output"
    with open(output, "wb") as sink:
        command = subprocess.Popen(
            [sys.executable, str(FAULT_FLOW), "--no-pylint", "prefect", "run"],
            env=env,
            cwd=tmp_path,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    pids_file = tmp_path / "pids"
    deadline = time.monotonic() + 90
    while not pids_file.exists() and time.monotonic() < deadline:
        assert command.poll() is None, output.read_text()[-3000:]
        time.sleep(0.2)
    assert pids_file.exists(), output.read_text()[-3000:]
    time.sleep(0.5)  # body0 and body2 finish (they do nothing)
    return command, [int(p) for p in pids_file.read_text().split()], output


def _resume_finishes(env: dict[str, str], tmp_path: Path, run_id: str) -> None:
    (tmp_path / "ran").unlink()
    resumed = flow_cli(
        FAULT_FLOW, "prefect", "resume", "--clone-run-id", run_id, env=env, cwd=tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # Only the interrupted item and what follows it ran again; the rest was cloned.
    assert _ran(tmp_path) == ["body1", "end", "join"]


def test_killing_the_command_stops_every_step_and_resume_finishes(
    server: dict[str, str], tmp_path: Path
) -> None:
    env = _env(server, tmp_path, FAULT_MODE="hang", MFP_TEST_MARK=str(tmp_path))
    command, step_pids, output = _start_hanging_run(env, tmp_path)
    # While the runner has the run, the command waits as a small stdlib-only Python.
    with open(f"/proc/{command.pid}/cmdline", "rb") as handle:
        argv = handle.read().split(b"\0")
    assert argv[1:3] == [b"-I", b"-S"] and argv[3].endswith(b"mfprefect/runtime/waiter.py")
    command.send_signal(signal.SIGKILL)
    command.wait()
    assert not _wait_gone(step_pids), "a step process outlived the command"
    assert not _wait_gone(_processes_with(f"MFP_TEST_MARK={tmp_path}", server))
    env.pop("FAULT_MODE")
    _resume_finishes(env, tmp_path, _run_id(output.read_text()))


def test_ctrl_c_stops_the_run_and_its_steps(server: dict[str, str], tmp_path: Path) -> None:
    env = _env(server, tmp_path, FAULT_MODE="hang", MFP_TEST_MARK=str(tmp_path))
    command, step_pids, output = _start_hanging_run(env, tmp_path)
    command.send_signal(signal.SIGINT)
    assert command.wait(timeout=30) == 3
    text = output.read_text()
    assert text.strip().splitlines()[-2:] == [
        "mfprefect: interrupted: the run's steps were stopped",
        "`resume` the run to finish it",
    ]
    assert "Traceback" not in text.split("interrupted; stopping")[-1]
    # The command waited for the steps to be stopped before it returned.
    assert not [p for p in step_pids if _alive(p)]
    assert not _wait_gone(_processes_with(f"MFP_TEST_MARK={tmp_path}", server))


def test_killing_the_runner_mid_run_fails_clearly_and_resume_finishes(
    server: dict[str, str], tmp_path: Path
) -> None:
    env = _env(server, tmp_path, FAULT_MODE="hang", MFP_TEST_MARK=str(tmp_path))
    command, step_pids, output = _start_hanging_run(env, tmp_path)
    # The runner runs the pipeline in its own process: kill it outright.
    os.kill(_runner_pid(server), signal.SIGKILL)
    assert command.wait(timeout=30) == 3
    text = output.read_text()
    assert "the local runner stopped before the run finished" in text, text[-3000:]
    assert not _wait_gone(step_pids), "a step process outlived the runner"
    assert not _wait_gone(_processes_with(f"MFP_TEST_MARK={tmp_path}", server))
    env.pop("FAULT_MODE")
    _resume_finishes(env, tmp_path, _run_id(text))


def test_an_idle_runner_exits_by_itself(server: dict[str, str], tmp_path: Path) -> None:
    home = tmp_path / "other-home"
    home.mkdir()
    env = _env(
        server,
        tmp_path,
        MFPREFECT_HOME=str(home),
        PREFECT_API_URL=server["_API_URL"],
        # Long enough to list its template before it goes, short enough to wait for.
        MFPREFECT_RUNNER_IDLE_SECONDS="4",
    )
    result = flow_cli(FAULT_FLOW, "prefect", "run", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    pid_files = list((home / "runner").glob("*.pid"))
    assert len(pid_files) == 1
    pid = int(pid_files[0].read_text())
    templates = _template_pids({"MFPREFECT_HOME": str(home)})
    assert len(templates) == 1, templates
    assert not _wait_gone([pid], timeout=15), "the idle runner did not exit"
    assert not _wait_gone(templates), "the runner's zygote template outlived it"
    assert not pid_files[0].exists()
