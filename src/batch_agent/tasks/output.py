"""Shipping a runnable's output file to a sink, in batches of lines, from a durable offset.

The runnable appends to a file; an `OutputShipper` reads what is new since the last call and
hands it on as `Lines`: a block of whole lines as the bytes the file holds (no per-line
objects), or one piece of a line longer than `max_line`, which is cut into numbered pieces
instead of being accumulated. Memory stays bounded whatever the child prints: one read of a
chunk and of the unfinished line before it (at most `max_line` bytes, read again from the file
rather than kept and joined to the next chunk). The returned offset counts only bytes fully
shipped, so a restarted agent that resumes from it re-ships at most one partial line.

This module must not know about tasks, processes or where lines go (agent log, Cloud Logging),
and never follows a symlink or reads anything but a regular file. Its file I/O is blocking, in
bounded reads; the caller decides whether to run it in a thread.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

MAX_LINE = 16 * 1024  # bytes: a longer line is cut into pieces of at most this many
READ_CHUNK = 64 * 1024  # bytes per read: bounds a batch; small enough to be reused by malloc


@dataclass(frozen=True, slots=True)
class Lines:
    """What a shipper hands on: `data` is one or more lines joined by b"\\n" (no final newline;
    b"" is one empty line), or, when `part` > 0, the part-th piece of one cut line (`last`: the
    line ends with this piece). Iterating yields the lines decoded (invalid UTF-8 replaced)."""

    data: bytes
    part: int = 0
    last: bool = True

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")

    def __iter__(self) -> Iterator[str]:
        return iter(self.text().split("\n"))


Deliver = Callable[[Lines], None]


class OutputShipper:
    """Ships one output file, resuming from `offset`. Not thread-safe; `deliver` is called
    synchronously; `max_line` (>= 4) bounds a delivered line and the bytes kept between calls."""

    def __init__(
        self,
        path: Path,
        *,
        offset: int = 0,
        max_line: int = MAX_LINE,
        read_chunk: int = READ_CHUNK,
    ) -> None:
        if max_line < 4 or read_chunk < 1:
            raise ValueError("max_line must be at least 4 bytes and read_chunk positive")
        self.path = path
        self._max_line = max_line
        self._read_chunk = read_chunk
        self._offset = offset  # first byte not yet shipped: what the caller persists
        self._held = 0  # bytes read after _offset, not yet a line (<= max_line of them)
        self._part = 0  # pieces of the current (cut) line shipped so far

    @property
    def offset(self) -> int:
        """The durable offset: every byte before it has been shipped."""
        return self._offset

    def pending(self, *, final: bool = False) -> bool:
        """Whether the file's size differs from what was read (grown, or truncated): one
        lstat, no open. A missing file, a symlink or a non-regular file has nothing pending.
        `final`: also an unterminated last line held back, which `ship(final=True)` ships."""
        if final and (self._held or self._part):
            return True
        try:
            found = os.lstat(self.path)
        except FileNotFoundError:
            return False
        if not stat.S_ISREG(found.st_mode):
            return False
        return found.st_size != self._offset + self._held

    def ship(self, deliver: Deliver, *, final: bool = False) -> int:
        """Deliver what was appended since the last call, up to the end of file as it was when
        the call began; return the new durable offset. Complete lines go out; an unterminated
        last line waits, unless `final` (the writer has ended). A missing file ships nothing,
        and so does a symlink or anything else that is not a regular file (never followed or
        read). A file shorter than the offset (truncated) is shipped again from its start.
        Blocks on local reads; raises OSError only for unexpected I/O errors."""
        fd = open_regular(self.path)
        if fd is None:
            return self._offset
        try:
            size = os.fstat(fd).st_size
            if size < self._offset + self._held:  # truncated behind our back: start over
                self._offset, self._held, self._part = 0, 0, 0
            while self._offset + self._held < size:
                # The unfinished line again, and the next chunk after it, in one read.
                want = min(self._held + self._read_chunk, size - self._offset)
                data = os.pread(fd, want, self._offset)
                if len(data) <= self._held:
                    break  # shorter than it was a moment ago
                self._consume(data, deliver)
            if final and (self._held or self._part):
                tail = os.pread(fd, self._held, self._offset)
                deliver(Lines(tail, self._part + 1 if self._part else 0))
                self._offset += len(tail)
                self._held, self._part = 0, 0
        finally:
            os.close(fd)
        return self._offset

    def _consume(self, data: bytes, deliver: Deliver) -> None:
        """Deliver every complete line of `data` (read from the offset); cut the rest down to
        max_line bytes."""
        end = data.rfind(b"\n") + 1  # data[:end] is whole lines
        if end:
            self._whole_lines(data, end, deliver)
        start = end
        while len(data) - start > self._max_line:  # no newline in sight: ship a piece
            start = self._piece(data, start, len(data), deliver, last=False)
        self._offset += start
        self._held = len(data) - start

    def _whole_lines(self, data: bytes, end: int, deliver: Deliver) -> None:
        """Deliver data[:end] (ending in a newline): runs of lines of at most max_line bytes as
        blocks, a longer line (or the end of a line already cut) as pieces."""
        limit, pos, block = self._max_line, 0, 0
        while pos < end:
            if not self._part:
                # The last newline within max_line + 1 bytes: every line up to it is short.
                newline = data.rfind(b"\n", pos, min(pos + limit + 1, end))
                if newline >= 0:
                    pos = newline + 1
                    continue
            if block < pos:
                deliver(Lines(data[block : pos - 1]))
            newline = data.find(b"\n", pos, end)
            while pos < newline or self._part:
                pos = self._piece(data, pos, newline, deliver, last=True)
                if not self._part:
                    break
            pos = block = newline + 1
        if block < end:
            deliver(Lines(data[block : end - 1]))

    def _piece(self, data: bytes, start: int, stop: int, deliver: Deliver, *, last: bool) -> int:
        """Deliver the next piece of the cut line data[start:stop]; return where it ended.
        With `last`, stop is the line's end, and a piece reaching it ends the line."""
        if stop - start <= self._max_line and last:
            deliver(Lines(data[start:stop], self._part + 1, last=True))
            self._part = 0
            return stop
        cut = start + _cut_point(data, start, self._max_line)
        self._part += 1
        deliver(Lines(data[start:cut], self._part, last=False))
        return cut


def open_regular(path: Path) -> int | None:
    """A read-only descriptor for `path` if it is a regular file and no symlink; None if it is
    not (or is missing)."""
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
    return fd


def _cut_point(data: bytes, start: int, limit: int) -> int:
    """How many bytes of `data[start:]` (longer than `limit`) to cut off: `limit`, less up to 3
    so as not to split a UTF-8 character when the bytes there look like one. Always > 0."""
    cut = start + limit
    while cut > start + limit - 3 and data[cut] & 0xC0 == 0x80:  # continuation byte: back off
        cut -= 1
    if data[cut] & 0xC0 == 0x80:
        return limit  # not UTF-8 after all; cut where asked
    return cut - start
