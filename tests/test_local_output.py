"""How `batch-agent local` places Cloud Logging entries (the runnables' output) and writes the
logsPolicy PATH files from them. Pure parts; the end-to-end runs are in test_local.py."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any

from batch_agent.emulator import tasknames
from batch_agent.local.agents import Line
from batch_agent.local.live import LiveView
from batch_agent.local.tasklogs import PathLogs, go_time, path_line
from batch_agent.local.taskoutput import Output, OutputGate, task_key
from batch_agent.local.view import PlainView, RunInfo

UID = "j-3f2a9c1e-7b4d-4e55-9a10-0123456789ab"
STAMP = "2026-12-02T10:00:01.123456789Z"


def entry(task: int, text: str, *, attempt: int = 0, k: int = 1, err: bool = False, at: int = 0):
    name = tasknames.agent_name(UID, task, attempt)
    return {
        "logName": "projects/p/logs/batch_task_logs",
        "insertId": f"{task_key(name)}-{k}{'e' if err else 'o'}{at}",
        "severity": "ERROR" if err else "INFO",
        "timestamp": STAMP,
        "labels": {"job_uid": UID, "task_id": f"{UID}-group0-{task}"},
        "textPayload": text,
    }


def change(task: int, state: str, attempt: int = 0, vm: int | None = 0) -> dict[str, Any]:
    return {"event": "task", "task": task, "attempt": attempt, "state": state, "vm": vm}


def texts(items: list[Output | Line]) -> list[str]:
    return [item.line.message if isinstance(item, Output) else item.message for item in items]


def test_output_waits_until_its_attempt_is_shown_running() -> None:
    """Lines of an attempt not yet shown running are held, then let through in order by the
    change that shows it; later lines of it pass at once; a retry waits for its own RUNNING."""
    gate = OutputGate(UID)
    assert gate.change(change(0, "PENDING", vm=None)) == []
    assert gate.change(change(0, "ASSIGNED")) == []
    assert gate.entries([entry(0, "a"), entry(0, "b", at=2)]) == []
    released = gate.change(change(0, "RUNNING"))
    assert texts(released) == ["a", "b"]
    first = released[0]
    assert isinstance(first, Output)
    assert (first.line.task, first.line.runnable, first.line.stream, first.line.vm) == (
        0,
        1,
        "stdout",
        0,
    )
    assert first.attempt.name == tasknames.agent_name(UID, 0, 0)
    assert texts(gate.entries([entry(0, "c", k=2, err=True, at=4)])) == ["c"]
    assert gate.change(change(0, "SUCCEEDED")) == []


def test_a_retry_is_released_by_its_own_running() -> None:
    """Each attempt has a name (and insertId key) of its own."""
    gate = OutputGate(UID)
    gate.change(change(0, "RUNNING"))
    gate.change(change(0, "PENDING", attempt=1, vm=None))
    assert gate.entries([entry(0, "retry", attempt=1)]) == []
    out = gate.change(change(0, "RUNNING", attempt=1, vm=1))
    assert texts(out) == ["retry"]
    assert isinstance(out[0], Output) and out[0].attempt.attempt == 1 and out[0].line.vm == 1


def test_a_task_ending_without_a_running_report_releases_its_output() -> None:
    """A task so quick that no report said RUNNING shows its output once it is shown ended."""
    gate = OutputGate(UID)
    gate.change(change(2, "ASSIGNED"))
    assert gate.entries([entry(2, "quick")]) == []
    assert texts(gate.change(change(2, "SUCCEEDED"))) == ["quick"]


def test_unknown_entries_are_shown_as_lines_of_no_task() -> None:
    """An entry this run cannot place is never lost: an odd insertId at once, an unknown
    attempt's at the end."""
    gate = OutputGate(UID)
    odd = {**entry(0, "odd"), "insertId": "something-else"}
    (line,) = gate.entries([odd])
    assert isinstance(line, Line) and line.task is None
    assert line.message == f"[batch_task_logs {UID}-group0-0] odd"
    assert gate.entries([entry(5, "late")]) == []
    (rest,) = gate.rest()
    assert isinstance(rest, Line) and rest.message.endswith("] late") and gate.rest() == []
    screen = io.StringIO()
    PlainView(screen).line(rest)
    assert screen.getvalue() == f"[logs] INFO [batch_task_logs {UID}-group0-5] late\n"


def test_structured_lines_show_their_message() -> None:
    """A jsonPayload shows its `message`, or its JSON when it has none."""
    gate = OutputGate(UID)
    gate.change(change(0, "RUNNING"))
    structured = entry(0, "")
    del structured["textPayload"]
    structured["jsonPayload"] = {"message": "step 3 done", "step": 3}
    bare = {**structured, "jsonPayload": {"step": 4}, "insertId": structured["insertId"] + "1"}
    assert texts(gate.entries([structured, bare])) == ["step 3 done", '{"step":4}']


def test_path_line_is_googles_format() -> None:
    """`[batch_task_logs]DATETIME SEVERITY: [task_id:task/...,runnable_index:N] MESSAGE`, the
    runnable index 0-based, the time in UTC as Go's log package prints it."""
    gate = OutputGate(UID)
    gate.change(change(1, "RUNNING"))
    (out,) = gate.entries([entry(1, "boom", attempt=0, k=2, err=True)])
    assert isinstance(out, Output)
    assert path_line(out) == (
        f"[batch_task_logs]2026/12/02 10:00:01 ERROR: [task_id:task/{UID}-group0-1/0/0,"
        "runnable_index:1] boom\n"
    )
    assert go_time("2026-12-02T11:30:00+01:30") == "2026/12/02 10:00:00"
    assert go_time("2026-12-02T10:00:00Z") == "2026/12/02 10:00:00"


def test_path_logs_write_three_files(tmp_path: Path) -> None:
    """output-JOB_UID.log holds every line, stdout- and stderr- their stream's."""
    gate = OutputGate(UID)
    gate.change(change(0, "RUNNING"))
    outs = gate.entries([entry(0, "out"), entry(0, "err", err=True, at=3), entry(0, "more", at=4)])
    logs = PathLogs(tmp_path / "logs", UID)
    for out in outs:
        assert isinstance(out, Output)
        logs.write(out)
    logs.close()
    files = {p.name: p.read_text().splitlines() for p in (tmp_path / "logs").iterdir()}
    assert sorted(files) == [f"output-{UID}.log", f"stderr-{UID}.log", f"stdout-{UID}.log"]
    assert [line.rsplit("] ", 1)[1] for line in files[f"output-{UID}.log"]] == [
        "out",
        "err",
        "more",
    ]
    assert [line.rsplit("] ", 1)[1] for line in files[f"stdout-{UID}.log"]] == ["out", "more"]
    (err,) = files[f"stderr-{UID}.log"]
    assert " ERROR: [task_id:" in err


def test_live_table_shows_running_before_the_output_it_lets_through(tmp_path: Path) -> None:
    """The live view redraws a task's row on its change, so the RUNNING row is on screen
    before the first output line of the task, even before any refresh from the emulator."""
    screen = io.StringIO()
    view = LiveView(screen, colour=False, size=lambda: os.terminal_size((100, 30)))
    view.start(RunInfo("job-1", 2, 1, ("",), tmp_path, UID))
    view.change({"event": "task", "task": 1, "attempt": 0, "from": None, "state": "PENDING"})
    view.change(change(1, "ASSIGNED") | {"from": "PENDING"})
    assert "RUNNING" not in screen.getvalue()
    view.change(change(1, "RUNNING") | {"from": "ASSIGNED"})
    view.line(Line(0, "INFO", "hello from task 1", 1, 1, "stdout"))
    view.close()
    text = screen.getvalue()
    row = re.search(r"\n?\x1b\[\d+;1H\x1b\[2K1 +RUNNING +- +- +- +1 +vm-0", text)
    assert row is not None and row.start() < text.index("hello from task 1")
