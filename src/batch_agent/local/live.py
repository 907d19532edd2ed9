"""The live terminal view: a table of tasks pinned above the interleaved runnable output.

Plain ANSI, no curses: the table holds the top rows and the rows below it are a scroll region
(DECSTBM) in which output lines scroll. Colours: each task's prefix gets the colour docker compose
would give its N-th service (cyan, yellow, green, magenta, blue, then their bold variants);
states are coloured by outcome; `NO_COLOR` turns colours off. `close` restores the terminal
(scroll region, cursor) whatever happened, and is idempotent. Decides nothing about the job.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, TextIO

from batch_agent.emulator import TaskView
from batch_agent.local.agents import Line
from batch_agent.local.view import (
    RunInfo,
    Summary,
    View,
    describe_change,
    duration,
    prefix,
    prefix_width,
    source,
    summary_lines,
)

RAINBOW = ("36", "33", "32", "35", "34", "36;1", "33;1", "32;1", "35;1", "34;1")
STATE_COLOURS = {
    "QUEUED": "2",
    "PENDING": "2",
    "UNEXECUTED": "2",
    "SCHEDULED": "34",
    "ASSIGNED": "34",
    "RUNNING": "33",
    "RETRYING": "35",
    "CANCELLATION_IN_PROGRESS": "35",
    "SUCCEEDED": "32",
    "FAILED": "31",
    "CANCELLED": "31",
}
# Cursor and screen controls a runnable might print; SGR colours ("m") are let through.
_CONTROLS = re.compile(r"\x1b\[[0-9;?]*[A-Za-ln-z]|\x1b[^\[]|[\x00-\x08\x0b-\x1a\x1c-\x1f\x7f]")
_REDRAW_EVERY = 0.1
_ORDER = {"RUNNING": 0, "RETRYING": 0, "ASSIGNED": 1, "FAILED": 2, "PENDING": 3}


def wants_colour(environ: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    return not environ.get("NO_COLOR") and environ.get("TERM", "") != "dumb"


class LiveView(View):
    """The table and the scrolling output on a terminal `out` (a tty)."""

    refresh_every = _REDRAW_EVERY

    def __init__(
        self,
        out: TextIO,
        *,
        colour: bool = True,
        size: Callable[[], os.terminal_size] = shutil.get_terminal_size,
    ) -> None:
        self._out, self._colour, self._size = out, colour, size
        self._info: RunInfo | None = None
        self._width = 0
        self._job_state = "QUEUED"
        self._tasks: Sequence[TaskView] = ()
        self._begun = time.time()
        self._drawn_at = 0.0
        self._layout: tuple[int, int, int] | None = None  # rows, cols, table height
        self._active = False

    # -- helpers -----------------------------------------------------------------------------

    def _paint(self, code: str | None, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self._colour and code else text

    def _emit(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()

    def _print(self, text: str) -> None:
        """A line in the scroll region below the table."""
        self._emit(text + ("\x1b[0m" if self._colour else "") + "\n")

    # -- hooks -------------------------------------------------------------------------------

    def start(self, info: RunInfo) -> None:
        self._info, self._width = info, prefix_width(info)
        self._begun = time.time()
        rows = self._size().lines
        # Push what is on screen into the scrollback, then take over the screen.
        self._emit("\n" * rows + "\x1b[H\x1b[?25l")
        self._active = True
        self._relayout()

    def change(self, change: dict[str, Any]) -> None:
        if change.get("event") == "job":
            self._job_state = str(change["state"])
            self._draw()
            return  # the table's first line shows it
        # The row changes now, before any output line this change lets through is printed.
        self._note(change)
        if change.get("from") is not None and change.get("state") in ("FAILED", "SUCCEEDED"):
            text = describe_change(change)
            if text is not None:
                self._print(self._paint("2", text))
        self._draw()

    def _note(self, change: dict[str, Any]) -> None:
        """The table's row of the changed task, as the change says it is now."""
        index, state = change.get("task"), str(change.get("state"))
        if not isinstance(index, int):
            return
        attempt, vm = int(change.get("attempt", 0)), change.get("vm")
        retrying, code = bool(change.get("retrying")), change.get("exitCode")
        rows = {t.index: t for t in self._tasks}
        old = rows.get(index)
        if old is None:
            new = TaskView(index, "", state, attempt, 0, vm, code, None, None, None, retrying)
            rows[index] = new
        else:
            code = code if "exitCode" in change else old.exit_code
            rows[index] = replace(
                old, phase=state, attempt=attempt, vm=vm, exit_code=code, retrying=retrying
            )
        self._tasks = [rows[i] for i in sorted(rows)]

    def line(self, line: Line) -> None:
        message = _CONTROLS.sub("", line.message)
        if line.task is None or line.runnable is None or self._info is None:
            code = "31" if line.severity in ("ERROR", "CRITICAL") else "2"
            self._print(self._paint(code, f"[{source(line)}] {line.severity} {message}"))
            return
        head = prefix(self._info, line.task, line.runnable).ljust(self._width)
        self._print(self._paint(RAINBOW[line.task % len(RAINBOW)], f"[{head}]") + f" {message}")

    def refresh(self, tasks: Sequence[TaskView], now: float) -> None:
        self._tasks = tasks
        if now - self._drawn_at >= _REDRAW_EVERY:
            self._draw(now)

    def finish(self, summary: Summary) -> None:
        self._job_state = summary.state
        self._draw()
        self.close()
        lines = summary_lines(summary)
        lines[0] = lines[0].replace(summary.state, self._state(summary.state), 1)
        for i, task in enumerate(summary.tasks, start=2):
            lines[i] = re.sub(rf"\b{task.state}\b", self._state(task.state), lines[i], count=1)
        self._emit("".join(text + "\n" for text in lines))

    def close(self) -> None:
        """Give the terminal back: whole-screen scrolling, cursor below everything, visible."""
        if not self._active:
            return
        self._active = False
        rows = self._layout[0] if self._layout else self._size().lines
        self._emit(f"\x1b[r\x1b[{rows};1H\n\x1b[?25h")

    # -- the table ---------------------------------------------------------------------------

    def _state(self, state: str) -> str:
        return self._paint(STATE_COLOURS.get(state), state)

    def _relayout(self) -> None:
        size = self._size()
        rows, cols = size.lines, size.columns
        count = self._info.task_count if self._info else 0
        body = max(1, min(count, rows // 2 - 3))
        height = body + 3 if rows >= 10 else 0
        self._layout = (rows, cols, height)
        if height:
            # DECSTBM homes the cursor: put it back at the top of the output area.
            self._emit(f"\x1b[{height + 1};{rows}r\x1b[{height + 1};1H")

    def _draw(self, now: float | None = None) -> None:
        if not self._active or self._info is None:
            return
        now = time.time() if now is None else now
        self._drawn_at = now
        size = self._size()
        if self._layout is None or (size.lines, size.columns) != self._layout[:2]:
            self._relayout()
        assert self._layout is not None
        _rows, cols, height = self._layout
        if not height:
            return
        lines = self._table(now, height - 3)
        rule = "\u2500" * cols
        lines.append((rule, self._paint("2", rule)))
        out = ["\x1b7"]
        for r, (plain, painted) in enumerate(lines[:height], start=1):
            text = painted if len(plain) <= cols else plain[: cols - 1] + "\u2026"
            out.append(f"\x1b[{r};1H\x1b[2K{text}")
        out.append("\x1b8")
        self._emit("".join(out))

    def _table(self, now: float, body: int) -> list[tuple[str, str]]:
        """(plain, painted) lines: the job line, the header, `body` task rows."""
        info = self._info
        assert info is not None
        job = self._job_state
        head = f"job {info.job}  "
        tail = f"  {info.task_count} tasks {chr(183)} {info.vms} VMs {chr(183)} "
        tail += duration(now - self._begun) + "   Ctrl-C cancels"
        lines = [(head + job + tail, self._paint("1", head) + self._state(job) + tail)]
        columns = ("TASK", "STATE", "RUNNABLE", "ELAPSED", "EXIT", "ATTEMPT", "VM")
        widths = (6, 11, 20, 9, 6, 9, 5)
        header = "".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()
        lines.append((header, self._paint("1", header)))
        tasks = sorted(self._tasks, key=lambda t: (_ORDER.get(_shown(t), 4), t.index))
        if len(tasks) > body:
            shown, rest = tasks[: body - 1], tasks[body - 1 :]
        else:
            shown, rest = sorted(tasks, key=lambda t: t.index), []
        for t in shown:
            cells = [str(t.index), _shown(t), self._runnable(t), self._elapsed(t, now)]
            cells += ["-" if t.exit_code is None else str(t.exit_code), str(t.attempt + 1)]
            cells.append("-" if t.vm is None else f"vm-{t.vm}")
            padded = [c.ljust(w) for c, w in zip(cells, widths, strict=True)]
            plain = "".join(padded).rstrip()
            painted = padded[0] + self._state(_shown(t)) + padded[1][len(_shown(t)) :]
            lines.append((plain, painted + "".join(padded[2:]).rstrip()))
        if rest:
            counts: dict[str, int] = {}
            for t in rest:
                counts[_shown(t).lower()] = counts.get(_shown(t).lower(), 0) + 1
            text = f"\u2026 {len(rest)} more: " + ", ".join(f"{n} {s}" for s, n in counts.items())
            lines.append((text, self._paint("2", text)))
        return lines

    def _runnable(self, t: TaskView) -> str:
        if t.runnable < 1 or self._info is None:
            return "-"
        text = f"r{t.runnable}/{len(self._info.labels)}"
        label = self._info.labels[t.runnable - 1] if t.runnable <= len(self._info.labels) else ""
        return f"{text} {label}"[:19] if label else text

    @staticmethod
    def _elapsed(t: TaskView, now: float) -> str:
        if t.ended is not None and t.started is not None:
            return duration(t.ended - t.started)
        if t.attempt_started is not None:
            return duration(now - t.attempt_started)
        return "-"


def _shown(t: TaskView) -> str:
    return "RETRYING" if t.retrying else t.phase
