"""Output shipping: lines from a growing file, bounded memory, durable offsets."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from pathlib import Path

from batch_agent.tasks.output import READ_BUDGET, OutputShipper


def shipper(path: Path, offset: int = 0, max_line: int = 16384) -> tuple[OutputShipper, list[str]]:
    lines: list[str] = []
    return OutputShipper(path, emit=lines.append, offset=offset, max_line=max_line), lines


def test_complete_lines_are_shipped_and_the_tail_waits(tmp_path: Path) -> None:
    """Only complete lines go out; the partial one waits for its newline, then for final."""
    path = tmp_path / "out"
    path.write_bytes(b"one\ntwo\npar")
    s, lines = shipper(path)
    assert s.ship() == 8 and lines == ["one", "two"]
    assert s.ship() == 8 and lines == ["one", "two"]  # nothing new, nothing re-emitted
    with path.open("ab") as f:
        f.write(b"tial\nlast")
    assert s.ship() == 16 and lines[2:] == ["partial"]
    assert s.ship(final=True) == 20 and lines[3:] == ["last"]
    assert s.ship(final=True) == 20 and len(lines) == 4


def test_resume_from_a_persisted_offset(tmp_path: Path) -> None:
    """A new shipper (a restarted agent) resumes at the offset; the partial line is re-read."""
    path = tmp_path / "out"
    path.write_bytes(b"a\nb\nhalf")
    first, _ = shipper(path)
    offset = first.ship()
    with path.open("ab") as f:
        f.write(b"-done\nc\n")
    second, lines = shipper(path, offset=offset)
    assert second.ship() == path.stat().st_size
    assert lines == ["half-done", "c"]


def test_long_line_without_newline_is_cut(tmp_path: Path) -> None:
    """A line with no newline is emitted in max_line pieces; at most max_line bytes wait."""
    path = tmp_path / "out"
    path.write_bytes(b"x" * 100_000)
    s, lines = shipper(path)
    assert s.ship() == 6 * 16384
    assert lines == ["x" * 16384] * 6
    assert s.ship(final=True) == 100_000
    assert lines[6:] == ["x" * (100_000 - 6 * 16384)]


def test_line_of_exactly_max_line_is_one_line(tmp_path: Path) -> None:
    """A line as long as max_line stays whole; one byte longer is cut in two."""
    path = tmp_path / "out"
    path.write_bytes(b"y" * 8 + b"\n" + b"z" * 9 + b"\n")
    s, lines = shipper(path, max_line=8)
    assert s.ship() == 19
    assert lines == ["y" * 8, "z" * 8, "z"]


def test_cuts_do_not_split_utf8_and_bad_bytes_are_replaced(tmp_path: Path) -> None:
    """Cutting backs off to a character boundary; invalid UTF-8 becomes U+FFFD."""
    path = tmp_path / "out"
    path.write_bytes("ééééé\n".encode() + b"bad\xff\n")
    s, lines = shipper(path, max_line=5)
    s.ship()
    assert lines == ["éé", "éé", "é", "bad\ufffd"]


def test_missing_and_truncated_files(tmp_path: Path) -> None:
    """A missing file ships nothing; a file truncated under the offset is read from its start."""
    path = tmp_path / "out"
    s, lines = shipper(path, offset=0)
    assert s.ship() == 0 and lines == []
    path.write_bytes(b"first line\n")
    assert s.ship() == 11
    path.write_bytes(b"new\n")
    assert s.ship() == 4 and lines == ["first line", "new"]


def test_600k_lines_from_a_child_with_bounded_memory(tmp_path: Path) -> None:
    """A flood of lines is shipped in budgeted calls, all of them, holding little memory."""
    path = tmp_path / "out"
    with path.open("ab") as out:
        program = (
            "import sys; sys.stdout.write(''.join(f'line {i:06d}\\n' for i in range(600_000)))"
        )
        subprocess.run([sys.executable, "-c", program], stdout=out, check=True)
    size = path.stat().st_size
    count = 0
    last = ""

    def emit(line: str) -> None:
        nonlocal count, last
        count += 1
        last = line

    # One call with a 1 MB budget, traced (tracing all 600k lines would be slow): it must hold
    # far less than what it reads.
    traced = OutputShipper(path, emit=emit, read_budget=1_000_000)
    tracemalloc.start()
    try:
        offset = traced.ship()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 250_000, peak
    assert 0 < offset <= 1_000_000
    s = OutputShipper(path, emit=emit, offset=offset)
    calls = 0
    while s.offset < size:
        before = s.offset
        s.ship()
        calls += 1
        assert 0 < s.offset - before <= READ_BUDGET
    assert (count, last) == (600_000, "line 599999")
    assert calls >= (size - offset) / READ_BUDGET


def test_endless_line_keeps_memory_bounded(tmp_path: Path) -> None:
    """Megabytes without a newline never accumulate: pieces go out as they come."""
    path = tmp_path / "out"
    with path.open("ab") as out:
        program = "import sys\nfor _ in range(160): sys.stdout.write('z' * 65536)"
        subprocess.run([sys.executable, "-c", program], stdout=out, check=True)
    pieces: list[int] = []
    s = OutputShipper(path, emit=lambda line: pieces.append(len(line)))
    tracemalloc.start()
    try:
        while s.ship(final=True) < 160 * 65536:
            pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sum(pieces) == 160 * 65536 and max(pieces) == 16384
    assert peak < 1_000_000, peak
