"""The pure parts of Cloud Logging shipping: entries from segments (deterministic, split at the
entry limit, structured lines), bounded reads of output files, the agent log's bounded queue,
and reports in protobuf text form. Every entry built is checked against the Logging v2
discovery schema and the emulator's limits."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from batch_agent import discovery
from batch_agent.cloudlog import AgentLog, Site, report_text
from batch_agent.cloudlog.agentlog import ENTRY_COST
from batch_agent.cloudlog.body import bodies
from batch_agent.cloudlog.entries import (
    MAX_PIECE,
    Destination,
    Group,
    Segment,
    encode,
    entries_for,
    format_ns,
    json_room,
    segment_lines,
)
from batch_agent.cloudlog.reader import TRUNCATED, read_again, read_new
from batch_agent.emulator.logging import LogStore

DEST = Destination(
    log_name="projects/p/logs/batch_task_logs",
    resource={"type": "generic_task", "labels": {"project_id": "p"}},
    labels={"job_uid": "j-1"},
    key="k",
)


def encoded(data: bytes, stream: str = "stdout", final: bool = True) -> list[Group]:
    """`data`'s entries as the writer makes them."""
    segment = Segment(1, stream, 100, 100 + len(data), 1_700_000_000_000_000_000, final)
    lines = segment_lines(data, segment)
    return [Group(DEST.members(), entries_for(lines, segment, DEST))]


def build(data: bytes, stream: str = "stdout", final: bool = True) -> list[dict]:
    """The entries of `data`, decoded: each a JSON object with its destination's fields."""
    return decoded(encoded(data, stream, final))


def decoded(groups: list[Group]) -> list[dict]:
    return [
        {**json.loads(b"{" + group.shared + b"}"), **json.loads(entry)}
        for group in groups
        for entry in group.entries
    ]


def accepted(entries: list[dict]) -> bool:
    """The emulator stores these entries (schema, limits), as Cloud Logging would."""
    body = json.dumps({"entries": entries}).encode()
    assert discovery.validate("WriteLogEntriesRequest", json.loads(body), discovery.LOGGING) == []
    return LogStore().write(body, "Bearer t").status == 200


def test_a_segment_always_gives_the_same_entries() -> None:
    """Sent again (after a crash), a segment's entries carry the same insertIds and
    timestamps: what Cloud Logging's dedup needs."""
    data = b"one\ntwo\n\nthree\n"
    first, again = build(data), build(data)
    assert first == again
    assert [e["textPayload"] for e in first] == ["one", "two", "", "three"]
    assert [e["insertId"] for e in first] == ["k-1o100", "k-1o104", "k-1o108", "k-1o109"]
    assert len({e["timestamp"] for e in first}) == 4
    assert first[0]["timestamp"] == "2023-11-14T22:13:20.000000000Z"
    assert accepted(first)


def test_stderr_is_error_and_json_lines_are_structured() -> None:
    """stderr is ERROR; a JSON object line is a jsonPayload whose severity (any case, WARN
    too) becomes the entry's; a line that only looks like JSON stays text."""
    entries = build(b'{"severity":"warn","message":"m","n":1}\n{"a":\n[1]\n', stream="stderr")
    assert entries[0]["jsonPayload"] == {"message": "m", "n": 1}
    assert entries[0]["severity"] == "WARNING"
    assert [e.get("textPayload") for e in entries[1:]] == ['{"a":', "[1]"]
    assert {e["severity"] for e in entries[1:]} == {"ERROR"}
    assert build(b'{"severity": "LOUD"}\n')[0]["severity"] == "INFO"
    assert accepted(entries)


def test_long_lines_are_split_within_the_entry_limit() -> None:
    """A line longer than MAX_PIECE is cut into pieces (never inside a UTF-8 character); a
    piece that JSON escaping would take past 256 KiB is halved again; all are accepted."""
    line = ("é" * (MAX_PIECE // 2 + 1000)).encode()  # 2 bytes per character
    entries = build(line + b"\n")
    text = "".join(e["textPayload"] for e in entries)
    assert text == line.decode() and len(entries) == 2
    escaped = build(b"\x01" * (MAX_PIECE - 10) + b"\n")  # \u0001: 6 bytes each in JSON
    assert len(escaped) > 1 and "".join(e["textPayload"] for e in escaped) == "\x01" * (
        MAX_PIECE - 10
    )
    assert len({e["insertId"] for e in escaped}) == len(escaped)
    assert accepted(entries) and accepted(escaped)


def test_read_new_takes_whole_lines_within_the_budget(tmp_path: Path) -> None:
    """A new segment ends after a whole line (or a whole piece of a long one); the last
    unterminated line waits unless its writer ended; a shorter file is TRUNCATED."""
    path = tmp_path / "out"
    path.write_bytes(b"aa\nbbbb\ncc")
    assert read_new(path, 0, 100, final=False) == (b"aa\nbbbb\n", 8)
    assert read_new(path, 0, 100, final=True) == (b"aa\nbbbb\ncc", 10)
    assert read_new(path, 8, 100, final=False) == (b"", 8)
    assert read_new(path, 20, 100, final=False) == (b"", TRUNCATED)
    long = b"x" * (3 * MAX_PIECE + 5)
    path.write_bytes(long)
    data, end = read_new(path, 0, 10 * MAX_PIECE, final=False)
    assert data == long[: 3 * MAX_PIECE] and end == 3 * MAX_PIECE
    assert read_again(path, Segment(1, "stdout", 0, end, 0)) == data


def test_json_room_keeps_whole_lines_whose_entries_fit() -> None:
    """Plain text within the bound is taken whole; lines of control characters or random
    bytes (up to 6 bytes of JSON a byte) are cut at a line's end so that their entries make
    at most the bound; a first line longer than that is taken all the same."""
    plain = b"".join(b"%09d %s\n" % (i, b"x" * 90) for i in range(1000))
    assert json_room(plain, 250_000) == len(plain)
    random = bytes((i * 7919 + 13) % 256 for i in range(300_000))
    for heavy in (b"\x01" * 99 + b"\n") * 3000, random:
        keep = json_room(heavy, 200_000)
        assert 0 < keep < len(heavy) and heavy[keep - 1 : keep] == b"\n"
        entries = encoded(heavy[:keep], final=False)[0].entries
        assert sum(map(len, entries)) <= 200_000
    first = b"\x01" * 10_000 + b"\nrest\n"
    assert json_room(first, 1_000) == 10_001


def test_reads_never_follow_a_symlink(tmp_path: Path) -> None:
    """An output path replaced by a symlink (to a root-only file, say) is not read."""
    secret = tmp_path / "secret"
    secret.write_bytes(b"root only\n")
    os.symlink(secret, tmp_path / "out")
    assert read_new(tmp_path / "out", 0, 100, final=True) == (b"", 0)
    assert read_again(tmp_path / "out", Segment(1, "stdout", 0, 10, 0)) == b""


def test_the_agent_log_queue_is_bounded_and_says_what_it_dropped() -> None:
    """Past its capacity the handler drops new records, and the next batch starts with a
    WARNING entry counting them; a failed batch is put back first."""
    handler = AgentLog(capacity=3 * ENTRY_COST + 100)
    handler.configure(Site("p", "us-central1-a", "us-central1"), "vm-1", "123")
    logger = logging.getLogger("test.agentlog")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for i in range(10):
            logger.warning("record %d %s", i, "x" * 20)
    finally:
        logger.removeHandler(handler)
    taken = handler.take(100)
    assert (
        taken[0]["severity"] == "WARNING" and "log records were dropped" in taken[0]["textPayload"]
    )
    kept = [e["textPayload"] for e in taken[1:]]
    assert kept and all(t.startswith("test.agentlog: record ") for t in kept)
    assert len(kept) + int(taken[0]["textPayload"].split()[1]) == 10
    handler.put_back(taken[1:])
    assert [e["textPayload"] for e in handler.take(100)] == kept
    assert accepted(taken)


def test_an_agent_log_entry_is_the_logger_and_message_with_any_traceback() -> None:
    """`logger: message`, as the handler's formatter would make it, the traceback after."""
    handler = AgentLog()
    handler.configure(Site("p", "us-central1-a", "us-central1"), "vm-1", "123")
    logger = logging.getLogger("test.agentlog.text")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        logger.info("task %s: %s", "t-1", "started")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed %d", 3)
    finally:
        logger.removeHandler(handler)
    plain, failed = [e["textPayload"] for e in handler.take(10)]
    assert plain == "test.agentlog.text: task t-1: started"
    assert failed.startswith("test.agentlog.text: failed 3\nTraceback")
    assert failed.endswith("ValueError: boom")


def test_a_report_in_protobuf_text_form() -> None:
    """Snake_case names, messages in braces, enums bare, repeated fields repeated, times as
    seconds and nanos: the form Google's troubleshooting guide shows."""
    request = {
        "agentInfo": {
            "state": "AGENT_RUNNING",
            "reportTime": "2026-12-02T10:00:00.5Z",
            "tasks": [
                {"taskId": "task/j-1-group0-0/0/0", "runnable": "2"},
                {"taskId": 'task/"odd"', "taskStatus": {"state": "RUNNING"}},
            ],
        },
        "metadata": {"instance": "vm-1", "instancePreemptionNoticeReceived": False},
    }
    text = report_text(request)
    assert text.startswith('metadata:{instance:"vm-1" instance_preemption_notice_received:false}')
    assert (
        "agent_info:{state:AGENT_RUNNING report_time:{seconds:1796205600 nanos:500000000}" in text
    )
    assert 'tasks:{task_id:"task/j-1-group0-0/0/0" runnable:2}' in text
    assert 'tasks:{task_id:"task/\\"odd\\"" task_status:{state:RUNNING}}' in text


def test_timestamps_are_rfc3339_with_nanoseconds() -> None:
    """format_ns is exact to the nanosecond, over leap years and the epoch."""
    assert format_ns(0) == "1970-01-01T00:00:00.000000000Z"
    assert format_ns(951_782_400 * 10**9 + 7) == "2000-02-29T00:00:00.000000007Z"
    assert format_ns(4_102_444_799 * 10**9 + 999_999_999) == "2099-12-31T23:59:59.999999999Z"


def test_a_request_says_what_its_entries_share_once() -> None:
    """One task's entries share logName, resource and labels: the request carries them once
    (the API copies them into each entry); entries of two logs keep their own logName."""
    (body,) = bodies(encoded(b"a\nb\n"))
    one = json.loads(body)
    assert one["logName"] == DEST.log_name and one["resource"] == DEST.resource
    assert one["labels"] == DEST.labels and one["partialSuccess"] is True
    assert all(
        set(e) == {"severity", "insertId", "timestamp", "textPayload"} for e in one["entries"]
    )
    other = Destination("projects/p/logs/batch_agent_logs", DEST.resource, DEST.labels, "k2")
    segment = Segment(1, "stdout", 0, 2, 5)
    (body,) = bodies(
        [*encoded(b"a\n"), Group(other.members(), entries_for([(0, b"b")], segment, other))]
    )
    mixed = json.loads(body)
    assert "logName" not in mixed and [e["logName"] for e in mixed["entries"]] == [
        DEST.log_name,
        other.log_name,
    ]
    store = LogStore()
    assert store.write(body, "Bearer t").status == 200
    assert [e["labels"] for e in store.entries()] == [DEST.labels, DEST.labels]


def test_plain_lines_and_escaped_ones_make_the_same_entries() -> None:
    """A line of printable ASCII goes into its entry as it is; any other is decoded and
    escaped: both ways give the entry json.dumps would, as Cloud Logging reads it."""
    lines = [
        b"plain text",
        b"",
        b"  {}",
        b'a "quote"',
        b"back\\slash",
        b"tab\there",
        b"\xc3\xa9t\xc3\xa9",
    ]
    lines += [b"bad \xff byte", b"\x7f", b"%d %s %%", b"{not json"]
    entries = build(b"\n".join(lines) + b"\n")
    texts = [e.get("textPayload", e.get("jsonPayload")) for e in entries]
    assert texts == [
        "plain text",
        "",
        {},
        'a "quote"',
        "back\\slash",
        "tab\there",
        "été",
        "bad \ufffd byte",
        "\x7f",
        "%d %s %%",
        "{not json",
    ]
    assert [e["insertId"] for e in entries][:2] == ["k-1o100", "k-1o111"]
    assert accepted(entries)
    first = entries[0]  # byte for byte what the general way (json.dumps) makes
    own = {k: first[k] for k in ("severity", "insertId", "timestamp", "textPayload")}
    general = json.dumps(own, separators=(",", ":")).encode()
    assert encoded(lines[0] + b"\n")[0].entries == [general]  # all at once
    assert encoded(b"{}\n" + lines[0] + b"\n")[0].entries[1:] == [
        general.replace(b"k-1o100", b"k-1o103").replace(b"000000000Z", b"000000001Z")
    ]  # line by line
    quoted = entries[3]  # escaped, as json.dumps escapes
    own = {k: quoted[k] for k in ("severity", "insertId", "timestamp", "textPayload")}
    assert (
        encoded(b"\n".join(lines) + b"\n")[0].entries[3]
        == json.dumps(own, separators=(",", ":")).encode()
    )
    agent = {"logName": "l", "severity": "INFO", "textPayload": "t"}
    assert decoded([encode(agent)]) == [agent]


def test_text_lines_that_cannot_be_json_objects_are_made_at_once_as_json_dumps_would() -> None:
    """A segment of lines that need escapes, none of which may be a JSON object (no `{` with a
    `}` after it on its line), is made all at once: each entry is byte for byte what json.dumps
    makes of it, invalid UTF-8 replaced."""
    lines = [b"plain text", b"", b'a "quote"', b"back\\slash", b"tab\there", b"\xc3\xa9t\xc3\xa9"]
    lines += [b"bad \xff byte", b"\x7f", b"%d %s %%", b"{not json", b"} {", b'dict={"a": 1}']
    lines += [b'{"a": 1} and more', b'x = {"b": 2}']
    data = b"\n".join(lines) + b"\n"
    at = 1_700_000_000_000_000_000
    segment = Segment(1, "stdout", 100, 100 + len(data), at, True)
    want, offset = [], 100
    for n, raw in enumerate(lines):
        own = {
            "severity": "INFO",
            "insertId": f"k-1o{offset}",
            "timestamp": format_ns(at + n),
            "textPayload": raw.decode("utf-8", "replace"),
        }
        want.append(json.dumps(own, separators=(",", ":")).encode())
        offset += len(raw) + 1
    assert entries_for(segment_lines(data, segment), segment, DEST) == want


# Braces, blanks (Unicode's too), quotes, a bad byte, a backslash.
_PARTS = [b"{", b"}", b" ", b"\t", b"\x1c", b"\xe3\x80\x80", b"\xc2\xa0", b"a", b'"', b":", b"1"]
_PARTS += [b"\xff", b"\\"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.sampled_from(_PARTS), max_size=8), min_size=1))
def test_each_line_is_text_or_a_json_object_whichever_way_its_segment_is_made(
    parts: list[list[bytes]],
) -> None:
    """Lines of braces, blanks (Unicode's too), quotes and bad bytes: each entry is the line's
    text, or its JSON object when it is one, byte for byte as json.dumps makes it."""
    lines = [b"".join(line) for line in parts]
    groups = encoded(b"\n".join(lines) + b"\n")
    entries = decoded(groups)
    assert len(entries) == len(lines)
    for raw, entry, made in zip(lines, entries, groups[0].entries, strict=True):
        text = raw.decode("utf-8", "replace")
        stripped = text.strip()
        try:
            value = json.loads(stripped) if stripped[:1] == "{" and stripped[-1:] == "}" else None
        except ValueError:
            value = None
        if isinstance(value, dict):
            assert entry["jsonPayload"] == {k: v for k, v in value.items() if k != "severity"}
        else:
            assert entry["textPayload"] == text
            own = {k: entry[k] for k in ("severity", "insertId", "timestamp", "textPayload")}
            assert made == json.dumps(own, separators=(",", ":")).encode()


def test_lines_past_the_most_wanted_come_as_one_piece_where_the_rest_starts() -> None:
    """A write takes at most so many lines: the rest of what was read is not split, but its
    offset is the next line's, as when all of it is split."""
    data = b"one\ntwo\nthree\nfour\n"
    segment = Segment(1, "stdout", 100, 100 + len(data), 5)
    every = segment_lines(data, segment)
    assert segment_lines(data, segment, 2) == [*every[:2], (every[2][0], b"three\nfour\n")]
    assert segment_lines(data, segment, 4) == every == segment_lines(data, segment, 9)
    assert segment_lines(b"a\nb", segment, 1) == [(100, b"a"), (102, b"b")]


def test_plain_lines_at_the_end_of_a_second_carry_into_the_next() -> None:
    """A segment read in the last nanoseconds of a second: its entries' timestamps go on
    into the next second, plain lines or not."""
    segment = Segment(1, "stdout", 0, 6, 1_700_000_000_999_999_999)
    for lines in ([(0, b"a"), (2, b"b"), (4, b"c")], [(0, b"a"), (2, b"b"), (4, b"{")]):
        stamps = [json.loads(entry)["timestamp"] for entry in entries_for(lines, segment, DEST)]
        assert stamps == [
            "2023-11-14T22:13:20.999999999Z",
            "2023-11-14T22:13:21.000000000Z",
            "2023-11-14T22:13:21.000000001Z",
        ]


def test_a_write_too_big_for_one_call_goes_as_several_valid_ones() -> None:
    """Bodies past the limit are cut, each a valid request with the shared fields,
    every entry in exactly one of them, in order."""
    data = b"".join(b'"quoted" \\ line %d\n' % i for i in range(40))
    ids = [e["insertId"] for e in build(data)]
    calls = bodies(encoded(data), limit=1500)
    assert len(calls) > 1 and all(len(body) <= 1500 for body in calls)
    store = LogStore()
    for body in calls:
        request_ = json.loads(body)
        assert request_["logName"] == DEST.log_name and request_["partialSuccess"] is True
        assert store.write(body, "Bearer t").status == 200
    assert [e["insertId"] for e in store.entries()] == ids
    assert [e["textPayload"] for e in store.entries()][:2] == [
        '"quoted" \\ line 0',
        '"quoted" \\ line 1',
    ]
