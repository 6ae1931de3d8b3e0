"""Hostile input: every command refuses a bad manifest the same way, and payloads stay data.

Part 1 (fast). Every manifest in tests/manifests/invalid, the hostile files built here (empty,
UTF-16, a 50 MB file, alias bombs, deep nesting, ...) and hypothesis mutants are refused by
`validate`, `run`, `compile`, `plan` and `apply` (and `graph`, `resume`, `delete`) alike: exit 1,
the diagnostics `validate` prints, no traceback, and nothing written or contacted first. Every
command runs in an empty sandbox folder that must stay empty (no compiled file, no datastore, no
local server state), and PREFECT_API_URL names a closed loopback port, so a command that reached
for the server would exit 3, not 1. The bulk runs in-process through click's CliRunner (the
command group maps mfprefect's errors to exit codes itself, so CliRunner sees what the process
would exit with); a sample, and the huge files, run as real processes under a 1 GiB memory cap.

Part 2 (slow). A valid manifest carrying shell, Python, Jinja, Prefect-template and format-string
payloads in every free-text field goes through validate, graph, compile (and the compiled file),
run, plan and apply against a real Prefect server and worker. No marker file appears anywhere,
`{{ 7*7 }}` never becomes 49, and every payload arrives as the literal string it was.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from conftest import EXAMPLES, mutate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mfprefect import yamlsafe
from mfprefect.cli import cli

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CORPUS = HERE / "manifests" / "invalid"
LINEAR = EXAMPLES / "linear_flow.yaml"

# The five commands the issue names; then other commands and options that read manifests too.
COMMANDS: dict[str, list[str]] = {
    "validate": ["validate", "{m}"],
    "run": ["run", "{m}"],
    "compile": ["compile", "{m}", "build/out.py"],  # neither the file nor its folder may appear
    "plan": ["plan", "{m}"],
    "apply": ["apply", "{m}"],
}
MORE_COMMANDS: dict[str, list[str]] = {
    "graph": ["graph", "{m}"],
    "resume": ["resume", "{m}", "--clone-run-id", "prefect-0"],
    "delete": ["delete", "{m}"],
    "plan-json": ["plan", "--output", "json", "{m}"],
    "apply-prune": ["apply", "--prune", "--adopt", "--set", "ci", "{m}"],
    "apply-dry-run": ["apply", "--dry-run", "{m}"],
}

TEXT_LINE = re.compile(r"^[^\n]+?:\d+:\d+: (error|warning)\[[a-z0-9_.-]+\] .+$")


def _args(template: list[str], manifest: str) -> list[str]:
    return [manifest if part == "{m}" else part for part in template]


@pytest.fixture(scope="module")
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound by us, never listening."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


class Sandbox:
    """An empty working folder and an environment that sends every side effect into it."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.env = {
            "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
            "PREFECT_HOME": str(folder / "prefect-home"),
            "MFPREFECT_HOME": str(folder / "mfprefect-home"),
            "METAFLOW_HOME": str(folder / "metaflow-home"),
            "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(folder / "datastore"),
            "USER": "mfp-test-user",
            "USERNAME": "mfp-test-user",
        }

    def written(self) -> list[str]:
        return sorted(str(p.relative_to(self.folder)) for p in self.folder.rglob("*"))

    def invoke(self, args: list[str], timeout: int = 30) -> Result:
        """The command in this process, from the sandbox folder; a hang fails it (SIGALRM)."""

        def hung(signum: int, frame: Any) -> None:
            raise TimeoutError(f"mfprefect {' '.join(args)} ran for over {timeout} s")

        previous = os.getcwd()
        handler = signal.signal(signal.SIGALRM, hung)
        os.chdir(self.folder)
        signal.alarm(timeout)
        try:
            return CliRunner().invoke(cli, args, env=self.env)
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, handler)
            os.chdir(previous)

    def process(
        self, args: list[str], *, memory_bytes: int | None = None, timeout: float = 60
    ) -> tuple[subprocess.CompletedProcess[str], float]:
        """The command as a real process (optionally under an address-space cap); and its time."""

        def cap() -> None:
            if memory_bytes is not None:
                resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))

        env = dict(os.environ, **self.env)
        env.pop("MFPREFECT_DEBUG", None)
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "mfprefect.cli", *args],
            cwd=self.folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=cap,
        )
        return done, time.monotonic() - started


@pytest.fixture
def sandbox(tmp_path: Path, closed_port: int) -> Sandbox:
    return Sandbox(tmp_path / "sandbox", closed_port)


def _no_crash(output: str) -> None:
    assert "Traceback" not in output and "internal error" not in output, output[-2000:]


def _diagnostics_of_validate(result: Result) -> str:
    assert isinstance(result.exception, SystemExit), result.exc_info
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert lines and all(TEXT_LINE.match(line) for line in lines), result.stdout
    return result.stdout


def _refused_alike(sandbox: Sandbox, manifest: str, commands: dict[str, list[str]]) -> str:
    """Every command exits 1 with validate's diagnostics first, in-process; nothing written."""
    expected = _diagnostics_of_validate(sandbox.invoke(["validate", manifest]))
    for name, template in commands.items():
        if name == "validate":
            continue
        result = sandbox.invoke(_args(template, manifest))
        where = f"{name} {manifest}"
        # Anything but SystemExit is an exception escaping the command: a crash.
        assert isinstance(result.exception, SystemExit), (where, result.exc_info)
        assert result.exit_code == 1, (where, result.output[-2000:])
        assert result.stderr.startswith(expected), (where, expected, result.stderr[-2000:])
        assert "mfprefect: error:" in result.stderr, where
        assert name == "plan-json" or result.stdout == "", (where, result.stdout)
        _no_crash(result.output)
        assert sandbox.written() == [], (where, sandbox.written())
    return expected


def _corpus() -> list[Path]:
    return sorted(CORPUS.glob("*.yaml"))


# ---------------------------------------------------------------------------------------------
# The committed corpus, in-process


def test_corpus_covers_every_kind_of_hostile_input() -> None:
    stems = [p.stem for p in _corpus()]
    for prefix in (
        "type_",
        "unknown_",
        "missing_",
        "yaml_duplicate",
        "yaml_alias_bomb",
        "yaml_recursive_alias",
        "yaml_too_deep",
        "encoding_",
        "graph_cycle",
        "graph_dangling",
        "inject_",
        "range_huge",
        "yaml_number_too_long",
        "range_negative_timeout",
        "range_negative_workflow_timeout",
        "cron_",
        "inject_cron",
        "timezone_",
    ):
        assert any(stem.startswith(prefix) for stem in stems), prefix
    payloads = b"".join(p.read_bytes() for p in _corpus() if p.stem.startswith("inject_"))
    for needle in (b"$(", b"`", b"'", b"\\n", b"__import__", b"{{"):
        assert needle in payloads, needle


@pytest.mark.parametrize("path", _corpus(), ids=lambda p: p.stem)
def test_corpus_is_refused_alike_by_every_command(path: Path, sandbox: Sandbox) -> None:
    _refused_alike(sandbox, str(path), {**COMMANDS, **MORE_COMMANDS})


def test_a_folder_with_one_bad_manifest_applies_nothing(sandbox: Sandbox, tmp_path: Path) -> None:
    """plan/apply of many manifests: one invalid file and none is applied (no server contact)."""
    folder = tmp_path / "manifests"
    folder.mkdir()
    good = LINEAR.read_text(encoding="utf-8").replace("work_pool: null", "work_pool: pool")
    good = good.replace(
        "file: linear_flow.py", f"file: {os.path.relpath(EXAMPLES, folder)}/linear_flow.py"
    )
    (folder / "a_good.yaml").write_text(good, encoding="utf-8")
    shutil.copy(CORPUS / "graph_cycle_through_linear.yaml", folder / "b_bad.yaml")
    expected = _refused_alike(
        sandbox, str(folder), {"plan": COMMANDS["plan"], "apply": COMMANDS["apply"]}
    )
    assert "b_bad.yaml" in expected and "a_good.yaml" not in expected


# ---------------------------------------------------------------------------------------------
# Hostile files built here (too big, binary or odd to commit)


def _linear(old: str = "", new: str = "") -> str:
    text = LINEAR.read_text(encoding="utf-8").replace(
        "file: linear_flow.py", "file: ../linear_flow.py"
    )
    if old:
        assert old in text
        text = text.replace(old, new, 1)
    return text


def _alias_bomb(levels: int = 9) -> str:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def _fifty_megabytes(path: Path) -> None:
    """A real 50 MB manifest (not sparse): a valid file with a 50 MB step doc."""
    head, tail = _linear().split("    doc: Double the value and record a label.\n")
    chunk = ("      " + "lorem ipsum dolor sit amet " * 4 + "\n") * 1000
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(head + "    doc: >-\n")
        while handle.tell() < 50 * 1024 * 1024:
            handle.write(chunk)
        handle.write(tail)


BUILT: dict[str, Callable[[Path], None]] = {
    "empty": lambda p: p.write_bytes(b""),
    "comments_only": lambda p: p.write_bytes(b"# nothing here\n\n  # at all\n"),
    "whitespace_only": lambda p: p.write_bytes(b"  \n\t\n   \n"),
    "utf16": lambda p: p.write_bytes(_linear().encode("utf-16")),
    "utf8_bom_then_latin1": lambda p: p.write_bytes(
        b"\xef\xbb\xbf" + _linear("Double the value", "Double the caf\xe9").encode("latin-1")
    ),
    "nul_byte": lambda p: p.write_bytes(_linear("Record the final", "Record\x00 the").encode()),
    "lone_surrogate_key": lambda p: p.write_text(
        _linear("kind: Pipeline\n", 'kind: Pipeline\n"\\ud800": 1\n'), encoding="utf-8"
    ),
    "binary_garbage": lambda p: p.write_bytes(bytes(range(256)) * 64),
    "six_megabytes": lambda p: p.write_bytes(
        _linear().encode() + b"# padding padding padding padding\n" * (200 * 1024)
    ),
    "fifty_megabytes": _fifty_megabytes,
    "fifty_megabytes_sparse": lambda p: (
        p.write_bytes(_linear().encode()),
        os.truncate(p, 50 << 20),
    ),
    "alias_bomb": lambda p: p.write_text(_alias_bomb(), encoding="utf-8"),
    "alias_bomb_in_manifest": lambda p: p.write_text(
        _linear(
            "configs: {}\n",
            "configs:\n  bomb:\n    value:\n"
            + "".join("      " + line + "\n" for line in _alias_bomb().splitlines()),
        ),
        encoding="utf-8",
    ),
    "recursive_alias": lambda p: p.write_text("a: &x [1, *x]\n", encoding="utf-8"),
    "ten_thousand_brackets": lambda p: p.write_text("[" * 10_000, encoding="utf-8"),
    # The C composer recursed on the C stack: 30,000 `[` crashed the process (SIGSEGV).
    "thirty_thousand_brackets": lambda p: p.write_text("[" * 30_000, encoding="utf-8"),
    "five_megabytes_of_brackets": lambda p: p.write_text("[" * (5 << 20), encoding="utf-8"),
    "million_block_dashes": lambda p: p.write_text("- " * 1_000_000 + "x\n", encoding="utf-8"),
    "hundred_thousand_flow_mappings_in_a_manifest": lambda p: p.write_text(
        _linear("configs: {}\n", "configs:\n  c:\n    value: " + "{a: " * 100_000 + "\n"),
        encoding="utf-8",
    ),
    "ten_thousand_mappings": lambda p: p.write_text(
        "a: " + "{b: " * 10_000 + "}" * 10_000 + "\n", encoding="utf-8"
    ),
    "deep_block_nesting": lambda p: p.write_text(
        _linear(
            "configs: {}\n",
            "configs:\n  c:\n    value:\n"
            + "".join(" " * (6 + 2 * i) + f"k{i}:\n" for i in range(200))
            + " " * 406
            + "x: 1\n",
        ),
        encoding="utf-8",
    ),
    "multi_document": lambda p: p.write_text(_linear() + "---\n" + _linear(), encoding="utf-8"),
    "python_object_tag": lambda p: p.write_text(
        _linear("  labels: {}", "  labels: !!python/object/apply:os.system ['touch MARKER']"),
        encoding="utf-8",
    ),
    "thirty_thousand_tags": lambda p: p.write_text(
        _linear("  tags: []", "  tags: [" + ", ".join(f"t{i}" for i in range(30_000)) + "]"),
        encoding="utf-8",
    ),
    "five_thousand_dangling_steps": lambda p: p.write_text(
        _linear(
            "schedule: null",
            "".join(f"  step{i}: {{kind: linear, next: [gone{i}]}}\n" for i in range(5_000))
            + "schedule: null",
        ),
        encoding="utf-8",
    ),
    "huge_integer_literal": lambda p: p.write_text(
        _linear("  parallelism: 16", "  parallelism: " + "9" * 100_000), encoding="utf-8"
    ),
    "huge_exponent": lambda p: p.write_text(
        _linear("  timeout_seconds: null", "  timeout_seconds: 1e99999999"), encoding="utf-8"
    ),
}
# The ones that would exhaust memory or time if a guard were missing: also run as processes.
HEAVY = (
    "fifty_megabytes",
    "fifty_megabytes_sparse",
    "alias_bomb",
    "alias_bomb_in_manifest",
    "thirty_thousand_brackets",
    "five_megabytes_of_brackets",
    "million_block_dashes",
    "huge_integer_literal",
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("built") / "manifests"
    folder.mkdir()
    shutil.copy(EXAMPLES / "linear_flow.py", folder.parent / "linear_flow.py")
    out = {}
    for name, make in BUILT.items():
        make(folder / f"{name}.yaml")
        out[name] = folder / f"{name}.yaml"
    return out


def test_the_fifty_megabyte_file_is_real(built: dict[str, Path]) -> None:
    path = built["fifty_megabytes"]
    assert path.stat().st_size >= 50 * 1024 * 1024
    assert path.stat().st_blocks * 512 >= 50 * 1024 * 1024  # written, not sparse


@pytest.mark.parametrize("name", list(BUILT))
def test_built_file_is_refused_alike_by_every_command(
    name: str, built: dict[str, Path], sandbox: Sandbox
) -> None:
    _refused_alike(sandbox, str(built[name]), COMMANDS)


ONE_GIB = 1 << 30


@pytest.mark.parametrize("name", HEAVY)
def test_heavy_file_as_processes_in_bounded_memory_and_time(
    name: str, built: dict[str, Path], sandbox: Sandbox
) -> None:
    manifest = str(built[name])
    first, _ = sandbox.process(["validate", manifest], memory_bytes=ONE_GIB)
    assert first.returncode == 1, first.stderr[-2000:]
    for command, template in COMMANDS.items():
        done, seconds = sandbox.process(_args(template, manifest), memory_bytes=ONE_GIB)
        where = f"{command} {name}"
        assert done.returncode == 1, (where, done.stderr[-2000:])
        assert seconds < 20, (where, seconds)
        stream = done.stdout if command == "validate" else done.stderr
        assert stream.startswith(first.stdout), (where, stream[-2000:])
        _no_crash(done.stdout + done.stderr)
        assert sandbox.written() == [], (where, sandbox.written())


# A representative sample of the committed corpus, as real processes: one per kind of problem.
SAMPLE = (
    "type_string_for_int",
    "unknown_step_field_retriez",
    "missing_step_kind",
    "yaml_duplicate_key",
    "yaml_alias_bomb",
    "yaml_too_deep",
    "encoding_latin1_byte",
    "graph_cycle_through_linear",
    "graph_dangling_next_middel",
    "inject_step_name_subshell",
    "range_huge_integer",
    "inject_cron_subshell",
)


@pytest.mark.parametrize("stem", SAMPLE)
def test_sample_as_processes(stem: str, sandbox: Sandbox) -> None:
    manifest = str(CORPUS / f"{stem}.yaml")
    first, _ = sandbox.process(["validate", manifest], memory_bytes=ONE_GIB)
    assert first.returncode == 1 and first.stdout, first.stderr[-2000:]
    for command, template in COMMANDS.items():
        done, seconds = sandbox.process(_args(template, manifest), memory_bytes=ONE_GIB)
        where = f"{command} {stem}"
        assert done.returncode == 1, (where, done.stderr[-2000:])
        stream = done.stdout if command == "validate" else done.stderr
        assert stream.startswith(first.stdout), (where, stream[-2000:])
        assert seconds < 20, (where, seconds)
        _no_crash(done.stdout + done.stderr)
        assert sandbox.written() == [], (where, sandbox.written())


# ---------------------------------------------------------------------------------------------
# Property: mutants of a valid manifest. Invalid ones are refused alike by every command; valid
# ones compile to a file that holds them as data, and become a deployment without a crash.

_BASE = yamlsafe.parse(
    LINEAR.read_bytes().replace(b"work_pool: null", b"work_pool: pool"), "linear_flow.yaml"
).data
_BASE["parameters"] = {
    "text": {"type": "str", "default": "x", "required": False, "help": "A string."},
    "blob": {"type": "json", "default": {"k": 1}, "required": False, "help": None},
}
_BASE["configs"] = {"cfg": {"value": {"a": 1}}}
_BASE["deployment"]["environment"] = {"DEPLOY_VAR": "v"}
_BASE["steps"]["start"]["environment"] = {"STEP_VAR": "v"}
# Where free text (or, for json parameters and configs, any JSON value) is valid.
_FREE_TEXT = (
    ("flow", "description"),
    ("metadata", "labels", "team"),
    ("parameters", "text", "default"),
    ("parameters", "text", "help"),
    ("parameters", "blob", "help"),
    ("steps", "middle", "doc"),
    ("deployment", "environment", "DEPLOY_VAR"),
    ("steps", "start", "environment", "STEP_VAR"),
    ("runtime", "datastore_root"),
)
_ANY_JSON = (("parameters", "blob", "default"), ("configs", "cfg", "value"))

_HOSTILE_TEXT = st.sampled_from(
    [
        "$(touch MARKER)",
        "`touch MARKER`",
        "'; touch MARKER; '",
        "__import__('os').system('touch MARKER')",
        "{{ 7*7 }}",
        "{{ prefect.variables.x }}",
        "x\nimport os; os.system('touch MARKER')",
        "%(prog)s %s {0} {}",
        "100% sure",
        "--help",
        "a" * 70_000,
        "\u202e\u200b",
        "x\u2028::error::forged\x0c\x1b[2J",
        "end",
        "start",
    ]
)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    _HOSTILE_TEXT,
)
_VALUES = st.recursive(
    _SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.one_of(st.text(max_size=6), _HOSTILE_TEXT), children, max_size=3),
    ),
    max_leaves=8,
)


@st.composite
def _mutants(draw: st.DrawFn) -> Any:
    data = json.loads(json.dumps(_BASE))
    keys = st.one_of(st.text(max_size=8), _HOSTILE_TEXT)
    return mutate(draw, data, keys=keys, values=_VALUES, steps=3)


@st.composite
def _payloads(draw: st.DrawFn) -> Any:
    """Mostly valid mutants: hostile text where free text goes, hostile JSON in json slots."""
    data = json.loads(json.dumps(_BASE))
    for path in draw(st.lists(st.sampled_from(_FREE_TEXT + _ANY_JSON), min_size=1, max_size=6)):
        *parents, last = path
        target = data
        for part in parents:
            target = target[part]
        if path in _ANY_JSON:
            target[last] = draw(
                st.one_of(_VALUES, st.just({"__prefect_kind": "jinja", "template": "{{ 7*7 }}"}))
            )
        elif path == ("deployment", "tags"):
            target[last] = draw(st.lists(_HOSTILE_TEXT, max_size=3))
        else:
            target[last] = draw(st.one_of(_HOSTILE_TEXT, st.text(max_size=20)))
    if draw(st.booleans()):
        data["deployment"]["tags"] = draw(st.lists(_HOSTILE_TEXT, max_size=3, unique=True))
    return data


def _only_data(compiled: str) -> None:
    """A compiled file calls json.loads, main and sys.exit: the manifest is one string literal."""
    calls = [node.func for node in ast.walk(ast.parse(compiled)) if isinstance(node, ast.Call)]
    named = sorted(f.attr if isinstance(f, ast.Attribute) else f.id for f in calls)  # type: ignore[attr-defined]
    assert named == ["exit", "loads", "main"], named


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.one_of(_mutants(), _payloads()))
def test_mutants_are_refused_alike_or_compile_as_data(closed_port: int, data: Any) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        manifest = folder / "mutant.yaml"
        manifest.write_text(json.dumps(data), encoding="utf-8")
        box = Sandbox(folder / "sandbox", closed_port)
        checked = box.invoke(["validate", str(manifest)])
        assert checked.exception is None or isinstance(checked.exception, SystemExit), (
            checked.exc_info
        )
        # The other report formats hold hostile text too: JSON that parses, one GitHub command
        # per line.
        as_json = box.invoke(["validate", "--format", "json", str(manifest)])
        assert json.loads(as_json.stdout)["valid"] is (checked.exit_code == 0)
        github = box.invoke(["validate", "--format", "github", str(manifest)])
        assert all(line.startswith("::") for line in github.stdout.splitlines())
        if checked.exit_code == 1:
            _refused_alike(box, str(manifest), COMMANDS)
            return
        assert checked.exit_code == 0, checked.output
        graph = box.invoke(["graph", str(manifest)])
        assert graph.exit_code == 0 and graph.stdout.startswith("flowchart TD\n"), graph.output
        # Valid: compile holds it as data; the deployment it becomes is built without a crash.
        compiled = box.invoke(["compile", str(manifest), "out.py"])
        assert compiled.exit_code == 0, (compiled.output, compiled.exc_info)
        text = (box.folder / "out.py").read_text(encoding="utf-8")
        _only_data(text)
        carried = json.loads(ast.literal_eval(re.search(r"json\.loads\((.*)\)\n", text).group(1)))  # type: ignore[union-attr]
        carried["flow"]["file"] = data["flow"]["file"]
        assert carried == data
        # The compiled file's own command line takes any help text.
        from mfprefect.compile import main as compiled_main

        shown = io.StringIO()
        with contextlib.redirect_stdout(shown), pytest.raises(SystemExit) as exited:
            compiled_main(carried, str(box.folder / "out.py"), ["--help"])
        assert exited.value.code == 0, shown.getvalue()
        from mfprefect.cli import desired_objects
        from mfprefect.errors import UsageError

        with contextlib.suppress(UsageError):
            desired_objects((str(manifest),))


def test_compiled_file_keeps_odd_names_and_help_text_as_data(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """Output names that could end a docstring or break an escape, and help text that argparse
    would read as %-format, still give a file that parses, holds the data, and answers --help."""
    help_text = "100% sure; %(prog)s %s {0} \"\"\" \\N{x} '''"
    text = _linear().replace(
        "parameters: {}",
        "parameters:\n  text:\n    type: str\n"
        f"    default: x\n    required: false\n    help: {json.dumps(help_text)}",
    )
    manifest = tmp_path / "m.yaml"
    manifest.write_text(text, encoding="utf-8")
    shutil.copy(EXAMPLES / "linear_flow.py", tmp_path.parent / "linear_flow.py")
    for name in ("out\\N.py", 'out""".py', 'out".py', "out%s.py"):
        result = sandbox.invoke(["compile", str(manifest), name])
        assert result.exit_code == 0, (name, result.output)
        compiled = sandbox.folder / name
        _only_data(compiled.read_text(encoding="utf-8"))
        shown = subprocess.run(
            [sys.executable, str(compiled), "--help"], capture_output=True, text=True, timeout=60
        )
        assert shown.returncode == 0, (name, shown.stderr[-2000:])
        assert "100% sure; %(prog)s %s {0}" in " ".join(shown.stdout.split()), shown.stdout
        compiled.unlink()


# ---------------------------------------------------------------------------------------------
# Values Prefect itself would interpret: kept out of what it interprets (fast, no server)


def _deployable(tmp_path: Path, **changes: Any) -> tuple[Path, dict[str, Any]]:
    folder = tmp_path / "flows"
    folder.mkdir(exist_ok=True)
    shutil.copy(EXAMPLES / "linear_flow.py", folder / "linear_flow.py")
    data = json.loads(json.dumps(_BASE))
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        target = data
        for part in parents:
            target = target[part]
        target[last] = value
    manifest = folder / "m.yaml"
    manifest.write_text(json.dumps(data), encoding="utf-8")
    return manifest, data


def test_defaults_prefect_would_render_are_not_sent_to_it(tmp_path: Path) -> None:
    """Prefect renders `{"__prefect_kind": "jinja", ...}` in deployment parameters (a flow run
    from the deployment got "49" for it): such a default stays in the carried manifest only."""
    from mfprefect.deploy.desired import deployment_for
    from mfprefect.manifest import from_data

    template = {"__prefect_kind": "jinja", "template": "{{ 7*7 }}"}
    nested = {"a": [1, {"__prefect_kind": "workspace_variable", "variable_name": "db"}]}
    for default in (template, nested):
        manifest, data = _deployable(tmp_path, parameters__blob__default=default)
        spec = deployment_for(from_data(data, str(manifest)), data)
        assert "blob" not in spec.fields["parameters"]
        assert spec.fields["parameters"]["text"] == "x"
        blob_schema = spec.fields["parameter_openapi_schema"]["properties"]["blob"]
        assert "default" not in blob_schema
        assert spec.manifest["parameters"]["blob"]["default"] == default


def test_plan_text_keeps_manifest_keys_on_one_line(tmp_path: Path) -> None:
    from mfprefect.deploy.desired import MANIFEST_ENV, deployment_for, encode_manifest
    from mfprefect.deploy.plan import LiveDeployment, plan
    from mfprefect.manifest import from_data

    forged = "x\n+ create deployment Evil/evil\n\x1b[2J"
    old_path, old = _deployable(tmp_path)
    before = deployment_for(from_data(old, str(old_path)), old)
    manifest, data = _deployable(tmp_path, configs__cfg__value={forged: 1})
    spec = deployment_for(from_data(data, str(manifest)), data)
    live_fields = dict(before.fields)
    live_fields["job_variables"] = {"env": {MANIFEST_ENV: encode_manifest(before.manifest)}}
    live = LiveDeployment("id", spec.flow_name, spec.name, live_fields)
    text = plan([spec], [live]).text()
    assert not [line for line in text.splitlines() if line.startswith("+ create")], text
    assert "\x1b" not in text
    assert "manifest.configs.cfg.value.x\\x0a+ create deployment Evil/evil\\x0a\\x1b[2J" in text


def test_flow_folder_prefect_would_template_is_refused(sandbox: Sandbox, tmp_path: Path) -> None:
    """A pull step's directory is a Prefect template on the worker: `{{ $SECRET }}` in the flow's
    path would be filled from the worker's environment. plan/apply refuse, before any server."""
    folder = tmp_path / "{{ $AWS_SECRET_ACCESS_KEY }}"
    folder.mkdir()
    shutil.copy(EXAMPLES / "linear_flow.py", folder / "linear_flow.py")
    manifest = folder / "m.yaml"
    manifest.write_text(json.dumps(_BASE), encoding="utf-8")
    for command in (["plan", str(manifest)], ["apply", str(manifest)]):
        result = sandbox.invoke(command)
        assert result.exit_code == 1, result.output
        assert "would read as a template" in result.stderr
        assert sandbox.written() == []


# ---------------------------------------------------------------------------------------------
# Part 2: a valid manifest full of payloads, through every command against a real server

POOL = "mfp-hostile-pool"
CANARY_VARIABLE = "mfp_canary"
CANARY = "CANARY-9f3b1e"  # a Prefect variable's value: it shows only if a template was resolved


def _injection_payloads(markers: Path) -> list[str]:
    """Shell, Python, Jinja, Prefect-template, format-string and argv payloads. Each would touch
    a MARKER file if anything ran it (by absolute path, and relative to whatever folder it ran)."""

    def touch(n: int) -> str:
        return f"touch {markers / f'MARKER{n}'} MARKER{n}"

    return [
        f"$(touch {markers / 'MARKER1'})",
        f"`{touch(2)}`",
        f"'; {touch(3)}; '",
        f'"; {touch(4)}; "',
        f"__import__('os').system('{touch(5)}')",
        "{{ __import__('os').system('" + touch(6) + "') }}",
        "{{ 7*7 }}",
        "{{ cycler.__init__.__globals__.os.system('" + touch(7) + "') }}",
        f"x\nimport os; os.system('{touch(8)}')\n",
        "{{ prefect.variables." + CANARY_VARIABLE + " }} {{ $HOME }}",
        "{0.__class__} %(prog)s %s 100%",
        "--help",
        f"x; {touch(9)} | {touch(10)} && {touch(11)}",
        "${HOME} ${{ 7*7 }} #{7*7} <%= 7*7 %>",
    ]


def _no_markers(*roots: Path) -> None:
    found = [p for root in roots if root.exists() for p in root.rglob("MARKER*")]
    assert found == [], f"a payload ran: {found}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    from prefect_stack import api, prefect_stack

    with prefect_stack(tmp_path_factory.mktemp("hostile-stack"), POOL) as env:
        api(env, "POST", "/variables/", {"name": CANARY_VARIABLE, "value": CANARY})
        yield env


def _edit(manifest: Path, change: Callable[[Any], None]) -> None:
    """Edit a manifest in place with ruamel.yaml's round trip (YAML quoting of the payloads)."""
    from ruamel.yaml import YAML

    yaml = YAML()
    data = yaml.load(manifest.read_text(encoding="utf-8"))
    change(data)
    with open(manifest, "w", encoding="utf-8") as handle:
        yaml.dump(data, handle)


@pytest.mark.slow
def test_injection_payloads_stay_inert_data_everywhere(
    stack: dict[str, str], tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from conftest import mfprefect, run
    from prefect_stack import api, metaflow_data, metaflow_run_of, wait_flow_run

    from mfprefect.deploy.desired import MANIFEST_ENV, decode_manifest

    markers = tmp_path / "markers"
    markers.mkdir()
    work = tmp_path / "work"  # every command's working folder
    work.mkdir()
    env = dict(stack)
    payloads = _injection_payloads(markers)
    text = "\n".join(payloads)
    template_default = {"__prefect_kind": "jinja", "template": "{{ 7*7 }}"}
    blob = {
        **template_default,
        "text": text,
        "nested": [{"__prefect_kind": "workspace_variable", "variable_name": CANARY_VARIABLE}],
    }
    config = {"note": text, "__prefect_kind": "jinja", "template": "{{ 7*7 }}"}
    tags = [p.replace("\n", " ").strip()[:200] for p in payloads]  # a tag is one line, <= 200

    shutil.copy(HERE / "flows" / "hostile_flow.py", work / "hostile_flow.py")
    manifest = work / "hostile.yaml"
    exported = mfprefect(
        "export", "hostile_flow.py", "-o", str(manifest), "--work-pool", POOL, env=env, cwd=work
    )
    assert exported.returncode == 0, exported.stderr

    def fill(data: Any) -> None:
        data["flow"]["description"] = text
        data["metadata"]["labels"] = {f"payload{i}": p for i, p in enumerate(payloads)}
        data["parameters"]["text"]["default"] = text
        data["parameters"]["text"]["help"] = text
        data["parameters"]["blob"]["default"] = blob
        data["configs"]["settings"]["value"] = config
        for step in data["steps"].values():
            step["doc"] = text
        data["steps"]["start"]["environment"]["STEP_TEXT"] = text
        data["deployment"]["environment"] = {"DEPLOY_TEXT": text}
        data["deployment"]["tags"] = tags

    _edit(manifest, fill)
    outputs: dict[str, str] = {}

    def command(name: str, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        done = mfprefect(*args, env=env, cwd=work)
        outputs[name] = done.stdout + done.stderr
        assert done.returncode == code, (name, done.stderr[-3000:])
        _no_crash(outputs[name])
        return done

    command("validate", "validate", str(manifest))
    graph = command("graph", "graph", "--markdown", str(manifest))
    assert graph.stdout.startswith("```mermaid\n")

    # compile: the payloads sit inside one JSON string literal, and the file runs them as data.
    compiled = work / "build" / "run_hostile.py"
    command("compile", "compile", str(manifest), str(compiled))
    body = compiled.read_text(encoding="utf-8")
    _only_data(body)
    carried = json.loads(ast.literal_eval(re.search(r"json\.loads\((.*)\)\n", body).group(1)))  # type: ignore[union-attr]
    assert carried["parameters"]["text"]["default"] == text
    assert carried["parameters"]["blob"]["default"] == blob
    helped = run([sys.executable, str(compiled), "--help"], env=env, cwd=work)
    assert helped.returncode == 0, helped.stderr[-3000:]
    assert "{0.__class__} %(prog)s %s 100%" in " ".join(helped.stdout.split())

    def check_run(pathspec: str) -> None:
        seen = metaflow_data(
            env,
            pathspec,
            "start",
            ["seen_text", "seen_blob", "seen_step_env", "seen_deploy_env", "seen_config"],
        )
        assert seen["__successful"], pathspec
        assert seen["seen_text"] == text
        assert seen["seen_blob"] == blob  # not "49", not the canary
        assert seen["seen_step_env"] == text
        assert seen["seen_deploy_env"] == text
        assert seen["seen_config"] == config
        assert set(tags) <= set(seen["__tags"])

    ran_compiled = run([sys.executable, str(compiled)], env=env, cwd=work)
    outputs["compiled run"] = ran_compiled.stdout + ran_compiled.stderr
    assert ran_compiled.returncode == 0, ran_compiled.stderr[-3000:]
    check_run(re.search(r"run (\S+) completed", ran_compiled.stderr).group(1))  # type: ignore[union-attr]

    ran = command("run", "run", str(manifest))
    check_run(re.search(r"run (\S+) completed", ran.stderr).group(1))  # type: ignore[union-attr]

    # plan, apply, and the deployment as Prefect stored it.
    plan_json = command("plan json", "plan", "--output", "json", str(manifest), code=1)
    (created,) = json.loads(plan_json.stdout)["changes"]
    shown = {f["field"]: f["new"] for f in created["fields"]}
    assert shown["parameters"] == {"text": text}
    assert set(tags) <= set(shown["tags"])
    command("plan", "plan", str(manifest), code=1)
    command("apply", "apply", str(manifest))
    deployment = api(env, "GET", "/deployments/name/HostileFlow/HostileFlow")
    assert deployment["description"] == text
    assert deployment["parameters"] == {"text": text}
    assert set(tags) <= set(deployment["tags"])
    assert "default" not in deployment["parameter_openapi_schema"]["properties"]["blob"]
    stored = decode_manifest(deployment["job_variables"]["env"][MANIFEST_ENV])
    assert stored["parameters"]["blob"]["default"] == blob
    assert stored["configs"]["settings"]["value"] == config
    assert stored["deployment"]["environment"]["DEPLOY_TEXT"] == text
    assert command("plan again", "plan", str(manifest)).stdout.startswith("No changes")

    # A run of the deployment, made by Prefect's server and run by the worker.
    triggered = command("trigger", "trigger", "HostileFlow")
    flow_run_id = triggered.stdout.strip().splitlines()[-1]
    flow_run = wait_flow_run(env, flow_run_id)
    assert flow_run["state"]["type"] == "COMPLETED", flow_run["state"]
    assert flow_run["parameters"].get("text") == text and "blob" not in flow_run["parameters"]
    check_run(metaflow_run_of(env, "HostileFlow", flow_run_id))
    command("delete", "delete", str(manifest))

    # Nothing ran, anywhere: no marker under any test folder, the stack's, the repository's.
    _no_markers(tmp_path_factory.getbasetemp(), ROOT, Path(env["_HOME"]))
    everything = "\n".join(outputs.values()) + json.dumps(deployment) + json.dumps(flow_run)
    assert CANARY not in everything


@pytest.mark.slow
def test_invalid_manifests_change_nothing_on_a_real_server(
    stack: dict[str, str], tmp_path: Path
) -> None:
    """With a live server named, every invalid manifest is still refused before it is used: no
    flow, flow run or deployment appears, and the sandbox stays empty."""
    from prefect_stack import api

    def counts() -> dict[str, int]:
        return {
            kind: api(stack, "POST", f"/{kind}/count", {})
            for kind in ("flows", "flow_runs", "deployments")
        }

    before = counts()
    box = Sandbox(tmp_path / "sandbox", 0)
    box.env.update(PREFECT_API_URL=stack["PREFECT_API_URL"], PREFECT_HOME=stack["PREFECT_HOME"])
    for path in _corpus():
        _refused_alike(box, str(path), COMMANDS)
    assert counts() == before


@pytest.mark.parametrize("fmt", ["text", "github"])
def test_reports_keep_hostile_keys_on_one_line(sandbox: Sandbox, tmp_path: Path, fmt: str) -> None:
    """Unicode line separators, form feeds and terminal escapes in keys stay escaped, so a key
    cannot start a line of its own (a forged annotation) or drive the CI log viewer."""
    data = json.loads(json.dumps(_BASE))
    data["x\u2028::error file=README.md::forged\x0c\x1b[2J\x85"] = 1
    data["steps"]["start"]["next"] = ["gone\u2029::warning::forged"]
    manifest = tmp_path / "m.yaml"
    manifest.write_text(json.dumps(data), encoding="utf-8")
    result = sandbox.invoke(["validate", "--format", fmt, str(manifest)])
    assert result.exit_code == 1
    lines = result.stdout.splitlines()  # splits on every Unicode line break
    assert len(lines) == len(result.stdout.split("\n")) - 1 >= 2
    assert all(line.startswith("::error " if fmt == "github" else str(manifest)) for line in lines)
    assert "\x1b" not in result.stdout and "\x0c" not in result.stdout
