"""Secrets: values given as references never appear anywhere mfprefect writes, stores or prints.

A flow whose @environment forwards DB_PASSWORD from the exporter's environment is exported (the
manifest gets `{env: DB_PASSWORD}`), and the manifest also refers to a Prefect Secret block, for
one step and for the whole deployment. The pipeline is run (`mfprefect run`, the compiled file,
and a deployment run by a worker), compiled, planned and applied against a real server. Then every
place a value could land is searched for both secrets: the manifest, the compiled file, every
command's output, plan text and JSON, the stored deployment (job variables and the manifest it
carries, decompressed), flow runs, task runs and artifacts, Prefect's logs for the runs, every
file in Metaflow's datastore (compressed artifacts decompressed), the server's folder (its log and
its database) and the worker's log. The steps did receive both: they record their hashes.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
import pickle
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import flow_cli, flow_env, mfprefect, run, stop_local_server
from prefect_stack import (
    all_logs,
    api,
    metaflow_data,
    metaflow_run_of,
    prefect_stack,
    wait_flow_run,
)

from mfprefect.deploy.desired import MANIFEST_ENV, decode_manifest

HERE = Path(__file__).resolve().parent
FLOW = HERE / "flows" / "secret_flow.py"
POOL = "mfp-secrets-pool"
BLOCK = "mfp-api-token"
PASSWORD = "DBPW-7c1e55a0-never-shown"  # in the environment of the exporter, runner and worker
TOKEN = "TOK-2b9f04d1-never-shown"  # in a Prefect Secret block only
SECRETS = (PASSWORD, TOKEN)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    home = tmp_path_factory.mktemp("secrets-stack")
    with prefect_stack(home, POOL, worker_env={"DB_PASSWORD": PASSWORD}) as env:
        env["DB_PASSWORD"] = PASSWORD
        saved = subprocess.run(  # the value goes through stdin, not a command line
            [
                sys.executable,
                "-c",
                "import sys\n"
                "from prefect.blocks.system import Secret\n"
                "Secret(value=sys.stdin.readline().strip()).save(sys.argv[1], overwrite=True)\n",
                BLOCK,
            ],
            env=env,
            input=TOKEN + "\n",
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert saved.returncode == 0, saved.stderr[-2000:]
        yield env


def _manifest(stack: dict[str, str], work: Path, outputs: dict[str, str]) -> Path:
    """Export the flow (Metaflow form), then refer to the Secret block for a step and for all."""
    shutil.copy(FLOW, work / "secret_flow.py")
    manifest = work / "secret.yaml"
    exported = flow_cli(
        work / "secret_flow.py",
        "prefect",
        "export",
        str(manifest),
        "--work-pool",
        POOL,
        env=stack,
        cwd=work,
    )
    outputs["export"] = exported.stdout + exported.stderr
    assert exported.returncode == 0, exported.stderr
    assert "{env: DB_PASSWORD}" in exported.stderr  # export said what it did instead
    text = manifest.read_text(encoding="utf-8")
    assert "      DB_PASSWORD:\n        env: DB_PASSWORD\n" in text
    text = text.replace(
        "      GREETING: hello\n",
        f"      GREETING: hello\n      API_TOKEN:\n        secret: {BLOCK}\n",
    )
    text = text.replace(
        "  environment: {}\nruntime:",
        f"  environment:\n    SHARED_TOKEN: {{secret: {BLOCK}}}\nruntime:",
    )
    manifest.write_text(text, encoding="utf-8")
    return manifest


def _pathspec(output: str) -> str:
    match = re.search(r"run (SecretFlow/\S+) completed", output)
    assert match, output[-3000:]
    return match.group(1)


def _received(stack: dict[str, str], pathspec: str) -> None:
    """The steps got the real values (only their hashes were kept)."""
    start = metaflow_data(stack, pathspec, "start", ["password_sha256", "token_sha256"])
    end = metaflow_data(stack, pathspec, "end", ["shared_sha256"])
    assert start["__successful"]
    assert start["password_sha256"] == _sha256(PASSWORD)
    assert start["token_sha256"] == _sha256(TOKEN)
    assert end["shared_sha256"] == _sha256(TOKEN)


def _flow_run_id(stack: dict[str, str], pathspec: str) -> str:
    tags = metaflow_data(stack, pathspec, "start", [])["__tags"]
    return next(t.split(":", 1)[1] for t in tags if t.startswith("prefect_flow_run:"))


def _without_graph_info_environment(value: Any) -> Any:
    """Metaflow's own `_graph_info` artifact records decorator arguments, and this flow's code
    computes one from DB_PASSWORD (`@environment(vars={"DB_PASSWORD": os.environ.get(...)})`), so
    every step process, like `python flow.py run`, stores it there. That is the flow's doing, not
    mfprefect's: blank exactly that one field, so any other copy still fails the search."""
    if not (isinstance(value, dict) and "steps" in value and "start_step" in value):
        return value
    blanked = copy.deepcopy(value)
    for step in blanked["steps"].values():
        for decorator in step.get("decorators", []):
            if decorator.get("name") == "environment":
                decorator["attributes"]["vars"].pop("DB_PASSWORD", None)
    return blanked


def _datastore_hits(root: Path) -> list[str]:
    """Files under a Metaflow datastore holding a secret: raw bytes, and decompressed artifacts."""
    hits = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        raw = path.read_bytes()
        if any(s.encode() in raw for s in SECRETS):
            hits.append(f"{path} (raw)")
        try:
            unpacked = gzip.decompress(raw)
        except (OSError, EOFError):
            continue
        if not any(s.encode() in unpacked for s in SECRETS):
            continue
        try:
            value = _without_graph_info_environment(pickle.loads(unpacked))  # noqa: S301
        except Exception:  # noqa: BLE001 - not a pickle: the bytes themselves are the hit
            hits.append(f"{path} (decompressed)")
            continue
        if any(s in repr(value) for s in SECRETS):
            hits.append(f"{path} (artifact)")
    return hits


def _folder_hits(root: Path) -> list[str]:
    """Every file under `root` (a server's database and log included) holding a secret."""
    return [
        str(path)
        for path in sorted(p for p in root.rglob("*") if p.is_file())
        if any(s.encode() in path.read_bytes() for s in SECRETS)
    ]


@pytest.mark.slow
def test_referenced_secrets_appear_nowhere(stack: dict[str, str], tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    outputs: dict[str, str] = {}

    def command(name: str, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        done = mfprefect(*args, env=stack, cwd=work)
        outputs[name] = done.stdout + done.stderr
        assert done.returncode == code, (name, done.stderr[-3000:])
        return done

    manifest = _manifest(stack, work, outputs)
    command("validate", "validate", str(manifest))
    command("graph", "graph", str(manifest))

    compiled = work / "run_secret.py"
    command("compile", "compile", str(manifest), str(compiled))
    ran_compiled = run([sys.executable, str(compiled)], env=stack, cwd=work)
    outputs["compiled run"] = ran_compiled.stdout + ran_compiled.stderr
    assert ran_compiled.returncode == 0, ran_compiled.stderr[-3000:]
    ran = command("run", "run", str(manifest))
    assert "password is ***" in ran.stderr and "token is ***" in ran.stderr
    assert "shared is ***" in ran.stderr

    command("plan", "plan", str(manifest), code=1)
    command("plan json", "plan", "--output", "json", str(manifest), code=1)
    command("apply", "apply", str(manifest))
    command("plan after apply", "plan", str(manifest))
    deployment = api(stack, "GET", "/deployments/name/SecretFlow/SecretFlow")
    carried = decode_manifest(deployment["job_variables"]["env"][MANIFEST_ENV])
    assert carried["steps"]["start"]["environment"]["DB_PASSWORD"] == {"env": "DB_PASSWORD"}
    assert carried["deployment"]["environment"]["SHARED_TOKEN"] == {"secret": BLOCK}
    triggered = command("trigger", "trigger", "SecretFlow")
    deployed_run_id = triggered.stdout.strip().splitlines()[-1]
    deployed_run = wait_flow_run(stack, deployed_run_id)
    assert deployed_run["state"]["type"] == "COMPLETED", deployed_run["state"]

    # Every run received both secrets.
    pathspecs = [
        _pathspec(outputs["compiled run"]),
        _pathspec(outputs["run"]),
        metaflow_run_of(stack, "SecretFlow", deployed_run_id),
    ]
    for pathspec in pathspecs:
        _received(stack, pathspec)
    flow_run_ids = [_flow_run_id(stack, p) for p in pathspecs[:2]] + [deployed_run_id]

    # What Prefect holds about the runs.
    logs = all_logs(stack, flow_run_ids)
    messages = [entry["message"] for entry in logs]
    assert "password is ***" in messages and "token is ***" in messages
    flow_runs = api(
        stack, "POST", "/flow_runs/filter", {"flow_runs": {"id": {"any_": flow_run_ids}}}
    )
    task_runs = api(
        stack, "POST", "/task_runs/filter", {"flow_runs": {"id": {"any_": flow_run_ids}}}
    )
    artifacts = api(
        stack, "POST", "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": flow_run_ids}}}
    )
    command("delete", "delete", str(manifest))

    places: dict[str, str] = {
        "manifest": manifest.read_text(encoding="utf-8"),
        "compiled file": compiled.read_text(encoding="utf-8"),
        "deployment": json.dumps(deployment),
        "carried manifest": json.dumps(carried),
        "prefect logs": json.dumps(logs),
        "flow runs": json.dumps(flow_runs),
        "task runs": json.dumps(task_runs),
        "prefect artifacts": json.dumps(artifacts),
        **{f"output of {name}": text for name, text in outputs.items()},
    }
    leaked = [place for place, text in places.items() for s in SECRETS if s in text]
    assert leaked == []
    home = Path(stack["_HOME"])
    assert _datastore_hits(home / "datastore") == []
    # The server's folder holds its log and its database (the Secret block's value is stored
    # encrypted); the worker's log; the Prefect client's home; the working folder.
    assert _folder_hits(home / "mfprefect-home") == []
    assert _folder_hits(home / "prefect-home") == []
    assert _folder_hits(work) == []
    worker_log = (home / "worker.log").read_bytes()
    assert not any(s.encode() in worker_log for s in SECRETS)


@pytest.mark.slow
def test_a_step_that_inherits_a_referenced_value_prints_it_masked(
    stack: dict[str, str], tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    manifest = _manifest(stack, work, {})
    manifest.write_text(  # no Secret block here: this run has a server of its own
        manifest.read_text(encoding="utf-8")
        .replace(f"      API_TOKEN:\n        secret: {BLOCK}\n", "")
        .replace(f"    SHARED_TOKEN: {{secret: {BLOCK}}}\n", "    SHARED_TOKEN: plain\n"),
        encoding="utf-8",
    )
    # Its own local server and datastore, so what leaks here cannot reach what the test above
    # searches, whichever runs first.
    own = flow_env(tmp_path)
    own.update(MFPREFECT_HOME=str(tmp_path / "mfprefect-home"), PRINT_INHERITED="1")
    own.update(DB_PASSWORD=PASSWORD, PREFECT_HOME=str(tmp_path / "prefect-home"))
    own.pop("PREFECT_API_URL", None)
    try:
        ran = mfprefect("run", str(manifest), env=own, cwd=work)
    finally:
        stop_local_server(own)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "inherited ***" in ran.stderr
    assert PASSWORD not in ran.stdout + ran.stderr


def test_export_refers_to_secrets_from_the_environment_and_flags_literal_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mfprefect.export import ExportOptions, _environment

    monkeypatch.setenv("DB_PASSWORD", PASSWORD)
    monkeypatch.delenv("API_TOKEN", raising=False)
    options = ExportOptions()
    variables = {
        "DB_PASSWORD": PASSWORD,
        "API_TOKEN": "hard-coded-token",
        "EMPTY_SECRET": "",
        "GREETING": "hello",
    }
    assert _environment("start", variables, options) == {
        "DB_PASSWORD": {"env": "DB_PASSWORD"},
        "API_TOKEN": "hard-coded-token",
        "EMPTY_SECRET": "",
        "GREETING": "hello",
    }
    notes = "\n".join(options.notes)
    assert "DB_PASSWORD looks like a secret and matches your environment" in notes
    assert "API_TOKEN looks like a secret but is written into the manifest" in notes
    assert "EMPTY_SECRET" not in notes and "GREETING" not in notes
    assert PASSWORD not in notes and "hard-coded-token" not in notes
