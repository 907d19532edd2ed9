"""What a local run shows: plain prefixed lines, one JSON object per event, and their shared parts.

`View` is the hook set the runner calls from its one thread; `PlainView` writes lines for logs and
pipes, `JsonView` one JSON object per event for scripts and CI; the live terminal table is
`live.LiveView`. Views only format and write: they decide nothing about the job, never read the
emulator and never block on anything but their stream.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from batch_agent.emulator import TaskView
from batch_agent.local.agents import Line

DOT = "\u00b7"  # the "·" between task and runnable in prefixes


@dataclass(frozen=True)
class RunInfo:
    """What a view knows before the run: the job, its size and how runnables are labelled."""

    job: str
    task_count: int
    vms: int
    labels: tuple[str, ...]  # labels[k - 1] names runnable k (displayName, image) or is ""
    work_dir: Path
    job_uid: str = ""  # the emulated job's uid: its log entries' `labels.job_uid`


@dataclass(frozen=True)
class TaskSummary:
    task: int
    state: str
    exit_code: int | None
    duration: float | None  # seconds from the first start to the end, all attempts
    attempts: int


@dataclass(frozen=True)
class Summary:
    job: str
    state: str
    exit_status: int
    elapsed: float
    tasks: tuple[TaskSummary, ...]
    kept: Path | None  # the work dir, when --keep kept it
    reports: int = 0  # state:report calls the local control plane answered
    # CPU seconds (user + system) during the run: `local` itself, and its agents with their
    # tasks' processes (each agent reaped by then)
    cpu_local: float = 0.0
    cpu_agents: float = 0.0


def duration(seconds: float | None) -> str:
    """`0.4s`, `12.3s`, `2m05s`, `1h02m`; "-" for None."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def prefix(info: RunInfo, task: int, runnable: int) -> str:
    """`task 3 · r2 compile` (the label only when the runnable has one)."""
    label = info.labels[runnable - 1] if 0 < runnable <= len(info.labels) else ""
    return f"task {task} {DOT} r{runnable}" + (f" {label}" if label else "")


def prefix_width(info: RunInfo) -> int:
    """The widest prefix of the run, so that output lines align as docker compose's do."""
    last = max(info.task_count - 1, 0)
    return max((len(prefix(info, last, k)) for k in range(1, len(info.labels) + 1)), default=0)


def source(line: Line) -> str:
    """Who wrote a line that is no runnable's output: `vm-2` (its agent), or `logs` (an entry
    of the task log that names no task of this run)."""
    return "logs" if line.vm is None else f"vm-{line.vm}"


def describe_change(change: dict[str, Any]) -> str | None:
    """A task or job change as one line of text, None for ones not worth a line (creation)."""
    old, new = change.get("from"), change.get("state")
    if change.get("event") == "job":
        return f"[job] {old} -> {new}" if old else f"[job] {new}"
    if old is None:
        return None
    text = f"[task {change['task']}] {new}"
    if change.get("attempt"):
        text += f" (attempt {change['attempt']})"
    if new == "ASSIGNED" and change.get("vm") is not None:
        text += f" to vm-{change['vm']}"
    if change.get("retrying"):
        return f"{text}: {change.get('retryDescription', 'retrying')}"
    if new == "FAILED":
        code = change.get("exitCode")
        text += "" if code is None else f" with exit code {code}"
        if change.get("description"):
            text += f": {change['description']}"
    return text


def summary_lines(summary: Summary) -> list[str]:
    """The end-of-run table: per task its state, exit code, duration and attempts."""
    lines = [f"job {summary.job}: {summary.state} in {duration(summary.elapsed)}"]
    rows = [("TASK", "STATE", "EXIT", "DURATION", "ATTEMPTS")]
    for t in summary.tasks:
        code = "-" if t.exit_code is None else str(t.exit_code)
        rows.append((str(t.task), t.state, code, duration(t.duration), str(t.attempts)))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    if summary.kept is not None:
        lines.append(f"work dir kept: {summary.kept}")
    return lines


class View:
    """The hooks a runner calls, all from one thread; this base ignores every one."""

    refresh_every: float | None = None  # seconds between `refresh` calls; None: never call it

    def start(self, info: RunInfo) -> None:
        pass

    def warn(self, message: str) -> None:
        pass

    def change(self, change: dict[str, Any]) -> None:
        pass

    def line(self, line: Line) -> None:
        pass

    def agent(self, vm: int, pid: int, state: str, status: int | None = None) -> None:
        pass

    def refresh(self, tasks: Sequence[TaskView], now: float) -> None:
        pass

    def finish(self, summary: Summary) -> None:
        pass


class PlainView(View):
    """Prefixed lines: `[task 0 · r1] Hello`, `[task 0] FAILED with exit code 3: ...`."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._info: RunInfo | None = None
        self._width = 0

    def _write(self, text: str) -> None:
        self._out.write(text + "\n")
        self._out.flush()

    def start(self, info: RunInfo) -> None:
        self._info, self._width = info, prefix_width(info)
        plural = "s" if info.task_count != 1 else ""
        self._write(f"job {info.job}: {info.task_count} task{plural} on {info.vms} VM(s)")

    def change(self, change: dict[str, Any]) -> None:
        text = describe_change(change)
        if text is not None:
            self._write(text)

    def line(self, line: Line) -> None:
        if line.task is None or line.runnable is None or self._info is None:
            self._write(f"[{source(line)}] {line.severity} {line.message}")
            return
        head = prefix(self._info, line.task, line.runnable).ljust(self._width)
        self._write(f"[{head}] {line.message}")

    def finish(self, summary: Summary) -> None:
        for text in summary_lines(summary):
            self._write(text)


class JsonView(View):
    """One JSON object per line on `out`, each with an "event" key: start, warning, job, task,
    output, agent, agent-log and, last, summary."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def _emit(self, event: str, **fields: Any) -> None:
        self._out.write(json.dumps({"event": event, **fields}) + "\n")
        self._out.flush()

    def start(self, info: RunInfo) -> None:
        self._emit(
            "start",
            job=info.job,
            jobUid=info.job_uid,
            taskCount=info.task_count,
            vms=info.vms,
            workDir=str(info.work_dir),
        )

    def warn(self, message: str) -> None:
        self._emit("warning", message=message)

    def change(self, change: dict[str, Any]) -> None:
        fields = {k: v for k, v in change.items() if k != "event"}
        self._emit(str(change["event"]), **fields)

    def line(self, line: Line) -> None:
        now = round(time.time(), 3)
        if line.task is None:
            self._emit(
                "agent-log", time=now, vm=line.vm, severity=line.severity, message=line.message
            )
        else:
            self._emit(
                "output",
                time=now,
                task=line.task,
                runnable=line.runnable,
                stream=line.stream,
                message=line.message,
            )

    def agent(self, vm: int, pid: int, state: str, status: int | None = None) -> None:
        extra = {} if status is None else {"exitStatus": status}
        self._emit("agent", time=round(time.time(), 3), vm=vm, pid=pid, state=state, **extra)

    def finish(self, summary: Summary) -> None:
        tasks = [
            {
                "task": t.task,
                "state": t.state,
                "exitCode": t.exit_code,
                "duration": None if t.duration is None else round(t.duration, 3),
                "attempts": t.attempts,
            }
            for t in summary.tasks
        ]
        kept = {} if summary.kept is None else {"workDir": str(summary.kept)}
        self._emit(
            "summary",
            job=summary.job,
            state=summary.state,
            exitStatus=summary.exit_status,
            elapsed=round(summary.elapsed, 3),
            reports=summary.reports,
            cpu={"local": round(summary.cpu_local, 3), "agents": round(summary.cpu_agents, 3)},
            tasks=tasks,
            **kept,
        )
