"""The JSON encoding of the Batch v1 wire format, absorbed once, in plain code: int64 as a
decimal string, `google-duration` as `"1.5s"`, `google-datetime` as RFC 3339, camelCase field
names, and the wording of a bad value in a problem message.

Numbers arrive as text from a server we do not control. Each is checked for length and shape
before it is converted, so that parsing costs microseconds whatever is sent ("1e600000" or a
million digits), and each is checked for range before it becomes a timedelta, so that neither
timedelta nor `datetime.now() + duration` can overflow later. This module defines no message
of the API and knows nothing of HTTP: the report path (`report`) uses it alone; the task side's
field converters (`task`) are built on it.
"""

from __future__ import annotations

import logging
import re
import reprlib
from datetime import UTC, datetime, timedelta

log = logging.getLogger(__name__)

_MAX_NUMBER_TEXT = 64  # characters; longer than any int64 or any duration we accept
_DURATION = re.compile(r"(-?)([0-9]+)(?:\.([0-9]{1,9}))?s")
_INTEGER = re.compile(r"-?[0-9]+")
MAX_TASK_DURATION = timedelta(days=36525)  # 100 years: a task timeout or maxRunDuration
MAX_REPORT_INTERVAL = timedelta(hours=1)  # the report intervals a response may set
RANGES = {
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}
_MICROSECOND = timedelta(microseconds=1)


def _microseconds(value: object) -> int | None:
    """`"-1.5s"` -> -1500000 (nanoseconds truncated); None if not a short duration string."""
    if not isinstance(value, str) or len(value) > _MAX_NUMBER_TEXT:
        return None
    match = _DURATION.fullmatch(value)
    if match is None:
        return None
    sign, whole, fraction = match.groups()
    micros = int(whole) * 10**6 + int((fraction or "").ljust(9, "0")) // 1000
    return -micros if sign else micros


def parse_duration(value: object, maximum: timedelta = MAX_TASK_DURATION) -> timedelta:
    """`"1.5s"` -> timedelta(seconds=1.5); raises ValueError naming the bad value, also for a
    duration longer than `maximum` either way (100 years by default)."""
    if isinstance(value, timedelta):
        micros: int | None = value // _MICROSECOND
    else:
        micros = _microseconds(value)
    if micros is None:
        raise ValueError(f"{quote(value)} is not a duration")
    if abs(micros) > maximum // _MICROSECOND:
        raise ValueError(f"{quote(value)} is out of range (longer than {_describe(maximum)})")
    return timedelta(microseconds=micros)


def format_duration(value: timedelta) -> str:
    """timedelta -> `"1.5s"`, the shortest exact form."""
    micros = value // _MICROSECOND
    whole, fraction = divmod(abs(micros), 10**6)
    text = f"{whole}.{fraction:06d}".rstrip("0").rstrip(".")  # the dot keeps "10" whole
    return f"-{text}s" if micros < 0 else f"{text}s"


def format_time(value: datetime) -> str:
    """An aware datetime -> RFC 3339 in UTC with a `Z`."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(value: str) -> datetime:
    """RFC 3339 (`Z` or an offset; naive taken as UTC) -> an aware datetime; ValueError if not."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_integer(value: object, kind: str) -> int:
    """An integer of `kind` (int32, int64, uint64) as it arrives: a JSON number or, as proto3
    JSON allows and int64 requires, a decimal string. ValueError naming the value when it is
    not one or is out of range; the cost is bounded whatever the value's size."""
    low, high = RANGES[kind]
    number = value
    if isinstance(value, str) and len(value) <= _MAX_NUMBER_TEXT and _INTEGER.fullmatch(value):
        number = int(value)
    if not isinstance(number, int) or isinstance(number, bool):
        raise ValueError(f"{quote(value)} is not an integer")
    if not low <= number <= high:
        raise ValueError(f"{quote(value)} is out of range for {kind}")
    return number


def report_interval(value: object, name: str) -> timedelta | None:
    """A response's report interval `name`, clamped to [0, MAX_REPORT_INTERVAL]; None (the
    agent keeps its current interval) when absent or not a duration. Logged, never an error:
    a bad interval must not cost us the tasks in the same response."""
    if value is None:
        return None
    micros = value // _MICROSECOND if isinstance(value, timedelta) else _microseconds(value)
    if micros is None:
        log.warning("control plane: %s %s is not a duration; ignored", name, quote(value))
        return None
    clamped = min(max(micros, 0), MAX_REPORT_INTERVAL // _MICROSECOND)
    if clamped != micros:
        log.warning(
            "control plane: %s %s is out of range; using %s",
            name,
            quote(value),
            format_duration(timedelta(microseconds=clamped)),
        )
    return timedelta(microseconds=clamped)


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 60, 60


def quote(value: object) -> str:
    """A bad value as a problem message shows it: strings quoted, everything cut short."""
    if isinstance(value, str):
        return f'"{value}"' if len(value) <= 60 else f'"{value[:50]}..." ({len(value)} chars)'
    if isinstance(value, int) and value.bit_length() > 128:
        return f"a {value.bit_length()}-bit number"
    return _REPR.repr(value)


def json_path(loc: tuple[int | str, ...]) -> str:
    """An error location as a problem message names it: ('spec', 'runnables', 1, 'timeout')
    -> 'runnables[1].timeout' (spec is implied)."""
    parts = list(loc)
    if parts and parts[0] in ("spec", "agentTaskSpec"):
        parts = parts[1:]
    text = ""
    for part in parts:
        part = part if isinstance(part, int) or len(part) <= 40 else part[:37] + "..."
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else part
    return text or "task"


def _describe(value: timedelta) -> str:
    return f"{value.days // 365} years" if value.days >= 365 else format_duration(value)
