"""Work pools, global concurrency limits and variables as manifests, against a real Prefect server:
apply creates them before the pipelines that use them, a second apply writes nothing, drift is
shown and undone, prune deletes them after the pipelines, and what mfprefect does not own is a
conflict until adopted."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import EXAMPLES, mfprefect, prefect_api, run
from prefect_stack import gitops_server
from ruamel.yaml import YAML

pytestmark = pytest.mark.slow

# The stack's own pool; the tests' pools are declared by their manifests.
STACK_POOL = "workspace-stack-pool"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    with gitops_server(tmp_path_factory.mktemp("workspace"), STACK_POOL) as env:
        yield env


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _pool(folder: Path, name: str, limit: int = 3) -> Path:
    return _write(
        folder / f"pool-{name}.yaml",
        f"""apiVersion: mfprefect/v1
kind: WorkPool
metadata:
  name: {name}
spec:
  type: process
  description: GPU machines
  concurrency_limit: {limit}
  job_variables:
    stream_output: false
""",
    )


def _limit(folder: Path, name: str, limit: int = 2) -> Path:
    return _write(
        folder / "limit.yaml",
        f"""apiVersion: mfprefect/v1
kind: ConcurrencyLimit
metadata:
  name: "{name}"
spec:
  limit: {limit}
""",
    )


def _variable(folder: Path, name: str) -> Path:
    return _write(
        folder / "variable.yaml",
        f"""apiVersion: mfprefect/v1
kind: Variable
metadata:
  name: {name}
spec:
  value: {{bucket: "s3://models", region: eu-west-1}}
  tags: [models]
""",
    )


def _pipeline(folder: Path, pool: str, name: str) -> Path:
    shutil.copy(EXAMPLES / "linear_flow.py", folder / "linear_flow.py")
    yaml = YAML()
    data = yaml.load((EXAMPLES / "linear_flow.yaml").read_text())
    data["deployment"]["work_pool"] = pool
    data["deployment"]["code"] = {"kind": "path"}
    data["deployment"]["name"] = name
    target = folder / "linear_flow.yaml"
    with target.open("w") as handle:
        yaml.dump(data, handle)
    return target


def _pools(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    found = prefect_api(env["PREFECT_API_URL"], "POST", "/work_pools/filter", {"limit": 200})
    return {p["name"]: p for p in found}  # type: ignore[union-attr]


def _limits(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    found = prefect_api(
        env["PREFECT_API_URL"], "POST", "/v2/concurrency_limits/filter", {"limit": 200}
    )
    return {c["name"]: c for c in found}  # type: ignore[union-attr]


def _variables(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    found = prefect_api(env["PREFECT_API_URL"], "POST", "/variables/filter", {"limit": 200})
    return {v["name"]: v for v in found}  # type: ignore[union-attr]


def _deployments(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    found = prefect_api(env["PREFECT_API_URL"], "POST", "/deployments/filter", {"limit": 200})
    return {d["name"]: d for d in found}  # type: ignore[union-attr]


def _updated(
    env: dict[str, str], pool: str, limit: str, variable: str, deployment: str
) -> list[str]:
    return [
        _pools(env)[pool]["updated"],
        _limits(env)[limit]["updated"],
        _variables(env)[variable]["updated"],
        _deployments(env)[deployment]["updated"],
    ]


def _markers(env: dict[str, str]) -> list[dict[str, Any]]:
    return [v for v in _variables(env).values() if "mfprefect-marker" in v["tags"]]


def test_pools_limits_and_variables_apply_once_show_drift_and_prune_after_pipelines(
    stack: dict[str, str], tmp_path: Path
) -> None:
    folder = tmp_path / "m"
    pool, limit, variable = "ws-gpu", "tag:mfprefect:gpu", "ws_models"
    _pool(folder, pool)
    _limit(folder, limit)
    _variable(folder, variable)
    _pipeline(folder, pool, "linear-ws")
    (folder / ".mfprefect-set").write_text("workspace\n")

    # The pool exists only in the manifests: plan shows it created before the deployment.
    plan = mfprefect("plan", str(folder), env=stack)
    assert plan.returncode == 1, plan.stdout + plan.stderr
    lines = plan.stdout.splitlines()
    order = [
        next(n for n, line in enumerate(lines) if line.startswith(f"+ create {what}"))
        for what in (
            "work pool ws-gpu",
            "concurrency limit tag:mfprefect:gpu",
            "variable ws_models",
            "deployment",
        )
    ]
    assert order == sorted(order), plan.stdout
    assert "job_variables.stream_output: false" in plan.stdout
    assert "4 to create" in plan.stdout

    applied = mfprefect("apply", str(folder), env=stack)
    assert applied.returncode == 0, applied.stderr
    made = _pools(stack)[pool]
    assert made["type"] == "process" and made["concurrency_limit"] == 3
    assert made["description"] == "GPU machines" and made["is_paused"] is False
    properties = made["base_job_template"]["variables"]["properties"]
    assert properties["stream_output"]["default"] is False
    assert "command" in made["base_job_template"]["job_configuration"]  # the type's template
    assert _limits(stack)[limit]["limit"] == 2 and _limits(stack)[limit]["active"] is True
    stored = _variables(stack)[variable]
    assert stored["value"] == {"bucket": "s3://models", "region": "eu-west-1"}
    assert sorted(stored["tags"]) == ["mfprefect", "mfprefect-set:workspace", "models"]
    marked = sorted(m["value"]["name"] for m in _markers(stack))
    assert marked == [limit, pool]
    assert all("mfprefect-set:workspace" in m["tags"] for m in _markers(stack))

    # Applying twice changes nothing: zero writes, by the server's own `updated` fields.
    before = _updated(stack, pool, limit, variable, "linear-ws")
    again = mfprefect("apply", str(folder), env=stack)
    assert again.returncode == 0 and "No changes" in again.stdout, again.stdout
    assert mfprefect("plan", str(folder), env=stack).returncode == 0
    assert _updated(stack, pool, limit, variable, "linear-ws") == before

    # Someone changes the limit, pauses the pool and edits the variable in the UI: drift.
    url = stack["PREFECT_API_URL"]
    prefect_api(url, "PATCH", f"/v2/concurrency_limits/{_limits(stack)[limit]['id']}", {"limit": 9})
    prefect_api(url, "PATCH", f"/work_pools/{pool}", {"is_paused": True})
    prefect_api(url, "PATCH", f"/variables/name/{variable}", {"value": "edited"})
    drift = mfprefect("plan", str(folder), env=stack)
    assert drift.returncode == 1, drift.stdout
    assert "~ update concurrency limit tag:mfprefect:gpu" in drift.stdout
    assert "limit: 9 -> 2" in drift.stdout and "paused: true -> false" in drift.stdout
    assert "~ update variable ws_models" in drift.stdout
    assert mfprefect("apply", str(folder), env=stack).returncode == 0
    assert _limits(stack)[limit]["limit"] == 2 and _pools(stack)[pool]["is_paused"] is False
    assert _variables(stack)[variable]["value"]["bucket"] == "s3://models"

    # A changed job-variable default reaches the pool's template; its job configuration stays.
    _pool(folder, pool, limit=4).write_text(
        _pool(folder, pool, limit=4)
        .read_text()
        .replace("stream_output: false", "stream_output: true")
    )
    assert mfprefect("apply", str(folder), env=stack).returncode == 0
    made = _pools(stack)[pool]
    assert made["concurrency_limit"] == 4
    assert made["base_job_template"]["variables"]["properties"]["stream_output"]["default"] is True

    # Prune: the limit and the variable go; the pool stays while a pipeline uses it.
    (folder / "limit.yaml").unlink()
    (folder / "variable.yaml").unlink()
    pruned = mfprefect("apply", str(folder), "--prune", env=stack)
    assert pruned.returncode == 0, pruned.stderr
    assert limit not in _limits(stack) and variable not in _variables(stack)
    assert [m["value"]["name"] for m in _markers(stack)] == [pool]
    # Deleting the pool but not the pipeline that uses it is a plan error, nothing written.
    (folder / f"pool-{pool}.yaml").unlink()
    refused = mfprefect("apply", str(folder), "--prune", env=stack)
    assert refused.returncode == 1, refused.stderr
    assert "linear_flow.yaml:" in refused.stderr and "this plan deletes it" in refused.stderr
    assert pool in _pools(stack)
    # Pipeline and pool together: the deployment is deleted first, then the pool.
    _pool(folder, pool)
    (folder / "linear_flow.yaml").unlink()
    (folder / f"pool-{pool}.yaml").unlink()
    gone = mfprefect("apply", str(folder), "--prune", "--allow-empty", env=stack)
    assert gone.returncode == 0, gone.stderr
    said = gone.stderr
    assert said.index("delete deployment") < said.index("delete work pool ws-gpu"), said
    assert pool not in _pools(stack) and "linear-ws" not in _deployments(stack)
    assert _markers(stack) == []


def test_a_pipeline_on_a_pool_nobody_has_is_a_plan_error(
    stack: dict[str, str], tmp_path: Path
) -> None:
    _pipeline(tmp_path, "no-such-pool", "linear-nowhere")
    plan = mfprefect("plan", str(tmp_path), env=stack)
    assert plan.returncode == 1, plan.stdout + plan.stderr
    assert "linear_flow.yaml:" in plan.stderr and "deployment.work_pool" in plan.stderr
    assert "neither the server nor the manifests have it" in plan.stderr
    assert "Traceback" not in plan.stderr


def test_a_pool_mfprefect_does_not_own_conflicts_until_adopted_and_other_sets_keep_theirs(
    stack: dict[str, str], tmp_path: Path
) -> None:
    made = run(
        [sys.executable, "-m", "prefect", "work-pool", "create", "ws-theirs", "--type", "process"],
        env=stack,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    _pool(tmp_path / "a", "ws-theirs")
    conflict = mfprefect("plan", str(tmp_path / "a"), "--set", "ws-a", env=stack)
    assert conflict.returncode == 1
    assert "! work pool ws-theirs: exists and is not managed by mfprefect" in conflict.stdout
    refused = mfprefect("apply", str(tmp_path / "a"), "--set", "ws-a", env=stack)
    assert refused.returncode == 3 and "--adopt" in refused.stderr
    assert _pools(stack)["ws-theirs"]["concurrency_limit"] is None
    adopted = mfprefect("apply", str(tmp_path / "a"), "--set", "ws-a", "--adopt", env=stack)
    assert adopted.returncode == 0, adopted.stderr
    assert _pools(stack)["ws-theirs"]["concurrency_limit"] == 3
    # Another set's prune with no pools of its own leaves ws-a's pool alone.
    _variable(tmp_path / "b", "ws_b_only")
    other = mfprefect("apply", str(tmp_path / "b"), "--prune", "--set", "ws-b", env=stack)
    assert other.returncode == 0, other.stderr
    assert "ws-theirs" in _pools(stack)
    for team in ("ws-a", "ws-b"):
        deleted = mfprefect("delete", "--set", team, env=stack)
        assert deleted.returncode == 0, deleted.stderr
    assert "ws-theirs" not in _pools(stack) and "ws_b_only" not in _variables(stack)
