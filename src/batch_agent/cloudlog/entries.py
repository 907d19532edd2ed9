"""Cloud Logging entries from runnables' output: the pure rules of what an entry holds.

A byte range of one output file (a `Segment`: runnable, stream, start, end, and the time it was
first read) always becomes the same entries: one per line (a line longer than `MAX_PIECE`
bytes in pieces, a piece whose JSON form would pass the 256 KiB entry limit halved again), each
with `insertId` `TASKKEY-K{o|e}OFFSET` (the byte offset where it starts) and `timestamp` the
segment's time plus its index in nanoseconds. Cloud Logging removes duplicates by (project,
timestamp, insertId), so a segment sent again after a crash or a lost answer is stored once.
stdout lines are INFO, stderr ERROR; a line that is a JSON object becomes a `jsonPayload`,
its `severity` (when it names one) taken out into the entry's. Pure: no I/O, no clock.

Entries are made in their JSON form at once, their destination's fields apart (a `Group`),
for `body` to say once per call: a line of printable ASCII that needs no escape (most output)
goes into its entry as it is, never decoded, escaped or encoded again, and a segment of only
such lines is made in C loops (a dict per line and one json.dumps of them all cost 1.6-1.9 CPU
s per 100 MB of 1000-byte lines); so is a segment of other text none of whose lines may be a
JSON object (braces inside a line are fine), each line's JSON string made by the C encoder
json.dumps uses (interleaved, in-process: quoted 100-byte lines 1.5-2.6 CPU s per 100 MB
against 3.3-4.9 a line at a time, UTF-8 text 2.1-3.1 against 3.8-5.5).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from itertools import accumulate, repeat
from json.encoder import encode_basestring_ascii
from operator import add
from typing import Any, NamedTuple

MAX_ENTRY_TEXT = 250 * 1024  # a payload's JSON form: the 256 KiB entry limit less room for the rest
MAX_PIECE = 200 * 1024  # bytes: a longer line is cut into pieces of at most this many
_SAFE_LINE = MAX_ENTRY_TEXT // 6  # a line this short fits whatever its escaping (\u00XX: 6x)
SEVERITIES = frozenset(
    ("DEFAULT", "DEBUG", "INFO", "NOTICE", "WARNING", "ERROR", "CRITICAL", "ALERT", "EMERGENCY")
)
_ALIASES = {"WARN": "WARNING", "FATAL": "CRITICAL", "TRACE": "DEBUG"}
STREAM_SEVERITY = {"stdout": "INFO", "stderr": "ERROR"}


class Segment(NamedTuple):  # a named tuple: a frozen dataclass costs ~1.5 ms of start-up
    """Bytes [start, end) of runnable `k`'s `stream` file, first read at `at_ns` (ns since the
    epoch); `final`: the range ends with an unterminated line (its writer has ended)."""

    k: int
    stream: str
    start: int
    end: int
    at_ns: int
    final: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "stream": self.stream,
            "start": self.start,
            "end": self.end,
            "at_ns": self.at_ns,
            "final": self.final,
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Segment:
        return cls(
            k=int(value["k"]),
            stream=str(value["stream"]),
            start=int(value["start"]),
            end=int(value["end"]),
            at_ns=int(value["at_ns"]),
            final=bool(value.get("final", False)),
        )


class Destination(NamedTuple):
    """Where one task's entries go and what they carry besides the line."""

    log_name: str  # projects/PROJECT_ID/logs/batch_task_logs (or batch_agent_logs)
    resource: Mapping[str, Any]  # {"type": ..., "labels": {...}}
    labels: Mapping[str, str]
    key: str  # short, stable per task: the insertIds' prefix

    def members(self) -> bytes:
        """`"logName":...,"resource":...,"labels":...`: what its entries share, in JSON."""
        shared = {"logName": self.log_name, "resource": self.resource, "labels": self.labels}
        return _members(shared)


class Group(NamedTuple):
    """Entries in JSON that share a destination: `shared`, its members
    (`Destination.members`), and `entries`, each an object of the rest of an entry's members
    (severity, insertId, timestamp, payload)."""

    shared: bytes
    entries: list[bytes]


def encode(entry: Mapping[str, Any]) -> Group:
    """An entry given as a JSON value (the agent log's), in its encoded form."""
    shared = {key: entry[key] for key in _SHARED if key in entry}
    own = {key: value for key, value in entry.items() if key not in _SHARED}
    return Group(_members(shared), [_json(own)])


_SHARED = ("logName", "resource", "labels")
# The bytes a JSON string holds as they are: printable ASCII but the quote and the backslash.
_AS_IS = bytes(b for b in range(0x20, 0x7F) if b not in b'"\\')
_AS_IS_OR_NEWLINE = _AS_IS + b"\n"


def _plain(text: bytes) -> bool:
    """Whether every line of `text` goes into its entry as it is: printable ASCII that a JSON
    string holds unescaped (no quote, backslash or control character), and no `{` (no line
    may be a JSON object)."""
    return not text.translate(None, _AS_IS_OR_NEWLINE) and b"{" not in text


def _text_only(joined: bytes, raws: Sequence[bytes]) -> bool:
    """Whether every line of `joined` (its `raws`, newline-separated) is a `textPayload` in one
    piece: none may be a JSON object (`_json_payload`: once decoded and stripped, `{` first and
    `}` last), none is longer than `_SAFE_LINE`."""
    if max(map(len, raws)) > _SAFE_LINE:
        return False
    for found in _FIRST_BRACE.finditer(joined):  # each line's first `{`, to the line's end
        if found.group().rstrip(_MAY_BE_BLANK).endswith(b"}"):
            line_start = joined.rfind(b"\n", 0, found.start()) + 1
            if not joined[line_start : found.start()].translate(None, _MAY_BE_BLANK):
                return False
    return True


# Bytes that may be whitespace once decoded: ASCII's but the newline, \x1c-\x1f, and any byte
# of a UTF-8 sequence (U+00A0, U+3000...).
_MAY_BE_BLANK = bytes([9, 11, 12, 13, *range(0x1C, 0x21), *range(0x80, 0x100)])
# Possessive: one match a line, never a second try from a later brace (a line of 40,000 `{`
# took 2.3 s with a pattern that could backtrack).
_FIRST_BRACE = re.compile(rb"\{[^\n]*+")


def json_room(data: bytes, most: int) -> int:
    """How many bytes of `data`, whole lines, make at most about `most` bytes of entries: each
    byte that needs an escape counted as 6 (a control character, invalid UTF-8, any non-ASCII
    character: at most `\\uXXXX` a byte), each line `_ENTRY_JSON` more. All of `data` when
    it fits; its first line at least."""
    heavy = len(data.translate(None, _AS_IS_OR_NEWLINE))
    size = len(data) + 5 * heavy + _ENTRY_JSON * data.count(b"\n")
    if size <= most:
        return len(data)
    keep = data.rfind(b"\n", 0, len(data) * most // size) + 1
    return keep or data.find(b"\n") + 1 or len(data)


_ENTRY_JSON = 120  # bytes an entry adds to its line's text: severity, insertId, timestamp


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _members(value: Mapping[str, Any]) -> bytes:
    return _json(value)[1:-1]  # an object's members, without its braces


def task_key(task_name: str) -> str:
    """A short stable key for a task's insertIds (its name can be 100+ characters)."""
    return hashlib.sha256(task_name.encode()).hexdigest()[:16]


def segment_lines(
    data: bytes, segment: Segment, most: int | None = None
) -> list[tuple[int, bytes]]:
    """The (offset, bytes) of each line (or piece) of `data`, the bytes of `segment`: whole
    lines without their newline, a last unterminated one only when the segment is final, and
    any line longer than MAX_PIECE in pieces (a cut never splits a UTF-8 character). With
    `most`, what follows the first `most` lines may come as one more item, unsplit: where
    the rest starts (a write takes at most MAX_ENTRIES lines of 2 MiB of short ones)."""
    raws = data.split(b"\n") if most is None else data.split(b"\n", most)
    if not raws[-1]:
        raws.pop()  # `data` ends with a newline (or is empty)
    lines = raws if most is None else raws[:most]  # past them: the rest, unsplit
    if max(map(len, lines), default=0) <= MAX_PIECE:  # no piece to cut: one pass, in C loops
        starts = accumulate(map(len, raws), initial=segment.start)  # plus a newline a line
        return list(zip(map(add, starts, range(len(raws))), raws, strict=True))
    out: list[tuple[int, bytes]] = []
    pos, size = 0, len(data)
    while pos < size:
        newline = data.find(b"\n", pos, min(size, pos + MAX_PIECE + 1))
        if newline >= 0:
            out.append((segment.start + pos, data[pos:newline]))
            pos = newline + 1
        elif size - pos > MAX_PIECE:
            cut = pos + _cut_point(data, pos, MAX_PIECE)
            out.append((segment.start + pos, data[pos:cut]))
            pos = cut
        else:  # the rest is one unterminated line: the segment ends with it
            out.append((segment.start + pos, data[pos:]))
            pos = size
    return out


def entries_for(
    lines: list[tuple[int, bytes]], segment: Segment, destination: Destination
) -> list[bytes]:
    """The LogEntries of these lines of `segment`, each an object of its members but its
    destination's (deterministic, see the module)."""
    out: list[bytes] = []
    stream_code = "o" if segment.stream == "stdout" else "e"
    default_severity = STREAM_SEVERITY.get(segment.stream, "DEFAULT")
    # A text line's entry, its members in the order the general case's JSON has them, its
    # timestamp's second said once (`last`: the last entry that second holds); `plain`
    # takes the line as it is, `escaped` its JSON string.
    second, nanos = divmod(segment.at_ns, 10**9)
    last = 10**9 - 1 - nanos
    head = b'{"severity":"%s","insertId":"%s-%d%s%%d","timestamp":"%s.%%09dZ","textPayload":'
    head %= (
        default_severity.encode(),
        _json(destination.key)[1:-1].replace(b"%", b"%%"),
        segment.k,
        stream_code.encode(),
        format_ns(second * 10**9)[:-11].encode(),  # without its ".000000000Z"
    )
    as_is, escaped = head + b'"%s"}', head + b"%s}"
    offsets, raws = zip(*lines, strict=True) if lines else ((), ())
    if len(lines) <= last + 1:  # all at once, in C loops, when no line needs more
        joined, stamps = b"\n".join(raws), range(nanos, nanos + len(lines))
        if _plain(joined):
            return list(map(as_is.__mod__, zip(offsets, stamps, raws, strict=True)))
        if _text_only(joined, raws):  # each line's JSON string: what json.dumps makes of it
            texts = map(bytes.decode, raws, repeat("utf-8"), repeat("replace"))
            strings = map(str.encode, map(encode_basestring_ascii, texts))
            return list(map(escaped.__mod__, zip(offsets, stamps, strings, strict=True)))
    for offset, raw in lines:
        n = len(out)
        if n <= last and not raw.translate(None, _AS_IS) and raw.lstrip()[:1] != b"{":
            out.append(as_is % (offset, nanos + n, raw))
            continue
        text = raw.decode("utf-8", errors="replace")
        payload = _json_payload(text)
        if payload is None and n <= last and len(text) <= _SAFE_LINE:  # text in one piece
            out.append(escaped % (offset, nanos + n, json.dumps(text).encode()))
            continue
        severity = default_severity
        if payload is not None:
            severity = _severity(payload.pop("severity", None)) or default_severity
        pieces: list[tuple[str, Any]] = [("jsonPayload", payload)] if payload is not None else []
        if payload is None or _too_big(payload):
            pieces = [("textPayload", piece) for piece in split_text(text)]
        for n, (field, value) in enumerate(pieces):
            suffix = f"-{n}" if n else ""
            own = {
                "severity": severity,
                "insertId": f"{destination.key}-{segment.k}{stream_code}{offset}{suffix}",
                "timestamp": format_ns(segment.at_ns + len(out)),
                field: value,
            }
            out.append(_json(own))
    return out


def split_text(text: str) -> list[str]:
    """`text` in as few pieces as needed for each one's JSON form to fit MAX_ENTRY_TEXT."""
    if len(text) <= _SAFE_LINE or len(json.dumps(text, ensure_ascii=False)) <= MAX_ENTRY_TEXT:
        return [text]
    half = len(text) // 2
    return split_text(text[:half]) + split_text(text[half:])


def format_ns(ns: int) -> str:
    """RFC 3339 UTC with nanoseconds, from nanoseconds since the epoch."""
    seconds, nanos = divmod(ns, 10**9)
    return f"{_format_seconds(seconds)}.{nanos:09d}Z"


@functools.lru_cache(maxsize=64)
def _format_seconds(seconds: int) -> str:
    """The date and time of day of a second since the epoch (a segment's entries share it)."""
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    year, month, day = _civil(days)
    return f"{year:04d}-{month:02d}-{day:02d}T{hours:02d}:{minutes:02d}:{secs:02d}"


def _civil(days: int) -> tuple[int, int, int]:
    """(year, month, day) of a count of days since 1970-01-01 (Howard Hinnant's algorithm)."""
    days += 719468
    era = days // 146097
    doe = days - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, day


def _json_payload(text: str) -> dict[str, Any] | None:
    stripped = text.strip()
    if not (stripped.startswith("{") and stripped.endswith("}")):
        return None
    try:
        value = json.loads(stripped)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _severity(value: object) -> str | None:
    """A LogSeverity name from a structured line's `severity` (any case), None if it is not."""
    if not isinstance(value, str):
        return None
    name = value.strip().upper()
    name = _ALIASES.get(name, name)
    return name if name in SEVERITIES else None


def _too_big(payload: dict[str, Any]) -> bool:
    return len(json.dumps(payload, ensure_ascii=False)) > MAX_ENTRY_TEXT


def _cut_point(data: bytes, start: int, limit: int) -> int:
    """How many bytes of data[start:] to cut: `limit`, less up to 3 so as not to split a
    UTF-8 character where the bytes look like one. Always > 0."""
    cut = start + limit
    while cut > start + limit - 3 and data[cut] & 0xC0 == 0x80:
        cut -= 1
    return limit if data[cut] & 0xC0 == 0x80 else cut - start
