"""The worker's side of a code package: a Prefect pull step that downloads the package a
deployment points at, checks its sha256 and unpacks it into a fresh folder.

Prefect runs pull steps in the flow-run process before it loads the flow, and logs a failing
step's message as one line; the flow run then ends before any Metaflow step has started.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import logging
import os
import posixpath
import tarfile
import tempfile
from collections.abc import Callable
from typing import Any

# Prefix of the folders made here; the deployed flow removes its own when the run ends.
FOLDER_PREFIX = "mfprefect-code-"
MARKER = ".mfprefect-code"
# Metaflow's name for a local datastore folder, which it looks for from the working directory up.
LOCAL_ROOT_LINK = ".metaflow"


class PackageError(RuntimeError):
    """Code that cannot be used; a pull step writes its message to the flow run's log."""


def _said(step: Callable[..., dict[str, str]]) -> Callable[..., dict[str, str]]:
    """A pull step whose PackageError is also sent to the flow run's log as its one line."""

    @functools.wraps(step)
    def wrapped(*args: Any, **kwargs: Any) -> dict[str, str]:
        try:
            return step(*args, **kwargs)
        except PackageError as exc:
            say(str(exc))
            raise

    return wrapped


def say(message: str) -> None:
    """One line in the flow run's Prefect log, sent now: the process that runs pull steps exits
    right after a failing one, before Prefect's own log handler sends what it queued."""
    flow_run_id = os.environ.get("PREFECT__FLOW_RUN_ID")
    if not flow_run_id:
        return
    with contextlib.suppress(Exception):
        from datetime import datetime, timezone
        from uuid import UUID

        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import LogCreate

        line = LogCreate(
            name="mfprefect.code",
            level=logging.ERROR,
            message=message,
            timestamp=datetime.now(timezone.utc),  # type: ignore[arg-type]
            flow_run_id=UUID(flow_run_id),
        )
        with get_client(sync_client=True) as client:
            client.create_logs([line])


@_said
def git_clone(**options: Any) -> dict[str, str]:
    """Prefect's own `git_clone` pull step, whose failure also becomes one line in the log."""
    from prefect.deployments.steps.pull import git_clone as prefect_git_clone

    try:
        # Prefect runs pull steps in a thread of their own, where this is the sync variant.
        done: dict[str, str] = prefect_git_clone(**options)  # type: ignore[assignment]
        return done
    except Exception as exc:  # noqa: BLE001 - reported as one line, then raised for Prefect
        ref = options.get("commit_sha") or options.get("branch") or "the default branch"
        raise PackageError(
            f"mfprefect: cannot clone {options.get('repository')} at {ref}: "
            + " ".join(str(exc).split())[:300]
        ) from exc


@_said
def pull_package(
    content: str, datastore: str, root: str, flow: str, key: str, sha256: str
) -> dict[str, str]:
    """Fetch, check and unpack the package; return {"directory": folder} for Prefect to enter."""
    blob = download(datastore, root, flow, key)
    found = hashlib.sha256(blob).hexdigest()
    if found != sha256:
        raise PackageError(
            f"mfprefect: the code package {key} in {root} fails its sha256 check "
            f"(expected {sha256[:16]}..., got {found[:16]}...): it changed after apply; "
            "run `mfprefect apply` again"
        )
    folder = tempfile.mkdtemp(prefix=FOLDER_PREFIX, dir=os.getcwd())
    unpack(blob, folder)
    with open(os.path.join(folder, MARKER), "w", encoding="utf-8") as handle:
        handle.write(content + "\n")
    if datastore == "local":
        if not os.environ.get("METAFLOW_DATASTORE_SYSROOT_LOCAL"):
            # A local datastore is shared only on one machine: the run's data goes beside the
            # package, where the applier's runs and client look (not into this throwaway folder).
            os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = os.path.dirname(root.rstrip("/"))
        # Metaflow writes a local card under the first `.metaflow` found from the step's working
        # directory up (whatever the datastore root), and its client reads it under the task's
        # datastore root: without this link the cards went into this folder, removed after the
        # run. Removing the folder removes the link, never what it points to.
        with contextlib.suppress(FileExistsError):
            os.symlink(root, os.path.join(folder, LOCAL_ROOT_LINK))
    return {"directory": folder}


def download(datastore: str, root: str, flow: str, key: str) -> bytes:
    """The package's bytes, read through Metaflow's datastore (its S3 client and settings)."""
    try:
        from metaflow.datastore import FlowDataStore
        from metaflow.plugins import DATASTORES

        impl = next(d for d in DATASTORES if d.TYPE == datastore)
        store = FlowDataStore(flow, storage_impl=impl, ds_root=root)
        for _key, blob in store.load_data([key], force_raw=True):
            return bytes(blob)
    except Exception as exc:  # noqa: BLE001 - reported as one line
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise PackageError(
            f"mfprefect: cannot download the code package {key} from {root}: {reason}"
        ) from None
    raise PackageError(f"mfprefect: the code package {key} is missing from {root}")


def unpack(blob: bytes, folder: str) -> None:
    """Extract a package, refusing any member that would land outside `folder` (absolute
    names, `..`, links pointing out, devices)."""
    try:
        archive = tarfile.open(fileobj=io.BytesIO(blob), mode="r:*")
    except tarfile.TarError as exc:
        raise PackageError(
            f"mfprefect: the code package is not a readable archive: {exc}"
        ) from None
    with archive:
        members = archive.getmembers()
        for member in members:
            problem = _unsafe(member)
            if problem:
                raise PackageError(
                    f"mfprefect: the code package holds {member.name!r}, which {problem}; "
                    "refusing to unpack it"
                )
        extract: Any = archive.extractall
        if hasattr(tarfile, "data_filter"):
            extract(folder, members=members, filter="data")
        else:  # pragma: no cover - Pythons before the extraction filters
            extract(folder, members=members)


def _unsafe(member: tarfile.TarInfo) -> str | None:
    name = member.name
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "is an absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return "would land outside the folder (`..`)"
    if member.isdev() or member.isfifo():
        return "is a device or pipe"
    if member.issym() or member.islnk():
        target = member.linkname
        base = posixpath.dirname(name) if member.issym() else ""
        resolved = posixpath.normpath(posixpath.join(base, target))
        if target.startswith("/") or resolved.startswith(".."):
            return f"links outside the folder ({target!r})"
    return None


def cleanup(folder: str) -> None:
    """Remove a folder this module made (it holds the marker), once its run has ended."""
    import shutil

    if os.path.basename(folder).startswith(FOLDER_PREFIX) and os.path.exists(
        os.path.join(folder, MARKER)
    ):
        shutil.rmtree(folder, ignore_errors=True)
