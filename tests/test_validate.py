"""`mfprefect validate` against a corpus of broken and hostile manifests.

Every file in tests/manifests/invalid/ starts with `# expect: RULE[, RULE...] @ LINE:COL`: the rule
ids it must produce and where the first of them must be reported. Hostile inputs that should not
live in the repository (empty, non-UTF-8, huge, alias bombs, ...) are built in tmp_path.

Known bugs in mfprefect are kept as strict xfails: each says what is expected and what happens.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import mutate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mfprefect import yamlsafe
from mfprefect.cli import cli
from mfprefect.cli import main as cli_main
from mfprefect.diagnostics import ERROR
from mfprefect.manifest import check_file, check_text

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
CORPUS = ROOT / "tests" / "manifests" / "invalid"
LINEAR = EXAMPLES / "linear_flow.yaml"

EXPECT = re.compile(r"^# expect: (?P<rules>[a-z0-9_.,\- ]+?) @ (?P<line>\d+):(?P<col>\d+)\s*$")

KNOWN_RULES = {
    "schema.unknown-field",
    "schema.required",
    "schema.type",
    "schema.enum",
    "schema.const",
    "schema.pattern",
    "schema.range",
    "schema.size",
    "schema.name",
    "deployment.tags",
    "graph.kind",
    "graph.next",
    "graph.end",
    "graph.start",
    "graph.reachable",
    "graph.cycle",
    "graph.join",
    "graph.switch",
    "parameters.default",
    "parameters.name",
    "schedule.cron",
    "schedule.timezone",
    "triggers.parameter",
    "triggers.duplicate",
    "yaml",
    "yaml.duplicate-key",
    "yaml.tag",
    "yaml.merge",
    "yaml.bool",
    "yaml.unicode",
    "yaml.number",
    "yaml.depth",
    "yaml.size",
    "yaml.key",
    "file.empty",
    "file.encoding",
    "file.size",
}

KNOWN_BUGS: dict[str, str] = {}


def _expectation(path: Path) -> tuple[list[str], int, int]:
    first = path.read_bytes().split(b"\n", 1)[0].decode("utf-8")
    match = EXPECT.match(first)
    assert match, f"{path.name}: first line must be `# expect: RULE[, RULE...] @ LINE:COL`"
    rules = [r.strip() for r in match["rules"].split(",") if r.strip()]
    return rules, int(match["line"]), int(match["col"])


def _corpus() -> list[Path]:
    return sorted(CORPUS.glob("*.yaml"))


def _corpus_params(with_known_bugs: bool) -> list:
    params = []
    for path in _corpus():
        marks = []
        if with_known_bugs and path.stem in KNOWN_BUGS:
            marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[path.stem]))
        params.append(pytest.param(path, id=path.stem, marks=marks))
    return params


def _errors(diagnostics):
    return [d for d in diagnostics if d.severity == ERROR]


def _check_bytes(tmp_path: Path, blob: bytes, name: str = "m.yaml"):
    path = tmp_path / name
    path.write_bytes(blob)
    return check_file(str(path), name)[1]


def _line_col(text: str, needle: str) -> tuple[int, int]:
    """1-based line and column (in characters) of the first `needle` in `text`."""
    offset = text.index(needle)
    line = text.count("\n", 0, offset) + 1
    col = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, col


# ---------------------------------------------------------------------------------------------
# The committed corpus


def test_corpus_is_complete() -> None:
    files = _corpus()
    assert len(files) >= 45
    for path in files:
        rules, line, col = _expectation(path)
        assert rules and line >= 1 and col >= 1
        assert set(rules) <= KNOWN_RULES, path.name
    assert set(KNOWN_BUGS) <= {p.stem for p in files}


@pytest.mark.parametrize("path", _corpus_params(with_known_bugs=False))
def test_invalid_manifest_has_errors(path: Path) -> None:
    doc, diagnostics = check_file(str(path), path.name)
    assert _errors(diagnostics), f"{path.name} validated clean"
    for d in diagnostics:
        assert d.file == path.name and d.line >= 1 and d.col >= 1 and d.message


@pytest.mark.parametrize("path", _corpus_params(with_known_bugs=True))
def test_invalid_manifest_reports_expected(path: Path) -> None:
    rules, line, col = _expectation(path)
    _, diagnostics = check_file(str(path), path.name)
    errors = _errors(diagnostics)
    shown = "\n".join(d.text() for d in diagnostics)
    assert errors, shown
    got = {d.rule for d in errors}
    for rule in rules:
        assert rule in got, f"expected {rule}; got:\n{shown}"
    at = [(d.line, d.col) for d in errors if d.rule == rules[0]]
    assert (line, col) in at, f"expected {rules[0]} at {line}:{col}; got:\n{shown}"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_example_is_valid(path: Path) -> None:
    _, diagnostics = check_file(str(path), path.name)
    assert not _errors(diagnostics), "\n".join(d.text() for d in diagnostics)


# ---------------------------------------------------------------------------------------------
# Hostile files built on the fly


def test_empty_file(tmp_path: Path) -> None:
    [d] = _check_bytes(tmp_path, b"")
    assert (d.rule, d.line, d.col) == ("file.empty", 1, 1)


def test_comments_only_file(tmp_path: Path) -> None:
    [d] = _check_bytes(tmp_path, b"# just a comment\n\n   # and another\n")
    assert d.rule == "file.empty"


def test_utf16_bytes(tmp_path: Path) -> None:
    [d] = _check_bytes(tmp_path, b"\xff\xfea\x00p\x00i\x00")
    assert (d.rule, d.line, d.col) == ("file.encoding", 1, 1)
    assert "0xff" in d.message


def test_latin1_byte_in_the_middle(tmp_path: Path) -> None:
    text = LINEAR.read_text(encoding="utf-8").replace(
        "Double the value", "Double the caf\xe9 value"
    )
    line, col = _line_col(text, "\xe9")
    [d] = _check_bytes(tmp_path, text.encode("latin-1"))
    assert (d.rule, d.line, d.col) == ("file.encoding", line, col)


def test_latin1_byte_after_utf8_characters_column(tmp_path: Path) -> None:
    text = LINEAR.read_text(encoding="utf-8").replace("Double the value", "Doublé thè caf\udce9")
    line, col = _line_col(text, "\udce9")
    [d] = _check_bytes(tmp_path, text.encode("utf-8", errors="surrogateescape"))
    assert (d.rule, d.line, d.col) == ("file.encoding", line, col)


def test_utf8_bom_is_valid(tmp_path: Path) -> None:
    diagnostics = _check_bytes(tmp_path, b"\xef\xbb\xbf" + LINEAR.read_bytes())
    assert not _errors(diagnostics)


def test_bom_then_bad_byte_line(tmp_path: Path) -> None:
    blob = b"\xef\xbb\xbf" + LINEAR.read_bytes().replace(b"kind: Pipeline", b"kind: Pipel\xe9ne")
    [d] = _check_bytes(tmp_path, blob)
    assert (d.rule, d.line, d.col) == ("file.encoding", 4, 12)


def test_nul_byte(tmp_path: Path) -> None:
    text = LINEAR.read_text(encoding="utf-8").replace("Record the final", "Record\x00 the final")
    line, col = _line_col(text, "\x00")
    [d] = _check_bytes(tmp_path, text.encode("utf-8"))
    assert (d.rule, d.line, d.col) == ("file.encoding", line, col)


@pytest.mark.parametrize("char", ["\x07", "\x1b", "\x7f"], ids=["bel", "esc", "del"])
def test_control_character_position(tmp_path: Path, char: str) -> None:
    text = LINEAR.read_text(encoding="utf-8").replace("Double the value", f"Double the {char}value")
    line, col = _line_col(text, char)
    diagnostics = _errors(_check_bytes(tmp_path, text.encode("utf-8")))
    assert diagnostics
    assert (diagnostics[0].line, diagnostics[0].col) == (line, col), diagnostics[0].text()


def test_cr_only_line_ends_encoding_line(tmp_path: Path) -> None:
    text = LINEAR.read_text(encoding="utf-8").replace("Double the value", "Double the caf\xe9")
    line, col = _line_col(text, "\xe9")
    [d] = _check_bytes(tmp_path, text.replace("\n", "\r").encode("latin-1"))
    assert (d.rule, d.line, d.col) == ("file.encoding", line, col)


@pytest.mark.parametrize("newline", [b"\r\n", b"\r"], ids=["crlf", "cr"])
def test_other_line_ends_are_valid(tmp_path: Path, newline: bytes) -> None:
    assert not _errors(_check_bytes(tmp_path, LINEAR.read_bytes().replace(b"\n", newline)))


def test_crlf_line_ends_encoding_line(tmp_path: Path) -> None:
    text = LINEAR.read_text(encoding="utf-8").replace("Double the value", "Double the caf\xe9")
    line, col = _line_col(text, "\xe9")
    [d] = _check_bytes(tmp_path, text.replace("\n", "\r\n").encode("latin-1"))
    assert (d.rule, d.line, d.col) == ("file.encoding", line, col)


def test_six_megabyte_file(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    chunk = b"# padding padding padding padding padding padding padding padding\n" * 1024
    with open(path, "wb") as handle:
        handle.write(LINEAR.read_bytes())
        while handle.tell() < 6 * 1024 * 1024:
            handle.write(chunk)
    [d] = check_file(str(path), "big.yaml")[1]
    assert (d.rule, d.line, d.col) == ("file.size", 1, 1)


def test_fifty_megabyte_sparse_file(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as handle:
        handle.write(LINEAR.read_bytes())
        handle.truncate(50 * 1024 * 1024)
    [d] = check_file(str(path), "huge.yaml")[1]
    assert d.rule == "file.size"


def test_text_over_the_size_limit() -> None:
    [d] = check_text(b"a: " + b"x" * (6 * 1024 * 1024))[1]
    assert d.rule == "file.size"


def _run_python(code: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter; raise subprocess.TimeoutExpired if it runs too long."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_alias_bomb_is_refused_quickly_with_bounded_memory() -> None:
    # "Billion laughs": 9 levels of 9 aliases would expand to 9**9 (387 million) strings.
    result = _run_python(
        """
        import json, resource
        from mfprefect.manifest import check_text
        lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
        for i in range(1, 9):
            prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
            lines.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]")
        doc, diagnostics = check_text("\\n".join(lines) + "\\n", "bomb.yaml")
        rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"rules": [d.rule for d in diagnostics], "rss_kib": rss_kib}))
        """,
        timeout=20,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["rules"] == ["yaml.size"]
    assert report["rss_kib"] < 400 * 1024


def test_recursive_alias() -> None:
    _, diagnostics = check_text("a: &x [1, *x]\n")
    assert [d.rule for d in diagnostics] in (["yaml.depth"], ["yaml.size"], ["yaml"])


def test_ten_thousand_open_brackets() -> None:
    _, diagnostics = check_text("[" * 10_000)
    assert len(diagnostics) == 1
    assert diagnostics[0].rule in ("yaml.depth", "yaml")


def test_ten_thousand_nested_mappings() -> None:
    _, diagnostics = check_text("a: " + "{b: " * 10_000 + "}" * 10_000 + "\n")
    assert [d.rule for d in diagnostics] in (["yaml.depth"], ["yaml"])


@pytest.mark.parametrize("text", ["- a\n- b\n", "[1, 2]\n"], ids=["block", "flow"])
def test_top_level_list(text: str) -> None:
    [d] = check_text(text)[1]
    assert (d.rule, d.line, d.col) == ("schema.type", 1, 1)


@pytest.mark.parametrize("text", ["hello\n", "42\n", "null\n", "true\n", "'quoted'\n"])
def test_top_level_scalar(text: str) -> None:
    [d] = check_text(text)[1]
    assert (d.rule, d.line, d.col) == ("schema.type", 1, 1)


def test_multi_document_stream(tmp_path: Path) -> None:
    text = LINEAR.read_text(encoding="utf-8")
    [d] = _check_bytes(tmp_path, (text + "---\n" + text).encode("utf-8"))
    assert d.rule == "yaml"
    assert d.line == text.count("\n") + 1 and d.col == 1
    assert "document" in d.message


def test_many_tags_do_not_hang() -> None:
    result = _run_python(
        """
        from mfprefect.manifest import check_text
        base = open("examples/linear_flow.yaml", encoding="utf-8").read()
        tags = ", ".join(f"t{i}" for i in range(30_000)) + ", {}"
        _, diagnostics = check_text(base.replace("  tags: []", "  tags: [" + tags + "]"))
        assert any(d.rule == "schema.size" for d in diagnostics)
        """,
        timeout=6,
    )
    assert result.returncode == 0, result.stderr


def test_many_dangling_targets_do_not_hang() -> None:
    result = _run_python(
        """
        from mfprefect.manifest import check_text
        base = open("examples/linear_flow.yaml", encoding="utf-8").read()
        steps = "".join(f"  step{i}: {{kind: linear, next: [gone{i}]}}\\n" for i in range(5_000))
        _, diagnostics = check_text(base.replace("schedule: null", steps + "schedule: null"))
        assert any(d.rule == "graph.next" for d in diagnostics)
        """,
        timeout=6,
    )
    assert result.returncode == 0, result.stderr


def test_join_as_start_step() -> None:
    text = LINEAR.read_text(encoding="utf-8").replace(
        "  start:\n    kind: linear", "  start:\n    kind: join"
    )
    line, col = _line_col(text, "kind: join")
    _, diagnostics = check_text(text)
    assert ("graph.join", line, col + len("kind: ")) in {
        (d.rule, d.line, d.col) for d in diagnostics
    }


def test_empty_value_is_reported_on_its_key_line() -> None:
    text = LINEAR.read_text(encoding="utf-8").replace("  paused: false", "  paused:")
    line, _ = _line_col(text, "  paused:")
    [d] = check_text(text)[1]
    assert d.rule == "schema.type" and d.path == "deployment.paused"
    assert d.line == line


def test_check_text_with_a_lone_surrogate() -> None:
    _, diagnostics = check_text("apiVersion: \ud800\n")
    assert _errors(diagnostics)


@pytest.mark.parametrize("fmt", ["text", "github"])
def test_cli_lone_surrogate_key(tmp_path: Path, fmt: str) -> None:
    path = _manifest(tmp_path, "kind: Pipeline\n", 'kind: Pipeline\n"\\ud800": 1\n')
    result = subprocess.run(
        [sys.executable, "-m", "mfprefect.cli", "validate", "--format", fmt, str(path)],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert b"internal error" not in result.stderr


# ---------------------------------------------------------------------------------------------
# Messages


def _manifest(tmp_path: Path, old: str, new: str, name: str = "m.yaml") -> Path:
    text = LINEAR.read_text(encoding="utf-8")
    assert old in text
    path = tmp_path / name
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


def _messages(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for d in check_file(str(path), path.name)[1]:
        out.setdefault(d.rule, []).append(d.message)
    return out


def test_did_you_mean_retries(tmp_path: Path) -> None:
    path = _manifest(
        tmp_path, "    doc: Double", "    retriez: {times: 1, delay_seconds: 0}\n    doc: Double"
    )
    assert any("did you mean `retries`" in m for m in _messages(path)["schema.unknown-field"])


def test_did_you_mean_dangling_next(tmp_path: Path) -> None:
    path = _manifest(tmp_path, "next: [middle]", "next: [middel]")
    assert any(
        "`middel`" in m and "did you mean `middle`" in m for m in _messages(path)["graph.next"]
    )


def test_did_you_mean_top_level_schedule(tmp_path: Path) -> None:
    path = _manifest(tmp_path, "schedule: null", "schedulez: null")
    assert any("did you mean `schedule`" in m for m in _messages(path)["schema.unknown-field"])


def test_did_you_mean_trigger_parameter() -> None:
    text = (EXAMPLES / "trigger_flow.yaml").read_text(encoding="utf-8")
    _, diagnostics = check_text(text.replace("      path: file_path", "      pth: file_path"))
    [d] = diagnostics
    assert (
        d.rule == "triggers.parameter"
        and "`pth`" in d.message
        and "did you mean `path`" in d.message
    )


def test_did_you_mean_timezone() -> None:
    text = (EXAMPLES / "schedule_flow.yaml").read_text(encoding="utf-8")
    [d] = check_text(text.replace("Europe/Amsterdam", "Europe/Amsterdm"))[1]
    assert d.rule == "schedule.timezone" and "Europe/Amsterdam" in d.message


def test_label_name_message(tmp_path: Path) -> None:
    path = _manifest(tmp_path, "  labels: {}", "  labels:\n    team lead: ml")
    [d] = _errors(check_file(str(path), path.name)[1])
    assert "is not a string" not in d.message
    assert d.path == "metadata.labels.team lead"


# ---------------------------------------------------------------------------------------------
# The command line

TEXT_LINE = re.compile(
    r"^(?P<file>[^\n]+?):(?P<line>\d+):(?P<col>\d+): (?P<severity>error|warning)"
    r"\[(?P<rule>[a-z0-9_.-]+)\](?: (?P<path>[^\n:]+):)? (?P<message>.+)$"
)
GITHUB_LINE = re.compile(
    r"^::(?P<level>error|warning) file=(?P<file>[^,]+),line=(?P<line>\d+),col=(?P<col>\d+),"
    r"title=(?P<title>[^:]+)::(?P<body>.+)$"
)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def five_errors(tmp_path: Path) -> Path:
    """Five independent problems in one file, each on its own line."""
    text = LINEAR.read_text(encoding="utf-8")
    for old, new in [
        ("apiVersion: mfprefect/v1", "apiVersion: mfprefect/v2"),
        ("    doc: Double", "    retriez: 3\n    doc: Double"),
        ("  parallelism: 16", "  parallelism: 0"),
        ("  datastore: local", "  datastore: s4"),
        ("  work_pool: null", "  work_pool: 7"),
    ]:
        assert old in text
        text = text.replace(old, new, 1)
    path = tmp_path / "five.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_cli_valid_exit_0(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["validate", str(LINEAR)])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "valid" in result.stderr


def test_cli_invalid_exit_1(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["validate", str(CORPUS / "graph_dangling_next_middel.yaml")])
    assert result.exit_code == 1
    assert "error[graph.next]" in result.stdout
    assert "error(s)" in result.stderr


@pytest.mark.parametrize(
    "args", [[], ["--format", "xml", str(LINEAR)]], ids=["no-paths", "bad-format"]
)
def test_cli_usage_error_exit_2(runner: CliRunner, args: list[str]) -> None:
    assert runner.invoke(cli, ["validate", *args]).exit_code == 2


def test_cli_missing_path_exit_2(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(cli, ["validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "nope.yaml" in result.output


def test_main_missing_path_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli_main(["validate", str(tmp_path / "nope.yaml")])
    assert exc.value.code == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_main_empty_folder_exit_2(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        cli_main(["validate", str(tmp_path)])
    assert exc.value.code == 2


def test_cli_text_format(runner: CliRunner, five_errors: Path) -> None:
    result = runner.invoke(cli, ["validate", str(five_errors)])
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines
    for line in lines:
        match = TEXT_LINE.match(line)
        assert match, line
        assert match["file"] == five_errors.as_posix()
    assert any(TEXT_LINE.match(x)["path"] == "deployment.parallelism" for x in lines)


def test_cli_every_problem_at_once(runner: CliRunner, five_errors: Path) -> None:
    result = runner.invoke(cli, ["validate", "--format", "json", str(five_errors)])
    payload = json.loads(result.stdout)
    found = {(d["rule"], d["path"]) for d in payload["diagnostics"]}
    assert found == {
        ("schema.const", "apiVersion"),
        ("schema.unknown-field", "steps.middle.retriez"),
        ("schema.range", "deployment.parallelism"),
        ("schema.enum", "runtime.datastore"),
        ("schema.type", "deployment.work_pool"),
    }
    assert payload["errors"] == 5
    assert len({d["line"] for d in payload["diagnostics"]}) == 5


def test_cli_json_format(runner: CliRunner, five_errors: Path) -> None:
    result = runner.invoke(cli, ["validate", "--format", "json", str(five_errors), str(LINEAR)])
    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    assert payload["format_version"] == 1
    assert payload["valid"] is False
    assert payload["errors"] == 5 == sum(d["severity"] == "error" for d in payload["diagnostics"])
    for d in payload["diagnostics"]:
        assert {"file", "line", "col", "rule", "path", "message"} <= set(d)
        assert isinstance(d["line"], int) and d["line"] >= 1
        assert isinstance(d["col"], int) and d["col"] >= 1
        assert d["file"] == five_errors.as_posix()


def test_cli_json_valid(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["validate", "--format", "json", str(LINEAR)])
    assert result.exit_code == 0
    payload = json.loads(result.stdout)
    assert payload["valid"] is True and payload["errors"] == 0 and payload["diagnostics"] == []


def test_cli_github_format(runner: CliRunner, five_errors: Path) -> None:
    result = runner.invoke(cli, ["validate", "--format", "github", str(five_errors)])
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert len(lines) == 5
    rules = set()
    for line in lines:
        match = GITHUB_LINE.match(line)
        assert match, line
        assert match["level"] == "error" and int(match["line"]) >= 1 and int(match["col"]) >= 1
        rules.add(match["title"])
    assert rules == {
        "schema.const",
        "schema.unknown-field",
        "schema.range",
        "schema.enum",
        "schema.type",
    }


def test_cli_github_format_escapes_newlines(runner: CliRunner, tmp_path: Path) -> None:
    path = _manifest(tmp_path, "next: [middle]", 'next: ["gone\\n::warning::injected"]')
    result = runner.invoke(cli, ["validate", "--format", "github", str(path)])
    assert result.exit_code == 1
    for line in result.stdout.splitlines():
        assert GITHUB_LINE.match(line), line


def test_cli_text_format_is_one_line_per_diagnostic(runner: CliRunner, tmp_path: Path) -> None:
    text = LINEAR.read_text(encoding="utf-8")
    text = text.replace(
        "kind: Pipeline\n", 'kind: Pipeline\n"x\\n::error file=README.md::pwned\\e[2J": 1\n'
    )
    text = text.replace("next: [middle]", 'next: ["gone\\n::warning::injected"]')
    path = tmp_path / "inject.yaml"
    path.write_text(text, encoding="utf-8")
    result = runner.invoke(cli, ["validate", str(path)])
    assert result.exit_code == 1
    for line in result.stdout.splitlines():
        assert TEXT_LINE.match(line), line
        assert not line.startswith("::")
        assert "\x1b" not in line


def test_cli_folder_validates_every_manifest(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["validate", "--format", "json", str(CORPUS)])
    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    reported = {Path(d["file"]).name for d in payload["diagnostics"] if d["severity"] == "error"}
    assert reported == {p.name for p in _corpus()}


def test_cli_folder_of_valid_examples(runner: CliRunner, tmp_path: Path) -> None:
    for name in ("linear_flow", "switch_loop_flow", "nested_foreach_flow"):
        for suffix in (".yaml", ".py"):
            (tmp_path / (name + suffix)).write_bytes((EXAMPLES / (name + suffix)).read_bytes())
    (tmp_path / "notes.txt").write_text("not a manifest")
    result = runner.invoke(cli, ["validate", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "3 manifests valid" in result.stderr


def test_cli_mixed_folder_and_file(runner: CliRunner, tmp_path: Path, five_errors: Path) -> None:
    result = runner.invoke(
        cli, ["validate", "--format", "json", str(five_errors.parent), str(LINEAR)]
    )
    assert result.exit_code == 1
    assert json.loads(result.stdout)["errors"] == 5


# ---------------------------------------------------------------------------------------------
# No Metaflow, no Prefect


def test_import_pulls_in_neither_metaflow_nor_prefect() -> None:
    result = _run_python(
        """
        import mfprefect.cli, mfprefect.manifest
        import sys
        assert 'metaflow' not in sys.modules and 'prefect' not in sys.modules
        """,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_validate_command_imports_neither_metaflow_nor_prefect() -> None:
    result = _run_python(
        f"""
        import runpy, sys
        sys.argv = ["mfprefect", "validate", {str(LINEAR)!r}]
        try:
            runpy.run_module("mfprefect.cli", run_name="__main__")
        except SystemExit as exc:
            code = exc.code
        else:
            code = 0
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("metaflow", "prefect"))
        print("EXIT", code, "LOADED", loaded)
        """,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "EXIT 0 LOADED []" in result.stdout


def test_validate_subprocess_importtime() -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "mfprefect.cli", "validate", str(LINEAR)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    imported = [
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    ]
    assert "mfprefect.manifest" in imported
    assert not [m for m in imported if m.split(".")[0] in ("metaflow", "prefect")]


# ---------------------------------------------------------------------------------------------
# Property: random mutations never crash the validator

_BASE_DATA = yamlsafe.parse(LINEAR.read_bytes(), "linear_flow.yaml").data

_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
_json_values = st.recursive(
    _json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)


@st.composite
def _mutated(draw):
    data = copy.deepcopy(_BASE_DATA)
    return mutate(draw, data, keys=st.text(max_size=12), values=_json_values, steps=4)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated())
def test_mutations_never_crash(data) -> None:
    text = json.dumps(data)
    doc, diagnostics = check_text(text, "mutant.json")
    for d in diagnostics:
        assert d.line >= 1 and d.col >= 1
        assert d.rule and d.message
    if doc is not None and not _errors(diagnostics):
        assert doc.data == json.loads(text)


def test_a_field_left_to_the_ui_must_be_one_plan_knows() -> None:
    text = LINEAR.read_text(encoding="utf-8").replace(
        "  paused: false\n", "  paused: false\n  unmanaged:\n    - pasued\n    - paused\n"
    )
    line, col = _line_col(text, "pasued")
    diagnostics = check_text(text)[1]
    assert [(d.rule, d.path, d.line, d.col) for d in diagnostics] == [
        ("schema.enum", "deployment.unmanaged[0]", line, col)
    ]
    assert diagnostics[0].message == (
        "'pasued' is not one of: paused, schedule.active, concurrency_limit; did you mean `paused`?"
    )
    twice = text.replace("    - pasued\n", "    - paused\n")
    assert [d.rule for d in check_text(twice)[1]] == ["schema.unique"]
    # `schedule.active` of a manifest with no schedule: nothing to leave, said once as a warning.
    lonely = text.replace("    - pasued\n", "    - schedule.active\n")
    [d] = check_text(lonely)[1]
    assert (d.rule, d.severity, d.path) == (
        "deployment.unmanaged",
        "warning",
        "deployment.unmanaged[0]",
    )
