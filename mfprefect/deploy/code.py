"""Where a deployment's runs find the flow's code (`deployment.code`), as Prefect pull steps and
job-variable environment. Imports no Prefect and never imports flow code: `plan` uses it on
untrusted pull requests.

- `package` (the default): Metaflow's code package, built at apply (see `mfprefect.package`),
  stored once per content hash in the pipeline's datastore, fetched, checked and unpacked by the
  worker's pull step (`mfprefect.runtime.fetch.pull_package`).
- `git`: Prefect's own `git_clone` pull step, at a branch, tag or commit.
- `path`: the flow's folder on the applier's machine, for a worker that shares its filesystem.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ManifestError, UsageError
from ..manifest import Manifest

PULL_PACKAGE = "mfprefect.runtime.fetch.pull_package"
# Prefect's git_clone, through a wrapper that also logs a failure as one line.
GIT_CLONE = "mfprefect.runtime.fetch.git_clone"
SET_DIRECTORY = "prefect.deployments.steps.set_working_directory"
# What Metaflow's task reads to record its code package (so `Run(...).code` finds it).
METAFLOW_CODE_ENV = (
    "METAFLOW_CODE_SHA",
    "METAFLOW_CODE_URL",
    "METAFLOW_CODE_DS",
    "METAFLOW_CODE_METADATA",
)
# Bumped when what a package holds changes for reasons other than the files (its layout here).
PACKAGE_FORMAT = "1"
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class CodeSpec:
    """The code a deployment should run: its kind and a digest that changes when the code does
    (package: a content hash of the files; git: the commit or ref; path: the folder)."""

    kind: str
    digest: str
    flow_dir: str
    flow_file: str
    git_url: str | None = None
    git_ref: str | None = None
    git_path: str = ""
    git_credentials: str | None = None

    def describe(self) -> str:
        """One line for plan: `package 1a2b3c4d5e6f`, `git URL@REF [PATH]`, `path FOLDER`."""
        if self.kind == "package":
            return f"package {self.digest[:12]}"
        if self.kind == "git":
            return _git_text(self.git_url, self.git_ref, self.git_path, self.git_credentials)
        return f"path {self.digest}"


def _git_text(url: Any, ref: Any, path: Any, secret: Any) -> str:
    text = f"git {url}@{ref}"
    text += f" {path}" if path else ""
    return text + (f" (token: secret {secret})" if secret else "")


@dataclass(frozen=True)
class CodeRef:
    """What a deployment carries to find its code: pull steps, `path`, environment variables."""

    pull_steps: list[dict[str, Any]]
    path: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)


def code_spec(manifest: Manifest) -> CodeSpec:
    """The deployment's code as the manifest asks for it, read from the applier's checkout."""
    source = manifest.deployment.code
    flow_path = manifest.flow_path()
    flow_dir = str(flow_path.parent)
    if source.kind == "path":
        return CodeSpec("path", flow_dir, flow_dir, flow_path.name)
    if source.kind == "git":
        assert source.url is not None
        ref = source.ref or head_commit(flow_path.parent, manifest)
        inside = source.path
        if inside is None:
            inside = _path_in_checkout(flow_path.parent)
        return CodeSpec(
            "git",
            ref,
            flow_dir,
            flow_path.name,
            git_url=source.url,
            git_ref=ref,
            git_path=inside.strip("/"),
            git_credentials=source.credentials.block if source.credentials else None,
        )
    locked = manifest.runtime.environment == "uv"
    return CodeSpec("package", content_hash(flow_path.parent, locked), flow_dir, flow_path.name)


def content_hash(flow_dir: Path, locked: bool = False) -> str:
    """A hash of what the package of this folder would hold: the files Metaflow's packaging
    picks (its own walk and suffix filter), with `locked` the project's pyproject.toml and
    uv.lock (Metaflow's uv environment packs them), Metaflow's version and mfprefect's. Reads
    files only; imports no flow code."""
    from importlib.metadata import version

    from metaflow.metaflow_config import DEFAULT_PACKAGE_SUFFIXES
    from metaflow.packaging_sys.utils import suffix_filter, walk

    digest = hashlib.sha256()
    digest.update(f"format {PACKAGE_FORMAT}\n".encode())
    for dist in ("metaflow", "mfprefect"):
        digest.update(f"{dist} {version(dist)}\n".encode())
    files = sorted(
        walk(
            str(flow_dir) + "/",
            file_filter=suffix_filter(DEFAULT_PACKAGE_SUFFIXES.split(",")),
            exclude_tl_dirs=[".mf_code", ".mf_meta", "_escape_trampolines"],
        ),
        key=lambda pair: pair[1],
    )
    if locked:
        from ..runtime.locked_env import LOCK_FILES, PACKAGE_META, project_files

        project = project_files(flow_dir)
        if project is not None:
            files += [(str(project / name), f"{PACKAGE_META}/{name}") for name in LOCK_FILES]
    for path, arcname in files:
        with open(path, "rb") as handle:
            file_digest = hashlib.sha256(handle.read()).hexdigest()
        digest.update(f"{arcname}\0{file_digest}\n".encode())
    return digest.hexdigest()


def head_commit(folder: Path, manifest: Manifest) -> str:
    """The checkout's commit, when it is clean: what `git` deploys when no ref is given."""
    where = manifest.path or manifest.name
    status = _git(folder, "status", "--porcelain", "--untracked-files=no")
    if status is None:
        raise UsageError(
            f"{where}: deployment.code is git with no ref, and the manifest is not in a git checkout",
            hint="set deployment.code.ref to a branch, tag or commit",
        )
    if status.strip():
        raise UsageError(
            f"{where}: deployment.code is git with no ref, and the checkout has uncommitted changes",
            hint="commit them (the applied commit is what deploys), or set deployment.code.ref",
        )
    commit = _git(folder, "rev-parse", "HEAD")
    assert commit is not None
    return commit.strip()


def _path_in_checkout(folder: Path) -> str:
    top = _git(folder, "rev-parse", "--show-toplevel")
    if top is None:
        return ""
    relative = os.path.relpath(folder.resolve(), Path(top.strip()).resolve())
    return "" if relative == "." else relative


def _git(folder: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def fixed_ref(spec: CodeSpec) -> CodeRef | None:
    """The pull steps of code that needs no building (git, path); None for a package."""
    if spec.kind == "path":
        return CodeRef(
            [{SET_DIRECTORY: {"directory": spec.flow_dir}}],
            path=spec.flow_dir,
        )
    if spec.kind == "git":
        assert spec.git_url is not None and spec.git_ref is not None
        clone: dict[str, Any] = {"id": "clone", "repository": spec.git_url}
        if _COMMIT.match(spec.git_ref):
            clone["commit_sha"] = spec.git_ref
        else:
            clone["branch"] = spec.git_ref
        if spec.git_credentials:
            # Resolved by Prefect on the worker: the token is never stored in the deployment.
            clone["access_token"] = "{{ prefect.blocks.secret." + spec.git_credentials + " }}"
        directory = "{{ clone.directory }}" + (f"/{spec.git_path}" if spec.git_path else "")
        return CodeRef([{GIT_CLONE: clone}, {SET_DIRECTORY: {"directory": directory}}])
    return None


def package_ref(stored: Mapping[str, str]) -> CodeRef:
    """The pull step and environment of a stored package (what `mfprefect.package` returns)."""
    templated = sorted(k for k, v in stored.items() if "{{" in str(v))
    if templated:
        # Prefect renders `{{ ... }}` in pull-step arguments on the worker (its environment,
        # variables, blocks): a datastore root holding one is never sent.
        raise ManifestError(
            f"the code package's {', '.join(templated)} holds `{{{{`, which Prefect would read "
            "as a template on the worker",
            hint="use a datastore root whose path has no `{{`",
        )
    step = {
        PULL_PACKAGE: {
            "content": stored["content"],
            "datastore": stored["datastore"],
            "root": stored["root"],
            "flow": stored["flow"],
            "key": stored["key"],
            "sha256": stored["sha256"],
        }
    }
    env = {
        "METAFLOW_CODE_SHA": stored["key"],
        "METAFLOW_CODE_URL": stored["url"],
        "METAFLOW_CODE_DS": stored["datastore"],
        "METAFLOW_CODE_METADATA": stored["metadata"],
    }
    return CodeRef([step], None, env)


def live_digest(pull_steps: Sequence[Any] | None, path: str | None) -> str | None:
    """What a deployment on the server runs, described as `CodeSpec.describe` would."""
    steps: dict[str, dict[str, Any]] = {}
    for step in pull_steps or []:
        if isinstance(step, dict) and len(step) == 1:
            ((name, args),) = step.items()
            steps.setdefault(name, args if isinstance(args, dict) else {})
    if PULL_PACKAGE in steps:
        return f"package {str(steps[PULL_PACKAGE].get('content', '?'))[:12]}"
    directory = str(steps.get(SET_DIRECTORY, {}).get("directory", ""))
    if GIT_CLONE in steps:
        clone = steps[GIT_CLONE]
        inside = directory.removeprefix("{{ clone.directory }}").strip("/")
        token = str(clone.get("access_token") or "")
        secret = token.removeprefix("{{ prefect.blocks.secret.").removesuffix(" }}") or None
        ref = clone.get("commit_sha") or clone.get("branch")
        return _git_text(clone.get("repository"), ref, inside, secret)
    if directory:
        return f"path {directory}"
    return f"path {path}" if path else None


def code_env(job_variables: Mapping[str, Any] | None) -> dict[str, str]:
    """The code-package variables in a deployment's job-variable environment."""
    env = (job_variables or {}).get("env") or {}
    return {k: v for k, v in env.items() if k in METAFLOW_CODE_ENV} if isinstance(env, dict) else {}
