"""Output shipping: batches of lines from a growing file, cut pieces, bounded memory, durable
offsets, the one agent-wide tick, and the log lines they become."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

from batch_agent.outputlog import OutputLog
from batch_agent.tasks.output import MAX_LINE, READ_CHUNK, Lines, OutputShipper
from batch_agent.tasks.record import RunnableRecord, TaskRecord
from batch_agent.tasks.shipping import LiveOutput, Shipping
from batch_agent.tasks.taskoutput import TaskOutput


def shipper(path: Path, offset: int = 0, max_line: int = 16384) -> tuple[OutputShipper, list[str]]:
    return OutputShipper(path, offset=offset, max_line=max_line), []


def ship(s: OutputShipper, into: list[str], *, final: bool = False) -> int:
    return s.ship(into.extend, final=final)


def test_complete_lines_are_shipped_and_the_tail_waits(tmp_path: Path) -> None:
    """Only complete lines go out; the partial one waits for its newline, then for final."""
    path = tmp_path / "out"
    path.write_bytes(b"one\ntwo\npar")
    s, lines = shipper(path)
    assert ship(s, lines) == 8 and lines == ["one", "two"]
    assert ship(s, lines) == 8 and lines == ["one", "two"]  # nothing new, nothing re-emitted
    with path.open("ab") as f:
        f.write(b"tial\n\nlast")
    assert ship(s, lines) == 17 and lines[2:] == ["partial", ""]
    assert ship(s, lines, final=True) == 21 and lines[4:] == ["last"]
    assert ship(s, lines, final=True) == 21 and len(lines) == 5


def test_resume_from_a_persisted_offset(tmp_path: Path) -> None:
    """A new shipper (a restarted agent) resumes at the offset; the partial line is re-read."""
    path = tmp_path / "out"
    path.write_bytes(b"a\nb\nhalf")
    first, _ = shipper(path)
    offset = ship(first, [])
    with path.open("ab") as f:
        f.write(b"-done\nc\n")
    second, lines = shipper(path, offset=offset)
    assert ship(second, lines) == path.stat().st_size
    assert lines == ["half-done", "c"]


def test_a_long_line_is_cut_into_numbered_pieces_the_last_marked(tmp_path: Path) -> None:
    """A line longer than max_line goes out in max_line pieces numbered from 1, the last one
    marked; what waits for a newline is never more than max_line bytes."""
    path = tmp_path / "out"
    path.write_bytes(b"short\n" + b"x" * 100_000)
    s = OutputShipper(path)
    batches: list[Lines] = []
    assert s.ship(batches.append) == 6 + 6 * 16384
    assert batches[0] == Lines(b"short")
    assert batches[1:] == [Lines(b"x" * 16384, part, last=False) for part in range(1, 7)]
    assert s.ship(batches.append, final=True) == 6 + 100_000
    assert batches[7:] == [Lines(b"x" * (100_000 - 6 * 16384), 7, last=True)]


def test_line_of_exactly_max_line_is_one_line(tmp_path: Path) -> None:
    """A line as long as max_line stays whole; one byte longer is cut in two pieces."""
    path = tmp_path / "out"
    path.write_bytes(b"y" * 8 + b"\n" + b"z" * 9 + b"\n" + b"w\n")
    s = OutputShipper(path, max_line=8)
    batches: list[Lines] = []
    assert s.ship(batches.append) == 21
    assert batches == [
        Lines(b"y" * 8),
        Lines(b"z" * 8, 1, last=False),
        Lines(b"z", 2, last=True),
        Lines(b"w"),
    ]


def test_cuts_do_not_split_utf8_and_bad_bytes_are_replaced(tmp_path: Path) -> None:
    """Cutting backs off to a character boundary; invalid UTF-8 becomes U+FFFD."""
    path = tmp_path / "out"
    path.write_bytes("ééééé\n".encode() + b"bad\xff\n")
    s, lines = shipper(path, max_line=5)
    ship(s, lines)
    assert lines == ["éé", "éé", "é", "bad\ufffd"]


def test_missing_truncated_and_symlinked_files(tmp_path: Path) -> None:
    """A missing file ships nothing; a truncated one is read from its start; a symlink is never
    followed, nor counted as pending."""
    path = tmp_path / "out"
    s, lines = shipper(path, offset=0)
    assert not s.pending() and ship(s, lines) == 0 and lines == []
    path.write_bytes(b"first line\n")
    assert s.pending() and ship(s, lines) == 11 and not s.pending()
    path.write_bytes(b"new\n")
    assert s.pending() and ship(s, lines) == 4 and lines == ["first line", "new"]
    secret = tmp_path / "secret"
    secret.write_bytes(b"do not ship\n")
    link = tmp_path / "link"
    link.symlink_to(secret)
    s, lines = shipper(link)
    assert not s.pending() and ship(s, lines) == 0 and lines == []


def test_600k_lines_from_a_child_in_bounded_batches(tmp_path: Path) -> None:
    """A flood of lines is shipped in one call, all of them in order, in batches of at most
    one read chunk (and a line), holding little memory while it does."""
    path = tmp_path / "out"
    with path.open("ab") as out:
        program = (
            "import sys; sys.stdout.write(''.join(f'line {i:06d}\\n' for i in range(600_000)))"
        )
        subprocess.run([sys.executable, "-c", program], stdout=out, check=True)
    count, biggest, last = 0, 0, b""

    def deliver(lines: Lines) -> None:
        nonlocal count, biggest, last
        count += lines.data.count(b"\n") + 1
        biggest = max(biggest, len(lines.data))
        last = lines.data[-11:]

    s = OutputShipper(path)
    tracemalloc.start()
    try:
        offset = s.ship(deliver)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert offset == path.stat().st_size
    assert (count, last) == (600_000, b"line 599999")
    assert biggest <= READ_CHUNK + MAX_LINE  # a chunk, and the line begun in the one before
    assert peak < 4 * (READ_CHUNK + MAX_LINE), peak  # a chunk, joined to a line, a batch of it


def test_endless_line_keeps_memory_bounded(tmp_path: Path) -> None:
    """Megabytes without a newline never accumulate: pieces go out as they come."""
    path = tmp_path / "out"
    with path.open("ab") as out:
        program = "import sys\nfor _ in range(160): sys.stdout.write('z' * 65536)"
        subprocess.run([sys.executable, "-c", program], stdout=out, check=True)
    pieces: list[int] = []
    s = OutputShipper(path)
    tracemalloc.start()
    try:
        s.ship(lambda lines: pieces.append(len(lines.data)), final=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sum(pieces) == 160 * 65536 and max(pieces) == 16384
    assert peak < 4 * (READ_CHUNK + MAX_LINE), peak


def test_text_log_lines_carry_a_head_each_and_pieces_their_number(tmp_path: Path) -> None:
    """A batch becomes one text log line per line, with the tag and stream; pieces say
    `part N` and the last `end`; bad bytes are replaced."""
    path = tmp_path / "log"
    with path.open("w") as stream:
        log = OutputLog("text", stream)
        log.write("task 3 r2", "stdout", Lines(b"a\n\nb\xff"))
        log.write("task 3 r2", "stderr", Lines(b"xy", 1, last=False))
        log.write("task 3 r2", "stderr", Lines(b"z", 2, last=True))
    tails = [line.split(" ", 3)[3] for line in path.read_text().splitlines()]
    assert tails == [
        "[task 3 r2 stdout] a",
        "[task 3 r2 stdout] ",
        "[task 3 r2 stdout] b\ufffd",
        "[task 3 r2 stderr part 1] xy",
        "[task 3 r2 stderr part 2 end] z",
    ]


def test_json_log_lines_keep_every_message_exactly(tmp_path: Path) -> None:
    """Each line is one JSON object whose message is the line, whatever quotes, backslashes,
    separators or our own line-break stand-in it holds."""
    messages = [
        "plain",
        'say "hi", "there"',
        "back\\slash\\n",
        '", "',
        "é\u2028",
        "\x85",
        "tab\there",
        "",
    ]
    path = tmp_path / "log"
    with path.open("w") as stream:
        log = OutputLog("json", stream)
        log.write("task 0 r1", "stdout", Lines("\n".join(messages[:5]).encode()))
        log.write("task 0 r1", "stderr", Lines("\n".join(messages[5:]).encode()))
        log.write("task 0 r1", "stdout", Lines(b"piece", 4, last=False))
    entries = [json.loads(line) for line in path.read_text().split("\n")[:-1]]
    assert [e["message"] for e in entries] == [*messages, "piece"]
    assert [e["severity"] for e in entries] == ["INFO"] * 5 + ["ERROR"] * 3 + ["INFO"]
    assert {e["task"] for e in entries} == {"task 0 r1"}
    assert (entries[-1]["part"], entries[-1]["end"]) == (4, False) and "part" not in entries[0]


class Saves:
    """A Lifecycle that counts saves (the task set's part in shipping)."""

    def __init__(self) -> None:
        self.saves = 0

    async def transition(self, record: TaskRecord, new: object, **_: object) -> None:
        raise AssertionError("shipping never changes a task's state")

    async def persist(self, record: TaskRecord) -> None:
        self.saves += 1

    def notify(self) -> None:
        pass


def test_one_tick_ships_every_followed_task_and_saves_moved_offsets(tmp_path: Path) -> None:
    """Sixteen followed tasks share one timer task; a task whose files grew is shipped and its
    record saved with the new offset, a silent one is neither; the tick ends with the last."""
    seen: list[tuple[str, str]] = []

    def sink(tag: str, stream: str, lines: Lines) -> None:
        seen.extend((tag, line) for line in lines)

    async def scenario() -> None:
        shipping = Shipping(every=0.05)
        before = len(asyncio.all_tasks())
        records, lifecycles, lives = [], [], []
        for i in range(16):
            folder = tmp_path / f"t{i}"
            folder.mkdir()
            (folder / "runnable-1.stdout").write_bytes(b"")
            record = TaskRecord(task_id=f"t{i}", raw={})
            record.runnables[1] = RunnableRecord()
            output = TaskOutput(
                folder, f"task {i}", lambda t, s, ls: seen.extend((t, x) for x in ls)
            )
            lifecycle = Saves()
            live = LiveOutput(record, output, lifecycle, lambda: datetime.now(UTC))
            shipping.follow(live)
            records.append(record)
            lifecycles.append(lifecycle)
            lives.append(live)
        assert len(asyncio.all_tasks()) == before + 1
        for i, text in ((5, b"hello\n"), (7, b"bye\n")):  # t7 written after t5 was shipped
            with (tmp_path / f"t{i}" / "runnable-1.stdout").open("ab") as f:
                f.write(text)
            while records[i].runnables[1].stdout_offset != len(text) or not lifecycles[i].saves:
                await asyncio.sleep(0.01)
        assert seen == [("task 5 r1", "hello"), ("task 7 r1", "bye")]
        assert [lc.saves for lc in lifecycles] == [0] * 5 + [1, 0, 1] + [0] * 8
        for live in lives:
            shipping.unfollow(live)
        while len(asyncio.all_tasks()) != before:
            await asyncio.sleep(0.01)

    asyncio.run(asyncio.wait_for(scenario(), timeout=30))


def test_a_task_just_followed_is_looked_at_long_before_the_tick(tmp_path: Path) -> None:
    """With a 60 s tick, lines a task prints at its start are shipped at the quick looks that
    follow `follow` (10 ms, then doubling), also for a task followed while the tick sleeps."""
    seen: list[tuple[str, str]] = []

    async def scenario() -> None:
        shipping = Shipping(every=60.0)
        lives = []
        for i in range(2):
            folder = tmp_path / f"t{i}"
            folder.mkdir()
            record = TaskRecord(task_id=f"t{i}", raw={})
            record.runnables[1] = RunnableRecord()
            output = TaskOutput(
                folder, f"task {i}", lambda t, s, ls: seen.extend((t, x) for x in ls)
            )
            lives.append(LiveOutput(record, output, Saves(), lambda: datetime.now(UTC)))
        for i, live in enumerate(lives):
            if i:  # the tick has been quiet long enough to sleep for seconds by now
                await asyncio.sleep(3.0)
            shipping.follow(live)
            followed = time.monotonic()
            (tmp_path / f"t{i}" / "runnable-1.stdout").write_bytes(b"started\n")
            while (f"task {i} r1", "started") not in seen:
                await asyncio.sleep(0.01)
            # Quick looks come 10, 30, 70 ms... after `follow`; without them, seconds later.
            assert time.monotonic() - followed < 1.5
        for live in lives:
            shipping.unfollow(live)

    asyncio.run(asyncio.wait_for(scenario(), timeout=20))


class CountedOutput(TaskOutput):
    """A real TaskOutput that counts its shipments (the worker-thread trips)."""

    def __init__(self, folder: Path, tag: str, sink: Callable[[str, str, Lines], None]) -> None:
        super().__init__(folder, tag, sink)
        self.shipments = 0

    def ship(self, runnables: Mapping[int, RunnableRecord], *, final: bool) -> list[str]:
        self.shipments += 1
        return super().ship(runnables, final=final)


def test_a_silent_runnables_end_makes_no_shipment_a_last_unterminated_line_ships(
    tmp_path: Path,
) -> None:
    """A runnable's final shipment is skipped when its files hold nothing beyond the shipped
    offsets (empty, missing, or all shipped), and still ships an unterminated last line: one
    held back by an earlier shipment (the file's size is already read) or never looked at."""
    seen: list[tuple[str, str]] = []
    output = CountedOutput(tmp_path, "task 0", lambda t, s, ls: seen.extend((t, x) for x in ls))
    record = TaskRecord(task_id="t0", raw={})
    for k in (1, 2, 3, 4):
        record.runnables[k] = RunnableRecord()
    (tmp_path / "runnable-1.stdout").write_bytes(b"")  # silent; its stderr file is missing
    (tmp_path / "runnable-2.stdout").write_bytes(b"whole\n")
    (tmp_path / "runnable-3.stderr").write_bytes(b"line\nheld")
    (tmp_path / "runnable-4.stdout").write_bytes(b"never looked at")
    live = LiveOutput(record, output, Saves(), lambda: datetime.now(UTC))

    async def scenario() -> None:
        assert await live.ship(final=False) == 6 + 5  # r2's line and r3's whole line
        assert output.shipments == 1
        assert await live.ship(final=True, only=1) == 0
        assert await live.ship(final=True, only=2) == 0  # shipped to its end already
        assert output.shipments == 1
        assert await live.ship(final=True, only=3) == 4
        assert await live.ship(final=True, only=4) == 15
        assert output.shipments == 3

    asyncio.run(scenario())
    assert seen == [
        ("task 0 r2", "whole"),
        ("task 0 r3", "line"),
        ("task 0 r3", "held"),
        ("task 0 r4", "never looked at"),
    ]
    offsets = {k: (r.stdout_offset, r.stderr_offset) for k, r in record.runnables.items()}
    assert offsets == {1: (0, 0), 2: (6, 0), 3: (0, 9), 4: (15, 0)}
