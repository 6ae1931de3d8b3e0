"""Deployed runs that need nothing from the applier's machine: a code package (or a git clone)
in a real S3 server (moto), a real metadata service, a Prefect server, and a process worker in a
folder of its own with its own HOME, Metaflow config and Prefect profile."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, mfprefect, run
from prefect_stack import (
    all_logs,
    api,
    metaflow_run_of,
    wait_flow_run,
)
from remote_stack import deployment_stack, metadata_service, s3_server
from ruamel.yaml import YAML

pytestmark = pytest.mark.slow

FLOW = ROOT / "tests" / "flows" / "remote_flow.py"
POOL = "remote-pool"
BUCKET = "mfp-data"
# A credential that must never appear in a package, a deployment or a log.
AWS_SECRET = "remote-test-secret-0c4f9a7e"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """S3, a metadata service, a Prefect server and a worker in a folder of its own (B)."""
    base = tmp_path_factory.mktemp("remote")
    with s3_server(base / "s3", bucket=BUCKET) as s3, metadata_service(base / "md") as md:
        services = dict(s3, AWS_SECRET_ACCESS_KEY=AWS_SECRET, **md)
        with deployment_stack(base, POOL, services) as found:
            yield found


def _project(folder: Path, version: str = "v1") -> Path:
    """Folder A: the flow, as CI checks it out."""
    folder.mkdir(parents=True, exist_ok=True)
    text = FLOW.read_text().replace('VERSION = "v1"', f'VERSION = "{version}"')
    (folder / "remote_flow.py").write_text(text)
    return folder


def _export(folder: Path, env: dict[str, str], metadata: str = "local", **deployment: Any) -> Path:
    manifest = folder / "remote.yaml"
    done = mfprefect(
        "export",
        str(folder / "remote_flow.py"),
        "-o",
        str(manifest),
        "--datastore",
        "s3",
        "--datastore-root",
        f"s3://{BUCKET}/metaflow",
        "--metadata",
        metadata,
        "--work-pool",
        POOL,
        env=env,
        cwd=folder,
    )
    assert done.returncode == 0, done.stderr
    yaml = YAML()
    data = yaml.load(manifest.read_text())
    data["deployment"]["job_variables"] = {"env": {"GREETING": "hi from job variables"}}
    for key, value in deployment.items():
        data["deployment"][key] = value
    with open(manifest, "w") as handle:
        yaml.dump(data, handle)
    return manifest


def _trigger(env: dict[str, str], *params: str) -> str:
    done = mfprefect("trigger", "RemoteFlow", *params, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def _client(env: dict[str, str], flow_run_id: str) -> dict[str, Any]:
    """What Metaflow's client reads back (the worker's metadata, S3) of a flow run's run."""
    pathspec = metaflow_run_of(env, "RemoteFlow", flow_run_id)
    probe = (
        "import json, sys\n"
        "from metaflow import Run, Task, namespace\n"
        "namespace(None)\n"
        "run = Run(sys.argv[1])\n"
        "start = run['start'].task\n"
        "code = run.code\n"
        "print(json.dumps({\n"
        "  'version': start['version'].data, 'greeting': start['greeting'].data,\n"
        "  'folder': start['folder'].data, 'done_version': run['end'].task['done_version'].data,\n"
        "  'stdout': start.stdout,\n"
        "  'code_files': sorted(code.tarball.getnames()) if code else None,\n"
        "  'code_flow': (code.flowspec.decode() if isinstance(code.flowspec, bytes) else code.flowspec) if code else None,\n"
        "}))\n"
    )
    done = run([sys.executable, "-c", probe, pathspec], env=env, cwd=env["_CLIENT_DIR"])
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _client_env(stack: dict[str, Any]) -> dict[str, str]:
    """Metaflow's client reading the worker's own metadata (its folder `_CLIENT_DIR`)."""
    return dict(stack["client"])


def _wait_running(env: dict[str, str], flow_run_id: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = api(env, "GET", f"/flow_runs/{flow_run_id}")["state"]["type"]
        if state == "RUNNING":
            return
        assert state not in ("FAILED", "CRASHED", "CANCELLED", "COMPLETED"), state
        time.sleep(0.3)
    raise AssertionError("the flow run never started")


def test_a_package_runs_on_a_worker_that_shares_nothing(stack: dict[str, Any]) -> None:
    env = stack["env"]
    folder_a = _project(stack["base"] / "folder-a")
    manifest = _export(folder_a, env)
    applied = mfprefect("apply", str(manifest), env=env, cwd=folder_a)
    assert applied.returncode == 0, applied.stderr
    assert "store code package for RemoteFlow/RemoteFlow (package " in applied.stderr
    # The applier's checkout is gone: the worker needs nothing from it.
    shutil.rmtree(folder_a)

    flow_run_id = _trigger(env)
    finished = wait_flow_run(env, flow_run_id)
    assert finished["state"]["type"] == "COMPLETED", finished["state"]
    seen = _client(_client_env(stack), flow_run_id)
    assert seen["version"] == "v1" and seen["done_version"] == "v1"
    assert seen["greeting"] == "hi from job variables"
    assert seen["folder"].startswith("mfprefect-code-")
    assert "hello from v1" in seen["stdout"]
    # Run.code: the package Metaflow's client downloads is the one the run executed.
    assert "remote_flow.py" in seen["code_files"]
    assert 'VERSION = "v1"' in seen["code_flow"]
    # The run's unpacked folder was removed from the worker's folder when it ended.
    assert not list(stack["worker_folder"].rglob("mfprefect-code-*"))
    _assert_no_credentials(env, flow_run_id, stack["worker_folder"])


def test_second_apply_changes_the_next_run_not_the_one_in_flight(stack: dict[str, Any]) -> None:
    env = stack["env"]
    folder_a = _project(stack["base"] / "folder-a2")
    manifest = _export(folder_a, env)
    assert mfprefect("apply", str(manifest), env=env, cwd=folder_a).returncode == 0
    unchanged = mfprefect("apply", str(manifest), env=env, cwd=folder_a)
    assert unchanged.returncode == 0 and "store code package" not in unchanged.stderr
    assert "No changes" in unchanged.stdout

    first = _trigger(env, "--param", "wait=12")
    _wait_running(env, first)
    shutil.rmtree(folder_a)
    folder_a = _project(stack["base"] / "folder-a3", version="v2")
    manifest = _export(folder_a, env)
    planned = mfprefect("plan", str(manifest), env=env, cwd=folder_a)
    assert planned.returncode == 1
    code_lines = [line for line in planned.stdout.splitlines() if line.strip().startswith("code:")]
    assert len(code_lines) == 1 and "package" in code_lines[0] and "->" in code_lines[0]
    assert mfprefect("apply", str(manifest), env=env, cwd=folder_a).returncode == 0
    # The new package is applied while the first run is still going.
    assert api(env, "GET", f"/flow_runs/{first}")["state"]["type"] == "RUNNING"
    second = _trigger(env)
    client = _client_env(stack)
    for flow_run_id, version in ((second, "v2"), (first, "v1")):
        finished = wait_flow_run(env, flow_run_id)
        assert finished["state"]["type"] == "COMPLETED", finished["state"]
        seen = _client(client, flow_run_id)
        assert (seen["version"], seen["done_version"]) == (version, version)


def _assert_no_credentials(env: dict[str, str], flow_run_id: str, worker_folder: Path) -> None:
    """The AWS secret is in no S3 object (raw, gunzipped, tar members), deployment or log."""
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=env["METAFLOW_S3_ENDPOINT_URL"],
        aws_access_key_id="testing",
        aws_secret_access_key=AWS_SECRET,
        region_name="us-east-1",
    )
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert [k for k in keys if "/data/" in k]
    for key in keys:
        raw = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert AWS_SECRET.encode() not in raw
        for unpacked in _unpacked(raw):
            assert AWS_SECRET.encode() not in unpacked, key
    deployment = api(env, "GET", "/deployments/name/RemoteFlow/RemoteFlow")
    assert AWS_SECRET not in json.dumps(deployment)
    logs = all_logs(env, [flow_run_id])
    assert logs and AWS_SECRET not in json.dumps(logs)
    assert AWS_SECRET not in (worker_folder / "worker.log").read_text(errors="replace")


def _unpacked(raw: bytes) -> list[bytes]:
    """The members of a gzip'd tar (a package), or the gunzipped bytes, or nothing."""
    try:
        data = gzip.decompress(raw)
    except OSError:
        return []
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            return [
                archive.extractfile(m).read()  # type: ignore[union-attr]
                for m in archive.getmembers()
                if m.isfile()
            ]
    except tarfile.TarError:
        return [data]


def test_a_package_changed_after_apply_fails_before_any_step(stack: dict[str, Any]) -> None:
    env = stack["env"]
    folder_a = _project(stack["base"] / "folder-tamper", version="tampered")
    manifest = _export(folder_a, env, name="tamper")
    assert mfprefect("apply", str(manifest), env=env, cwd=folder_a).returncode == 0
    deployment = api(env, "GET", "/deployments/name/RemoteFlow/tamper")
    (step,) = deployment["pull_steps"]
    key = step["mfprefect.runtime.fetch.pull_package"]["key"]
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=env["METAFLOW_S3_ENDPOINT_URL"],
        aws_access_key_id="testing",
        aws_secret_access_key=AWS_SECRET,
        region_name="us-east-1",
    )
    stored = f"metaflow/RemoteFlow/data/{key[:2]}/{key}"
    s3.put_object(Bucket=BUCKET, Key=stored, Body=b"not the package that was applied")
    flow_run_id = _trigger(env, "--name", "tamper")
    finished = wait_flow_run(env, flow_run_id)
    assert finished["state"]["type"] in ("FAILED", "CRASHED"), finished["state"]
    lines = [log["message"] for log in all_logs(env, [flow_run_id])]
    said = [line for line in lines if "fails its sha256 check" in line]
    assert said and "\n" not in said[0], lines
    # No step ran: no task run, and no Metaflow run.
    tasks = api(env, "POST", "/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
    assert tasks == []


def test_git_code_runs_from_a_clone_of_the_applied_commit(stack: dict[str, Any]) -> None:
    env = stack["env"]
    base = stack["base"]
    bare = base / "repo.git"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    assert subprocess.run(["git", "init", "-q", "--bare", str(bare)]).returncode == 0
    checkout = base / "checkout"
    assert subprocess.run(["git", "clone", "-q", str(bare), str(checkout)]).returncode == 0
    folder_a = _project(checkout / "pipelines", version="from-git")
    manifest = _export(
        folder_a, env, name="from-git", code={"kind": "git", "url": f"file://{bare}"}
    )
    for args in (["add", "-A"], ["commit", "-qm", "flow"], ["push", "-q", "origin", "HEAD"]):
        assert subprocess.run([*git, "-C", str(checkout), *args]).returncode == 0
    head = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    planned = mfprefect("plan", str(manifest), env=env)
    assert f"git file://{bare}@{head} pipelines" in planned.stdout, planned.stdout
    applied = mfprefect("apply", str(manifest), env=env)
    assert applied.returncode == 0, applied.stderr
    shutil.rmtree(checkout)
    flow_run_id = _trigger(env, "--name", "from-git")
    finished = wait_flow_run(env, flow_run_id)
    assert finished["state"]["type"] == "COMPLETED", finished["state"]
    seen = _client(_client_env(stack), flow_run_id)
    assert seen["version"] == "from-git"


def test_a_git_ref_that_does_not_exist_fails_before_any_step(stack: dict[str, Any]) -> None:
    env = stack["env"]
    bare = stack["base"] / "repo.git"
    folder_a = _project(stack["base"] / "folder-badref", version="bad-ref")
    manifest = _export(
        folder_a,
        env,
        name="bad-ref",
        code={"kind": "git", "url": f"file://{bare}", "ref": "no-such-branch", "path": "x"},
    )
    assert mfprefect("apply", str(manifest), env=env, cwd=folder_a).returncode == 0
    flow_run_id = _trigger(env, "--name", "bad-ref")
    finished = wait_flow_run(env, flow_run_id)
    assert finished["state"]["type"] in ("FAILED", "CRASHED"), finished["state"]
    lines = [log["message"] for log in all_logs(env, [flow_run_id])]
    assert any("no-such-branch" in line for line in lines), lines
    tasks = api(env, "POST", "/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
    assert tasks == []


def test_service_metadata_comes_from_the_workers_environment(stack: dict[str, Any]) -> None:
    """`metadata: service` takes METAFLOW_SERVICE_URL from the worker. metaflow-local-service
    0.2.0 names runs and tasks itself (it ignores client-chosen ids, which every orchestrator
    uses) and answers 404 to the single-artifact route, so this asserts what it serves: the
    run, tagged with its flow run, and its steps."""
    env = stack["env"]
    folder_a = _project(stack["base"] / "folder-service", version="service")
    manifest = _export(folder_a, env, metadata="service", name="service")
    validated = mfprefect("validate", str(manifest), env=env)
    assert validated.returncode == 0 and "runtime.local-metadata" not in validated.stdout
    assert mfprefect("apply", str(manifest), env=env, cwd=folder_a).returncode == 0
    flow_run_id = _trigger(env, "--name", "service")
    assert wait_flow_run(env, flow_run_id)["state"]["type"] == "COMPLETED"
    client = dict(env, METAFLOW_DEFAULT_METADATA="service")
    client.pop("METAFLOW_DATASTORE_SYSROOT_LOCAL", None)
    pathspec = metaflow_run_of(client, "RemoteFlow", flow_run_id)
    probe = (
        "import sys\n"
        "from metaflow import Run, namespace\n"
        "namespace(None)\n"
        "print(sorted(step.id for step in Run(sys.argv[1])))\n"
    )
    done = run([sys.executable, "-c", probe, pathspec], env=client)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "['end', 'start']"


MARKER_FLOW = """
import os
from pathlib import Path

from metaflow import FlowSpec, step

# Importing this file leaves a mark: plan must never import it, apply may (to package it).
Path(os.environ["MARKER_FILE"]).write_text("imported")


class MarkerFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    MarkerFlow()
"""


def test_plan_never_imports_the_flow_and_checks_job_variables(stack: dict[str, Any]) -> None:
    folder = stack["base"] / "folder-marker"
    folder.mkdir()
    (folder / "marker_flow.py").write_text(MARKER_FLOW)
    marker = folder / "imported.txt"
    env = dict(stack["env"], MARKER_FILE=str(marker))
    manifest = folder / "marker.yaml"
    exported = mfprefect(
        "export",
        str(folder / "marker_flow.py"),
        "-o",
        str(manifest),
        "--work-pool",
        POOL,
        "--datastore",
        "s3",
        "--datastore-root",
        f"s3://{BUCKET}/metaflow",
        env=env,
    )
    assert exported.returncode == 0, exported.stderr
    assert marker.exists()  # export imports the flow: the marker works
    marker.unlink()
    planned = mfprefect("plan", str(manifest), env=env)
    assert planned.returncode == 1, planned.stderr
    assert '    code: "package ' in planned.stdout, planned.stdout
    assert not marker.exists()

    yaml = YAML()
    data = yaml.load(manifest.read_text())
    data["deployment"]["job_variables"] = {"wokring_dir": "/srv"}
    with open(manifest, "w") as handle:
        yaml.dump(data, handle)
    refused = mfprefect("apply", str(manifest), env=env)
    assert refused.returncode == 1, refused.stderr
    said = refused.stdout + refused.stderr
    assert "marker.yaml:" in said and "deployment.job_variables.wokring_dir" in said
    assert "did you mean `working_dir`?" in said
    assert not marker.exists()
    found = api(env, "POST", "/deployments/filter", {"flows": {"name": {"any_": ["MarkerFlow"]}}})
    assert found == []

    data["deployment"]["job_variables"] = {"working_dir": str(folder)}
    with open(manifest, "w") as handle:
        yaml.dump(data, handle)
    assert mfprefect("apply", str(manifest), env=env).returncode == 0
    assert marker.exists()  # apply packages the flow, which imports it


def test_local_run_and_resume_with_the_s3_datastore(stack: dict[str, Any]) -> None:
    env = dict(stack["env"])
    folder = _project(stack["base"] / "folder-local-run", version="local")
    manifest = _export(folder, env, name="local-run")
    ran = mfprefect("run", str(manifest), env=env, cwd=folder)
    assert ran.returncode == 0, ran.stderr
    run_id = next(
        line.split("/")[-1] for line in ran.stderr.splitlines() if line.startswith("Metaflow run ")
    )
    resumed = mfprefect("resume", str(manifest), "--clone-run-id", run_id, env=env, cwd=folder)
    assert resumed.returncode == 0, resumed.stderr
    resumed_id = next(
        line.split("/")[-1]
        for line in resumed.stderr.splitlines()
        if line.startswith("Metaflow run ")
    )
    probe = (
        "import json, sys\n"
        "from metaflow import Run, namespace\n"
        "namespace(None)\n"
        "print(json.dumps([Run('RemoteFlow/' + r)['start'].task['version'].data for r in sys.argv[1:]]))\n"
    )
    client = dict(env, METAFLOW_DEFAULT_METADATA="local")
    done = run([sys.executable, "-c", probe, run_id, resumed_id], env=client, cwd=folder)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == ["local", "local"]
    # Everything went to S3: the local folders hold no datastore.
    assert not list(folder.rglob("data"))


DEPLOYER_SCRIPT = """
import json, sys, time
from metaflow import Deployer

deployed = Deployer(
    "remote_flow.py", datastore="s3", datastore_root=sys.argv[2]
).prefect().create(work_pool=sys.argv[1], name="via-deployer")
triggered = deployed.trigger(wait=0.5)
deadline = time.time() + 180
while time.time() < deadline and triggered.status not in ("SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"):
    time.sleep(0.5)
start = triggered.run["start"].task
print("RESULT " + json.dumps({
    "status": triggered.status,
    "version": start.data.version,
    "ds_root": start.metadata_dict.get("ds-root"),
    "code": bool(triggered.run.code),
}))
"""


def test_the_deployer_api_on_the_s3_datastore(stack: dict[str, Any]) -> None:
    folder = _project(stack["base"] / "folder-deployer", version="deployer")
    (folder / "drive.py").write_text(DEPLOYER_SCRIPT)
    # The driver reads the run back with the worker's own metadata (see _client_env).
    env = _client_env(stack)
    done = run(
        [sys.executable, "drive.py", POOL, f"s3://{BUCKET}/metaflow"],
        env=env,
        cwd=folder,
        timeout=400,
    )
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    line = next(text for text in done.stdout.splitlines() if text.startswith("RESULT "))
    out = json.loads(line[len("RESULT ") :])
    assert out == {
        "status": "SUCCEEDED",
        "version": "deployer",
        "ds_root": f"s3://{BUCKET}/metaflow",
        "code": True,
    }


def _refused_apply(env: dict[str, str], base: Path, name: str, root: str) -> str:
    """Apply a manifest whose package cannot be stored at `root`: exit 3 with one `mfprefect:`
    line naming the root, no traceback, and no deployment on the server. Returns stderr."""
    folder = _project(base / f"folder-{name}", version=name)
    manifest = _export(folder, env, name=name)
    yaml = YAML()
    data = yaml.load(manifest.read_text())
    data["runtime"]["datastore_root"] = root
    with open(manifest, "w") as handle:
        yaml.dump(data, handle)
    done = mfprefect("apply", str(manifest), env=env, cwd=folder)
    assert done.returncode == 3, done.stderr
    first = [line for line in done.stderr.splitlines() if line.startswith("mfprefect:")]
    assert len(first) == 1 and root in first[0], done.stderr
    assert "Traceback" not in done.stderr
    found = api(env, "POST", "/deployments/filter", {"deployments": {"name": {"any_": [name]}}})
    assert found == []
    return done.stderr


def test_a_missing_bucket_fails_apply_with_one_line(stack: dict[str, Any]) -> None:
    _refused_apply(stack["env"], stack["base"], "no-bucket", "s3://no-such-bucket/metaflow")


def test_wrong_credentials_fail_apply_with_one_line(stack: dict[str, Any]) -> None:
    from remote_stack import s3_server

    with s3_server(stack["base"] / "s3-checked", bucket="checked", check_credentials=True) as s3:
        env = dict(stack["env"], **s3)
        said = _refused_apply(env, stack["base"], "wrong-credentials", "s3://checked/metaflow")
    assert "credentials" in said and s3["METAFLOW_S3_ENDPOINT_URL"] in said


def test_an_unreachable_endpoint_fails_apply_in_seconds_with_one_line(
    stack: dict[str, Any],
) -> None:
    from remote_stack import free_port

    closed = f"http://127.0.0.1:{free_port()}"
    env = dict(stack["env"], METAFLOW_S3_ENDPOINT_URL=closed)
    started = time.monotonic()
    said = _refused_apply(env, stack["base"], "unreachable", f"s3://{BUCKET}/metaflow")
    assert time.monotonic() - started < 100
    assert closed in said  # the hint names the endpoint
