"""In-place re-export (no Metaflow needed): code fields rewritten, comments and user fields kept."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

from ruamel.yaml import YAML

from mfprefect import document
from mfprefect.manifest import check_file

ROOT = Path(__file__).resolve().parent.parent


def _linear() -> dict:
    return json.loads(
        json.dumps(YAML(typ="safe").load((ROOT / "examples" / "linear_flow.yaml").read_text()))
    )


def test_render_new_matches_committed_example_bytes() -> None:
    assert document.render_new(_linear()) == (ROOT / "examples" / "linear_flow.yaml").read_text()


def test_render_over_unchanged_is_identity() -> None:
    text = (ROOT / "examples" / "linear_flow.yaml").read_text()
    assert document.render_over(text, _linear(), {}) == text


def test_render_over_edits_in_place() -> None:
    data = _linear()
    text = document.render_new(data)
    text = text.replace("  work_pool: null\n", "  work_pool: pool-a  # platform owned\n")
    text = text.replace("  middle:\n", "  # the heavy step\n  middle:\n")
    text = text.replace("    next: [middle]\n", "    next: [middle]  # edge\n")
    text = text.replace("  parallelism: 16\n", "")  # a user-owned field missing: filled back in
    new = copy.deepcopy(data)
    new["steps"]["middle"]["retries"] = {"times": 2, "delay_seconds": 60}
    new["steps"]["middle"]["doc"] = "Line one.\nLine two."
    new["flow"]["sha256"] = "0" * 64
    out = document.render_over(text, new, {"deployment.tags": ["a", "b"]})
    assert "work_pool: pool-a  # platform owned" in out
    assert "# the heavy step" in out and "next: [middle]  # edge" in out
    assert "    retries:\n      times: 2\n      delay_seconds: 60\n" in out
    assert "    doc: |-\n      Line one.\n      Line two.\n" in out
    assert "  tags: [a, b]\n" in out
    assert "  parallelism: 16\n" in out
    assert out.count("0" * 64) == 1
    # only the changed lines differ
    before, after = text.splitlines(), out.splitlines()
    assert len([line for line in after if line not in before]) <= 9


def test_code_schedule_wins_but_hand_schedule_is_kept() -> None:
    data = _linear()
    text = document.render_new(data).replace(
        "schedule: null\n", "schedule:\n  cron: 0 1 * * *\n  timezone: UTC\n"
    )
    assert "cron: 0 1 * * *" in document.render_over(text, data, {})
    coded = dict(data, schedule={"cron": "0 6 * * *", "timezone": None})
    out = document.render_over(text, coded, {})
    assert "cron: 0 6 * * *" in out and "0 1 * * *" not in out


def test_stale_flow_file_is_a_warning(tmp_path: Path) -> None:
    shutil.copy(ROOT / "examples" / "linear_flow.py", tmp_path / "linear_flow.py")
    shutil.copy(ROOT / "examples" / "linear_flow.yaml", tmp_path / "linear_flow.yaml")
    assert check_file(str(tmp_path / "linear_flow.yaml"))[1] == []
    with open(tmp_path / "linear_flow.py", "a") as handle:
        handle.write("# changed\n")
    diagnostics = check_file(str(tmp_path / "linear_flow.yaml"), "linear_flow.yaml")[1]
    assert [(d.severity, d.rule) for d in diagnostics] == [("warning", "flow.stale")]
    (tmp_path / "linear_flow.py").unlink()
    diagnostics = check_file(str(tmp_path / "linear_flow.yaml"), "linear_flow.yaml")[1]
    assert [(d.severity, d.rule) for d in diagnostics] == [("warning", "flow.missing")]


def test_render_over_keeps_the_fields_a_reviewer_left_to_the_ui() -> None:
    data = _linear()
    text = document.render_new(data).replace(
        "  paused: false\n",
        "  paused: false\n  # ops pause it during incidents\n  unmanaged: [paused]\n",
    )
    new = copy.deepcopy(data)
    new["steps"]["middle"]["doc"] = "Changed in the code."
    out = document.render_over(text, new, {"deployment.tags": ["a"]})
    assert "  # ops pause it during incidents\n  unmanaged: [paused]\n" in out
    assert document.render_over(out, new, {"deployment.tags": ["a"]}) == out
