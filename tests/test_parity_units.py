"""The pure parts of Metaflow parity: what a resume clones, the manifest rules, where cards are
written and how they are shown, and uv's error lines. The real runs are in test_parity.py."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import EXAMPLES
from ruamel.yaml import YAML

from mfprefect import cards
from mfprefect.errors import UsageError
from mfprefect.manifest import check_text, from_data
from mfprefect.runtime import commands, locked_env, resume, step_tasks


def _data(name: str = "split_join_flow") -> dict[str, Any]:
    data: dict[str, Any] = YAML(typ="safe").load((EXAMPLES / f"{name}.yaml").read_text())
    return data


def _errors(data: dict[str, Any]) -> dict[str, str]:
    text = io.StringIO()
    YAML().dump(data, text)
    return {
        d.rule: d.message for d in check_text(text.getvalue(), "m.yaml")[1] if d.severity == "error"
    }


def test_the_step_to_rerun_and_everything_after_it_run_again() -> None:
    manifest = from_data(_data())
    steps = list(manifest.steps)
    assert resume.rerun_steps(manifest, None) == set()
    assert resume.rerun_steps(manifest, manifest.end_step) == {manifest.end_step}
    assert resume.rerun_steps(manifest, manifest.start_step) == set(steps)
    branch = manifest.steps[manifest.start_step].next[0]
    again = resume.rerun_steps(manifest, branch)
    assert branch in again and manifest.end_step in again and manifest.start_step not in again
    with pytest.raises(UsageError) as refused:
        resume.rerun_steps(manifest, manifest.end_step + "x")
    assert refused.value.hint == f"did you mean {manifest.end_step!r}?"


def test_a_resume_clones_what_succeeded_before_the_step_to_rerun() -> None:
    manifest = from_data(_data("foreach_flow"))
    steps = list(manifest.steps)
    clones = {(step, (), 0): f"t{n}" for n, step in enumerate(steps)}
    origin = resume.Origin("run-1", clones, {})
    assert resume.reused(manifest, origin, None) == clones
    later = steps[2]
    kept = resume.reused(manifest, origin, later)
    assert set(kept) == {(step, (), 0) for step in steps[:2]}
    # Different parameter values re-run everything: steps read them through their inputs.
    origin = resume.Origin("run-1", clones, {"n": 3})
    assert resume.reused(manifest, origin, None, {"n": 3}) == clones
    assert resume.reused(manifest, origin, None, {"n": 4}) == {}


def test_parameter_values_compare_as_json() -> None:
    assert not resume.changed({"a": (1, 2), "b": {"x": 1}}, {"a": [1, 2], "b": {"x": 1}})
    assert resume.changed({"a": 1}, {"a": 1.5})
    assert resume.changed({}, {"a": 0})


def test_parameters_are_found_under_their_attribute_names() -> None:
    manifest = from_data(_data("parameters_flow"))
    names = list(manifest.parameters)
    stored = {name.replace("-", "_"): n for n, name in enumerate(names)}
    found = resume.parameters_from_artifacts(manifest, stored)
    assert found == {name: n for n, name in enumerate(names)}


def test_the_resume_parameter_name_is_reserved() -> None:
    data = _data("parameters_flow")
    first = next(iter(data["parameters"].values()))
    data["parameters"]["mfprefect-resume"] = dict(first)
    assert "`mfprefect-resume` is the parameter" in _errors(data)["parameters.reserved"]


@pytest.mark.parametrize("kind", ["conda", "pypi"])
def test_conda_and_pypi_environments_are_refused(kind: str) -> None:
    data = _data()
    data["runtime"]["environment"] = kind
    assert "lock the flow's packages with uv" in _errors(data)["runtime.environment"]
    data["runtime"]["environment"] = "uv"
    assert "runtime.environment" not in _errors(data)


def test_a_dask_executor_refuses_a_locked_environment() -> None:
    data = _data()
    data["deployment"]["executor"] = {"kind": "dask", "address": "tcp://scheduler:8786"}
    data["runtime"].update(datastore="s3", datastore_root="s3://b/m", environment="uv")
    assert "executor.environment" in _errors(data)


def _context(datastore: str, root: str) -> commands.RunContext:
    data = _data()
    data["runtime"].update(datastore=datastore, datastore_root=root)
    return commands.RunContext(from_data(data), sys.executable, "f.py", root, "run-1")


def test_cards_are_written_where_the_client_reads_them() -> None:
    s3 = _context("s3", "s3://bucket/metaflow/")
    expected = {"METAFLOW_CARD_S3ROOT": "s3://bucket/metaflow/mf.cards"}
    assert commands.card_variables(s3) == expected
    assert (
        commands.runtime_environment(s3)["METAFLOW_CARD_S3ROOT"] == expected["METAFLOW_CARD_S3ROOT"]
    )
    plain, _refs = commands.remote_environment(s3, None)
    assert plain["METAFLOW_CARD_S3ROOT"] == expected["METAFLOW_CARD_S3ROOT"]
    # For a local root Metaflow honours no such setting (see fetch.pull_package).
    local = _context("local", "/data/.metaflow")
    assert commands.card_variables(local) == {}
    assert "METAFLOW_CARD_LOCALROOT" not in commands.runtime_environment(local)


def test_service_registration_runs_with_this_interpreter() -> None:
    data = _data()
    data["runtime"]["metadata"] = "service"
    ctx = commands.RunContext(from_data(data), "/envs/locked/bin/python", "f.py", "/r", "run-1")
    args = commands.register_command(ctx)
    assert args is not None and args[0] == sys.executable and "register-run" in args


def test_name_value_pairs() -> None:
    assert commands.parse_pairs(["a=1", "b=x=y", "c="]) == [("a", "1"), ("b", "x=y"), ("c", "")]
    with pytest.raises(UsageError, match="--run-param 'a' is not NAME=VALUE"):
        commands.parse_pairs(["a"], "--run-param")


def test_a_step_artifact_links_its_cards() -> None:
    text = step_tasks.artifacts_markdown(
        "F",
        "run-1/each/t2",
        ["value"],
        [
            {"type": "blank", "id": "extra", "location": "s3://b/m/mf.cards/F/x-extra.html"},
            {"type": "default", "id": None, "location": "/data/mf.cards/F/default.html"},
        ],
    )
    assert (
        "- `blank` (id `extra`): [s3://b/m/mf.cards/F/x-extra.html](s3://b/m/mf.cards/F/x-extra.html)"
        in text
    )
    assert "(file:///data/mf.cards/F/default.html)" in text
    assert "`mfprefect card F/run-1/each/t2`" in text and "`mfprefect card F/run-1/each`" in text
    assert "Cards:" not in step_tasks.artifacts_markdown("F", "run-1/end/t3", [], [])


class _Card:
    def __init__(self, html: str) -> None:
        self.html = html

    def get(self) -> str:
        return self.html


def test_card_pages_are_named_by_task_and_indexed() -> None:
    found = [
        cards.FoundCard("F/r/each/t2", "blank", "extra", _Card("<p>a</p>")),
        cards.FoundCard("F/r/each/t3", "blank", None, _Card("<p>b</p>")),
    ]
    pages = cards.pages(found)
    assert [name for name, _ in pages] == [
        "index.html",
        "each-t2-blank-extra.html",
        "each-t3-blank.html",
    ]
    assert 'href="each-t2-blank-extra.html"' in pages[0][1] and "Cards of F/r" in pages[0][1]
    assert cards.pages(found[1:]) == [("each-t3-blank.html", "<p>b</p>")]
    odd = cards.FoundCard("F/r/s/t1", "x<y>", "a b", _Card(""))
    assert odd.file_name == "s-t1-x_y_-a_b.html"
    assert "x&lt;y&gt;" in cards.index_page([odd, odd])


def test_a_card_pathspec_is_checked_before_metaflow_is_asked() -> None:
    with pytest.raises(UsageError, match="is not a run, step or task pathspec"):
        cards.find("JustAFlow")
    with pytest.raises(UsageError, match="give a run"):
        cards.find("F/r/step", "step")


def test_the_lock_files_are_found_in_the_package_first(tmp_path: Path) -> None:
    project = tmp_path / "project"
    flow_dir = project / "flows"
    flow_dir.mkdir(parents=True)
    assert locked_env.project_files(flow_dir) is None
    for name in locked_env.LOCK_FILES:
        (project / name).write_text(name)
    assert locked_env.project_files(flow_dir) == project
    packed = flow_dir / locked_env.PACKAGE_META
    packed.mkdir()
    for name in locked_env.LOCK_FILES:
        (packed / name).write_text(name)
    assert locked_env.project_files(flow_dir) == packed


def test_uv_errors_become_their_telling_line() -> None:
    said = (
        "Resolved 2 packages in 1ms\n"
        "  × Failed to download `pyfiglet==99.0.0`\n"
        "  ├─▶ Failed to fetch: `https://files.example/pyfiglet-99.0.0-py3-none-any.whl`\n"
        "  ╰─▶ HTTP status client error (404 Not Found) for url (https://files.example/p.whl)\n"
        "  help: `pyfiglet` (v99.0.0) was included because `locked-flow` depends on `pyfiglet`\n"
        "hint: something generic\n"
    )
    line = locked_env.uv_error(said.replace("  help:", "hint:"))
    assert line == "HTTP status client error (404 Not Found) for url (https://files.example/p.whl)"
    assert locked_env.uv_error("") == "no error output"


def test_a_dask_run_of_a_locked_flow_is_refused_on_the_command_line() -> None:
    from mfprefect.cli_options import chosen_executor

    data = _data()
    data["runtime"].update(datastore="s3", datastore_root="s3://b/m", environment="uv")
    with pytest.raises(UsageError, match="locked environments"):
        chosen_executor(from_data(data), None, "tcp://scheduler:8786")


def test_the_package_hash_covers_the_lock(tmp_path: Path) -> None:
    from mfprefect.deploy.code import content_hash

    (tmp_path / "flow.py").write_text("print('flow')\n")
    for name in locked_env.LOCK_FILES:
        (tmp_path / name).write_text(f"{name} v1\n")
    plain = content_hash(tmp_path)
    locked = content_hash(tmp_path, locked=True)
    assert plain != locked
    (tmp_path / "uv.lock").write_text("uv.lock v2\n")
    assert content_hash(tmp_path) == plain  # not part of a package without the uv environment
    assert content_hash(tmp_path, locked=True) != locked
