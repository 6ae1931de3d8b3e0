"""The hooks in .pre-commit-hooks.yaml, run by pre-commit itself in a scratch git repository.

The scratch repository uses this checkout the way any other repository would: `repo:` is a git
repository holding the working tree as it is now (committed into tmp), so the hook file, the
package's install and the commands are all under test. pre-commit builds the hooks' environment
once per module (PRE_COMMIT_HOME in tmp), installing mfprefect and its dependencies with pip.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import EXAMPLES, ROOT, flow_env

pytestmark = pytest.mark.slow

# What the hooks' environment needs of this checkout (pip builds it as it would a wheel).
PACKAGE_FILES = (
    ".pre-commit-hooks.yaml",
    "pyproject.toml",
    "README.md",
    "mfprefect",
    "metaflow_extensions",
    "schema",
)

CI_CONFIG = """\
on:
  push:
    branches: [main]
jobs:
  test:
    runs-on: ubuntu-latest
    steps:
      - run: pytest
"""


@dataclass(frozen=True)
class Hooks:
    repo: Path
    rev: str
    env: dict[str, str]


def git(*args: str, cwd: Path, env: dict[str, str]) -> str:
    command = ["git", "-c", "user.name=mfprefect tests", "-c", "user.email=tests@invalid"]
    command += ["-c", "commit.gpgsign=false", "-c", "init.defaultBranch=main", *args]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def pre_commit(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pre_commit", *args, "--color", "never"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def hooks(tmp_path_factory: pytest.TempPathFactory) -> Hooks:
    """This working tree as a committed hook repository, and an environment with its hooks built."""
    tmp = tmp_path_factory.mktemp("precommit")
    env = flow_env(tmp)
    env["PRE_COMMIT_HOME"] = str(tmp / "pre-commit-home")
    for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        env.pop(name, None)
    repo = tmp / "mfprefect-hooks"
    repo.mkdir()
    tracked = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z", *PACKAGE_FILES],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in filter(None, tracked.split("\0")):
        if (ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    git("init", "-q", cwd=repo, env=env)
    git("add", "-A", cwd=repo, env=env)
    git("commit", "-q", "-m", "mfprefect as it is being tested", cwd=repo, env=env)
    found = Hooks(repo, git("rev-parse", "HEAD", cwd=repo, env=env), env)
    # Build the hooks' environment once, here, so that a failure to install is reported as such.
    installing = scratch_repository(tmp / "install", found)
    installed = pre_commit("install-hooks", cwd=installing, env=env)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return found


def scratch_repository(path: Path, hooks: Hooks) -> Path:
    """A git repository with the linear example in pipelines/, a CI config, and our hooks."""
    (path / "pipelines").mkdir(parents=True)
    for name in ("linear_flow.py", "linear_flow.yaml"):
        shutil.copy(EXAMPLES / name, path / "pipelines" / name)
    (path / ".github" / "workflows").mkdir(parents=True)
    (path / ".github" / "workflows" / "ci.yaml").write_text(CI_CONFIG)
    (path / ".pre-commit-config.yaml").write_text(
        "repos:\n"
        f"  - repo: {hooks.repo}\n"
        f"    rev: {hooks.rev}\n"
        "    hooks:\n"
        "      - id: mfprefect-validate\n"
        "      - id: mfprefect-export-check\n"
    )
    git("init", "-q", cwd=path, env=hooks.env)
    git("add", "-A", cwd=path, env=hooks.env)
    return path


def run_hooks(repo: Path, hooks: Hooks) -> subprocess.CompletedProcess[str]:
    git("add", "-A", cwd=repo, env=hooks.env)
    return pre_commit("run", "--all-files", "--verbose", cwd=repo, env=hooks.env)


def status(output: str, hook_name: str) -> str:
    """Passed, Failed or Skipped, as pre-commit reported the hook."""
    found = re.search(rf"^{re.escape(hook_name)}\.+(\w+)$", output, re.MULTILINE)
    assert found, output
    return found.group(1)


def test_hooks_pass_on_a_valid_manifest_beside_other_yaml(tmp_path: Path, hooks: Hooks) -> None:
    repo = scratch_repository(tmp_path / "repo", hooks)
    result = run_hooks(repo, hooks)
    assert result.returncode == 0, result.stdout + result.stderr
    assert status(result.stdout, "mfprefect validate") == "Passed"
    assert status(result.stdout, "mfprefect export --check") == "Passed"
    # Three YAML files: the manifest, the CI config and .pre-commit-config.yaml.
    assert "pipelines/linear_flow.yaml: valid, 2 skipped (not mfprefect manifests)" in result.stdout
    # The flow file and its manifest are one check; the other YAML files are passed over.
    assert "pipelines/linear_flow.yaml is up to date" in result.stdout
    assert (
        "1 of 1 manifest(s) up to date, 2 file(s) skipped (not manifests, or no manifest names them)"
        in result.stdout
    )


def test_validate_hook_fails_on_an_invalid_field_naming_the_file(
    tmp_path: Path, hooks: Hooks
) -> None:
    repo = scratch_repository(tmp_path / "repo", hooks)
    manifest = repo / "pipelines" / "linear_flow.yaml"
    lines = manifest.read_text().splitlines(keepends=True)
    at = lines.index("    kind: end\n") + 1
    lines.insert(at, "    retriez: 2\n")
    manifest.write_text("".join(lines))
    result = run_hooks(repo, hooks)
    assert result.returncode == 1, result.stdout + result.stderr
    assert status(result.stdout, "mfprefect validate") == "Failed"
    assert re.search(
        rf"^pipelines/linear_flow\.yaml:{at + 1}:5: error\[schema\.unknown-field\] "
        r"steps\.end\.retriez: unknown field `retriez`.*did you mean `retries`",
        result.stdout,
        re.MULTILINE,
    ), result.stdout
    assert "1 error(s), 0 warning(s) in 1 file(s), 2 skipped" in result.stdout


def test_export_check_hook_fails_on_a_manifest_stale_against_its_flow(
    tmp_path: Path, hooks: Hooks
) -> None:
    repo = scratch_repository(tmp_path / "repo", hooks)
    flow = repo / "pipelines" / "linear_flow.py"
    flow.write_text(flow.read_text().replace('"""Set the initial value."""', '"""Start at 1."""'))
    result = run_hooks(repo, hooks)
    assert result.returncode == 1, result.stdout + result.stderr
    # The manifest itself is still valid: validate only warns that its flow changed.
    assert status(result.stdout, "mfprefect validate") == "Passed"
    assert "warning[flow.stale]" in result.stdout
    assert status(result.stdout, "mfprefect export --check") == "Failed"
    assert (
        "pipelines/linear_flow.yaml is out of date: run "
        "`python pipelines/linear_flow.py prefect export pipelines/linear_flow.yaml`"
    ) in result.stdout
    assert "0 of 1 manifest(s) up to date" in result.stdout
    assert os.fspath(repo) not in result.stdout

    # Re-exporting as the hook says makes both hooks pass again.
    fixed = subprocess.run(
        [sys.executable, "-m", "mfprefect.cli", "export", "pipelines/linear_flow.py"]
        + ["-o", "pipelines/linear_flow.yaml"],
        cwd=repo,
        env=hooks.env,
        capture_output=True,
        text=True,
    )
    assert fixed.returncode == 0, fixed.stderr
    again = run_hooks(repo, hooks)
    assert again.returncode == 0, again.stdout + again.stderr
