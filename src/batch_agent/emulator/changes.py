"""The emulated job's change log: every state change of the job or of a task, in order.

This is what `Emulator.changes_since` hands to watchers (`batch-agent local`, tests) so that none
misses a step: JSON-ready dicts with "event" ("job" or "task"), "time", "from" and "state"; task
changes add "task", "attempt", "vm" and, once reported, "exitCode" and "description". Append-only;
it records what `JobState` decided and must not decide anything itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from batch_agent.emulator.records import TERMINAL, ServerTask


class ChangeLog:
    """The list `entries`, stamped with `clock()` (POSIX seconds, to the millisecond)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.entries: list[dict[str, Any]] = []

    def job(self, old: str | None, new: str, description: str | None = None) -> None:
        """The job went from `old` (None: it was just submitted) to `new`."""
        change: dict[str, Any] = {"event": "job", "from": old, "state": new}
        if description is not None:
            change["description"] = description
        self._append(change)

    def task(self, task: ServerTask, before: str | None, **extra: Any) -> None:
        """`task` went from phase `before` (None: it was just created) to its phase now; `extra`
        keys (e.g. retrying=True) are added as they are."""
        change: dict[str, Any] = {
            "event": "task",
            "task": task.index,
            "attempt": task.attempt,
            "from": before,
            "state": task.phase,
            "vm": task.vm,
        }
        if task.state in TERMINAL:
            change["exitCode"] = task.exit_code
        if task.state is not None and task.events:
            change["description"] = last_description(task)
        self._append(change | extra)

    def _append(self, change: dict[str, Any]) -> None:
        self.entries.append({"time": round(self._clock(), 3), **change})


def last_description(task: ServerTask) -> str:
    """The description of the task's last reported status event ("" if none)."""
    last = task.events[-1] if task.events else None
    return str(last.get("description", "")) if isinstance(last, dict) else ""
