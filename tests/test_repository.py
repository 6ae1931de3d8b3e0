"""Sorting a repository's files for the pre-commit hooks: mfprefect/repository.py, and the two
commands the hooks run (`validate --skip-non-manifests`, `export --check PATH...`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import EXAMPLES, mfprefect

from mfprefect import repository
from mfprefect.cli import cli
from mfprefect.repository import ExportCheck, NotCheckable, export_checks

CI_CONFIG = "on: push\njobs:\n  test:\n    runs-on: ubuntu-latest\n"


def manifest_text(flow_file: str, name: str = "LinearFlow") -> str:
    return f"apiVersion: mfprefect/v1\nkind: Pipeline\nmetadata:\n  name: {name}\nflow:\n  file: {flow_file}\n"


@pytest.mark.parametrize(
    "text",
    [
        manifest_text("a.py"),
        "apiVersion: 'mfprefect/v1'\n",
        '"apiVersion": "mfprefect/v2"\n',  # an unknown version is a manifest, for validate to refuse
        "{apiVersion: mfprefect/v1, kind: Pipeline}\n",
        # Broken YAML, but plainly a manifest: validate must get to report it.
        "apiVersion: mfprefect/v1\nsteps: [\n",
        "apiVersion: mfprefect/v1\nkind: Pipeline\nkind: Pipeline\n",
    ],
)
def test_declares_manifest(text: str) -> None:
    assert repository.declares_manifest(text)


@pytest.mark.parametrize(
    "text",
    [
        CI_CONFIG,
        "apiVersion: apps/v1\nkind: Deployment\n",
        "metadata:\n  apiVersion: mfprefect/v1\n",  # not at the top level
        "- apiVersion: mfprefect/v1\n",
        "# apiVersion: mfprefect/v1\nfoo: 1\n",
        "apiVersion: 1\n",
        "",
        "!!python/object:os.system {}\n",
        "key: !Ref Other\n",  # CloudFormation-style tags: someone else's YAML
    ],
)
def test_does_not_declare_manifest(text: str) -> None:
    assert not repository.declares_manifest(text)


def test_named_flow_file() -> None:
    assert repository.named_flow_file(manifest_text("../flows/a.py")) == "../flows/a.py"
    assert repository.named_flow_file("apiVersion: mfprefect/v1\nflow: {}\n") is None
    assert repository.named_flow_file("apiVersion: mfprefect/v1\nflow: a.py\n") is None
    assert repository.named_flow_file("apiVersion: mfprefect/v1\nsteps: [\n") is None


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """pipelines/{a,b}.py with a.yaml (and a-prod.yaml) naming a.py, b.yaml naming b.py,
    flows/c.py named by manifests/c.yaml, and YAML and Python that are not pipelines."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "flows").mkdir()
    (tmp_path / "manifests").mkdir()
    for name in ("pipelines/a.py", "pipelines/b.py", "pipelines/helpers.py", "flows/c.py"):
        (tmp_path / name).write_text("# a flow\n")
    (tmp_path / "pipelines/a.yaml").write_text(manifest_text("a.py"))
    (tmp_path / "pipelines/a-prod.yml").write_text(manifest_text("./a.py", "Prod"))
    (tmp_path / "pipelines/b.yaml").write_text(manifest_text("b.py"))
    (tmp_path / "pipelines/ci.yaml").write_text(CI_CONFIG)
    (tmp_path / "manifests/c.yaml").write_text(manifest_text("../flows/c.py"))
    return tmp_path


def test_manifest_pairs_with_the_flow_it_names_relative_to_itself(repo: Path) -> None:
    selection = export_checks(["manifests/c.yaml"])
    assert selection.checks == [ExportCheck("flows/c.py", "manifests/c.yaml")]
    assert selection.skipped == [] and selection.problems == []


def test_flow_file_pairs_with_the_manifests_beside_it_that_name_it(repo: Path) -> None:
    selection = export_checks(["pipelines/a.py"])
    assert selection.checks == [
        ExportCheck("pipelines/a.py", "pipelines/a-prod.yml"),
        ExportCheck("pipelines/a.py", "pipelines/a.yaml"),
    ]
    # Only manifests beside the flow: manifests/c.yaml is not looked at for flows/c.py.
    assert export_checks(["flows/c.py"]).checks == []
    assert export_checks(["flows/c.py"]).skipped == ["flows/c.py"]


def test_folder_means_every_manifest_in_it(repo: Path) -> None:
    selection = export_checks(["pipelines"])
    assert selection.checks == [
        ExportCheck("pipelines/a.py", "pipelines/a-prod.yml"),
        ExportCheck("pipelines/a.py", "pipelines/a.yaml"),
        ExportCheck("pipelines/b.py", "pipelines/b.yaml"),
    ]
    assert selection.skipped == []  # a folder's other YAML is not worth a mention


def test_what_pre_commit_passes_each_pair_once(repo: Path) -> None:
    """pre-commit hands over every changed file: a flow and its manifest are one check."""
    changed = [
        "pipelines/a.yaml",
        "pipelines/a.py",
        "pipelines/helpers.py",
        "pipelines/ci.yaml",
        "./pipelines/a.yaml",
    ]
    selection = export_checks(changed)
    assert selection.checks == [
        ExportCheck("pipelines/a.py", "pipelines/a.yaml"),
        ExportCheck("pipelines/a.py", "pipelines/a-prod.yml"),
    ]
    assert selection.skipped == ["pipelines/helpers.py", "pipelines/ci.yaml"]


def test_paths_keep_the_form_given(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(repo / "pipelines")
    assert export_checks(["b.py"]).checks == [ExportCheck("b.py", "b.yaml")]
    assert export_checks(["../manifests"]).checks == [
        ExportCheck("../flows/c.py", "../manifests/c.yaml")
    ]
    absolute = str(repo / "pipelines" / "b.yaml")
    assert export_checks([absolute]).checks == [ExportCheck(str(repo / "pipelines/b.py"), absolute)]


def test_manifest_without_its_flow_is_a_problem(repo: Path) -> None:
    (repo / "pipelines/b.py").unlink()
    (repo / "pipelines/broken.yaml").write_text("apiVersion: mfprefect/v1\nsteps: [\n")
    selection = export_checks(["pipelines/b.yaml", "pipelines/broken.yaml"])
    assert selection.checks == []
    assert selection.problems == [
        "pipelines/b.yaml: its flow file pipelines/b.py does not exist",
        "pipelines/broken.yaml: names no flow file (flow.file); run `mfprefect validate pipelines/broken.yaml`",
    ]


@pytest.mark.parametrize(("path", "message"), [("nope.py", "no such file"), ("notes.txt", "not a")])
def test_other_paths_are_not_checkable(repo: Path, path: str, message: str) -> None:
    (repo / "notes.txt").write_text("hello\n")
    with pytest.raises(NotCheckable, match=message):
        export_checks([path])


# ---------------------------------------------------------------------------------------------
# validate --skip-non-manifests


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The linear example (flow and manifest) beside a CI config and a Kubernetes manifest."""
    monkeypatch.chdir(tmp_path)
    for name in ("linear_flow.py", "linear_flow.yaml"):
        shutil.copy(EXAMPLES / name, tmp_path / name)
    (tmp_path / "ci.yaml").write_text(CI_CONFIG)
    (tmp_path / "k8s.yml").write_text("apiVersion: apps/v1\nkind: Deployment\n")
    return tmp_path


def test_validate_skips_non_manifests_and_counts_them(project: Path) -> None:
    result = CliRunner().invoke(
        cli, ["validate", "--skip-non-manifests", "ci.yaml", "linear_flow.yaml", "k8s.yml"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert result.stderr == "linear_flow.yaml: valid, 2 skipped (not mfprefect manifests)\n"


def test_validate_skips_in_folders_too(project: Path) -> None:
    result = CliRunner().invoke(cli, ["validate", "--skip-non-manifests", "."])
    assert result.exit_code == 0, result.output
    assert result.stderr == "linear_flow.yaml: valid, 2 skipped (not mfprefect manifests)\n"


def test_validate_without_the_flag_checks_every_file(project: Path) -> None:
    result = CliRunner().invoke(cli, ["validate", "ci.yaml", "linear_flow.yaml"])
    assert result.exit_code == 1
    assert (
        "ci.yaml:1:1: error[schema.required] missing required field `apiVersion`" in result.stdout
    )
    assert result.stderr.endswith(" warning(s) in 2 file(s)\n")


def test_validate_skip_still_reports_broken_manifests(project: Path) -> None:
    text = (project / "linear_flow.yaml").read_text()
    (project / "linear_flow.yaml").write_text(
        text.replace("    kind: end\n", "    kind: end\n    retriez: 2\n")
    )
    (project / "half.yaml").write_text("apiVersion: mfprefect/v1\nsteps: [\n")
    result = CliRunner().invoke(cli, ["validate", "--skip-non-manifests", "."])
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith("half.yaml:3:1: error[yaml] ")
    assert lines[1].startswith("linear_flow.yaml:27:5: error[schema.unknown-field] ")
    assert "did you mean `retries`" in lines[1]
    assert result.stderr == (
        "2 error(s), 0 warning(s) in 2 file(s), 2 skipped (not mfprefect manifests)\n"
    )


def test_validate_with_nothing_but_other_yaml(project: Path) -> None:
    result = CliRunner().invoke(cli, ["validate", "--skip-non-manifests", "ci.yaml", "k8s.yml"])
    assert result.exit_code == 0, result.output
    assert result.stderr == "0 manifests valid, 2 skipped (not mfprefect manifests)\n"


# ---------------------------------------------------------------------------------------------
# export --check PATH... (each check runs the flow in a real Python process)


def test_export_check_of_a_pre_commit_file_list(
    project: Path, metaflow_env: dict[str, str]
) -> None:
    (project / "sub").mkdir()
    for name in ("linear_flow.py", "linear_flow.yaml"):
        shutil.copy(project / name, project / "sub" / name)
    (project / "helpers.py").write_text("X = 1\n")
    result = mfprefect(
        "export",
        "--check",
        "linear_flow.py",
        "linear_flow.yaml",
        "ci.yaml",
        "helpers.py",
        "sub",
        env=metaflow_env,
        cwd=project,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "linear_flow.yaml is up to date\nsub/linear_flow.yaml is up to date\n"
    assert result.stderr.splitlines()[-1] == (
        "2 of 2 manifest(s) up to date, 2 file(s) skipped (not manifests, or no manifest names them)"
    )


def test_export_check_names_the_stale_manifest_and_its_flow_as_given(
    project: Path, metaflow_env: dict[str, str]
) -> None:
    (project / "pipelines").mkdir()
    for name in ("linear_flow.py", "linear_flow.yaml"):
        shutil.move(project / name, project / "pipelines" / name)
    flow = project / "pipelines" / "linear_flow.py"
    flow.write_text(flow.read_text().replace("Set the initial value.", "Set the first value."))
    result = mfprefect(
        "export", "--check", "pipelines/linear_flow.py", env=metaflow_env, cwd=project
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "pipelines/linear_flow.yaml is out of date: run "
        "`python pipelines/linear_flow.py prefect export pipelines/linear_flow.yaml`",
        "0 of 1 manifest(s) up to date",
    ]
    assert str(project) not in result.stderr


def test_export_check_manifest_without_flow_and_bad_paths(
    project: Path, metaflow_env: dict[str, str]
) -> None:
    (project / "linear_flow.py").unlink()
    missing = mfprefect("export", "--check", "linear_flow.yaml", env=metaflow_env, cwd=project)
    assert missing.returncode == 1
    assert missing.stderr.splitlines() == [
        "mfprefect: error: linear_flow.yaml: its flow file linear_flow.py does not exist",
        "no manifests to check",
    ]
    nothing = mfprefect("export", "--check", "ci.yaml", env=metaflow_env, cwd=project)
    assert nothing.returncode == 0, nothing.stderr
    assert nothing.stderr.splitlines() == [
        "no manifests to check, 1 file(s) skipped (not manifests, or no manifest names them)"
    ]
    usage = mfprefect("export", "--check", "nope.yaml", env=metaflow_env, cwd=project)
    assert usage.returncode == 2
    assert usage.stderr.splitlines()[0] == "mfprefect: error: no such file or folder: nope.yaml"
    two = mfprefect("export", "a.py", "b.py", env=metaflow_env, cwd=project)
    assert two.returncode == 2
    assert "export takes one flow file, not 2" in two.stderr


def test_workspace_manifests_have_no_flow_and_are_passed_over(tmp_path: Path) -> None:
    shutil.copy(EXAMPLES / "workspace" / "gpu-pool.yaml", tmp_path / "pool.yaml")
    chosen = export_checks([str(tmp_path), str(tmp_path / "pool.yaml")])
    assert chosen.checks == [] and chosen.problems == []
    assert chosen.skipped == [str(tmp_path / "pool.yaml")]
