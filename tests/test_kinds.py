"""WorkPool, ConcurrencyLimit and Variable manifests without a server: validation (did-you-mean,
secrets, one object declared twice) and the plan of pools, limits and variables as values (the
server tests are in test_workspace)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import EXAMPLES

from mfprefect.cli import cli
from mfprefect.deploy.plan import plan
from mfprefect.deploy.resources import LiveResource, ResourceSpec, marker_name, spec_for
from mfprefect.kinds import resource_from_data
from mfprefect.manifest import check_file, load

WORKSPACE = EXAMPLES / "workspace"
TEMPLATE = {
    "job_configuration": {"command": "{{ command }}", "stream_output": "{{ stream_output }}"},
    "variables": {
        "properties": {
            "command": {"type": "string"},
            "stream_output": {"type": "boolean", "default": True},
        }
    },
}


def _validate(*paths: Path) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["validate", *map(str, paths)])
    return result.exit_code, result.output


def _resource(name: str, base: dict | None = TEMPLATE) -> ResourceSpec:
    doc, problems = check_file(str(WORKSPACE / name))
    assert doc is not None and problems == []
    return spec_for(resource_from_data(doc.data, f"m/{name}"), base)


def _as_live(spec: ResourceSpec, apply_set: str | None, owned: bool = True) -> LiveResource:
    return LiveResource(
        spec.kind, spec.name, "id-" + spec.name, dict(spec.fields), owned, apply_set
    )


def test_the_bundled_workspace_manifests_are_valid() -> None:
    code, output = _validate(WORKSPACE)
    assert code == 0, output
    assert "3 manifests valid" in output


def test_an_unknown_kind_gets_did_you_mean_at_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "pool.yaml"
    bad.write_text(
        (WORKSPACE / "gpu-pool.yaml").read_text().replace("kind: WorkPool", "kind: WorkPol")
    )
    code, output = _validate(bad)
    assert code == 1
    assert "pool.yaml:3:7: error[schema.enum] kind: 'WorkPol' is not one of" in output
    assert "did you mean `WorkPool`?" in output


def test_workspace_fields_are_checked_like_a_pipelines(tmp_path: Path) -> None:
    bad = tmp_path / "limit.yaml"
    bad.write_text(
        (WORKSPACE / "gpu-limit.yaml").read_text().replace("limit: 2", "limit: -1\n  actve: true")
    )
    code, output = _validate(bad)
    assert code == 1
    assert "spec.limit: -1 must be at least 0" in output
    assert "unknown field `actve`; did you mean `active`?" in output


def test_a_variable_that_holds_a_secret_is_refused_where_it_is(tmp_path: Path) -> None:
    bad = tmp_path / "variable.yaml"
    bad.write_text(
        """apiVersion: mfprefect/v1
kind: Variable
metadata:
  name: warehouse
spec:
  value:
    host: db.internal
    password: hunter2
    key: AKIAABCDEFGHIJKLMNOP
"""
    )
    code, output = _validate(bad)
    assert code == 1
    assert "variable.yaml:8:15: error[variable.secret] spec.value.password:" in output
    assert "variable.yaml:9:10: error[variable.secret] spec.value.key:" in output
    assert "{secret: BLOCK}" in output and "hunter2" not in output


def test_one_object_declared_by_two_manifests_is_one_error_naming_both(tmp_path: Path) -> None:
    for name in ("a.yaml", "b.yaml"):
        shutil.copy(WORKSPACE / "gpu-pool.yaml", tmp_path / name)
    code, output = _validate(tmp_path)
    assert code == 1
    errors = [line for line in output.splitlines() if "error[" in line]
    assert errors == [
        f"{(tmp_path / 'b.yaml').as_posix()}:5:9: error[manifest.duplicate] metadata.name: "
        f"work pool `gpu` is declared twice: here and in {(tmp_path / 'a.yaml').as_posix()}:5:9; "
        "keep one (or give one another name)"
    ], output


def test_two_pipelines_making_one_deployment_are_one_error(tmp_path: Path) -> None:
    for name in ("one.yaml", "two.yaml"):
        shutil.copy(EXAMPLES / "linear_flow.yaml", tmp_path / name)
    shutil.copy(EXAMPLES / "linear_flow.py", tmp_path / "linear_flow.py")
    code, output = _validate(tmp_path)
    assert code == 1
    assert output.count("error[manifest.duplicate]") == 1
    assert "deployment `LinearFlow/LinearFlow` is declared twice" in output
    assert "one.yaml:" in output and "two.yaml:" in output


def test_run_takes_only_pipelines() -> None:
    from mfprefect.errors import ManifestError

    with pytest.raises(ManifestError, match="a WorkPool manifest declares a workspace object"):
        load(str(WORKSPACE / "gpu-pool.yaml"))


def test_pools_limits_and_variables_come_before_deployments_and_go_after() -> None:
    pool, limit, variable = (
        _resource("gpu-pool.yaml"),
        _resource("gpu-limit.yaml"),
        _resource("model-bucket.yaml"),
    )
    made = plan([], [], resources=[variable, limit, pool], apply_set="ws")
    assert [(c.action, c.label) for c in made.changes] == [
        ("create", "work pool gpu"),
        ("create", "concurrency limit tag:mfprefect:gpu"),
        ("create", "variable model_bucket"),
    ]
    shown = {f.field: f.new for f in made.changes[0].changes}
    assert shown["job_variables.stream_output"] is True and shown["apply_set"] == "ws"
    assert "job_variables.command" not in shown  # the template's own, not the manifest's
    assert sorted(made.changes[2].resource.fields["tags"]) == [  # type: ignore[union-attr]
        "mfprefect",
        "mfprefect-set:ws",
        "models",
    ]
    # Applied: nothing to do. Gone from the manifests: deleted in reverse order, only this set's.
    live = [
        _as_live(pool, "ws"),
        _as_live(limit, "ws"),
        _as_live(made.changes[2].resource, "ws"),  # type: ignore[arg-type]
    ]
    assert (
        plan([], [], resources=[pool, limit, variable], live_resources=live, apply_set="ws").changes
        == []
    )
    pruned = plan([], [], prune=True, apply_set="ws", live_resources=live)
    assert [c.label for c in pruned.changes] == [
        "variable model_bucket",
        "concurrency limit tag:mfprefect:gpu",
        "work pool gpu",
    ]
    assert plan([], [], prune=True, apply_set="other", live_resources=live).changes == []


def test_drift_unowned_objects_and_set_moves() -> None:
    pool = _resource("gpu-pool.yaml")
    edited = LiveResource(
        pool.kind,
        pool.name,
        "id",
        {**pool.fields, "paused": True, "job_variables": {"command": None, "stream_output": False}},
        True,
        "ws",
    )
    drift = plan([], [], resources=[pool], live_resources=[edited], apply_set="ws")
    (change,) = drift.changes
    assert change.action == "update"
    assert [(f.field, f.old, f.new) for f in change.changes] == [
        ("paused", True, False),
        ("job_variables.stream_output", False, True),
    ]
    theirs = _as_live(pool, None, owned=False)
    conflict = plan([], [], resources=[pool], live_resources=[theirs], apply_set="ws")
    assert [c.action for c in conflict.changes] == ["conflict"]
    assert "! work pool gpu: exists and is not managed by mfprefect" in conflict.text()
    adopted = plan([], [], resources=[pool], live_resources=[theirs], apply_set="ws", adopt=True)
    assert [(f.field, f.old, f.new) for f in adopted.changes[0].changes] == [
        ("apply_set", None, "ws")
    ]
    moved = plan([], [], resources=[pool], live_resources=[_as_live(pool, "old")], apply_set="new")
    assert [(f.field, f.old, f.new) for f in moved.changes[0].changes] == [
        ("apply_set", "old", "new")
    ]
    # A set's prune leaves another set's pool, and the JSON names each kind.
    assert json.loads(json.dumps(moved.as_json()))["changes"][0]["kind"] == "work_pool"


def test_marker_names_are_prefect_variable_names_and_distinct() -> None:
    import re

    names = {
        marker_name(kind, name)
        for kind in ("WorkPool", "ConcurrencyLimit")
        for name in ("A.b", "a_b", "tag:x")
    }
    assert len(names) == 6
    assert all(re.fullmatch(r"[a-z0-9_-]+", n) and len(n) < 255 for n in names)


def test_pull_request_reports_name_each_kind_and_its_file() -> None:
    from mfprefect.deploy import plan_report

    made = plan([], [], resources=[_resource("gpu-pool.yaml")], apply_set="ws")
    markdown = plan_report.markdown(made, "ws")
    assert "**1 to add, 0 to change, 0 to delete**" in markdown
    assert "<code>+</code> add work pool <code>gpu</code>" in markdown
    assert "+ job_variables.stream_output: true" in markdown
    github = plan_report.github(made)
    assert "::notice file=m/gpu-pool.yaml,line=1,title=mfprefect plan::add work pool gpu" in github
