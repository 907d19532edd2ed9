"""Reading a segment of a runnable's output file for Cloud Logging: bounded, deterministic.

`read_new` picks how far a new segment goes from a durable offset: whole lines (or whole pieces
of a line longer than `entries.MAX_PIECE`) within a byte budget, and the unterminated last line
only when its writer has ended. `read_again` reads a segment already chosen, byte for byte, to
send it again. Neither follows a symlink or reads anything but a regular file; both block on
local reads (call them from a worker thread). Knows nothing of HTTP or of records.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from batch_agent.cloudlog.entries import MAX_PIECE, Segment, segment_lines
from batch_agent.tasks.output import open_regular

TRUNCATED = -1  # read_new's end when the file is shorter than the offset


def file_size(path: Path) -> int | None:
    """The size of `path` if it is a regular file (no symlink followed); None otherwise."""
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return None
    return found.st_size if stat.S_ISREG(found.st_mode) else None


def read_new(path: Path, start: int, budget: int, *, final: bool) -> tuple[bytes, int]:
    """(bytes, end): what a new segment from `start` holds, at most max(budget, MAX_PIECE + 1)
    bytes of whole lines or pieces; the unterminated rest of the file too when `final`.
    (b"", start) when there is nothing to send yet; (b"", TRUNCATED) when the file is shorter
    than `start`."""
    fd = open_regular(path)
    if fd is None:
        return b"", start
    try:
        size = os.fstat(fd).st_size
        if size < start:
            return b"", TRUNCATED
        want = min(size, start + max(budget, MAX_PIECE + 1))
        data = os.pread(fd, want - start, start) if want > start else b""
    finally:
        os.close(fd)
    if final and start + len(data) == size:
        return data, start + len(data)  # the whole rest: the writer has ended
    keep = data.rfind(b"\n") + 1
    rest = len(data) - keep
    if rest > MAX_PIECE:  # a long line with no end in sight: its whole pieces go now
        lines = segment_lines(data[keep:], Segment(0, "", 0, rest, 0))
        keep += sum(len(piece) for _, piece in lines[:-1])
    return data[:keep], start + keep


def read_again(path: Path, segment: Segment) -> bytes:
    """The bytes of a segment chosen before (b"" if the file is gone or shorter now)."""
    fd = open_regular(path)
    if fd is None:
        return b""
    try:
        data = os.pread(fd, segment.end - segment.start, segment.start)
    finally:
        os.close(fd)
    return data if len(data) == segment.end - segment.start else b""
