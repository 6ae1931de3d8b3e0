"""What a resolved run carries when Prefect pickles it (into every task it sends to Dask)."""

from __future__ import annotations

import pickle
from pathlib import Path

from mfprefect.manifest import load
from mfprefect.runtime.datastore import Datastore
from mfprefect.runtime.resolved import ResolvedRun

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "linear_flow.yaml"


def test_a_pickled_run_leaves_environment_secrets_and_open_datastore_behind() -> None:
    store = Datastore("LinearFlow", "local", "/tmp/ds/.metaflow")
    store._flow_datastore = {"opened": "here"}
    run = ResolvedRun(
        manifest=load(str(EXAMPLE)),
        datastore=store,
        parameters={"n": 1},
        run_id="prefect-1",
        base_env={"AWS_SECRET_ACCESS_KEY": "env-secret"},
        secrets={"block": "block-secret"},
    )
    blob = pickle.dumps(run)
    assert b"env-secret" not in blob and b"block-secret" not in blob and b"opened" not in blob
    back = pickle.loads(blob)  # noqa: S301 - our own bytes
    assert back.base_env == {} and back.secrets == {} and back.zygote is None
    assert back.datastore._flow_datastore is None
    assert (back.datastore.root, back.parameters, back.run_id) == (
        store.root,
        {"n": 1},
        "prefect-1",
    )
    assert back.manifest == run.manifest
    assert store._flow_datastore == {"opened": "here"}  # the original keeps what it opened
