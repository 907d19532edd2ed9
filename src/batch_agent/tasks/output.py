"""Shipping a runnable's output file to a sink, line by line, from a durable offset.

The runnable appends to a file; an `OutputShipper` reads what is new since the last call and
hands each line to `emit`. Memory stays bounded whatever the child prints: reads are bounded
chunks, a call reads at most a bounded amount, and a line longer than `max_line` bytes is cut
into `max_line`-byte pieces instead of being accumulated. The returned offset counts only bytes
fully shipped, so a restarted agent that resumes from it re-ships at most one partial line.

This module must not know about tasks, processes or where lines go (agent log, Cloud Logging),
and must not hold more than about `max_line` + one read chunk of output at any time. Its file
I/O is blocking, in small bounded reads; the caller decides whether to run it in a thread.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

READ_CHUNK = 64 * 1024
READ_BUDGET = 4 * 1024 * 1024  # per non-final call, so one flooding runnable can't starve others


class OutputShipper:
    """Ships complete lines of one output file to `emit`, resuming from `offset`.

    Not thread-safe; `emit` is called synchronously, with the line decoded as UTF-8 (invalid
    bytes replaced) and without its newline. A call reads at most `read_budget` bytes (unless
    final); `max_line` (>= 4) bounds both an emitted line and the bytes kept between calls.
    """

    def __init__(
        self,
        path: Path,
        *,
        emit: Callable[[str], None],
        offset: int = 0,
        max_line: int = 16384,
        read_budget: int = READ_BUDGET,
    ) -> None:
        if max_line < 4 or read_budget < 1:
            raise ValueError("max_line must be at least 4 bytes and read_budget positive")
        self.path = path
        self._emit = emit
        self._max_line = max_line
        self._read_budget = read_budget
        self._offset = offset  # first byte not yet shipped: what the caller persists
        self._tail = b""  # bytes read after _offset, not yet a line (<= max_line of them)

    @property
    def offset(self) -> int:
        """The durable offset: every byte before it has been shipped."""
        return self._offset

    def ship(self, *, final: bool = False) -> int:
        """Emit the lines appended since the last call; return the new durable offset.

        Reads at most `read_budget` bytes per call (call again to catch up), except with
        `final=True`, which reads up to the end of file as it was when the call began and
        then emits the incomplete last line too (for when the writer has exited). A missing
        file ships nothing, and so does a symlink or anything else that is not a regular file
        (never followed or read). A file shorter than the offset (truncated) is shipped again
        from its start. Blocks on local reads; raises OSError only for unexpected I/O errors.
        """
        f = _open_regular(self.path)
        if f is None:
            return self._offset
        with f:
            size = os.fstat(f.fileno()).st_size
            position = self._offset + len(self._tail)
            if size < position:  # truncated behind our back: start over
                self._offset, self._tail, position = 0, b"", 0
            f.seek(position)
            budget = size - position if final else min(self._read_budget, size - position)
            while budget > 0:
                chunk = f.read(min(READ_CHUNK, budget))
                if not chunk:
                    break
                budget -= len(chunk)
                self._consume(chunk)
        if final and self._tail:
            self._send(self._tail)
            self._offset += len(self._tail)
            self._tail = b""
        return self._offset

    def _consume(self, chunk: bytes) -> None:
        """Emit every complete line of tail+chunk; keep the rest (< max_line bytes) as tail."""
        data = self._tail + chunk
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            self._send(data[start:end])
            self._offset += end + 1 - start
            start = end + 1
        while len(data) - start > self._max_line:
            cut = start + _cut_point(data, start, self._max_line)
            self._emit(data[start:cut].decode("utf-8", errors="replace"))
            self._offset += cut - start
            start = cut
        self._tail = data[start:]

    def _send(self, line: bytes) -> None:
        """Emit one line (no newline), in max_line pieces if it is longer; offset unchanged."""
        start = 0
        while len(line) - start > self._max_line:
            cut = start + _cut_point(line, start, self._max_line)
            self._emit(line[start:cut].decode("utf-8", errors="replace"))
            start = cut
        self._emit(line[start:].decode("utf-8", errors="replace"))


def _open_regular(path: Path) -> BinaryIO | None:
    """`path` opened for reading if it is a regular file and no symlink; None if it is not
    (or is missing)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as error:
        if error.errno == errno.ELOOP:
            return None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return os.fdopen(fd, "rb")


def _cut_point(data: bytes, start: int, limit: int) -> int:
    """How many bytes of `data[start:]` (longer than `limit`) to cut off: `limit`, less up to 3
    so as not to split a UTF-8 character when the bytes there look like one. Always > 0."""
    cut = start + limit
    while cut > start + limit - 3 and data[cut] & 0xC0 == 0x80:  # continuation byte: back off
        cut -= 1
    if data[cut] & 0xC0 == 0x80:
        return limit  # not UTF-8 after all; cut where asked
    return cut - start
