"""Export from real Metaflow flows: golden manifests, determinism, in-place re-export, errors."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

import pytest
from conftest import EXAMPLES, flow_cli, mfprefect, run
from ruamel.yaml import YAML

from mfprefect.manifest import check_file, load

EXAMPLE_FLOWS = sorted(EXAMPLES.glob("*_flow.py"))
REGENERATE = os.environ.get("MFPREFECT_REGENERATE") == "1"

pytestmark = pytest.mark.slow


def _yaml_data(text: str) -> dict:
    return YAML(typ="safe").load(text)


@pytest.mark.parametrize("flow", EXAMPLE_FLOWS, ids=lambda p: p.stem)
def test_committed_manifest_is_current(flow: Path, metaflow_env: dict[str, str]) -> None:
    """Golden files: each example's committed manifest is exactly what export writes today."""
    manifest = flow.with_suffix(".yaml")
    if REGENERATE:
        result = flow_cli(flow, "prefect", "export", str(manifest), env=metaflow_env)
        assert result.returncode == 0, result.stderr
    result = flow_cli(flow, "prefect", "export", str(manifest), "--check", env=metaflow_env)
    assert result.returncode == 0, (
        f"{manifest.name} is stale (MFPREFECT_REGENERATE=1 rewrites it)\n{result.stderr}"
    )
    assert [d for d in check_file(str(manifest))[1]] == []


@pytest.mark.parametrize("flow", EXAMPLE_FLOWS, ids=lambda p: p.stem)
def test_export_is_deterministic_and_private(
    flow: Path, metaflow_env: dict[str, str], tmp_path: Path
) -> None:
    """Same bytes twice, from another working directory, with no user, host or absolute path."""
    first = flow_cli(flow, "prefect", "export", "-", env=metaflow_env, cwd=EXAMPLES)
    other_env = dict(metaflow_env, USER="someone-else")
    second = flow_cli(flow, "prefect", "export", "-", env=other_env, cwd=EXAMPLES)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    assert first.stdout == flow.with_suffix(".yaml").read_text()
    for private in {
        str(EXAMPLES),
        str(tmp_path),
        socket.gethostname(),
        metaflow_env["USER"],
        "someone-else",
    }:
        assert private not in first.stdout


def test_exported_fields_reflect_the_code(metaflow_env: dict[str, str]) -> None:
    params = load(str(EXAMPLES / "parameters_flow.yaml")).parameters
    assert params["learning-rate"].type == "float" and params["learning-rate"].default == 0.01
    assert params["dataset"].required is True and params["dataset"].default is None
    assert params["settings"].type == "json" and params["settings"].default == {"k": [1, 2]}
    assert params["computed"].default == "computed"  # deploy-time callable evaluated
    assert params["verbose"].type == "bool" and params["verbose"].default is False
    catch = load(str(EXAMPLES / "catch_flow.yaml")).steps
    assert catch["flaky"].retries is not None and catch["flaky"].retries.times == 1
    assert catch["compute"].catch_var == "compute_failed"
    assert load(str(EXAMPLES / "timeout_flow.yaml")).steps["work"].timeout_seconds == 120
    res = load(str(EXAMPLES / "resources_flow.yaml")).steps["gpu"].resources
    assert res is not None and (res.cpu, res.memory, res.gpu, res.disk) == (1, 1024, 1, 2048)
    sched = load(str(EXAMPLES / "schedule_flow.yaml")).schedule
    assert sched is not None and (sched.cron, sched.timezone) == ("0 6 * * *", "Europe/Amsterdam")
    trig = load(str(EXAMPLES / "trigger_flow.yaml")).triggers[0]
    assert (
        trig.kind == "event"
        and trig.event == "data.ready"
        and dict(trig.parameters) == {"path": "file_path"}
    )
    loop = load(str(EXAMPLES / "switch_loop_flow.yaml")).steps["loop"]
    assert loop.kind == "switch" and dict(loop.cases) == {"again": "loop", "done": "end"}
    custom = load(str(EXAMPLES / "custom_names_flow.yaml"))
    assert (custom.start_step, custom.end_step) == ("begin", "finish")
    single = load(str(EXAMPLES / "single_step_flow.yaml"))
    assert list(single.steps) == ["only"] and single.start_step == single.end_step == "only"
    config = load(str(EXAMPLES / "config_flow.yaml")).configs
    assert config["settings"]["model"]["depth"] == 3


def test_export_options_and_overrides(metaflow_env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "m.yaml"
    result = flow_cli(
        EXAMPLES / "project_flow.py",
        "--with",
        "retry:times=2",
        "--branch",
        "feature",
        "prefect",
        "export",
        str(out),
        "--name",
        "nightly",
        "--work-pool",
        "pool-a",
        "--tag",
        "team:ml",
        "--tag",
        "tier1",
        "--workflow-timeout",
        "3600",
        env=metaflow_env,
    )
    assert result.returncode == 0, result.stderr
    manifest = load(str(out))
    assert manifest.project is not None and manifest.project.branch == "test.feature"
    assert manifest.deployment.name == "nightly" and manifest.deployment.work_pool == "pool-a"
    assert (
        manifest.deployment.tags == ("team:ml", "tier1")
        and manifest.deployment.timeout_seconds == 3600
    )
    start = manifest.steps["start"]
    assert start.retries is not None and start.retries.times == 2
    assert start.with_ == ("retry:times=2,minutes_between_retries=2",)
    assert manifest.flow_file == os.path.relpath(EXAMPLES / "project_flow.py", tmp_path)

    prod = flow_cli(
        EXAMPLES / "project_flow.py", "--production", "prefect", "export", "-", env=metaflow_env
    )
    assert _yaml_data(prod.stdout)["flow"]["project"] == {
        "name": "demo_project",
        "branch": "prod",
        "production": True,
    }

    override = flow_cli(
        EXAMPLES / "config_flow.py",
        "--config-value",
        "data",
        '{"source": {"table": "t2", "limit": 5}}',
        "prefect",
        "export",
        "-",
        env=metaflow_env,
    )
    assert override.returncode == 0, override.stderr
    assert _yaml_data(override.stdout)["configs"]["data"]["value"] == {
        "source": {"table": "t2", "limit": 5}
    }


def test_standalone_export_matches_metaflow_form(
    metaflow_env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "a.yaml"
    result = mfprefect(
        "export",
        str(EXAMPLES / "switch_flow.py"),
        "-o",
        str(out),
        "--work-pool",
        "p",
        env=metaflow_env,
    )
    assert result.returncode == 0, result.stderr
    direct = flow_cli(
        EXAMPLES / "switch_flow.py",
        "prefect",
        "export",
        "-",
        "--work-pool",
        "p",
        env=metaflow_env,
        cwd=tmp_path,
    )
    assert out.read_text() == direct.stdout
    check = mfprefect(
        "export",
        str(EXAMPLES / "switch_flow.py"),
        "-o",
        str(out),
        "--check",
        "--work-pool",
        "p",
        env=metaflow_env,
    )
    assert check.returncode == 0, check.stderr
    assert mfprefect("export", str(tmp_path / "nope.py"), env=metaflow_env).returncode == 2


COMMENTED = """\
# Owned by the data platform team.
apiVersion: mfprefect/v1
kind: Pipeline
metadata:
  name: LinearFlow
  labels: {team: ml}  # who to page
"""


def test_reexport_keeps_comments_and_user_fields(
    metaflow_env: dict[str, str], tmp_path: Path
) -> None:
    flow = tmp_path / "linear_flow.py"
    shutil.copy(EXAMPLES / "linear_flow.py", flow)
    manifest = tmp_path / "linear_flow.yaml"
    assert flow_cli(flow, "prefect", "export", str(manifest), env=metaflow_env).returncode == 0
    text = manifest.read_text()
    text = text.replace("  labels: {}\n", "  labels:\n    team: ml  # who to page\n")
    text = text.replace("  work_pool: null\n", "  work_pool: gpu-pool  # set by platform\n")
    text = text.replace(
        "  paused: false\n", "  paused: false\n  unmanaged: [paused]  # ops own it\n"
    )
    text = text.replace(
        "schedule: null\n",
        "# nightly, agreed with ops\nschedule:\n  cron: 0 2 * * *\n  timezone: UTC\n",
    )
    text = text.replace(
        "    next: [middle]\n",
        "    next: [middle]\n    timeout_seconds: 5  # hand edit of a code-derived field\n",
    )
    text = text.replace("  middle:\n", "  # the heavy step\n  middle:\n")
    manifest.write_text(text)

    stale = flow_cli(flow, "prefect", "export", str(manifest), "--check", env=metaflow_env)
    assert stale.returncode == 1 and "out of date" in stale.stderr

    # The code changes: a new step between middle and end.
    source = flow.read_text()
    source = source.replace("self.next(self.end)", "self.next(self.extra)", 1)
    source = source.replace(
        "    @step\n    def end(self):",
        '    @step\n    def extra(self):\n        """A new step."""\n        self.next(self.end)\n\n    @step\n    def end(self):',
    )
    flow.write_text(source)
    assert flow_cli(flow, "prefect", "export", str(manifest), env=metaflow_env).returncode == 0
    after = manifest.read_text()
    assert "team: ml  # who to page" in after
    assert "work_pool: gpu-pool  # set by platform" in after
    assert "  unmanaged: [paused]  # ops own it\n" in after
    assert "# nightly, agreed with ops" in after and "cron: 0 2 * * *" in after
    assert "# the heavy step" in after
    assert "timeout_seconds: 5" not in after  # code-derived: restored from the code
    data = _yaml_data(after)
    assert list(data["steps"]) == ["start", "middle", "extra", "end"]
    assert data["steps"]["middle"]["next"] == ["extra"]
    assert check_file(str(manifest))[1] == []
    assert (
        flow_cli(flow, "prefect", "export", str(manifest), "--check", env=metaflow_env).returncode
        == 0
    )


UNSUPPORTED = """\
from metaflow import FlowSpec, step, batch, parallel


class BadFlow(FlowSpec):
    @batch(cpu=1)
    @step
    def start(self):
        self.next(self.train, num_parallel=2)

    @parallel
    @step
    def train(self):
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    BadFlow()
"""


def test_unsupported_decorators_fail_naming_each_step(
    metaflow_env: dict[str, str], tmp_path: Path
) -> None:
    flow = tmp_path / "bad_flow.py"
    flow.write_text(UNSUPPORTED)
    # With the local datastore Metaflow's own @batch check fails first; on s3 ours runs.
    env = dict(metaflow_env, METAFLOW_DATASTORE_SYSROOT_S3="s3://bucket/prefix")
    result = flow_cli(flow, "--datastore", "s3", "prefect", "export", "-", env=env)
    assert result.returncode == 1
    assert "step `start`: @batch" in result.stderr
    assert "step `start`: self.next(..., num_parallel=...)" in result.stderr
    assert "step `train`: @parallel" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_conda_and_pypi_are_refused_naming_the_uv_environment(
    metaflow_env: dict[str, str], tmp_path: Path
) -> None:
    flow = tmp_path / "pypi_flow.py"
    flow.write_text(
        "from metaflow import FlowSpec, step, pypi\n\n"
        "class PypiFlow(FlowSpec):\n"
        "    @pypi(packages={'pyfiglet': '1.0.4'})\n"
        "    @step\n    def start(self):\n        self.next(self.end)\n\n"
        "    @step\n    def end(self):\n        pass\n\n"
        "if __name__ == '__main__':\n    PypiFlow()\n"
    )
    result = flow_cli(flow, "--environment", "pypi", "prefect", "export", "-", env=metaflow_env)
    assert result.returncode == 1 and result.stdout == ""
    said = result.stderr
    assert "flow `PypiFlow`: --environment=pypi is not built by mfprefect" in said
    assert "step `start`: @pypi environments are not built by mfprefect" in said
    assert "--environment=uv" in said and "Traceback" not in said


def test_exit_hook_is_refused(metaflow_env: dict[str, str], tmp_path: Path) -> None:
    flow = tmp_path / "hook_flow.py"
    flow.write_text(
        "from metaflow import FlowSpec, step, exit_hook\n\n"
        "def notify():\n    pass\n\n"
        "@exit_hook(on_success=[notify])\nclass HookFlow(FlowSpec):\n"
        "    @step\n    def start(self):\n        self.next(self.end)\n\n"
        "    @step\n    def end(self):\n        pass\n\n"
        "if __name__ == '__main__':\n    HookFlow()\n"
    )
    result = flow_cli(flow, "prefect", "export", "-", env=metaflow_env)
    assert result.returncode == 1 and "flow `HookFlow`: @exit_hook" in result.stderr


def test_flow_that_does_not_import_fails_with_its_own_error(
    metaflow_env: dict[str, str], tmp_path: Path
) -> None:
    flow = tmp_path / "broken_flow.py"
    flow.write_text("import no_such_module_here\n")
    result = mfprefect("export", str(flow), env=metaflow_env)
    assert result.returncode == 1
    assert "No module named 'no_such_module_here'" in result.stderr
    assert "mfprefect/" not in result.stderr  # no frame of ours


def test_secret_from_environment_becomes_a_reference(
    metaflow_env: dict[str, str], tmp_path: Path
) -> None:
    flow = tmp_path / "secret_flow.py"
    flow.write_text(
        "import os\nfrom metaflow import FlowSpec, step, environment\n\n"
        "class SecretFlow(FlowSpec):\n"
        "    @environment(vars={'API_TOKEN': os.environ.get('API_TOKEN', ''), 'MODE': 'x'})\n"
        "    @step\n    def start(self):\n        self.next(self.end)\n\n"
        "    @step\n    def end(self):\n        pass\n\n"
        "if __name__ == '__main__':\n    SecretFlow()\n"
    )
    env = dict(metaflow_env, API_TOKEN="s3cr3t-value-123")
    result = flow_cli(flow, "prefect", "export", "-", env=env)
    assert result.returncode == 0, result.stderr
    assert "s3cr3t-value-123" not in result.stdout + result.stderr
    assert _yaml_data(result.stdout)["steps"]["start"]["environment"] == {
        "API_TOKEN": {"env": "API_TOKEN"},
        "MODE": "x",
    }


def test_graph_renders_mermaid(metaflow_env: dict[str, str]) -> None:
    result = mfprefect("graph", str(EXAMPLES / "switch_loop_flow.yaml"), env=metaflow_env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "flowchart TD",
        '    s_start["start"]',
        '    s_loop{"loop (switch on status)"}',
        '    s_end(("end"))',
        "    s_start --> s_loop",
        '    s_loop -->|"again"| s_loop',
        '    s_loop -->|"done"| s_end',
    ]
    assert mfprefect(
        "graph", "--markdown", str(EXAMPLES / "linear_flow.yaml"), env=metaflow_env
    ).stdout.startswith("```mermaid\n")


def test_wheel_ships_the_schema(tmp_path: Path, metaflow_env: dict[str, str]) -> None:
    """A built, non-editable wheel validates against the schema packed inside it."""
    root = Path(__file__).resolve().parent.parent
    wheel_dir = tmp_path / "wheel"
    built = run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheel_dir),
            str(root),
        ],
        env=metaflow_env,
        timeout=300,
    )
    if built.returncode != 0:  # no hatchling in this environment: build in isolation
        built = run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(wheel_dir), str(root)],
            env=metaflow_env,
            timeout=300,
        )
    assert built.returncode == 0, built.stderr
    target = tmp_path / "site"
    wheel = next(wheel_dir.glob("mfprefect-*.whl"))
    installed = run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)],
        env=metaflow_env,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr
    assert (
        target / "metaflow_extensions" / "mfprefect" / "plugins" / "mfextinit_mfprefect.py"
    ).is_file()
    probe = (
        "import mfprefect.manifest as m, sys; "
        f"assert m.__file__.startswith({str(target)!r}), m.__file__; "
        f"assert str(m.schema_path()).startswith({str(target)!r}); "
        f"print(len(m.check_file({str(EXAMPLES / 'linear_flow.yaml')!r})[1]))"
    )
    result = run(
        [sys.executable, "-c", probe], env=dict(metaflow_env, PYTHONPATH=str(target)), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0"
