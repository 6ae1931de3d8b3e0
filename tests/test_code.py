"""deployment.code and job_variables without a server: the content hash plan compares, the pull
steps apply writes and plan reads back, the worker's unpacking (with real archives and Metaflow's
real local datastore), and the manifest rules."""

from __future__ import annotations

import copy
import hashlib
import io
import shutil
import tarfile
from pathlib import Path

import pytest
from conftest import EXAMPLES, flow_env
from ruamel.yaml import YAML

from mfprefect.deploy.code import (
    CodeSpec,
    content_hash,
    fixed_ref,
    live_digest,
    package_ref,
)
from mfprefect.deploy.desired import deployment_for
from mfprefect.deploy.plan import LiveDeployment, plan
from mfprefect.manifest import check_text, from_data
from mfprefect.runtime import fetch


def _archive(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        for info, data in members:
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return out.getvalue()


def _file(name: str) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), b"print('hi')\n"


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, b""


@pytest.mark.parametrize(
    "member, why",
    [
        (_file("../escape.py"), "outside the folder"),
        (_file("ok/../../escape.py"), "outside the folder"),
        (_file("/tmp/escape.py"), "absolute path"),
        (_link("link", "/etc/passwd"), "links outside"),
        (_link("sub/link", "../../escape"), "links outside"),
        (_link("hard", "../escape", tarfile.LNKTYPE), "outside the folder"),
    ],
)
def test_unpack_refuses_members_that_land_outside(
    tmp_path: Path, member: tuple[tarfile.TarInfo, bytes], why: str
) -> None:
    target = tmp_path / "inside" / "code"
    target.mkdir(parents=True)
    blob = _archive([_file("flow.py"), member])
    with pytest.raises(fetch.PackageError) as refused:
        fetch.unpack(blob, str(target))
    assert why in str(refused.value) and "\n" not in str(refused.value)
    # Refused before anything was written.
    assert list(target.iterdir()) == []
    assert not (tmp_path / "inside" / "escape.py").exists()


def test_unpack_extracts_an_ordinary_package(tmp_path: Path) -> None:
    fetch.unpack(_archive([_file("flow.py"), _file("lib/helper.py")]), str(tmp_path))
    assert (tmp_path / "flow.py").read_bytes() == b"print('hi')\n"
    assert (tmp_path / "lib" / "helper.py").is_file()


def test_unpack_refuses_what_is_not_an_archive(tmp_path: Path) -> None:
    with pytest.raises(fetch.PackageError, match="not a readable archive"):
        fetch.unpack(b"not a tarball", str(tmp_path))


def _stored(tmp_path: Path, data: bytes) -> dict[str, str]:
    """`data` saved in a real Metaflow local datastore, as apply stores a package."""
    from metaflow.datastore import FlowDataStore
    from metaflow.plugins import DATASTORES

    impl = next(d for d in DATASTORES if d.TYPE == "local")
    root = str(tmp_path / "datastore" / ".metaflow")
    ((url, key),) = FlowDataStore("SomeFlow", storage_impl=impl, ds_root=root).save_data([data])
    assert url.endswith(key)
    return {"datastore": "local", "root": root, "flow": "SomeFlow", "key": key}


def test_pull_package_checks_sha256_before_unpacking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    blob = _archive([_file("flow.py")])
    stored = _stored(tmp_path, blob)
    with pytest.raises(fetch.PackageError, match="fails its sha256 check"):
        fetch.pull_package(content="c", sha256="0" * 64, **stored)
    assert not list(tmp_path.glob(fetch.FOLDER_PREFIX + "*"))
    monkeypatch.setenv("METAFLOW_DATASTORE_SYSROOT_LOCAL", str(tmp_path / "elsewhere"))
    found = fetch.pull_package(content="c", sha256=hashlib.sha256(blob).hexdigest(), **stored)
    folder = Path(found["directory"])
    assert folder.parent == tmp_path and (folder / "flow.py").is_file()
    fetch.cleanup(str(folder))
    assert not folder.exists()


def test_content_hash_follows_the_packaged_files_only(tmp_path: Path) -> None:
    first = tmp_path / "a"
    first.mkdir()
    shutil.copy(EXAMPLES / "linear_flow.py", first / "flow.py")
    (first / "notes.txt").write_text("not packaged")
    before = content_hash(first)
    second = tmp_path / "somewhere" / "else"
    shutil.copytree(first, second)
    assert content_hash(second) == before  # no absolute path in it
    (first / "notes.txt").write_text("still not packaged")
    (first / ".hidden").mkdir()
    (first / ".hidden" / "x.py").write_text("# hidden folders are not packaged")
    assert content_hash(first) == before
    (first / "helper.py").write_text("VALUE = 1\n")
    assert content_hash(first) != before


def _spec(kind: str, **more: str) -> CodeSpec:
    return CodeSpec(kind, more.pop("digest", "/work/flows"), "/work/flows", "flow.py", **more)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "spec",
    [
        _spec("path"),
        _spec("git", digest="main", git_url="file:///r.git", git_ref="main"),
        _spec(
            "git",
            digest="a" * 40,
            git_url="https://example.com/r.git",
            git_ref="a" * 40,
            git_path="pipelines/x",
            git_credentials="gh-token",
        ),
    ],
)
def test_plan_reads_back_what_apply_writes(spec: CodeSpec) -> None:
    ref = fixed_ref(spec)
    assert ref is not None
    assert live_digest(ref.pull_steps, ref.path) == spec.describe()


def test_git_credentials_are_a_reference_resolved_on_the_worker() -> None:
    spec = _spec(
        "git", digest="main", git_url="https://e.com/r.git", git_ref="main", git_credentials="gh"
    )
    ref = fixed_ref(spec)
    assert ref is not None
    clone = ref.pull_steps[0]["mfprefect.runtime.fetch.git_clone"]
    assert clone["access_token"] == "{{ prefect.blocks.secret.gh }}"
    assert clone["branch"] == "main" and "commit_sha" not in clone


def _manifest_data(**deployment: object) -> dict:
    yaml = YAML(typ="safe")
    data = yaml.load((EXAMPLES / "linear_flow.yaml").read_text())
    data["deployment"]["work_pool"] = "pool"
    data["deployment"].update(deployment)
    return data


def test_plan_shows_a_package_change_as_one_line() -> None:
    data = _manifest_data()
    manifest = from_data(data, str(EXAMPLES / "linear_flow.yaml"))
    spec = deployment_for(manifest, data)
    assert spec.code is not None and spec.code.kind == "package" and spec.code_ref is None
    stored = {
        "content": spec.code.digest,
        "datastore": "local",
        "root": "/r",
        "flow": "LinearFlow",
        "key": "k",
        "url": "/r/k",
        "sha256": "s",
        "metadata": "{}",
    }
    ref = package_ref(stored)
    live_fields = dict(spec.fields, pull_steps=ref.pull_steps, path=None)
    live_fields["job_variables"] = copy.deepcopy(spec.fields["job_variables"])
    live_fields["job_variables"]["env"].update(ref.env)
    live = LiveDeployment("id", spec.flow_name, spec.name, live_fields)
    assert plan([spec], [live]).pending == []
    old = package_ref(dict(stored, content="0" * 64))
    stale = LiveDeployment(
        "id", spec.flow_name, spec.name, dict(live_fields, pull_steps=old.pull_steps)
    )
    (change,) = plan([spec], [stale]).pending
    assert [(f.field, f.old, f.new) for f in change.changes] == [
        ("code", "package 000000000000", spec.code.describe())
    ]


def test_job_variables_reach_the_deployment_and_show_in_plan() -> None:
    data = _manifest_data(job_variables={"env": {"GREETING": "hi"}, "working_dir": "/srv"})
    spec = deployment_for(from_data(data, str(EXAMPLES / "linear_flow.yaml")), data)
    merged = spec.fields["job_variables"]
    assert merged["working_dir"] == "/srv" and merged["env"]["GREETING"] == "hi"
    assert "MFPREFECT_MANIFEST" in merged["env"]
    live_fields = copy.deepcopy(dict(spec.fields))
    live_fields["job_variables"]["working_dir"] = "/tmp"
    live = LiveDeployment("id", spec.flow_name, spec.name, live_fields)
    (change,) = plan([spec], [live]).pending
    assert [f.field for f in change.changes if f.field != "code"] == ["job_variables"]


def _validate(data: dict) -> list:
    text = io.StringIO()
    YAML().dump(data, text)
    return check_text(text.getvalue(), "m.yaml")[1]


def test_a_job_variable_mfprefect_sets_itself_is_refused_where_it_is() -> None:
    found = _validate(_manifest_data(job_variables={"env": {"MFPREFECT_MANIFEST": "x"}}))
    (problem,) = [d for d in found if d.severity == "error"]
    assert problem.rule == "deployment.reserved"
    assert problem.path == "deployment.job_variables.env.MFPREFECT_MANIFEST" and problem.line > 1


def test_remote_datastore_with_local_metadata_is_a_warning() -> None:
    data = _manifest_data()
    data["runtime"].update(datastore="s3", metadata="local")
    rules = {(d.rule, d.severity) for d in _validate(data)}
    assert ("runtime.local-metadata", "warning") in rules
    data["runtime"]["metadata"] = "service"
    assert "runtime.local-metadata" not in {d.rule for d in _validate(data)}


@pytest.mark.parametrize(
    "code, rule",
    [
        ({"kind": "git"}, "schema.required"),
        ({"kind": "git", "url": "file:///r.git", "ref": "$(touch x)"}, "schema.pattern"),
        ({"kind": "git", "url": "https://x/{{ $AWS_SECRET }}"}, "schema.pattern"),
        ({"kind": "package", "url": "https://x"}, "schema.unknown-field"),
        ({"kind": "zip"}, "schema.enum"),
    ],
)
def test_bad_code_settings_are_refused(code: dict, rule: str) -> None:
    found = _validate(_manifest_data(code=code))
    assert rule in {d.rule for d in found if d.severity == "error"}, found


def test_package_stored_by_the_flow_cli_is_found_again(tmp_path: Path) -> None:
    """`python flow.py prefect package` stores once per content hash (Metaflow's packaging)."""
    import json
    import subprocess
    import sys

    shutil.copy(EXAMPLES / "linear_flow.py", tmp_path / "flow.py")
    env = flow_env(tmp_path)
    args = [sys.executable, "flow.py", "--quiet", "--no-pylint", "--datastore=local"]
    args += ["prefect", "package", "--content", "c" * 64]
    first = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    record = json.loads(first.stdout.strip().splitlines()[-1])
    assert "reused" not in record
    blob = Path(record["url"]).read_bytes()
    assert hashlib.sha256(blob).hexdigest() == record["sha256"]
    with tarfile.open(fileobj=io.BytesIO(blob)) as archive:
        assert "flow.py" in archive.getnames()
    again = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert json.loads(again.stdout.strip().splitlines()[-1])["reused"] == "yes"


@pytest.mark.parametrize("metadata, warned", [("local", True), ("service", False)])
def test_export_warns_of_a_remote_datastore_with_local_metadata(
    tmp_path: Path, metadata: str, warned: bool
) -> None:
    import subprocess
    import sys

    shutil.copy(EXAMPLES / "linear_flow.py", tmp_path / "flow.py")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mfprefect.cli",
            "export",
            "flow.py",
            "-o",
            "m.yaml",
            "--datastore",
            "s3",
            "--datastore-root",
            "s3://bucket/metaflow",
            "--metadata",
            metadata,
        ],
        cwd=tmp_path,
        env=dict(flow_env(tmp_path), METAFLOW_SERVICE_URL="http://127.0.0.1:9"),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert ("warning: runtime.metadata: a remote datastore (s3)" in done.stderr) is warned
