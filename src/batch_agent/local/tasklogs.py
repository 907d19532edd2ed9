"""Task logs written to files: one `task-N.log` per task, as `logsPolicy` `PATH` asks.

Lines look like the agent's own text log (`2026-11-26T07:23:47.373+00:00 INFO [task 0 r1
stdout] Hello`), appended across attempts. Files are opened on first use and kept open until
`close`. Knows nothing of the job beyond the task and runnable numbers of each line.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TextIO

from batch_agent.local.agents import Line


class TaskLogs:
    """Appends runnables' output lines under `directory` (created on first write)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._files: dict[int, TextIO] = {}

    def write(self, line: Line) -> None:
        """Append one output line to its task's file; lines without a task are ignored."""
        if line.task is None:
            return
        out = self._files.get(line.task)
        if out is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / f"task-{line.task}.log"
            out = self._files[line.task] = path.open("a", encoding="utf-8")
        stamp = datetime.now().astimezone().isoformat(timespec="milliseconds")
        tag = f"task {line.task} r{line.runnable} {line.stream}"
        out.write(f"{stamp} {line.severity} [{tag}] {line.message}\n")
        out.flush()

    def close(self) -> None:
        for out in self._files.values():
            out.close()
        self._files.clear()
