"""deployment.executor without a cluster: the manifest rules, how @resources become Dask
resource restrictions, the start-of-run placement check, what a task sends to a worker, and
the exceptions a worker sends back. The real cluster is in test_dask.py."""

from __future__ import annotations

import io
import pickle

import pytest
from conftest import EXAMPLES
from ruamel.yaml import YAML

from mfprefect.errors import UsageError
from mfprefect.manifest import (
    EnvRef,
    Executor,
    Resources,
    SecretRef,
    check_text,
    from_data,
    with_executor,
)
from mfprefect.runtime import commands, engine
from mfprefect.runtime.cluster import resolve_address, restrictions, unplaceable


def _data(**deployment: object) -> dict:
    data = YAML(typ="safe").load((EXAMPLES / "resources_flow.yaml").read_text())
    data["deployment"]["work_pool"] = "pool"
    data["deployment"].update(deployment)
    data["runtime"].update(datastore="s3", datastore_root="s3://bucket/metaflow")
    return data


def _rules(data: dict) -> dict[str, str]:
    text = io.StringIO()
    YAML().dump(data, text)
    return {
        d.rule: d.path for d in check_text(text.getvalue(), "m.yaml")[1] if d.severity == "error"
    }


DASK = {"kind": "dask", "address": "tcp://scheduler:8786"}


def test_a_dask_executor_is_read_into_the_model() -> None:
    manifest = from_data(_data(executor=dict(DASK, max_concurrent_steps=64)))
    assert manifest.deployment.executor == Executor("dask", "tcp://scheduler:8786", 64)
    assert manifest.deployment.step_slots == 64
    by_env = from_data(_data(executor={"kind": "dask", "address": {"env": "DASK_ADDRESS"}}))
    assert by_env.deployment.executor.address == EnvRef("DASK_ADDRESS")
    assert by_env.deployment.step_slots == by_env.deployment.parallelism
    assert from_data(_data()).deployment.executor == Executor()


@pytest.mark.parametrize(
    "executor, rule, where",
    [
        ({"kind": "dask"}, "schema.required", "deployment.executor"),
        (
            {"kind": "dask", "address": "scheduler:8786"},
            "schema.pattern",
            "deployment.executor.address",
        ),
        (
            {"kind": "local", "address": "tcp://x:1"},
            "schema.unknown-field",
            "deployment.executor.address",
        ),
        ({"kind": "ray"}, "schema.enum", "deployment.executor.kind"),
    ],
)
def test_bad_executor_settings_are_refused_where_they_are(
    executor: dict, rule: str, where: str
) -> None:
    found = _rules(_data(executor=executor))
    assert found.get(rule) == where, found


def test_a_cluster_needs_a_code_package_and_a_shared_datastore() -> None:
    assert _rules(_data(executor=DASK)) == {}
    found = _rules(_data(executor=DASK, code={"kind": "path"}))
    assert found == {"executor.code": "deployment.code.kind"}
    local = _data(executor=DASK)
    local["runtime"].update(datastore="local", datastore_root=None)
    assert _rules(local) == {"executor.datastore": "runtime.datastore"}


def test_run_options_replace_the_executor_and_are_checked() -> None:
    manifest = from_data(_data(), str(EXAMPLES / "resources_flow.yaml"))
    on_cluster = with_executor(manifest, "dask", "tcp://127.0.0.1:8786")
    assert on_cluster.deployment.executor == Executor("dask", "tcp://127.0.0.1:8786")
    assert on_cluster.data["deployment"]["executor"]["address"] == "tcp://127.0.0.1:8786"
    assert with_executor(on_cluster, "local", None).deployment.executor == Executor()
    with pytest.raises(UsageError, match="needs the Dask scheduler.s address"):
        with_executor(manifest, "dask", None)
    with pytest.raises(UsageError, match="deployment.executor.address"):
        with_executor(manifest, "dask", "not-an-address")


def test_the_address_is_read_where_the_flow_runs() -> None:
    assert resolve_address(Executor("dask", "tcp://a:1"), {}) == "tcp://a:1"
    by_env = Executor("dask", EnvRef("DASK_ADDRESS"))
    assert resolve_address(by_env, {"DASK_ADDRESS": "tcp://b:2"}) == "tcp://b:2"
    with pytest.raises(UsageError, match="DASK_ADDRESS is not set"):
        resolve_address(by_env, {})


def test_resources_become_restrictions_on_what_the_cluster_meters() -> None:
    asks = Resources(cpu=2, memory=4096, gpu=1)
    # GPU is always a requirement; CPU and MEMORY only where some worker declares them.
    assert restrictions(asks, []) == {"GPU": 1.0}
    assert restrictions(asks, ["MEMORY"]) == {"MEMORY": 4096.0, "GPU": 1.0}
    assert restrictions(asks, ["CPU", "MEMORY", "GPU"]) == {
        "CPU": 2.0,
        "MEMORY": 4096.0,
        "GPU": 1.0,
    }
    assert restrictions(None, ["CPU"]) == {}
    assert restrictions(Resources(gpu=0), ["GPU"]) == {}


def test_a_step_no_worker_can_run_is_named_with_what_it_lacks() -> None:
    manifest = from_data(_data())
    assert manifest.steps["gpu"].resources == Resources(cpu=1, memory=1024, gpu=1, disk=2048)
    roomy = [{"GPU": 8.0, "MEMORY": 1e9, "CPU": 64.0, "DISK": 1e9}, {}]
    assert unplaceable(manifest, roomy, "tcp://s:1") is None
    assert unplaceable(manifest, [], "tcp://s:1") == "the Dask cluster at tcp://s:1 has no workers"
    assert unplaceable(manifest, [{}, {"CPU": 64.0}], "tcp://s:1") == (
        "step `gpu` needs GPU=1, and no worker of the Dask cluster at tcp://s:1 has that much "
        "(the most any worker has: GPU=0)"
    )
    # Enough of each resource, but never on one worker.
    split = [{"GPU": 8.0, "CPU": 64.0}, {"MEMORY": 1e9, "CPU": 64.0}]
    problem = unplaceable(manifest, split, "tcp://s:1")
    assert problem == (
        "step `gpu` needs CPU=1,MEMORY=1024,GPU=1, and no single worker of the Dask cluster at "
        "tcp://s:1 has all of it"
    )


def test_a_worker_gets_references_not_secret_values() -> None:
    data = _data(
        environment={"TOKEN": {"secret": "api-token"}, "PLAIN": "x", "FROM": {"env": "HOST_VAR"}}
    )
    manifest = from_data(data)
    step = next(iter(manifest.steps))
    data["steps"][step]["environment"] = {"TOKEN": "overridden", "PLAIN": {"env": "OTHER"}}
    manifest = from_data(data)
    ctx = commands.RunContext(manifest, "", "", "", "r1", base_env={"USER": "ada", "SECRET": "s"})
    plain, refs = commands.remote_environment(ctx, step)
    assert plain == {"METAFLOW_USER": "ada", "TOKEN": "overridden"}
    assert refs == {"PLAIN": EnvRef("OTHER"), "FROM": EnvRef("HOST_VAR")}
    plain, refs = commands.remote_environment(ctx, None)
    assert plain == {"METAFLOW_USER": "ada", "PLAIN": "x"}
    assert refs == {"TOKEN": SecretRef("api-token"), "FROM": EnvRef("HOST_VAR")}
    root = commands.RunContext(manifest, "", "", "", "r1", base_env={"USER": "root"})
    assert "METAFLOW_USER" not in commands.remote_environment(root, None)[0]


def test_a_step_failure_comes_back_from_a_worker_whole() -> None:
    failed = engine.StepFailed("F/r/s/t1", "exited with code 1", ["last line"], retryable=False)
    back = pickle.loads(pickle.dumps(failed))
    assert (back.message, back.hint, back.pathspec, back.retryable) == (
        failed.message,
        failed.hint,
        failed.pathspec,
        False,
    )
