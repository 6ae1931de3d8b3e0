"""Metaflow parity on deployed runs, against a Prefect server, a process worker in a folder of its
own (its own HOME and metadata, and no S3 sysroot: it knows only the roots the manifests name)
and a real S3 server (moto): @card, resuming a deployed run, and the Deployer's from_deployment."""

from __future__ import annotations

import base64
import json
import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, mfprefect, run
from prefect_stack import all_logs, api, metaflow_run_of, wait_flow_run
from remote_stack import deployment_stack, s3_server

pytestmark = pytest.mark.slow

FLOWS = ROOT / "tests" / "flows"
POOL = "parity-pool"
BUCKET = "parity"
DATASTORE_ROOT = f"s3://{BUCKET}/metaflow"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("parity")
    flag = {"RESUME_FLAG": str(base / "worker" / "resume-flag")}
    with s3_server(base / "s3", bucket=BUCKET) as s3:
        with deployment_stack(base, POOL, s3, s3_sysroot=False, worker_extra=flag) as found:
            yield dict(found, worker=found["worker_folder"])


def _deploy(stack: dict[str, Any], flow: str) -> Path:
    """Folder A with the flow, exported for S3 and the pool, and applied."""
    folder = stack["base"] / flow.removesuffix(".py")
    folder.mkdir()
    shutil.copy(FLOWS / flow, folder / flow)
    manifest = folder / "manifest.yaml"
    exported = mfprefect(
        "export",
        str(folder / flow),
        "-o",
        str(manifest),
        "--datastore",
        "s3",
        "--datastore-root",
        DATASTORE_ROOT,
        "--metadata",
        "local",
        "--work-pool",
        POOL,
        env=stack["env"],
    )
    assert exported.returncode == 0, exported.stderr
    applied = mfprefect("apply", str(manifest), env=stack["env"])
    assert applied.returncode == 0, applied.stderr
    return folder


def _trigger(env: dict[str, str], *args: str) -> str:
    done = mfprefect("trigger", *args, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def _probe(stack: dict[str, Any], code: str, *args: str) -> Any:
    """Run `code` with Metaflow's client (reading the worker's metadata); its last line, as JSON."""
    prelude = "import json, sys\nfrom metaflow import Run, Task, namespace\nnamespace(None)\n"
    done = run(
        [sys.executable, "-c", prelude + code, *args],
        env=stack["client"],
        cwd=stack["base"] / "client",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def cards_run(stack: dict[str, Any]) -> dict[str, str]:
    """One deployed run of cards_flow.py on the worker."""
    _deploy(stack, "cards_flow.py")
    flow_run_id = _trigger(stack["env"], "CardsFlow")
    finished = wait_flow_run(stack["env"], flow_run_id)
    assert finished["state"]["type"] == "COMPLETED", finished["state"]
    return {
        "flow_run_id": flow_run_id,
        "pathspec": metaflow_run_of(stack["client"], "CardsFlow", flow_run_id),
    }


def _card_texts(html: str) -> str:
    """The data a Metaflow card page carries (base64 JSON, one blob per card), decoded."""
    blobs = re.findall(r'__MF_DATA__\["[^"]+"\] = "([A-Za-z0-9+/=]+)"', html)
    return "\n".join(base64.b64decode(blob).decode("utf-8") for blob in blobs)


def test_cards_of_a_deployed_run_are_where_metaflow_finds_them(
    stack: dict[str, Any], cards_run: dict[str, str]
) -> None:
    pathspec = cards_run["pathspec"]
    found = _probe(
        stack,
        "from metaflow.cards import get_cards\n"
        "out = {}\n"
        "for step in Run(sys.argv[1]):\n"
        "    for task in step:\n"
        "        try:\n"
        "            cards = get_cards(task)\n"
        "        except Exception:\n"
        "            cards = []\n"
        "        out[task.pathspec.split('/', 2)[2]] = sorted(f'{c.type}:{c.id}' for c in cards)\n"
        "print(json.dumps(out))\n",
        pathspec,
    )
    by_step: dict[str, list[list[str]]] = {}
    for task, cards in sorted(found.items()):
        by_step.setdefault(task.split("/")[0], []).append(cards)
    assert by_step["start"] == [["default:None"]]
    assert by_step["each"] == [["blank:None", "blank:extra"], ["blank:None", "blank:extra"]]
    # The card whose type does not exist failed alone: its sibling and the step are fine.
    assert by_step["join"] == [["blank:survivor"]]
    assert by_step["end"] == [[]]

    out = stack["base"] / "cards-out"
    written = mfprefect("card", pathspec, "each", "-o", str(out), env=stack["client"])
    assert written.returncode == 0, written.stderr
    pages = sorted(p.name for p in out.iterdir())
    assert len(pages) == 5 and "index.html" in pages, pages
    texts = {name: _card_texts((out / name).read_text()) for name in pages}
    for item in (0, 1):
        assert any(f"# item {item}" in t for n, t in texts.items() if n.endswith("-blank.html"))
        assert any(
            f"extra for item {item}" in t for n, t in texts.items() if n.endswith("-extra.html")
        )
    one = mfprefect("card", f"{pathspec}/start", "-o", "-", env=stack["client"])
    assert one.returncode == 0 and one.stdout.lstrip().lower().startswith("<!doctype html")
    none = mfprefect("card", pathspec, "end", "-o", str(out), env=stack["client"])
    assert none.returncode == 1 and "has no cards" in none.stderr
    missing = mfprefect("card", "CardsFlow/no-such-run", env=stack["client"])
    assert missing.returncode == 2 and "not found" in missing.stderr

    logs = all_logs(stack["env"], [cards_run["flow_run_id"]])
    failed = [log["message"] for log in logs if "Card render failed" in log["message"]]
    assert failed and any("no_such_card_type" in log["message"] for log in logs), (
        "the failed card is said in the step's log"
    )
    # Each step's Prefect artifact links its cards and says how to open them.
    artifacts = api(
        stack["env"],
        "POST",
        "/artifacts/filter",
        {
            "artifacts": {"key": {"any_": ["each-artifacts"]}},
            "flow_runs": {"id": {"any_": [cards_run["flow_run_id"]]}},
        },
    )
    (artifact,) = artifacts
    text = artifact["data"]
    assert f"{DATASTORE_ROOT}/mf.cards/CardsFlow/runs/" in text and "(id `extra`)" in text
    assert f"mfprefect card {pathspec}/each/" in text


def _tasks(stack: dict[str, Any], pathspec: str) -> dict[str, Any]:
    """Every task of a run: step[index] -> whether it was cloned, and its origin run."""
    return _probe(
        stack,
        "out = {}\n"
        "for step in Run(sys.argv[1]):\n"
        "    for task in step:\n"
        "        index = task['_foreach_stack'].data[-1].index if task['_foreach_stack'].data else None\n"
        "        name = step.id + ('' if index is None else f'[{index}]')\n"
        "        out[name] = task.origin_pathspec\n"
        "run = Run(sys.argv[1])\n"
        "out['_squares'] = run['join'].task.data.squares if run.successful else None\n"
        "out['_count'] = run['start'].task.data.count\n"
        "print(json.dumps(out))\n",
        pathspec,
    )


def _flow_runs_of(env: dict[str, str], flow_name: str) -> list[dict]:
    found: list[dict] = api(
        env, "POST", "/flow_runs/filter", {"flows": {"name": {"any_": [flow_name]}}}
    )
    return found


RESUME_DRIVER = """
import json, sys, time
from metaflow import Deployer

deployer = Deployer(sys.argv[1]).prefect()
out = {}
for name in ("DeployedResumeFlow", "DeployedResumeFlow/DeployedResumeFlow"):
    out[name] = deployer.from_deployment(name).deployer.name
try:
    deployer.from_deployment("NoSuchFlow")
except Exception as exc:
    out["missing"] = [type(exc).__name__, str(exc)]
deployed = deployer.from_deployment("DeployedResumeFlow")
resumed = deployed.resume(origin_run_id=sys.argv[2], step_to_rerun="join")
out["pathspec"] = resumed.pathspec
deadline = time.time() + 240
while time.time() < deadline and resumed.status not in ("SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"):
    time.sleep(0.5)
out["status"] = resumed.status
out["run"] = resumed.run.pathspec
try:
    deployed.resume(origin_run_id="no-such-run")
except Exception as exc:
    out["bad_resume"] = [type(exc).__name__, str(exc)]
print("RESULT " + json.dumps(out))
"""


def test_a_deployed_run_resumes_on_the_worker(
    stack: dict[str, Any], cards_run: dict[str, str]
) -> None:
    env = stack["env"]
    folder = _deploy(stack, "deployed_resume_flow.py")
    failed_id = _trigger(env, "DeployedResumeFlow", "--param", "count=4")
    finished = wait_flow_run(env, failed_id)
    assert finished["state"]["type"] == "FAILED", finished["state"]
    origin = metaflow_run_of(stack["client"], "DeployedResumeFlow", failed_id)
    origin_id = origin.split("/")[1]

    # Bad input: one line, exit 2, and no flow run made.
    before = len(_flow_runs_of(env, "DeployedResumeFlow"))
    running = _trigger(env, "DeployedResumeFlow", "--param", "pause=30")
    running_id = "prefect-" + running.replace("-", "")
    other_id = cards_run["pathspec"].split("/")[1]
    for run_id, said in (
        (other_id, "is a run of CardsFlow, not of DeployedResumeFlow"),
        (running_id, "has not finished"),
        ("prefect-" + "0" * 32, "no run DeployedResumeFlow/prefect-0000"),
        ("no-such-run", "no run DeployedResumeFlow/no-such-run"),
    ):
        refused = mfprefect("trigger", "DeployedResumeFlow", "--resume", run_id, env=env)
        assert refused.returncode == 2, (run_id, refused.stderr)
        errors = [line for line in refused.stderr.splitlines() if line.startswith("mfprefect:")]
        assert len(errors) == 1 and said in errors[0], refused.stderr
        assert "Traceback" not in refused.stderr
    step_typo = mfprefect(
        "trigger", "DeployedResumeFlow", "--resume", origin_id, "--step", "jion", env=env
    )
    assert step_typo.returncode == 2 and "did you mean 'join'?" in step_typo.stderr
    assert len(_flow_runs_of(env, "DeployedResumeFlow")) == before + 1  # only `running`
    api(
        env,
        "POST",
        f"/flow_runs/{running}/set_state",
        {"state": {"type": "CANCELLING"}, "force": True},
    )

    # The fix lands where the steps run; the resume re-runs only item 1 and what follows.
    Path(stack["worker"] / "resume-flag").write_text("fixed")
    resumed_flow_run = _trigger(env, "DeployedResumeFlow", "--resume", origin_id)
    finished = wait_flow_run(env, resumed_flow_run)
    assert finished["state"]["type"] == "COMPLETED", finished["state"]
    # The origin's parameter values, shown on the flow run as they were used.
    assert finished["parameters"]["count"] == 4
    resumed = metaflow_run_of(stack["client"], "DeployedResumeFlow", resumed_flow_run)
    tasks = _tasks(stack, resumed)
    assert tasks.pop("_count") == 4 and tasks.pop("_squares") == [0, 1, 4, 9]
    assert tasks == {
        "start": f"{origin}/start/t1",
        "body[0]": tasks["body[0]"],
        "body[1]": None,
        "body[2]": tasks["body[2]"],
        "body[3]": tasks["body[3]"],
        "join": None,
        "end": None,
    }
    cloned = {name: path for name, path in tasks.items() if path}
    assert sorted(cloned) == ["body[0]", "body[2]", "body[3]", "start"]
    assert all(path.startswith(f"{origin}/") for path in cloned.values())

    # The Deployer's deployed flow does the same, here re-running `join` and what follows.
    (folder / "drive.py").write_text(RESUME_DRIVER)
    resumed_id = resumed.split("/")[1]
    driven = run(
        [sys.executable, "drive.py", "deployed_resume_flow.py", resumed_id],
        env=stack["client"],
        cwd=folder,
        timeout=400,
    )
    assert driven.returncode == 0, (driven.stdout[-2000:], driven.stderr[-3000:])
    out = json.loads(next(t for t in driven.stdout.splitlines() if t.startswith("RESULT "))[7:])
    key = "DeployedResumeFlow/DeployedResumeFlow"
    assert out["DeployedResumeFlow"] == key and out[key] == key
    assert (
        out["missing"][0] == "PrefectDeployerError"
        and "no Prefect deployment NoSuchFlow/NoSuchFlow" in out["missing"][1]
    )
    assert "\n" not in out["missing"][1].strip()
    assert out["status"] == "SUCCEEDED" and out["run"] == out["pathspec"]
    again = _tasks(stack, out["run"])
    assert again.pop("_squares") == [0, 1, 4, 9] and again.pop("_count") == 4
    assert again["join"] is None and again["end"] is None
    assert all(again[name] for name in ("start", "body[0]", "body[1]", "body[2]", "body[3]"))
    assert out["bad_resume"][0] == "PrefectDeployerError"
    assert "no run DeployedResumeFlow/no-such-run" in out["bad_resume"][1]


def test_a_locked_environment_runs_where_its_packages_are_not_installed(
    stack: dict[str, Any],
) -> None:
    """--environment=uv: the steps import a package only the flow's uv.lock has, on a worker
    that has neither it nor uv (uv comes from the package index), and in a local run."""
    import importlib.util

    assert importlib.util.find_spec("pyfiglet") is None and shutil.which("uv") is None
    env = dict(stack["env"], MFPREFECT_CACHE=str(stack["base"] / "applier-cache"))
    folder = stack["base"] / "locked"
    shutil.copytree(FLOWS / "locked", folder)
    top = ["--environment=uv", "--datastore=s3", f"--datastore-root={DATASTORE_ROOT}"]
    top += ["--metadata=local"]

    def flow(*args: str, cwd: Path = folder) -> Any:
        command = [sys.executable, "locked_flow.py", "--no-pylint", "--quiet", *args]
        return run(command, env=env, cwd=cwd, timeout=300)

    created = flow(*top, "prefect", "create", "--work-pool", POOL)
    assert created.returncode == 0, created.stderr[-3000:]
    flow_run_id = _trigger(env, "LockedFlow")
    finished = wait_flow_run(env, flow_run_id, timeout=300)
    assert finished["state"]["type"] == "COMPLETED", finished["state"]
    pathspec = metaflow_run_of(stack["client"], "LockedFlow", flow_run_id)
    seen = _probe(
        stack,
        "start = Run(sys.argv[1])['start'].task\n"
        "print(json.dumps({'banner': start.data.banner, 'python': start.data.python}))\n",
        pathspec,
    )
    assert "|" in seen["banner"] and "_" in seen["banner"]  # pyfiglet's lettering
    cache = stack["worker"] / "home" / ".cache" / "mfprefect"
    assert seen["python"].startswith(str(cache / "envs"))
    assert (cache / "uv" / "bin" / "uv").is_file()  # installed from the package index

    # The same flow runs locally, in the same kind of environment.
    ran = flow("--environment=uv", "prefect", "run")
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "|" in ran.stderr

    # A lock that cannot be installed fails the run before its first step, in one line.
    broken = stack["base"] / "locked-broken"
    shutil.copytree(FLOWS / "locked", broken)
    for name in ("uv.lock", "pyproject.toml"):
        path = broken / name
        path.write_text(path.read_text().replace("1.0.4", "99.0.0"))
    created = flow(*top, "prefect", "create", "--work-pool", POOL, "--name", "broken", cwd=broken)
    assert created.returncode == 0, created.stderr[-3000:]
    flow_run_id = _trigger(env, "LockedFlow", "--name", "broken")
    finished = wait_flow_run(env, flow_run_id, timeout=300)
    assert finished["state"]["type"] in ("FAILED", "CRASHED"), finished["state"]
    # The flow run's logs reach the server in batches, possibly after its final state.
    deadline = time.monotonic() + 30
    while True:
        lines = [log["message"] for log in all_logs(env, [flow_run_id])]
        said = [line for line in lines if "cannot build the locked environment" in line]
        if said or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert said and "\n" not in said[0] and "99.0.0" in said[0], lines
    tasks = api(env, "POST", "/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
    assert tasks == []
