"""Runnables' output as a local run shows it: read from the Cloud Logging entries the agents
wrote to the emulator (`batch_task_logs`), so what is shown is what was shipped.

An entry names its task, runnable and stream only in its `insertId`, which the agent makes
`KEY-K{o|e}OFFSET[-PIECE]` (KEY: the first 16 hex digits of the SHA-256 of the task's name, K the
1-based runnable, `o` stdout, `e` stderr; `cloudlog/entries.py`). `OutputGate` learns each
task attempt's KEY from the job's changes and holds an attempt's lines until a change has shown
it RUNNING (or ended), so that no view shows a task's output before the task runs. Pure: no I/O,
no clock, no threads; must not import agent code.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from batch_agent.emulator import tasknames
from batch_agent.local.agents import Line

TASK_LOGS = "batch_task_logs"
_INSERT_ID = re.compile(r"([0-9a-f]{16})-([0-9]{1,9})([oe])[0-9]+(?:-[0-9]+)?")
_STREAMS = {"o": "stdout", "e": "stderr"}
_SHOWN = frozenset({"RUNNING", "SUCCEEDED", "FAILED"})  # a change that shows the attempt ran


@dataclass(frozen=True)
class Attempt:
    """One attempt of one task, as the emulator issued it."""

    task: int
    attempt: int
    name: str  # `task/JOB_UID-group0-INDEX/ATTEMPT/0`, the name sent to the agent
    vm: int | None = None


def task_key(name: str) -> str:
    """The key the agent puts in front of a task's insertIds (see the module)."""
    return hashlib.sha256(name.encode()).hexdigest()[:16]


def message_of(entry: dict[str, Any]) -> str:
    """What a line said: its text, a structured line's `message`, else its JSON."""
    if "textPayload" in entry:
        return str(entry["textPayload"])
    payload = entry.get("jsonPayload")
    if isinstance(payload, dict) and isinstance(payload.get("message"), str):
        return str(payload["message"])
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class Output:
    """One line of a runnable's output, placed: which attempt, which runnable (1-based)."""

    attempt: Attempt
    line: Line
    timestamp: str  # the entry's RFC 3339 time


class OutputGate:
    """Places `batch_task_logs` entries and releases each once its attempt was shown running.

    Feed it every change (`change`) and every new entry (`entries`), in the order they were
    read; both return the lines that may be shown now. `rest` releases everything held, at the
    end of the run: lines of unknown tasks come out as lines of no task.
    """

    def __init__(self, job_uid: str) -> None:
        self._job_uid = job_uid
        self._attempts: dict[str, Attempt] = {}  # by key
        self._shown: set[str] = set()  # keys of attempts shown running
        self._held: dict[str, list[dict[str, Any]]] = {}  # entries by key, in order

    def change(self, change: dict[str, Any]) -> list[Output | Line]:
        """Learn from one change of the job's change log (already handed to the view)."""
        if change.get("event") != "task" or not isinstance(change.get("task"), int):
            return []
        index, attempt = change["task"], int(change.get("attempt", 0))
        name = tasknames.agent_name(self._job_uid, index, attempt)
        key = task_key(name)
        vm = change.get("vm")
        if not isinstance(vm, int):
            vm = self._attempts[key].vm if key in self._attempts else None
        self._attempts[key] = Attempt(index, attempt, name, vm)
        if change.get("state") not in _SHOWN or key in self._shown:
            return []
        self._shown.add(key)
        return self._place(self._held.pop(key, []))

    def entries(self, entries: Iterable[dict[str, Any]]) -> list[Output | Line]:
        """New entries of the task log: those of attempts already shown, placed; the rest held."""
        ready: list[dict[str, Any]] = []
        for entry in entries:
            match = _INSERT_ID.fullmatch(str(entry.get("insertId", "")))
            key = match[1] if match else ""
            if match is None or key in self._shown:
                ready.append(entry)
            else:
                self._held.setdefault(key, []).append(entry)
        return self._place(ready)

    def rest(self) -> list[Output | Line]:
        """Everything still held (the run is over), in the order it was read per attempt."""
        held, self._held = self._held, {}
        return self._place([entry for entries in held.values() for entry in entries])

    def _place(self, entries: list[dict[str, Any]]) -> list[Output | Line]:
        out: list[Output | Line] = []
        for entry in entries:
            severity = str(entry.get("severity", "DEFAULT"))
            message = message_of(entry)
            match = _INSERT_ID.fullmatch(str(entry.get("insertId", "")))
            attempt = self._attempts.get(match[1]) if match else None
            if match is None or attempt is None:
                labels = entry.get("labels", {})
                where = labels.get("task_id", "?") if isinstance(labels, dict) else "?"
                out.append(Line(None, severity, f"[{TASK_LOGS} {where}] {message}"))
                continue
            stream = _STREAMS[match[3]]
            line = Line(attempt.vm, severity, message, attempt.task, int(match[2]), stream)
            out.append(Output(attempt, line, str(entry.get("timestamp", ""))))
        return out
