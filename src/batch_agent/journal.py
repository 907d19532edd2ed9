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
from collections.abc import Mapping
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


class JournalOutput:
    """Runnables' output lines for journald: `<6>[task 3 r1 stdout] line`; thread-safe. Like
    `outputlog.OutputLog`, a batch is formatted as a whole, on bytes (decoded only when it is
    not ASCII), and goes to the stream's `buffer` in one write."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def write(self, tag: str, stream: str, lines: Lines) -> None:
        piece = f" part {lines.part}{' end' if lines.last else ''}" if lines.part else ""
        priority = PRIORITY["INFO"] if stream == "stdout" else PRIORITY["ERROR"]
        head = f"<{priority}>[{tag} {stream}{piece}] ".encode()
        data = lines.data if lines.data.isascii() else lines.text().encode()
        text = b"".join((head, data.replace(b"\n", b"\n" + head), b"\n"))
        out = self._stream or sys.stderr
        with self._lock:
            out.flush()  # whatever the logging module wrote to the text layer goes first
            out.buffer.write(text)
            out.buffer.flush()
