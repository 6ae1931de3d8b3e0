"""Locked environments (Metaflow's `--environment=uv`): the interpreter a run's steps use.

The flow's `pyproject.toml` and `uv.lock` (found beside the flow, or in the code package's
`.mf_meta`, where Metaflow's uv environment packs them) are installed with `uv sync --frozen`
into a virtualenv kept per lock, interpreter and datastore in the machine's cache, so a second
run of the same lock starts at once. Metaflow itself is not installed from the lock: the steps
import the Metaflow of the process that runs the flow (one Metaflow per run), through a folder
on PYTHONPATH that holds only it.

uv comes from PATH, or the `uv` package of this interpreter, or else from the Python package
index (`pip install --target`, once per machine): release downloads from elsewhere are not
reachable from every worker, and uv never downloads a Python either.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import RuntimeFailure
from ..manifest import Manifest

LOCK_FILES = ("pyproject.toml", "uv.lock")
# Where Metaflow's uv environment puts them in a code package.
PACKAGE_META = ".mf_meta"
UV_REQUIREMENT = "uv>=0.5,<1"
# What Metaflow's own steps import beyond the lock, by datastore (its uv bootstrap adds these).
_DATASTORE_NEEDS = {"local": ["requests"], "s3": ["requests", "boto3"]}
_READY = ".mfprefect-ready"


@dataclass(frozen=True)
class LockedEnv:
    """The interpreter the steps run with, and what their environment adds."""

    python: str
    env: Mapping[str, str] = field(default_factory=dict)


def project_files(flow_dir: Path) -> Path | None:
    """The folder holding the flow's pyproject.toml and uv.lock: the code package's metadata,
    else the flow's folder or the nearest one above it that has both."""
    packed = flow_dir / PACKAGE_META
    if all((packed / name).is_file() for name in LOCK_FILES):
        return packed
    for folder in (flow_dir, *flow_dir.parents):
        if all((folder / name).is_file() for name in LOCK_FILES):
            return folder
    return None


def prepare(manifest: Manifest, base_env: Mapping[str, str]) -> LockedEnv | None:
    """The run's locked environment, built if this machine does not have it yet; None unless
    the manifest asks for `environment: uv`. RuntimeFailure (one line) when it cannot be built."""
    if manifest.runtime.environment != "uv":
        return None
    flow_dir = manifest.flow_path().parent
    found = project_files(flow_dir)
    if found is None:
        raise RuntimeFailure(
            f"{manifest.name} uses the uv environment, and no pyproject.toml with a uv.lock is "
            f"beside {manifest.flow_path().name} or above it",
            hint="run `uv lock` in the flow's project and keep uv.lock with the flow",
        )
    key = _key(found, manifest.runtime.datastore)
    home = _cache(base_env) / "envs" / key
    venv = home / "venv"
    with _locked(home.parent / f"{key}.flock"):
        if not (home / _READY).exists():
            _build(found, home, venv, manifest.runtime.datastore, base_env)
    path = [str(home / "metaflow-only")]
    if base_env.get("PYTHONPATH"):
        path.append(base_env["PYTHONPATH"])
    return LockedEnv(str(venv / "bin" / "python"), {"PYTHONPATH": os.pathsep.join(path)})


def _key(project: Path, datastore: str) -> str:
    digest = hashlib.sha256()
    for name in LOCK_FILES:
        digest.update(name.encode() + b"\0" + (project / name).read_bytes() + b"\0")
    digest.update(f"{sys.executable}\0{sys.version}\0{datastore}\0".encode())
    return digest.hexdigest()[:20]


def _cache(env: Mapping[str, str]) -> Path:
    if env.get("MFPREFECT_CACHE"):
        return Path(env["MFPREFECT_CACHE"])
    base = env.get("XDG_CACHE_HOME") or os.path.join(env.get("HOME") or Path.home(), ".cache")
    return Path(base) / "mfprefect"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One builder at a time per environment, across the machine's runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(
    project: Path, home: Path, venv: Path, datastore: str, base_env: Mapping[str, str]
) -> None:
    shutil.rmtree(home, ignore_errors=True)
    (home / "project").mkdir(parents=True)
    for name in LOCK_FILES:
        shutil.copyfile(project / name, home / "project" / name)
    uv = uv_binary(base_env)
    env = dict(base_env)
    env.update(
        UV_PROJECT_ENVIRONMENT=str(venv),
        UV_PYTHON=sys.executable,
        UV_PYTHON_DOWNLOADS="never",
        UV_LINK_MODE="copy",
        UV_NO_PROGRESS="1",
    )
    env.pop("VIRTUAL_ENV", None)
    # Trust what the machine trusts (as pip does), not only uv's own bundle of certificates:
    # a worker behind a TLS-inspecting proxy has its CA in the system store alone.
    env.setdefault("UV_NATIVE_TLS", "true")
    # Metaflow comes from the running process (see the module docstring), never from the lock;
    # the project itself is not installed (the package holds its code, not a build of it).
    _uv(
        [uv, "sync", "--frozen", "--no-dev", "--no-install-project"]
        + ["--no-install-package", "metaflow", "--project", str(home / "project")],
        env,
        project,
    )
    needs = _DATASTORE_NEEDS.get(datastore, ["requests"])
    _uv([uv, "pip", "install", "--python", str(venv / "bin" / "python"), *needs], env, project)
    only = home / "metaflow-only"
    only.mkdir()
    spec = importlib.util.find_spec("metaflow")
    assert spec is not None and spec.submodule_search_locations
    os.symlink(list(spec.submodule_search_locations)[0], only / "metaflow")
    (home / _READY).write_text("ready\n")


def _uv(args: list[str], env: Mapping[str, str], project: Path) -> None:
    done = subprocess.run(args, env=dict(env), capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeFailure(
            f"cannot build the locked environment from {project / 'uv.lock'}: "
            f"`uv {args[1]}` failed: {uv_error(done.stderr)}",
            hint="check the lock where the run builds it (`uv sync --frozen`), and run "
            "`uv lock` again if it names packages or versions the index does not have",
        )


def uv_error(stderr: str) -> str:
    """The line of uv's error output that says what went wrong (uv ends with hints)."""
    lines = [
        line.strip().lstrip("×├╰─▶│ ").removeprefix("Caused by: ").strip()
        for line in stderr.splitlines()
    ]
    said = [line for line in lines if line and not line.startswith("hint:")]
    return " ".join((said[-1] if said else "no error output").split())[:300]


def uv_binary(env: Mapping[str, str]) -> str:
    """A uv executable: on PATH, in this interpreter's `uv` package, or installed from the
    package index into the machine's cache (once)."""
    found = shutil.which("uv", path=env.get("PATH"))
    if found:
        return found
    with contextlib.suppress(ImportError, FileNotFoundError):
        from uv import find_uv_bin  # type: ignore[import-not-found]

        return str(find_uv_bin())
    target = _cache(env) / "uv"
    binary = target / "bin" / "uv"
    with _locked(target.parent / "uv.flock"):
        if not binary.exists():
            shutil.rmtree(target, ignore_errors=True)
            done = subprocess.run(
                [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
                + ["--no-warn-script-location", "--target", str(target), UV_REQUIREMENT],
                env=dict(env),
                capture_output=True,
                text=True,
                timeout=900,
            )
            if done.returncode != 0 or not binary.exists():
                reason = " ".join((done.stderr.strip().splitlines() or ["no output"])[-1].split())
                raise RuntimeFailure(
                    f"cannot install uv from the package index ({UV_REQUIREMENT}): {reason[:300]}",
                    hint="install uv on the worker (pip install uv), or let it reach the index",
                )
    return str(binary)
