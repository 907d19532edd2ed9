"""When to send an early report: once the burst of task changes that asked for it pauses.

A pure rule, no clock of its own; the reporter feeds it `time.monotonic()` times.
"""

from __future__ import annotations

from datetime import timedelta

# An early report waits until no change came for SETTLE, at most SETTLE_MAX: a task's end (its
# runnable exits, then SUCCEEDED) and a start (RUNNING, its runnable started) are bursts of
# changes a few ms apart, and each report costs both sides ~2-3 ms of CPU.
SETTLE = timedelta(milliseconds=10)
SETTLE_MAX = timedelta(milliseconds=40)


class Burst:
    """When the task changes seen since the last report have paused: `changed()` at each,
    `wait(now)` the seconds still to wait (0: report now). Times are `time.monotonic()`."""

    def __init__(self, settle: timedelta = SETTLE, longest: timedelta = SETTLE_MAX) -> None:
        self._settle = settle.total_seconds()
        self._longest = longest.total_seconds()
        self._first: float | None = None  # the burst's first change
        self._last = float("-inf")

    def changed(self, now: float) -> None:
        if self._first is None:
            self._first = now
        self._last = now

    def wait(self, now: float) -> float:
        """Until SETTLE after the last change, but no later than SETTLE_MAX after the first."""
        if self._first is None:
            return 0.0
        return max(min(self._last + self._settle, self._first + self._longest) - now, 0.0)

    def reported(self) -> None:
        """The changes so far go in the report being made: a new burst starts with the next."""
        self._first = None
