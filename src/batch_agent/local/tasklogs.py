"""`logsPolicy` `PATH`: the three files Batch writes in `logsPath`, built from the entries.

Google's agent writes `output-JOB_UID.log` (every line), `stdout-JOB_UID.log` and
`stderr-JOB_UID.log`, each line `[batch_task_logs]DATETIME SEVERITY: [task_id:TASK,
runnable_index:N] MESSAGE` (observed, not documented: see docs/choices.md). We write the same
from the `batch_task_logs` entries a local run reads: DATETIME is the entry's time in UTC as Go's
log package prints it (`2026/12/02 10:00:00`), SEVERITY the entry's (INFO for stdout, ERROR for
stderr unless a structured line set another), TASK the attempt's name, N the runnable's 0-based
index. Files are opened (appending) on first use and kept open until `close`. Knows nothing of
the job beyond each line's attempt and runnable.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from batch_agent.local.taskoutput import TASK_LOGS, Output

_STAMP = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.\d+)?(Z|z|[+-]\d{2}:\d{2})")


def go_time(stamp: str) -> str:
    """An RFC 3339 time as Go's log package prints it, in UTC: `2026/12/02 10:00:00`."""
    match = _STAMP.fullmatch(stamp)
    if match is None:
        when = datetime.now(UTC)
    else:
        zone = "+00:00" if match[2] in ("Z", "z") else match[2]
        when = datetime.fromisoformat(match[1] + zone).astimezone(UTC)
    return when.strftime("%Y/%m/%d %H:%M:%S")


def path_line(output: Output) -> str:
    """One line of the PATH files, newline included."""
    line = output.line
    runnable = (line.runnable or 1) - 1
    head = f"[{TASK_LOGS}]{go_time(output.timestamp)} {line.severity}:"
    return f"{head} [task_id:{output.attempt.name},runnable_index:{runnable}] {line.message}\n"


class PathLogs:
    """Appends output lines to `output-`, `stdout-` and `stderr-JOB_UID.log` in `directory`
    (created on first write)."""

    def __init__(self, directory: Path, job_uid: str) -> None:
        self.directory = directory
        self._job_uid = job_uid
        self._files: dict[str, TextIO] = {}

    def _file(self, kind: str) -> TextIO:
        out = self._files.get(kind)
        if out is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / f"{kind}-{self._job_uid}.log"
            out = self._files[kind] = path.open("a", encoding="utf-8", errors="replace")
        return out

    def write(self, output: Output) -> None:
        text = path_line(output)
        self._file("output").write(text)
        self._file(output.line.stream or "stdout").write(text)

    def flush(self) -> None:
        for out in self._files.values():
            out.flush()

    def close(self) -> None:
        for out in self._files.values():
            out.close()
        self._files.clear()
