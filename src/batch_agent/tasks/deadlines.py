"""Deadlines: watches a running task's time limits and says when the first one is reached.

The arithmetic is `limits`' (a task's run time is the sum of its runnables' run times); this
is the clock: one coroutine per task that sleeps until the nearest limit, wakes when a
runnable starts or ends (the rate of the task's clock changes), and sets `reached` with the
cause. It stops nothing itself: the run does, so that every stop goes the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime, timedelta

from batch_agent.tasks import limits
from batch_agent.tasks.plan import RunnablePlan, TaskPlan
from batch_agent.tasks.record import TaskRecord


class Deadlines:
    def __init__(self, plan: TaskPlan, record: TaskRecord, now: Callable[[], datetime]) -> None:
        self._plan = plan
        self._record = record
        self._now = now
        self._running: dict[int, RunnablePlan] = {}
        # Without any limit nothing is watched: a runnable's start or end wakes nobody.
        self._limited = plan.max_run_duration is not None or any(
            r.timeout is not None for r in plan.runnables
        )
        self._changed = asyncio.Event()
        self.reached = asyncio.Event()
        self.cause: str | None = None
        self.task_wide = False  # maxRunDuration (nothing more may run), not a runnable timeout

    def started(self, runnable: RunnablePlan) -> None:
        self._running[runnable.index] = runnable
        if self._limited:
            self._changed.set()

    def ended(self, runnable: RunnablePlan) -> None:
        self._running.pop(runnable.index, None)
        if self._limited:
            self._changed.set()

    def expired(self) -> bool:
        """maxRunDuration is used up (then not even alwaysRun runnables start)."""
        return limits.until_max_run(self._plan, self._record.runnables, self._now()) == timedelta(0)

    def rearm(self) -> None:
        """After a runnable's timeout was dealt with: watch the rest (alwaysRun runnables)."""
        self.reached.clear()
        self.cause, self.task_wide = None, False

    async def watch(self) -> None:
        """Until cancelled: set `reached` when the first limit is reached, then wait for rearm."""
        while True:
            if self.reached.is_set():
                await self._next_change()
                continue
            left, cause, task_wide = self._first()
            if left is not None and left <= timedelta(0):
                self.cause, self.task_wide = cause, task_wide
                self.reached.set()
                continue
            await self._next_change(left)

    def _first(self) -> tuple[timedelta | None, str | None, bool]:
        now = self._now()
        task_left = limits.until_max_run(self._plan, self._record.runnables, now)
        runnable_left, runnable_cause = limits.first_timeout(
            self._running, self._record.runnables, now
        )
        if task_left is not None and (runnable_left is None or task_left <= runnable_left):
            return task_left, limits.max_run_cause(self._plan), True
        return runnable_left, runnable_cause, False

    async def _next_change(self, timeout: timedelta | None = None) -> None:
        self._changed.clear()
        seconds = timeout.total_seconds() if timeout is not None else None
        # Not asyncio.wait_for: on Python 3.11 it swallows a cancel that comes as the event is
        # set (a runnable ends, then the run cancels `watch`), and the run then waits forever.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._changed.wait()
