"""Unit tests for mfprefect.cron: cron validation, AWS conversion and timezone checks."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mfprefect.cron import cron_problem, timezone_problem, to_standard_cron

VALID_CRONS = [
    "0 * * * *",
    "* * * * *",
    "*/5 * * * *",
    "*/60 * * * *",
    "0-59/60 * * * *",
    "5/15 * * * *",
    "0,15,30,45 * * * *",
    "0 0 1 1 *",
    "59 23 31 12 7",
    "0 0 * * 0",
    "0 0 * * 0-7",
    "0 9-17/2 * * 1-5",
    "0 0 * jan-mar mon-fri",
    "0 0 * JUL WED",
    "0 0 * Dec Sun",
    "0 0 * * SUN-SAT",
    "0 0 * * MON-7",
    "0 0 * * 1-5/7",
    "0 0 */31 */12 */7",
    "0 0 ? * *",
    "0 0 * * ?",
    "0 0 ? * ?",
    "05 07 * * *",
    "00000000000000000005 * * * *",
    "  0\t0  * *   *  ",
    "0 0 1,15 * 1,3-5,SAT",
    "0 0 30 2 *",
]


@pytest.mark.parametrize("expr", VALID_CRONS)
def test_valid_cron(expr: str) -> None:
    assert cron_problem(expr) is None


@pytest.mark.parametrize(
    "macro",
    ["@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly", "@DAILY"],
)
def test_macros_are_valid(macro: str) -> None:
    assert cron_problem(macro) is None


INVALID_CRONS = [
    # field count
    ("", "cron expression is empty"),
    ("   \t ", "cron expression is empty"),
    ("0 0 * *", "expected 5 fields, got 4"),
    ("0 0 * * ? *", "expected 5 fields, got 6 (a 6-field AWS expression? drop the year field)"),
    ("0 0 * * * * *", "expected 5 fields, got 7"),
    # ranges of single values
    ("60 * * * *", "field 1 (minute): 60 is out of range 0-59"),
    ("0 24 * * *", "field 2 (hour): 24 is out of range 0-23"),
    ("0 0 0 * *", "field 3 (day of month): 0 is out of range 1-31"),
    ("0 0 32 * *", "field 3 (day of month): 32 is out of range 1-31"),
    ("0 0 * 0 *", "field 4 (month): 0 is out of range 1-12"),
    ("0 0 * 13 *", "field 4 (month): 13 is out of range 1-12"),
    ("0 0 * * 8", "field 5 (day of week): 8 is out of range 0-7"),
    ("0 0 * * 1,9", "field 5 (day of week): 9 is out of range 0-7"),
    ("0 0-24 * * *", "field 2 (hour): 24 is out of range 0-23"),
    # steps
    ("*/0 * * * *", "field 1 (minute): step must be a positive integer, got '0'"),
    ("*/ * * * *", "field 1 (minute): step must be a positive integer, got ''"),
    ("*/x * * * *", "field 1 (minute): step must be a positive integer, got 'x'"),
    ("*/-1 * * * *", "field 1 (minute): step must be a positive integer, got '-1'"),
    ("1/2/3 * * * *", "field 1 (minute): step must be a positive integer, got '2/3'"),
    ("*/61 * * * *", "field 1 (minute): step 61 is larger than the field's span (60)"),
    ("0 */25 * * *", "field 2 (hour): step 25 is larger than the field's span (24)"),
    ("0 0 */32 * *", "field 3 (day of month): step 32 is larger than the field's span (31)"),
    ("0 0 * */13 *", "field 4 (month): step 13 is larger than the field's span (12)"),
    ("0 0 * * 1-5/8", "field 5 (day of week): step 8 is larger than the field's span (7)"),
    # items and ranges
    ("1,,2 * * * *", "field 1 (minute): empty item in list"),
    ("1, * * * *", "field 1 (minute): empty item in list"),
    ("/5 * * * *", "field 1 (minute): missing value in '/5'"),
    ("5-3 * * * *", "field 1 (minute): range 5-3 goes backwards (start must not exceed end)"),
    (
        "0 0 * * FRI-SUN",
        "field 5 (day of week): range FRI-SUN goes backwards (start must not exceed end)",
    ),
    ("-5 * * * *", "field 1 (minute): incomplete range '-5'"),
    ("0 0 * * 1-", "field 5 (day of week): incomplete range '1-'"),
    ("1-2-3 * * * *", "field 1 (minute): malformed range '1-2-3'"),
    ("*-5 * * * *", "field 1 (minute): expected a number, got '*'"),
    ("x * * * *", "field 1 (minute): expected a number, got 'x'"),
    ("JAN * * * *", "field 1 (minute): expected a number, got 'JAN'"),
    (
        "0 0 * * JAN",
        "field 5 (day of week): 'JAN' is not a day name (use three-letter names SUN-SAT)",
    ),
    (
        "0 0 * * monday",
        "field 5 (day of week): 'monday' is not a day name (use three-letter names SUN-SAT)",
    ),
    ("0 0 * foo *", "field 4 (month): 'foo' is not a month name (use three-letter names JAN-DEC)"),
    ("0 0 * SUN *", "field 4 (month): 'SUN' is not a month name (use three-letter names JAN-DEC)"),
    ("0 0 * 1.5 *", "field 4 (month): expected a number or a name, got '1.5'"),
    # '?' and unsupported extensions
    ("? * * * *", "field 1 (minute): '?' is only allowed in day of month and day of week"),
    ("0 0 * ? *", "field 4 (month): '?' is only allowed in day of month and day of week"),
    ("0 0 ?/2 * *", "field 3 (day of month): '?' must be the whole field, got '?/2'"),
    ("0 0 1,? * *", "field 3 (day of month): '?' must be the whole field, got '?'"),
    (
        "0 0 L * *",
        "field 3 (day of month): 'L' uses L, W or #, which Prefect's cron does not support",
    ),
    (
        "0 0 15W * *",
        "field 3 (day of month): '15W' uses L, W or #, which Prefect's cron does not support",
    ),
    (
        "0 0 * * 5L",
        "field 5 (day of week): '5L' uses L, W or #, which Prefect's cron does not support",
    ),
    (
        "0 0 * * 6#3",
        "field 5 (day of week): '6#3' uses L, W or #, which Prefect's cron does not support",
    ),
    # macros
    (
        "@reboot",
        "unknown macro '@reboot'; expected one of "
        "@annually, @daily, @hourly, @midnight, @monthly, @weekly, @yearly",
    ),
    ("@daily 0", "macro '@daily' must stand alone, got 2 fields"),
    # hostile input
    ("0\n0 * * *", "cron expression contains control character '\\n' at position 1"),
    ("0 0 * * *\x00", "cron expression contains control character '\\x00' at position 9"),
    ("0 0 * * * é", "cron expression contains non-ASCII character 'é' at position 10"),
    ("\u0663 * * * *", "cron expression contains non-ASCII character '\u0663' at position 0"),
    ("0\u00a00 * * *", "cron expression contains non-ASCII character '\\xa0' at position 1"),
    ("x" * 1001, "cron expression is too long (1001 characters, at most 1000)"),
    ("1" * 300 + " * * * *", "field 1 (minute): " + "1" * 40 + "... is out of range 0-59"),
    (
        "*/" + "9" * 300 + " * * * *",
        "field 1 (minute): step " + "9" * 40 + "... is larger than the field's span (60)",
    ),
    (
        "'" + "a" * 100 + " * * * *",
        "field 1 (minute): expected a number, got \"'" + "a" * 39 + '"...',
    ),
]


@pytest.mark.parametrize(("expr", "message"), INVALID_CRONS)
def test_invalid_cron_message(expr: str, message: str) -> None:
    assert cron_problem(expr) == message


@pytest.mark.parametrize("value", [None, 5, 1.5, b"0 0 * * *", ["0", "0", "*", "*", "*"]])
def test_cron_problem_rejects_non_strings(value: object) -> None:
    problem = cron_problem(value)  # type: ignore[arg-type]
    assert problem == f"cron expression must be a string, got {type(value).__name__}"


def test_huge_number_is_fast() -> None:
    expr = "9" * 990 + " * * * *"
    start = time.perf_counter()
    assert cron_problem(expr) == "field 1 (minute): " + "9" * 40 + "... is out of range 0-59"
    assert time.perf_counter() - start < 0.05


@given(st.text(max_size=2000))
@settings(max_examples=300, deadline=None)
def test_cron_problem_never_raises(expr: str) -> None:
    start = time.perf_counter()
    problem = cron_problem(expr)
    elapsed = time.perf_counter() - start
    assert problem is None or (isinstance(problem, str) and problem)
    assert elapsed < 0.05


@given(
    st.lists(
        st.text(alphabet="0123456789*/,-?LW#JANMONSUN", min_size=0, max_size=12),
        min_size=0,
        max_size=7,
    )
)
@settings(max_examples=300, deadline=None)
def test_cron_like_input_never_raises(fields: list[str]) -> None:
    expr = " ".join(fields)
    problem = cron_problem(expr)
    assert problem is None or problem
    converted = to_standard_cron(expr)
    assert isinstance(converted, str)
    cron_problem(converted)


@pytest.mark.parametrize(
    ("aws", "standard"),
    [
        # what Metaflow's @schedule(hourly=True / daily=True / weekly=True) produces
        ("0 * * * ? *", "0 * * * *"),
        ("0 0 * * ? *", "0 0 * * *"),
        ("0 0 ? * SUN *", "0 0 * * SUN"),
        # AWS day-of-week numbers are 1-7 for SUN-SAT; standard cron uses 0-6
        ("0 12 ? * 1 *", "0 12 * * 0"),
        ("0 12 ? * 7 *", "0 12 * * 6"),
        ("0 12 ? * 2-6 *", "0 12 * * 1-5"),
        ("0 12 ? * 1,3,7 *", "0 12 * * 0,2,6"),
        ("0 12 ? * 1-3,5 *", "0 12 * * 0-2,4"),
        ("0 12 ? * 2-6/2 *", "0 12 * * 1-5/2"),
        ("0 12 ? * 2/2 *", "0 12 * * 1/2"),
        ("0 12 ? * MON-6 *", "0 12 * * MON-5"),
        ("0 12 ? * MON-FRI *", "0 12 * * MON-FRI"),
        ("0 12 ? * */2 *", "0 12 * * */2"),
        # numbers AWS does not accept are left for cron_problem to judge
        ("0 12 ? * 8 *", "0 12 * * 8"),
        ("0 12 ? * 6#3 *", "0 12 * * 6#3"),
        # day of month, hour and minute are never shifted
        ("15 10 1 * ? *", "15 10 1 * *"),
        ("0/15 1-3 1,15 JAN-MAR ? *", "0/15 1-3 1,15 JAN-MAR *"),
        # whitespace is normalised
        ("  0  0\t* *  ?  * ", "0 0 * * *"),
    ],
)
def test_aws_six_field_conversion(aws: str, standard: str) -> None:
    assert to_standard_cron(aws) == standard


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        # a concrete year cannot be expressed in 5 fields: keep it so cron_problem reports it
        ("0 0 1 1 ? 2030", "0 0 1 1 ? 2030"),
        ("0  0 1 1 ?   2030-2032", "0 0 1 1 ? 2030-2032"),
        # 5-field input passes through, with a whole-field '?' turned into '*'
        ("0 0 * * 1", "0 0 * * 1"),
        ("0 0 * * 7", "0 0 * * 7"),
        ("0 0 ? * MON", "0 0 * * MON"),
        ("0 0 1 * ?", "0 0 1 * *"),
        ("0  0\t* *  *", "0 0 * * *"),
        # '?' outside the day fields is left for cron_problem to report
        ("? 0 * * *", "? 0 * * *"),
        ("@daily", "@daily"),
        ("", ""),
        ("0 0 *", "0 0 *"),
    ],
)
def test_conversion_passthrough(expr: str, expected: str) -> None:
    assert to_standard_cron(expr) == expected


def test_converted_metaflow_presets_are_valid() -> None:
    for preset in ("0 * * * ? *", "0 0 * * ? *", "0 0 ? * SUN *"):
        assert cron_problem(to_standard_cron(preset)) is None
    assert cron_problem(to_standard_cron("0 0 1 1 ? 2030")) == (
        "expected 5 fields, got 6 (a 6-field AWS expression? drop the year field)"
    )


def test_to_standard_cron_passes_non_strings_through() -> None:
    assert to_standard_cron(None) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name",
    ["UTC", "Europe/Amsterdam", "America/New_York", "Asia/Kolkata", "Etc/GMT+5", "GMT"],
)
def test_valid_timezone(name: str) -> None:
    assert timezone_problem(name) is None


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "Europe/Amsterdm",
            "unknown timezone 'Europe/Amsterdm'; did you mean 'Europe/Amsterdam'?",
        ),
        ("utc", "unknown timezone 'utc'; did you mean 'UTC'?"),
        (
            "america/new_york",
            "unknown timezone 'america/new_york'; did you mean 'America/New_York'?",
        ),
        (
            "America/New York",
            "unknown timezone 'America/New York'; did you mean 'America/New_York'?",
        ),
        ("Foo/Bar", "unknown timezone 'Foo/Bar'"),
        ("Europe", "unknown timezone 'Europe'"),
        ("Europe/", "unknown timezone 'Europe/'"),
        ("zone.tab", "unknown timezone 'zone.tab'"),
        ("", "timezone is empty"),
        ("../etc/passwd", "'../etc/passwd' is not a valid timezone name"),
        ("Europe/../UTC", "'Europe/../UTC' is not a valid timezone name"),
        ("/etc/localtime", "'/etc/localtime' is not a valid timezone name"),
        ("C:\\tz", "'C:\\\\tz' is not a valid timezone name"),
        ("UTC\x00", "'UTC\\x00' is not a valid timezone name"),
        ("Europe/Amsterdam\n", "'Europe/Amsterdam\\n' is not a valid timezone name"),
        ("a" * 65, "timezone name is too long (65 characters, at most 64)"),
        ("localtime", "'localtime' is machine-specific, not an IANA timezone name"),
        ("posixrules", "'posixrules' is machine-specific, not an IANA timezone name"),
        ("right/UTC", "'right/UTC' is machine-specific, not an IANA timezone name"),
    ],
)
def test_invalid_timezone_message(name: str, message: str) -> None:
    assert timezone_problem(name) == message


@pytest.mark.parametrize("value", [None, 0, b"UTC"])
def test_timezone_problem_rejects_non_strings(value: object) -> None:
    problem = timezone_problem(value)  # type: ignore[arg-type]
    assert problem == f"timezone must be a string, got {type(value).__name__}"


@given(st.text(max_size=80))
@settings(max_examples=100, deadline=None)
def test_timezone_problem_never_raises(name: str) -> None:
    problem = timezone_problem(name)
    assert problem is None or (isinstance(problem, str) and problem)
