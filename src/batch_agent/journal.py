"""The `journal` log format: lines for journald, which stamps each line itself.

No timestamp of ours (`journalctl` would show two), and a `<N>` syslog priority prefix on
every line so journald records the severity (`journalctl -p err` works). Used for the agent's
own log records (`JournalFormatter`) and for runnables' output (`JournalOutput`, the same sink
shape as `outputlog.OutputLog`). `is_journal_stream` tells whether stderr is connected to the
journal, as systemd says in `$JOURNAL_STREAM`. Knows nothing of tasks beyond the tag it gets.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:  # the agent's `version` and `--help` import this module: keep it light
    from batch_agent.tasks.output import Lines

# syslog priorities (sd-daemon.h): what journald files a line under.
PRIORITY = {"CRITICAL": 2, "ERROR": 3, "WARNING": 4, "INFO": 6, "DEBUG": 7}

# Control characters a message may carry from the server or a runnable (a task name with a
# newline, a terminal escape), shown escaped: one log call is one line, and none is forged.
ESCAPES = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7F, 0xA0)] if c != 0x09}
ESCAPES |= {0x0A: "\\n", 0x0D: "\\r", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def is_journal_stream(environ: Mapping[str, str], fd: int = 2) -> bool:
    """Whether `fd` is the stream systemd connected to the journal (`JOURNAL_STREAM=dev:ino`).

    Compared with the fd itself: a child whose stderr was redirected inherits the variable too.
    """
    device, _, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        found = os.fstat(fd)
        return (found.st_dev, found.st_ino) == (int(device), int(inode))
    except (OSError, ValueError):
        return False


class JournalFormatter(logging.Formatter):
    """`<6>batch_agent.reporter: message`; a traceback's lines carry the same priority."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{PRIORITY.get(record.levelname, 6)}>"
        text = f"{prefix}{record.name}: {record.getMessage().translate(ESCAPES)}"
        if record.exc_info:
            trace = self.formatException(record.exc_info)
            text += "".join(f"\n{prefix}{line}" for line in trace.splitlines())
        return text


# What of the runnables' output is copied into the journal: at most COPIED lines a WINDOW.
# journald keeps RateLimitBurst (10,000 by default, more with free disk) messages of a unit
# and priority every RateLimitIntervalSec (30 s) and drops the rest, the agent's own lines at
# that priority with them; and it parses every line it gets, dropped or not (~170,000 lines a
# second measured, while the agent's copy waits for it). Half the default burst leaves the
# agent's own lines room however journald scales it.
COPIED = 5000
WINDOW = 30.0  # seconds


class JournalOutput:
    """Runnables' output lines for journald: `<6>[task 3 r1 stdout] line`; thread-safe. Like
    `outputlog.OutputLog`, a batch is formatted as a whole, on bytes (decoded only when it is
    not ASCII), and goes to the stream's `buffer` in one write. At most `copied` lines go in
    a `window` (all tasks together): beyond, lines are counted, not written, and a warning says
    so when the first is left out and how many were once the window has passed (every line
    is still in its task's output files, and in Cloud Logging when shipped there)."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        copied: int = COPIED,
        window: float = WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._copied, self._window, self._clock = copied, window, clock
        self._began = float("-inf")  # the current window's start
        self._written = 0  # lines written in it
        self._left_out = 0  # lines counted in it, not written

    def write(self, tag: str, stream: str, lines: Lines) -> None:
        piece = f" part {lines.part}{' end' if lines.last else ''}" if lines.part else ""
        priority = PRIORITY["INFO"] if stream == "stdout" else PRIORITY["ERROR"]
        head = f"<{priority}>[{tag} {stream}{piece}] ".encode()
        with self._lock:
            parts, kept, paused = self._within_limit(lines.data)
            if kept is not None:  # invalid UTF-8 replaced only in what is written
                kept = kept if kept.isascii() else kept.decode(errors="replace").encode()
                parts += [head, kept.replace(b"\n", b"\n" + head), b"\n"]
            parts += paused
            if not parts:
                return
            text = b"".join(parts)
            out = self._stream or sys.stderr
            out.flush()  # whatever the logging module wrote to the text layer goes first
            out.buffer.write(text)
            out.buffer.flush()

    def _within_limit(self, data: bytes) -> tuple[list[bytes], bytes | None, list[bytes]]:
        """What to write before the lines, the lines of `data` to write (None: none), and what
        to write after them."""
        before: list[bytes] = []
        after: list[bytes] = []
        now = self._clock()
        if now - self._began >= self._window:
            if self._left_out:
                before.append(_warning(LEFT_OUT.format(self._left_out, self._window)))
            self._began, self._written, self._left_out = now, 0, 0
        count = data.count(b"\n") + 1
        room = self._copied - self._written
        if count <= room:
            self._written += count
            return before, data, after
        if not self._left_out:
            after.append(_warning(PAUSED.format(self._copied, self._window)))
        self._written = self._copied
        self._left_out += count - room
        kept = b"\n".join(data.split(b"\n", room)[:room]) if room else None
        return before, kept, after


LEFT_OUT = (
    "{} lines of runnables' output were not copied to the journal in {:g} s; they are in the"
    " tasks' output files"
)
PAUSED = (
    "more than {} lines of runnables' output in {:g} s: the rest of them are not copied to the"
    " journal, which would drop them and the agent's own lines with them; they are in the"
    " tasks' output files"
)


def _warning(message: str) -> bytes:
    return f"<{PRIORITY['WARNING']}>batch_agent.journal: {message}\n".encode()
