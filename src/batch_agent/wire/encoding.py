"""The JSON encoding of the Batch v1 wire format, absorbed once: `WireModel` (camelCase aliases,
unknown fields ignored), int64 as a decimal string, `google-duration` as `"1.5s"`,
`google-datetime` as RFC 3339, and the wording of a bad value in a problem message.

Numbers arrive as text from a server we do not control. Each is checked for length and shape
before it is converted, so that parsing costs microseconds whatever is sent ("1e600000" or a
million digits), and each is checked for range before it becomes a timedelta, so that neither
timedelta nor `datetime.now() + duration` can overflow later. This module defines no message
of the API and knows nothing of HTTP.
"""

from __future__ import annotations

import logging
import re
import reprlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer, ValidationInfo
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

log = logging.getLogger(__name__)

_MAX_NUMBER_TEXT = 64  # characters; longer than any int64 or any duration we accept
_DURATION = re.compile(r"(-?)([0-9]+)(?:\.([0-9]{1,9}))?s")
_INTEGER = re.compile(r"-?[0-9]+")
MAX_TASK_DURATION = timedelta(days=36525)  # 100 years: a task timeout or maxRunDuration
MAX_REPORT_INTERVAL = timedelta(hours=1)  # the report intervals a response may set
_RANGES = {
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}


class WireModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields ignored."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )

    def to_wire(self) -> dict[str, Any]:
        """The JSON object to send: camelCase, unset fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


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
        micros: int | None = value // timedelta(microseconds=1)
    else:
        micros = _microseconds(value)
    if micros is None:
        raise ValueError(f"{quote(value)} is not a duration")
    if abs(micros) > maximum // timedelta(microseconds=1):
        raise ValueError(f"{quote(value)} is out of range (longer than {_describe(maximum)})")
    return timedelta(microseconds=micros)


def format_duration(value: timedelta) -> str:
    """timedelta -> `"1.5s"`, the shortest exact form."""
    seconds = Decimal(value.days * 86400 + value.seconds) + Decimal(value.microseconds) / 10**6
    text = format(seconds.normalize(), "f")
    return f"{text}s"


def format_time(value: datetime) -> str:
    """An aware datetime -> RFC 3339 in UTC with a `Z`."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(value: str) -> datetime:
    """RFC 3339 (`Z` or an offset; naive taken as UTC) -> an aware datetime; ValueError if not."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


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
    """A pydantic error location as a problem message names it: ('spec', 'runnables', 1,
    'timeout') -> 'runnables[1].timeout' (spec is implied)."""
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


def _to_duration(value: object) -> timedelta:
    try:
        return parse_duration(value)
    except ValueError as error:
        raise PydanticCustomError("duration", str(error)) from None


def _integer(kind: str) -> BeforeValidator:
    """A validator for an integer of `kind` (int32, int64, uint64): a JSON number or, as
    proto3 JSON allows and int64 requires, a decimal string; out-of-range values are errors."""
    low, high = _RANGES[kind]

    def validate(value: object) -> int:
        number = value
        if isinstance(value, str) and len(value) <= _MAX_NUMBER_TEXT and _INTEGER.fullmatch(value):
            number = int(value)
        if not isinstance(number, int) or isinstance(number, bool):
            raise PydanticCustomError(kind, f"{quote(value)} is not an integer")
        if not low <= number <= high:
            raise PydanticCustomError(kind, f"{quote(value)} is out of range for {kind}")
        return number

    return BeforeValidator(validate)


def _to_time(value: object) -> datetime:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and len(value) <= _MAX_NUMBER_TEXT:
        try:
            return parse_time(value)
        except ValueError:
            pass
    raise PydanticCustomError("time", f"{quote(value)} is not an RFC 3339 time")


def _to_report_interval(value: object, info: ValidationInfo) -> timedelta | None:
    """A response's report interval, clamped to [0, MAX_REPORT_INTERVAL]; None (the agent
    keeps its current interval) for one that is not a duration. Logged, never an error: a
    bad interval must not cost us the tasks in the same response."""
    if value is None:
        return None
    name = to_camel(info.field_name or "interval")
    if isinstance(value, timedelta):
        micros: int | None = value // timedelta(microseconds=1)
    else:
        micros = _microseconds(value)
    if micros is None:
        log.warning("control plane: %s %s is not a duration; ignored", name, quote(value))
        return None
    clamped = min(max(micros, 0), MAX_REPORT_INTERVAL // timedelta(microseconds=1))
    if clamped != micros:
        log.warning(
            "control plane: %s %s is out of range; using %s",
            name,
            quote(value),
            format_duration(timedelta(microseconds=clamped)),
        )
    return timedelta(microseconds=clamped)


Int32 = Annotated[int, _integer("int32")]
Int64 = Annotated[int, _integer("int64"), PlainSerializer(str, return_type=str)]
UInt64 = Annotated[int, _integer("uint64"), PlainSerializer(str, return_type=str)]
Duration = Annotated[
    timedelta, BeforeValidator(_to_duration), PlainSerializer(format_duration, return_type=str)
]
Timestamp = Annotated[
    datetime, BeforeValidator(_to_time), PlainSerializer(format_time, return_type=str)
]
ReportInterval = Annotated[
    timedelta | None,
    BeforeValidator(_to_report_interval),
    PlainSerializer(lambda v: None if v is None else format_duration(v)),
]
