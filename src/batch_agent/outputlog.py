"""Where runnables' output lines go: the agent's log stream, written in batches.

A runnable may print hundreds of thousands of lines; a logging.LogRecord, or even a Python
string, per line costs the agent seconds of CPU for that. Lines arrive here in batches (`Lines`:
the bytes of many lines, or one piece of a cut line) and each batch is formatted as a whole,
with one timestamp: decoded once (invalid UTF-8 replaced), every newline replaced by a newline
and the next line's head, written once. The shape is the agent's own log lines' shape, text
or JSON. A piece of a line cut at the maximum line length says so: `part N` in the text head,
`"part": N` in JSON, and the line's last piece adds `end` / `"end": true`. Knows nothing of
tasks beyond the tag it is given.
"""

from __future__ import annotations

import json
import sys
import threading
from datetime import datetime
from typing import TextIO

from batch_agent.tasks.output import Lines


class OutputLog:
    """Thread-safe; `write` blocks on the stream like any log write. The stream must be a text
    stream over a binary one (sys.stderr, an open file): batches go to its `buffer` as bytes."""

    def __init__(self, log_format: str = "text", stream: TextIO | None = None) -> None:
        self._json = log_format == "json"
        self._stream = stream
        self._lock = threading.Lock()

    def write(self, tag: str, stream: str, lines: Lines) -> None:
        """Log `lines` of a runnable's `stream` ("stdout" or "stderr"), each tagged with `tag`."""
        now = datetime.now().astimezone()
        severity = "INFO" if stream == "stdout" else "ERROR"
        if self._json:
            blob = _json_lines(lines, now, severity, tag, stream)
        else:
            blob = _text_lines(lines, now, severity, tag, stream)
        out = self._stream or sys.stderr
        with self._lock:
            out.flush()  # whatever the logging module wrote to the text layer goes first
            out.buffer.write(blob)
            out.buffer.flush()


def _text_lines(lines: Lines, now: datetime, severity: str, tag: str, stream: str) -> bytes:
    """One text log line a line: each newline becomes a newline and the next line's head."""
    millis = now.microsecond // 1000
    part = "" if not lines.part else f" part {lines.part}{' end' * lines.last}"
    head = f"{now:%Y-%m-%d %H:%M:%S},{millis:03d} {severity} [{tag} {stream}{part}] ".encode()
    data = lines.data
    if not data.isascii():  # the common case skips a decode and an encode
        data = lines.text().encode()
    return head + data.replace(b"\n", b"\n" + head) + b"\n"


# Stands for a line break while a batch is JSON-escaped as one string: JSON leaves it as is
# (unlike an escaped newline, it cannot be confused with the user's own backslashes).
_BREAK = "\ue000"


def _json_lines(lines: Lines, now: datetime, severity: str, tag: str, stream: str) -> bytes:
    """One JSON object a line; the batch's text is escaped in one call, not line by line."""
    entry: dict[str, object] = {
        "time": now.isoformat(timespec="milliseconds"),
        "severity": severity,
        "logger": "batch_agent.output",
        "task": tag,
        "stream": stream,
    }
    if lines.part:
        entry |= {"part": lines.part, "end": lines.last}
    head = json.dumps(entry)[:-1] + ', "message": '
    text = lines.text()
    if _BREAK in text:  # the user printed our stand-in: line by line, then
        return "".join(f"{head}{json.dumps(line)}}}\n" for line in text.split("\n")).encode()
    escaped = json.dumps(text.replace("\n", _BREAK), ensure_ascii=False)
    return (head + escaped.replace(_BREAK, '"}\n' + head + '"') + "}\n").encode()
