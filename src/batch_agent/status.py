"""`batch-agent status`: what the agent on this VM is doing, read from its state dir.

Read-only and safe while the agent runs. The running agent may hold its sqlite db in exclusive
locking mode, and then nobody else can read it; so after its reports (at most once a second,
the last one always) it publishes `LIVE_NAME` (our pid and start, the last report's time,
outcome and error, and the task records without their specs, which hold secrets), and we read
that while its process lives. Once the agent is gone (stopped, or killed) we read the db
itself, opened `mode=ro`, where it left the same facts (`AGENT_FACT`, `REPORT_FACT`) and the
records. Task output files are only stat'ed; the agent's lock is never taken. Under systemd a
running script runnable's task's CPU and memory are read from its scope's cgroup (`tasks/scope.py`).
Builds a JSON-able dict (`read_status`) and its terminal form (`render`). Must not import the
report loop.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from batch_agent.names import parse_task_name
from batch_agent.tasks.folders import task_dir
from batch_agent.tasks.procfs import is_alive
from batch_agent.tasks.record import TaskRecord
from batch_agent.tasks.scope import cgroup_of, usage
from batch_agent.tasks.taskoutput import STREAMS, output_path

AGENT_FACT = "agent"  # {"pid", "start_ticks", "started", "version", "stopped"}
REPORT_FACT = "last_report"  # {"time", "outcome", "error", "status", "last_success"}
LIVE_NAME = "status.json"  # {"agent", "last_report", "tasks": [record JSON without spec]}
DB_NAME = "state.db"


class NoState(Exception):
    """There is no agent state to read in that directory (or none yet)."""


@dataclass(frozen=True)
class AgentView:
    """What the state dir says: the agent's facts and its task records (specs left out)."""

    agent: dict[str, Any]
    last_report: dict[str, Any]
    records: list[TaskRecord]
    running: bool


def read_view(state_dir: Path) -> AgentView:
    """The running agent's published status, else what the stopped agent left in its db.
    Raises NoState when neither can be read."""
    live = _read_json(state_dir / LIVE_NAME)
    agent = live.get("agent")
    if isinstance(agent, dict) and agent_alive(agent):
        records = [TaskRecord.from_json(json.dumps(r), {}) for r in live.get("tasks", [])]
        return AgentView(agent, live.get("last_report") or {}, records, running=True)
    try:
        db = open_readonly(state_dir)
        try:
            agent, report = read_fact(db, AGENT_FACT), read_fact(db, REPORT_FACT)
            records = read_records(db)
        finally:
            db.close()
    except sqlite3.OperationalError as error:  # held by an agent that has not published yet
        raise NoState(f"{state_dir / DB_NAME}: {error} (is an agent starting?)") from None
    return AgentView(agent, report, records, running=agent_alive(agent))


def agent_alive(agent: dict[str, Any]) -> bool:
    """Whether the process the facts name still runs (its pid and start time both match)."""
    pid, ticks = agent.get("pid"), agent.get("start_ticks")
    return isinstance(pid, int) and isinstance(ticks, int) and is_alive(pid, ticks)


def open_readonly(state_dir: Path) -> sqlite3.Connection:
    """The agent's db, read-only; raises NoState if it is not there."""
    path = state_dir / DB_NAME
    if not path.is_file():
        raise NoState(f"no agent state in {state_dir} ({DB_NAME} not found)")
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)


def read_records(db: sqlite3.Connection) -> list[TaskRecord]:
    """Every task record, oldest first (a schema the agent has not made yet reads as none)."""
    try:
        rows = db.execute("SELECT raw, record FROM tasks ORDER BY rowid").fetchall()
    except sqlite3.OperationalError as error:
        if "no such table" in str(error):
            return []
        raise
    return [TaskRecord.from_json(text, json.loads(raw)) for raw, text in rows]


def read_fact(db: sqlite3.Connection, key: str) -> dict[str, Any]:
    """A JSON fact the agent left, or {} if none."""
    try:
        row = db.execute("SELECT value FROM facts WHERE key = ?", (key,)).fetchone()
    except sqlite3.OperationalError as error:
        if "no such table" in str(error):
            return {}
        raise
    value = json.loads(row[0]) if row is not None else {}
    return value if isinstance(value, dict) else {}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def read_status(state_dir: Path) -> dict[str, Any]:
    """The agent and its tasks as a JSON-able dict; raises NoState."""
    view = read_view(state_dir)
    workdir = state_dir / "tasks"
    return {
        "state_dir": str(state_dir),
        "agent": {
            "state": "running" if view.running else "stopped",
            "pid": view.agent.get("pid"),
            "version": view.agent.get("version"),
            "started": view.agent.get("started"),
            "stopped": None if view.running else view.agent.get("stopped"),
            "last_report": view.last_report or None,
        },
        "tasks": [_task(record, task_dir(workdir, record.task_id)) for record in view.records],
        # Seams for volumes and secrets (not built yet): names only, never secret values.
        "mounts": [],
        "secrets": [],
    }


def _task(record: TaskRecord, folder: Path) -> dict[str, Any]:
    ended = record.events[-1].get("eventTime") if record.state.is_terminal else None
    runnables = []
    for k, runnable in sorted(record.runnables.items()):
        sizes: dict[str, int | None] = {}
        for stream in STREAMS:
            try:
                sizes[stream] = output_path(folder, k, stream).stat().st_size
            except OSError:
                sizes[stream] = None
        alive = (
            runnable.pid is not None
            and runnable.start_time is not None
            and is_alive(runnable.pid, runnable.start_time)
        )
        cgroup = cgroup_of(runnable.pid) if alive and runnable.pid is not None else None
        # Container names are random: the labels find them (`docker ps --filter label=...`).
        # (Imported here: the agent's telemetry loads this module before it has any task.)
        from batch_agent.tasks.container_driver import LABEL_RUNNABLE, LABEL_TASK

        labels = {LABEL_TASK: record.task_id, LABEL_RUNNABLE: str(k)}
        runnables.append(
            {
                "index": k,
                "kind": "container" if runnable.container else "script",
                "pid": runnable.pid,
                "container_labels": labels if runnable.container else None,
                "alive": alive,
                "exit_code": runnable.exit_code,
                "output_bytes": sizes,
                # Its scope's figures when it runs in one (under systemd), else None.
                "accounting": usage(cgroup) if cgroup is not None else None,
            }
        )
    return {
        "task": record.task_id,
        "index": parse_task_name(record.task_id).index,
        "state": record.state.value,
        "runnable": record.runnable or None,
        "exit_code": record.exit_code,
        "started": record.started_at,
        "ended": ended,
        "duration_seconds": _duration(record.started_at, ended),
        "runnables": runnables,
        "folder": str(folder),
    }


def _duration(start: str | None, end: str | None) -> float | None:
    if start is None:
        return None
    until = datetime.fromisoformat(end) if end else datetime.now(UTC)
    return round((until - datetime.fromisoformat(start)).total_seconds(), 1)


def render(status: dict[str, Any]) -> str:
    """The status for a person at a terminal."""
    agent = status["agent"]
    pid = agent["pid"]
    if agent["state"] == "running":
        lines = [f"agent: running (pid {pid})"]
    else:
        lines = ["agent: not running" + (f" (last pid {pid})" if pid else "")]
    if agent["started"]:
        lines.append(f"  started       {agent['started']}")
    if agent["stopped"]:
        lines.append(f"  stopped       {agent['stopped']}")
    report = agent["last_report"]
    if report:
        outcome = report.get("outcome")
        error = f": {report['error']}" if report.get("error") else ""
        lines.append(f"  last report   {report.get('time')} {outcome}{error}")
        if outcome != "ok" and report.get("last_success"):
            lines.append(f"  last success  {report['last_success']}")
    else:
        lines.append("  last report   none yet")
    lines.append(f"tasks: {len(status['tasks'])}")
    for task in status["tasks"]:
        head = f"task {task['index']}" if task["index"] is not None else task["task"]
        took = f", {task['duration_seconds']}s" if task["duration_seconds"] is not None else ""
        code = f", exit code {task['exit_code']}" if task["exit_code"] is not None else ""
        lines.append(f"  {head}: {task['state']}{code}{took}")
        lines.append(f"    {task['task']}")
        for r in task["runnables"]:
            who = f"pid {r['pid']}" if r["pid"] else r["kind"]
            if r["container_labels"]:
                who = "container " + ",".join(f"{k}={v}" for k, v in r["container_labels"].items())
            state = "running" if r["alive"] else f"exit code {r['exit_code']}"
            if r["exit_code"] is None and not r["alive"]:
                state = "not running"
            sizes = ", ".join(f"{s} {_size(n)}" for s, n in r["output_bytes"].items())
            used = _accounting(r["accounting"])
            lines.append(f"    runnable {r['index']}: {who}, {state}; {sizes}{used}")
    for kind in ("mounts", "secrets"):
        if status[kind]:
            lines.append(f"{kind}: " + ", ".join(status[kind]))
    return "\n".join(lines)


def _accounting(figures: dict[str, Any] | None) -> str:
    if figures is None:
        return ""
    cpu = figures["cpu_seconds"]
    return f"; cpu {'-' if cpu is None else f'{cpu:.1f}s'}, memory {_size(figures['memory_bytes'])}"


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    if n < 1000:
        return f"{n}B"
    value = float(n)
    for unit in ("kB", "MB", "GB"):
        value /= 1000
        if value < 1000 or unit == "GB":
            break
    return f"{value:.1f}{unit}"
