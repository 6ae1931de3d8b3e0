"""Code packages for deployments: built with Metaflow's own packaging, stored once per content
hash in the pipeline's datastore.

`store` runs inside `python flow.py prefect package` (the only place the flow is imported, so
only `apply` and `create` ever run it); `build` is how apply asks for one, as that command.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from typing import Any

from .errors import RuntimeFailure
from .manifest import Manifest

FAIL_FAST_S3 = {
    "METAFLOW_S3_RETRY_COUNT": "1",
    "METAFLOW_S3_TRANSIENT_RETRY_COUNT": "1",
    "METAFLOW_S3_CLIENT_RETRY_CONFIG": json.dumps({"max_attempts": 2, "mode": "standard"}),
}
# Where the record of a stored package lives, under the datastore root: one per content hash.
INDEX_FOLDER = "mfprefect-code"


def store(obj: Any, content: str) -> dict[str, str]:
    """Package the flow (Metaflow's MetaflowPackage) and save it in the flow's datastore, unless
    a package of the same content is there already; return its record."""
    from metaflow.package import MetaflowPackage

    flow_datastore = obj.flow_datastore
    storage = flow_datastore._storage_impl
    index = storage.path_join(obj.flow.name, INDEX_FOLDER, f"{content}.json")
    with storage.load_bytes([index]) as loaded:
        for _key, path, _meta in loaded:
            if path is not None:
                with open(path, encoding="utf-8") as handle:
                    found: dict[str, str] = json.load(handle)
                if found.get("content") == content:
                    found["reused"] = "yes"
                    return found
    package = MetaflowPackage(
        obj.flow, obj.environment, obj.echo, suffixes=obj.package_suffixes, flow_datastore=None
    )
    blob = package.blob
    data = blob.getvalue() if isinstance(blob, io.BytesIO) else bytes(blob)
    ((url, key),) = flow_datastore.save_data([data], len_hint=1)
    record = {
        "content": content,
        "datastore": flow_datastore.TYPE,
        "root": flow_datastore.datastore_root,
        "flow": obj.flow.name,
        "key": key,
        "url": url,
        "sha256": hashlib.sha256(data).hexdigest(),
        "metadata": package.package_metadata,
        "size": str(len(data)),
    }
    # Written after the package itself: a record always points at a stored package.
    storage.save_bytes(
        [(index, io.BytesIO(json.dumps(record, sort_keys=True).encode("utf-8")))], overwrite=True
    )
    return record


def build(args: list[str], env: dict[str, str], cwd: str, where: str) -> dict[str, str]:
    """Run `python flow.py <top-level options> prefect package` and return the stored record.

    `where` names the datastore location for the error line."""
    try:
        done = subprocess.run(
            args,
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=600,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise RuntimeFailure(
            f"building the code package timed out (storing it in {where})"
        ) from None
    if done.returncode == 0:
        for line in reversed(done.stdout.splitlines()):
            if line.startswith("{"):
                record: dict[str, str] = json.loads(line)
                return record
    said = [line for line in done.stderr.splitlines() if line.strip()]
    reason = said[-1] if said else f"exited with code {done.returncode}"
    reason = reason.removeprefix("mfprefect: ")
    raise RuntimeFailure(
        f"cannot store the code package in {where}: {' '.join(reason.split())[:300]}",
        hint=_hint(where, env),
    )


def _hint(where: str, env: dict[str, str]) -> str:
    if where.startswith("s3://"):
        endpoint = env.get("METAFLOW_S3_ENDPOINT_URL") or "AWS's default endpoint"
        return (
            f"check that the bucket exists, that your AWS credentials may write to it, and the "
            f"endpoint ({endpoint}, METAFLOW_S3_ENDPOINT_URL); nothing was changed on the server"
        )
    return "check the datastore settings (runtime.datastore, runtime.datastore_root); nothing was changed on the server"


def build_for(manifest: Manifest, content: str) -> dict[str, str]:
    """Build and store the package of a manifest's flow (see `store`), as a subprocess."""
    from .runtime import commands

    root = manifest.runtime.datastore_root
    flow_path = manifest.flow_path()
    context = commands.RunContext(manifest, sys.executable, str(flow_path), root or "", "")
    args = [a for a in commands.top_level(context) if root or not a.startswith("--datastore-root=")]
    args += ["prefect", "package", "--content", content]
    # Metaflow's S3 client retries an unreachable endpoint for over an hour; apply says so in
    # seconds (and can simply be run again).
    env = {**FAIL_FAST_S3, **os.environ}
    if manifest.configs:
        env["METAFLOW_FLOW_CONFIG_VALUE"] = json.dumps(dict(manifest.configs))
    kind = manifest.runtime.datastore
    where = (
        root or f"the {kind} datastore's default root (METAFLOW_DATASTORE_SYSROOT_{kind.upper()})"
    )
    return build(args, env, str(flow_path.parent), where)
