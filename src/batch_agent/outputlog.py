"""Where runnables' output lines go: the agent's log stream, written in batches.

A runnable may print hundreds of thousands of lines; a logging.LogRecord, or even a Python
string, per line costs the agent seconds of CPU for that. Lines arrive here in batches (`Lines`:
the bytes of many lines, or one piece of a cut line) and each batch is formatted as a whole,
with one timestamp: decoded only when it is not ASCII (invalid UTF-8 replaced), every newline
replaced by a newline and the next line's head, written once. A batch is small (a shipper's
read chunk and a line), so its text is too: B bytes make at most B x (head + 1) bytes, when
every line is empty. The shape is the agent's own log lines' shape, text or JSON. A piece of
a line cut at the maximum line length says so: `part N` in the text head, `"part": N` in
JSON, and the line's last piece adds `end` / `"end": true`. Knows nothing of tasks beyond the
tag it is given.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import TextIO

from batch_agent.tasks.output import Lines

# Bytes of JSON log a write makes at most (one line may make more): a batch of short lines
# grows several times over once each line is an object; kept in slices this size, the memory it
# takes is reused by the allocator instead of being mapped, faulted in and given back each time.
WRITE_SIZE = 64 * 1024


class OutputLog:
    """Thread-safe; `write` blocks on the stream like any log write. The stream must be a text
    stream over a binary one (sys.stderr, an open file): batches go to its `buffer` as bytes."""

    def __init__(self, log_format: str = "text", stream: TextIO | None = None) -> None:
        self._json = log_format == "json"
        self._stream = stream
        self._lock = threading.Lock()
        self._second = (-1, "")  # a second since the epoch and its local time, as text

    def write(self, tag: str, stream: str, lines: Lines) -> None:
        """Log `lines` of a runnable's `stream` ("stdout" or "stderr"), each tagged with `tag`."""
        severity = "INFO" if stream == "stdout" else "ERROR"
        data = lines.data
        if not data.isascii():  # the common case skips a decode and an encode
            data = lines.text().encode()
        out = self._stream or sys.stderr
        if self._json:
            now = datetime.now().astimezone()
            json_head = _json_head(lines, now, severity, tag, stream)
            with self._lock:
                out.flush()  # whatever the logging module wrote to the text layer goes first
                # JSON makes four strings of a slice's size on the way: slices a quarter the size
                for piece in _slices(data, len(json_head), WRITE_SIZE // 4):
                    out.buffer.write(_json_lines(json_head, piece))
                out.buffer.flush()
            return
        part = "" if not lines.part else f" part {lines.part}{' end' * lines.last}"
        with self._lock:
            head = f"{self._stamp()} {severity} [{tag} {stream}{part}] ".encode()
            out.flush()  # whatever the logging module wrote to the text layer goes first
            out.buffer.write(b"".join((head, data.replace(b"\n", b"\n" + head), b"\n")))
            out.buffer.flush()

    def _stamp(self) -> str:
        """Now as the logging module stamps our own lines: `2026-01-02 10:11:12,345`, local
        time; the date and time part made once a second."""
        now = time.time()
        second = int(now)
        if second != self._second[0]:
            self._second = (second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second)))
        return f"{self._second[1]},{int((now - second) * 1000):03d}"


def _slices(data: bytes, head: int, size: int) -> Iterator[bytes]:
    """`data` in runs of whole lines that make about `size` bytes each with a `head`-byte head
    a line."""
    lines = data.count(b"\n") + 1
    if len(data) + lines * head <= size:
        yield data
        return
    step = max(1, size * len(data) // (len(data) + lines * head))  # input bytes a slice
    start = 0
    while len(data) - start > step:
        end = data.rfind(b"\n", start, start + step)
        if end < 0:
            end = data.find(b"\n", start + step)
            if end < 0:
                break
        yield data[start:end]
        start = end + 1
    yield data[start:]


def _json_head(lines: Lines, now: datetime, severity: str, tag: str, stream: str) -> str:
    entry: dict[str, object] = {
        "time": now.isoformat(timespec="milliseconds"),
        "severity": severity,
        "logger": "batch_agent.output",
        "task": tag,
        "stream": stream,
    }
    if lines.part:
        entry |= {"part": lines.part, "end": lines.last}
    return json.dumps(entry)[:-1] + ', "message": '


# Stands for a line break while a batch is JSON-escaped as one string: JSON leaves it as is
# (unlike an escaped newline, it cannot be confused with the user's own backslashes), and, below
# U+0100, it keeps an ASCII batch's string at one byte a character.
_BREAK = "\x85"


def _json_lines(head: str, data: bytes) -> bytes:
    """One JSON object a line of `data` (valid UTF-8); escaped in one call, not line by line."""
    text = data.decode()
    if _BREAK in text:  # the user printed our stand-in: line by line, then
        return "".join(f"{head}{json.dumps(line)}}}\n" for line in text.split("\n")).encode()
    escaped = json.dumps(text.replace("\n", _BREAK), ensure_ascii=False)
    return (head + escaped.replace(_BREAK, '"}\n' + head + '"') + "}\n").encode()
