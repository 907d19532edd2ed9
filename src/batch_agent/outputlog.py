"""Where runnables' output lines go: the agent's log stream, written in batches.

A runnable may print hundreds of thousands of lines; a logging.LogRecord per line costs the
agent tens of seconds of CPU for that. Lines arrive here in batches (one shipment of one file)
and are formatted with one timestamp per batch, in the same text or JSON shape as the agent's
own log lines. Knows nothing of tasks beyond the tag it is given.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Sequence
from datetime import datetime
from typing import TextIO


class OutputLog:
    """Thread-safe; `write` blocks on the stream like any log write."""

    def __init__(self, log_format: str = "text", stream: TextIO | None = None) -> None:
        self._json = log_format == "json"
        self._stream = stream
        self._lock = threading.Lock()

    def write(self, tag: str, stream: str, lines: Sequence[str]) -> None:
        """Log `lines` of a runnable's `stream` ("stdout" or "stderr"), each tagged with `tag`."""
        if not lines:
            return
        now = datetime.now().astimezone()
        severity = "INFO" if stream == "stdout" else "ERROR"
        if self._json:
            stamp = now.isoformat(timespec="milliseconds")
            text = "".join(
                json.dumps(
                    {
                        "time": stamp,
                        "severity": severity,
                        "logger": "batch_agent.output",
                        "task": tag,
                        "stream": stream,
                        "message": line,
                    }
                )
                + "\n"
                for line in lines
            )
        else:
            millis = now.microsecond // 1000
            head = f"{now:%Y-%m-%d %H:%M:%S},{millis:03d} {severity} [{tag} {stream}] "
            text = "".join(f"{head}{line}\n" for line in lines)
        out = self._stream or sys.stderr
        with self._lock:
            out.write(text)
            out.flush()
