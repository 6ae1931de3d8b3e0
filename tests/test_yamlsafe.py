"""Unit tests for mfprefect.yamlsafe: the hostile-input YAML reader.

Known bugs are kept as strict xfails whose reason says what is expected and what happens.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mfprefect import yamlsafe
from mfprefect.diagnostics import Diagnostic

ROOT = Path(__file__).resolve().parent.parent
LINEAR = ROOT / "examples" / "linear_flow.yaml"


def parse(text: str | bytes) -> yamlsafe.Document:
    blob = text.encode("utf-8") if isinstance(text, str) else text
    return yamlsafe.parse(blob, "t.yaml")


def problems(text: str | bytes) -> list[Diagnostic]:
    with pytest.raises(yamlsafe.LoadError) as exc:
        parse(text)
    found = yamlsafe.problems_of(exc.value)
    assert found
    return found


def value(text: str) -> object:
    return parse(f"k: {text}\n").data["k"]


# ---------------------------------------------------------------------------------------------
# Positions

SAMPLE = """\
# a comment
top:
  key: value
  list:
    - one
    - {a: 1, b: [x, y]}
  'quoted key': "v"
flow: {k: v}
multi: |
  text
"""


def test_plain_data() -> None:
    assert parse(SAMPLE).data == {
        "top": {"key": "value", "list": ["one", {"a": 1, "b": ["x", "y"]}], "quoted key": "v"},
        "flow": {"k": "v"},
        "multi": "text\n",
    }


@pytest.mark.parametrize(
    ("path", "where"),
    [
        ((), (2, 1)),
        (("top",), (3, 3)),
        (("top", "key"), (3, 8)),
        (("top", "list"), (5, 5)),
        (("top", "list", 0), (5, 7)),
        (("top", "list", 1), (6, 7)),
        (("top", "list", 1, "a"), (6, 11)),
        (("top", "list", 1, "b", 1), (6, 21)),
        (("top", "quoted key"), (7, 17)),
        (("flow",), (8, 7)),
        (("flow", "k"), (8, 11)),
        (("multi",), (9, 8)),
    ],
)
def test_value_positions(path: tuple, where: tuple[int, int]) -> None:
    doc = parse(SAMPLE)
    assert doc.values[path] == where
    assert doc.where(path) == where


@pytest.mark.parametrize(
    ("path", "where"),
    [
        (("top",), (2, 1)),
        (("top", "key"), (3, 3)),
        (("top", "list"), (4, 3)),
        (("top", "list", 1, "b"), (6, 14)),
        (("top", "quoted key"), (7, 3)),
        (("flow", "k"), (8, 8)),
        (("multi",), (9, 1)),
    ],
)
def test_key_positions(path: tuple, where: tuple[int, int]) -> None:
    doc = parse(SAMPLE)
    assert doc.keys[path] == where
    assert doc.where(path, key=True) == where


def test_where_falls_back_to_the_nearest_ancestor() -> None:
    doc = parse(SAMPLE)
    assert doc.where(("top", "missing", "deeper")) == doc.values[("top",)]
    assert doc.where(("top", "list", 7), key=True) == doc.keys[("top", "list")]
    assert doc.where(("nothing",)) == (2, 1)


def test_diagnostic_is_placed_at_the_path() -> None:
    d = parse(SAMPLE).diagnostic(("top", "list", 1, "b"), "x.rule", "message", key=True)
    assert (d.file, d.line, d.col, d.rule, d.path) == ("t.yaml", 6, 14, "x.rule", "top.list[1].b")


def test_positions_after_a_bom_and_crlf() -> None:
    doc = parse(b"\xef\xbb\xbf" + SAMPLE.encode().replace(b"\n", b"\r\n"))
    assert doc.values[("top", "key")] == (3, 8)
    assert doc.keys[("flow", "k")] == (8, 8)


def test_positions_count_characters_not_bytes() -> None:
    doc = parse("k: {é: ü, x: 1}\n")
    assert doc.values[("k", "x")] == (1, 14)  # 16 if it counted UTF-8 bytes


def test_empty_value_is_on_its_own_line() -> None:
    doc = parse("a:\nb: 1\n")
    assert doc.where(("a",))[0] == 1


# ---------------------------------------------------------------------------------------------
# Duplicate keys


def test_duplicate_key_names_the_first_line() -> None:
    [d] = problems("a: 1\nb: 2\na: 3\n")
    assert (d.rule, d.line, d.col, d.path) == ("yaml.duplicate-key", 3, 1, "a")
    assert "`a`" in d.message and "first at line 1" in d.message


def test_every_duplicate_is_reported() -> None:
    found = problems("x:\n  a: 1\n  a: 2\n  a: 3\n")
    assert [(d.rule, d.line, d.col) for d in found] == [
        ("yaml.duplicate-key", 3, 3),
        ("yaml.duplicate-key", 4, 3),
    ]
    assert all("first at line 2" in d.message for d in found)


def test_duplicate_key_in_flow_mapping() -> None:
    [d] = problems("{a: 1, a: 2}\n")
    assert (d.rule, d.line, d.col) == ("yaml.duplicate-key", 1, 8)


def test_int_and_string_keys_collide() -> None:
    [d] = problems('1: a\n"1": b\n')
    assert d.rule == "yaml.duplicate-key" and "first at line 1" in d.message


def test_non_string_keys_keep_their_text() -> None:
    assert parse("1: a\ntrue: b\nnull: c\n~: d\n0x10: e\n").data == {
        "1": "a",
        "true": "b",
        "null": "c",
        "~": "d",
        "0x10": "e",
    }


def test_complex_key_is_refused() -> None:
    [d] = problems("? [a, b]\n: 1\n")
    assert (d.rule, d.line, d.col) == ("yaml.key", 1, 3)


# ---------------------------------------------------------------------------------------------
# Scalars under YAML 1.2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("yes", "yes"),
        ("no", "no"),
        ("on", "on"),
        ("off", "off"),
        ("y", "y"),
        ("Yes", "Yes"),
        ("true", True),
        ("True", True),
        ("TRUE", True),
        ("false", False),
        ("False", False),
        ("null", None),
        ("Null", None),
        ("NULL", None),
        ("~", None),
        ("", None),
        ("0x1F", 31),
        ("-0x1F", -31),
        ("0o17", 15),
        ("017", 17),
        ("1_000", 1000),
        ("+12", 12),
        ("-12", -12),
        ("0", 0),
        ("99999999999999999999", 99999999999999999999),
        ("1.5", 1.5),
        ("1e3", 1000.0),
        (".5", 0.5),
        ("-.5", -0.5),
        ("1_000.5", 1000.5),
        ("2020-01-01", "2020-01-01"),
        ("2020-01-01T10:00:00Z", "2020-01-01T10:00:00Z"),
        ("12:30:00", "12:30:00"),
        ("nan", "nan"),
        ("inf", "inf"),
        ("0xZZ", "0xZZ"),
        ('"123"', "123"),
        ("'true'", "true"),
        ("!!str 12", "12"),
        ("!!binary aGk=", "aGk="),
        ("'it''s'", "it's"),
        ('"tab\\there"', "tab\there"),
        ("a # comment", "a"),
    ],
)
def test_scalars(text: str, expected: object) -> None:
    got = value(text)
    assert got == expected
    assert type(got) is type(expected)


@pytest.mark.parametrize("text", [".nan", ".NaN", ".NAN", ".inf", ".Inf", "-.inf", "+.INF"])
def test_non_finite_numbers_are_refused(text: str) -> None:
    [d] = problems(f"k: {text}\n")
    assert (d.rule, d.line, d.col, d.path) == ("yaml.number", 1, 4, "k")


def test_number_length_limit() -> None:
    assert value("1" * yamlsafe.MAX_NUMBER_CHARS) == int("1" * yamlsafe.MAX_NUMBER_CHARS)
    [d] = problems("k: " + "1" * (yamlsafe.MAX_NUMBER_CHARS + 1) + "\n")
    assert d.rule == "yaml.number"
    [d] = problems("k: 1." + "5" * 60 + "\n")
    assert d.rule == "yaml.number"


def test_explicit_bool_tag_on_a_non_bool_is_refused() -> None:
    problems("k: !!bool yes\n")


# ---------------------------------------------------------------------------------------------
# Tags, merges, aliases


@pytest.mark.parametrize(
    "text",
    [
        "k: !!python/object/apply:os.system ['touch /tmp/pwned']\n",
        "k: !!python/name:os.system\n",
        "k: !env HOME\n",
        "k: !!set {a}\n",
        "k: !!omap [{a: 1}]\n",
        "!!python/object:argparse.Namespace {a: 1}\n",
    ],
)
def test_custom_tags_are_refused(text: str) -> None:
    found = problems(text)
    assert [d.rule for d in found] == ["yaml.tag"]
    assert "tag" in found[0].message


def test_merge_key_is_refused() -> None:
    found = problems("base: &b {a: 1}\nother:\n  <<: *b\n  c: 2\n")
    assert found[0].rule == "yaml.merge" and (found[0].line, found[0].col) == (3, 3)


def test_merge_key_is_reported_once() -> None:
    found = problems("<<: {a: 1}\n")
    assert [d.rule for d in found] == ["yaml.merge"]


def test_plain_aliases_are_allowed() -> None:
    doc = parse("a: &x {k: [1, 2]}\nb: *x\n")
    assert doc.data == {"a": {"k": [1, 2]}, "b": {"k": [1, 2]}}


def test_alias_bomb_stops_at_the_node_limit() -> None:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 7):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 10) + "]")
    found = problems("\n".join(lines) + "\n")
    assert [d.rule for d in found] == ["yaml.size"]


def test_recursive_alias_stops() -> None:
    found = problems("a: &x [1, *x]\n")
    assert [d.rule for d in found] in (["yaml.depth"], ["yaml.size"])


def test_depth_limit() -> None:
    assert parse("[" * 40 + "]" * 40).data is not None
    [d] = problems("k: " + "[" * 70 + "]" * 70 + "\n")
    assert d.rule == "yaml.depth" and d.line == 1


# ---------------------------------------------------------------------------------------------
# Files and bytes


def test_read_bytes_refuses_big_files(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    with open(path, "wb") as handle:
        handle.truncate(yamlsafe.MAX_BYTES + 1)
    with pytest.raises(yamlsafe.YamlProblem) as exc:
        yamlsafe.read_bytes(str(path), "big.yaml")
    assert (exc.value.diagnostic.rule, exc.value.diagnostic.file) == ("file.size", "big.yaml")


def test_read_bytes_at_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "edge.yaml"
    with open(path, "wb") as handle:
        handle.truncate(yamlsafe.MAX_BYTES)
    assert len(yamlsafe.read_bytes(str(path))) == yamlsafe.MAX_BYTES


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(yamlsafe.YamlProblem) as exc:
        yamlsafe.load(str(tmp_path / "nope.yaml"), "nope.yaml")
    assert exc.value.diagnostic.rule == "file"
    assert "cannot read" in exc.value.diagnostic.message


def test_load_a_real_manifest() -> None:
    doc = yamlsafe.load(str(LINEAR), "linear_flow.yaml")
    assert doc.file == "linear_flow.yaml"
    assert doc.data["steps"]["middle"]["next"] == ["end"]
    assert doc.keys[("steps", "middle")] == (21, 3)


def test_problems_of_rejects_other_exceptions() -> None:
    with pytest.raises(TypeError):
        yamlsafe.problems_of(ValueError("x"))


def test_multi_document_message() -> None:
    [d] = problems("a: 1\n---\nb: 2\n")
    assert d.rule == "yaml" and (d.line, d.col) == (2, 1)
    assert "single document" in d.message or "one document" in d.message


def _bomb() -> bytes:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 9):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return ("\n".join(lines) + "\n").encode()


HOSTILE = {
    "empty": b"",
    "whitespace": b"   \n\t\n",
    "comments-only": b"# one\n# two\n",
    "bom-only": b"\xef\xbb\xbf",
    "utf16": b"\xff\xfea\x00:\x00 \x001\x00",
    "latin1": b"a: caf\xe9\n",
    "lone-surrogate-bytes": b"a: \xed\xa0\x80\n",
    "nul": b"a: b\x00c\n",
    "bel": b"a: b\x07c\n",
    "esc": b"a: \x1b[2J\n",
    "del": b"a: \x7f\n",
    "unclosed-bracket": b"a: [1, 2\nb: 3\n",
    "unclosed-brace": b"a: {x: 1\n",
    "unclosed-quote": b'a: "abc\n',
    "bad-indent": b"a:\n  b: 1\n c: 2\n",
    "tab-indent": b"a:\n\tb: 1\n",
    "colon-only": b":\n",
    "dash-only": b"-\n",
    "document-end": b"...\n",
    "document-start": b"---\n",
    "two-documents": b"a: 1\n---\nb: 2\n",
    "directive": b"%YAML 1.1\n---\na: yes\n",
    "bad-directive": b"%YAML 9.9\n---\na: 1\n",
    "tag-directive": b"%TAG !e! tag:example.com,2000:\n---\na: !e!x 1\n",
    "undefined-alias": b"a: *nope\n",
    "anchor-only": b"a: &x\n",
    "recursive-alias": b"&a [*a]\n",
    "alias-bomb": _bomb(),
    "deep-brackets": b"[" * 10_000,
    "deep-braces": b"{a: " * 5_000,
    "deep-block": b"".join(b" " * i + b"a:\n" for i in range(2_000)),
    "deep-dashes": b"- " * 5_000 + b"x\n",
    "top-list": b"- a\n- b\n",
    "top-scalar": b"hello\n",
    "python-tag": b"!!python/object/apply:os.system ['id']\n",
    "merge": b"<<: {a: 1}\n",
    "complex-key": b"? [a]\n: 1\n",
    "long-number": b"a: " + b"9" * 5_000 + b"\n",
    "long-float": b"a: 1." + b"5" * 5_000 + b"\n",
    "nan": b"a: .nan\n",
    "huge-line": b"a: " + b"x" * 1_000_000 + b"\n",
    "many-keys": b"".join(b"k%d: %d\n" % (i, i) for i in range(20_000)),
    "escaped-surrogate": b'a: "\\ud800"\n',
    "escaped-nul": b'a: "\\0"\n',
    "cr-only": b"a: 1\rb: 2\r",
}


@pytest.mark.parametrize("blob", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_input_never_raises_a_traceback(blob: bytes) -> None:
    try:
        doc = yamlsafe.parse(blob, "hostile.yaml")
    except yamlsafe.LoadError as exc:
        found = yamlsafe.problems_of(exc)
        assert found
        for d in found:
            assert d.file == "hostile.yaml" and d.line >= 1 and d.col >= 1
            assert d.rule.split(".")[0] in ("yaml", "file")
            assert d.message and "\n" not in d.message
    else:
        assert all(line >= 1 and col >= 1 for line, col in doc.values.values())


def test_yaml_1_2_plain_scalars_the_c_parser_refuses_still_parse() -> None:
    """`[team:ml]` is valid YAML 1.2 (and what export writes); libyaml refuses it, so the reader
    falls back to the pure parser instead of reporting an error."""
    from mfprefect.yamlsafe import parse

    doc = parse(b"tags: [team:ml, tier1]\nnext: [a]\n", "f.yaml")
    assert doc.data == {"tags": ["team:ml", "tier1"], "next": ["a"]}
    assert doc.values[("tags", 0)] == (1, 8)
