"""Offline checks and conversions for cron schedules and timezone names."""

from __future__ import annotations

import functools
import zoneinfo

__all__ = ["cron_problem", "to_standard_cron", "timezone_problem"]

MACROS: frozenset[str] = frozenset(
    {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
)

# Real cron expressions are short; capping the length keeps every check linear and cheap.
MAX_CRON_LENGTH = 1000
MAX_TIMEZONE_LENGTH = 64
# These load from a system zoneinfo directory but are not IANA zones, so they mean different
# things (or nothing) on the machine that runs the schedule.
_MACHINE_SPECIFIC_ZONES = frozenset({"localtime", "posixrules"})
_MACHINE_SPECIFIC_PREFIXES = ("posix/", "right/")
# Longest in-range number worth passing to int(); anything longer is out of range anyway.
_MAX_NUMBER_DIGITS = 4
_SHOW_LIMIT = 40
# Stands in for any number too long to parse; it is above every field's range and step limit.
_TOO_BIG = 10**_MAX_NUMBER_DIGITS

_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")


class _Field:
    # A plain class rather than a dataclass: importing dataclasses costs the validator's startup.
    __slots__ = ("number", "name", "low", "high", "max_step", "names", "allows_question")

    def __init__(
        self,
        number: int,
        name: str,
        low: int,
        high: int,
        max_step: int,
        names: dict[str, int],
        allows_question: bool,
    ) -> None:
        self.number = number
        self.name = name
        self.low = low
        self.high = high
        # Largest useful step: the count of distinct values (7 days, though 7 aliases 0).
        self.max_step = max_step
        self.names = names
        self.allows_question = allows_question

    @property
    def label(self) -> str:
        return f"field {self.number} ({self.name})"


_FIELDS: tuple[_Field, ...] = (
    _Field(1, "minute", 0, 59, 60, {}, False),
    _Field(2, "hour", 0, 23, 24, {}, False),
    _Field(3, "day of month", 1, 31, 31, {}, True),
    _Field(4, "month", 1, 12, 12, {m: i + 1 for i, m in enumerate(_MONTHS)}, False),
    _Field(5, "day of week", 0, 7, 7, {d: i for i, d in enumerate(_DAYS)}, True),
)


def _show(text: str) -> str:
    """Quote `text` for a message, escaping control characters and truncating long input."""
    if len(text) <= _SHOW_LIMIT:
        return repr(text)
    return repr(text[:_SHOW_LIMIT]) + "..."


def _clip(text: str) -> str:
    """Truncate already-safe `text` (digits, names, ranges) for a message, without quotes."""
    return text if len(text) <= _SHOW_LIMIT else text[:_SHOW_LIMIT] + "..."


def _is_digits(text: str) -> bool:
    """Return whether `text` is a non-empty run of ASCII digits."""
    # str.isdigit() alone also accepts '²' and Arabic-Indic digits, which int() would parse.
    return text.isascii() and text.isdigit()


def _number(text: str) -> int | None:
    """Return the value of an ASCII-digit string, or None if it is not one or too long to matter."""
    if not _is_digits(text):
        return None
    significant = text.lstrip("0") or "0"
    # Checking the length first keeps int() from chewing on hundreds of hostile digits.
    if len(significant) > _MAX_NUMBER_DIGITS:
        return _TOO_BIG
    return int(significant)


def _is_extension(token: str) -> bool:
    """Return whether `token` uses Quartz/AWS day extensions such as L, 5L, 15W or 6#3."""
    if token in ("L", "W", "LW") or "#" in token:
        return True
    return len(token) > 1 and token[-1] in "LW" and _is_digits(token[:-1])


def _value_problem(field: _Field, token: str) -> tuple[int | None, str | None]:
    """Parse one number or name of `field`, returning (value, None) or (None, problem)."""
    if token == "":
        return None, f"{field.label}: empty value"
    value = _number(token)
    if value is not None:
        if not field.low <= value <= field.high:
            return None, f"{field.label}: {_clip(token)} is out of range {field.low}-{field.high}"
        return value, None
    upper = token.upper()
    if upper in field.names:
        return field.names[upper], None
    if field.allows_question and _is_extension(upper):
        return None, (
            f"{field.label}: {_show(token)} uses L, W or #, which Prefect's cron does not support"
        )
    if field.names and upper.isascii() and upper.isalpha():
        kind, examples = ("month", "JAN-DEC") if field.number == 4 else ("day", "SUN-SAT")
        return None, (
            f"{field.label}: {_show(token)} is not a {kind} name "
            f"(use three-letter names {examples})"
        )
    expected = "a number or a name" if field.names else "a number"
    return None, f"{field.label}: expected {expected}, got {_show(token)}"


def _item_problem(field: _Field, item: str) -> str | None:
    """Return why one comma-separated item of `field` is invalid, or None."""
    if item == "":
        return f"{field.label}: empty item in list"
    base, slash, step = item.partition("/")
    if slash:
        step_value = _number(step)
        if step_value is None or step_value == 0:
            return f"{field.label}: step must be a positive integer, got {_show(step)}"
        if step_value > field.max_step:
            return (
                f"{field.label}: step {_clip(step)} is larger than the field's span "
                f"({field.max_step})"
            )
    if base == "":
        return f"{field.label}: missing value in {_show(item)}"
    if base == "*":
        return None
    if base == "?":
        if not field.allows_question:
            return f"{field.label}: '?' is only allowed in day of month and day of week"
        return f"{field.label}: '?' must be the whole field, got {_show(item)}"
    start, dash, end = base.partition("-")
    if not dash:
        return _value_problem(field, base)[1]
    if start == "" or end == "":
        return f"{field.label}: incomplete range {_show(base)}"
    if "-" in end:
        return f"{field.label}: malformed range {_show(base)}"
    low, problem = _value_problem(field, start)
    if low is None:
        return problem
    high, problem = _value_problem(field, end)
    if high is None:
        return problem
    if low > high:
        return f"{field.label}: range {_clip(base)} goes backwards (start must not exceed end)"
    return None


def _field_problem(field: _Field, text: str) -> str | None:
    """Return why the whole text of `field` is invalid, or None."""
    if text == "?" and field.allows_question:
        return None
    for item in text.split(","):
        problem = _item_problem(field, item)
        if problem:
            return problem
    return None


def cron_problem(expr: str) -> str | None:
    """Return why `expr` is not a valid 5-field cron expression, or None if it is."""
    # Manifests come from YAML, where an unquoted value can arrive as a number or null.
    if not isinstance(expr, str):
        return f"cron expression must be a string, got {type(expr).__name__}"
    if len(expr) > MAX_CRON_LENGTH:
        return f"cron expression is too long ({len(expr)} characters, at most {MAX_CRON_LENGTH})"
    for position, char in enumerate(expr):
        if char == " " or char == "\t":
            continue
        if not char.isascii():
            return f"cron expression contains non-ASCII character {char!r} at position {position}"
        if not char.isprintable():
            return f"cron expression contains control character {char!r} at position {position}"
    fields = expr.split()
    if not fields:
        return "cron expression is empty"
    if fields[0].startswith("@"):
        if len(fields) != 1:
            return f"macro {_show(fields[0])} must stand alone, got {len(fields)} fields"
        if fields[0].lower() not in MACROS:
            expected = ", ".join(sorted(MACROS))
            return f"unknown macro {_show(fields[0])}; expected one of {expected}"
        return None
    if len(fields) != len(_FIELDS):
        hint = " (a 6-field AWS expression? drop the year field)" if len(fields) == 6 else ""
        return f"expected 5 fields, got {len(fields)}{hint}"
    for field, text in zip(_FIELDS, fields, strict=True):
        problem = _field_problem(field, text)
        if problem:
            return problem
    return None


def _shift_aws_day(token: str) -> str:
    """Map one AWS day-of-week number (1-7, SUN-SAT) to standard cron (0-6); leave others."""
    if _is_digits(token) and len(token) == 1 and 1 <= int(token) <= 7:
        return str(int(token) - 1)
    # Names, '*', '?' and out-of-range numbers stay as written so cron_problem reports them.
    return token


def _shift_aws_day_field(text: str) -> str:
    """Shift the numeric values of an AWS day-of-week field down by one."""
    items = []
    for item in text.split(","):
        base, slash, step = item.partition("/")
        start, dash, end = base.partition("-")
        base = _shift_aws_day(start) + dash + (_shift_aws_day(end) if dash else "")
        items.append(base + slash + step)
    return ",".join(items)


def _question_to_star(text: str) -> str:
    """Turn a whole-field '?' into '*'."""
    return "*" if text == "?" else text


def to_standard_cron(expr: str) -> str:
    """Convert a Metaflow @schedule cron (AWS 6-field or already 5-field) to a 5-field cron."""
    # A non-string from YAML is passed through untouched so that cron_problem can report it.
    if not isinstance(expr, str):
        return expr
    fields = expr.split()
    if len(fields) == 6:
        if fields[5] != "*":
            return " ".join(fields)
        minute, hour, day, month, weekday = fields[:5]
        weekday = _shift_aws_day_field(weekday)
        return " ".join((minute, hour, _question_to_star(day), month, _question_to_star(weekday)))
    if len(fields) == 5:
        fields[2] = _question_to_star(fields[2])
        fields[4] = _question_to_star(fields[4])
    return " ".join(fields)


@functools.lru_cache(maxsize=1)
def _available_timezones() -> tuple[str, ...]:
    """Return the sorted IANA timezone names, computed once and only when needed."""
    return tuple(sorted(zoneinfo.available_timezones()))


def _suggest_timezone(name: str) -> str | None:
    """Return the known timezone closest to `name`, or None."""
    # Imported here because only a failed lookup needs it, and the validator must start fast.
    import difflib

    zones = _available_timezones()
    folded = name.casefold()
    for zone in zones:
        if zone.casefold() == folded:
            return zone
    matches = difflib.get_close_matches(name, zones, n=1, cutoff=0.8)
    return matches[0] if matches else None


def timezone_problem(name: str) -> str | None:
    """Return why `name` is not an IANA timezone, or None if it is."""
    if not isinstance(name, str):
        return f"timezone must be a string, got {type(name).__name__}"
    if name == "":
        return "timezone is empty"
    if len(name) > MAX_TIMEZONE_LENGTH:
        return f"timezone name is too long ({len(name)} characters, at most {MAX_TIMEZONE_LENGTH})"
    # ZoneInfo resolves names as file paths; refuse path tricks before touching the filesystem.
    if ".." in name or name.startswith("/") or "\\" in name or not name.isprintable():
        return f"{_show(name)} is not a valid timezone name"
    if name in _MACHINE_SPECIFIC_ZONES or name.startswith(_MACHINE_SPECIFIC_PREFIXES):
        return f"{_show(name)} is machine-specific, not an IANA timezone name"
    try:
        zoneinfo.ZoneInfo(name)
    except Exception:
        # Unknown names raise ZoneInfoNotFoundError, but malformed ones raise ValueError,
        # OSError (e.g. a directory name like 'Europe') or UnicodeError; all mean "not valid".
        suggestion = _suggest_timezone(name)
        if suggestion:
            return f"unknown timezone {_show(name)}; did you mean {suggestion!r}?"
        return f"unknown timezone {_show(name)}"
    return None
