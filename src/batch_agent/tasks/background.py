"""The background runnables of one task's run: started, waited for aside, stopped together.

The run adds each background runnable once started; when one ends on its own its end time is
set and its run time stops counting (`Deadlines.ended`). `failure` names the first that failed
on its own (exit status not ignored): it fails the task only when nothing else did, our choice
(Batch does not say). `stop` stops every one still running (SIGTERM, grace, SIGKILL) and hands
each result to `finished` (`Runnables.finished`), which records it. Saves nothing itself and
decides no state: the run does both.
"""

from __future__ import annotations

import asyncio
from asyncio import Future
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from batch_agent.tasks.deadlines import Deadlines
from batch_agent.tasks.driver import stop_within
from batch_agent.tasks.execution import Execution, ExitResult
from batch_agent.tasks.plan import RunnablePlan
from batch_agent.tasks.record import TaskRecord
from batch_agent.tasks.sequence import task_code
from batch_agent.wire import format_time

RecordEnd = Callable[[RunnablePlan, ExitResult], Awaitable[None]]


class BackgroundRunnables:
    def __init__(
        self,
        record: TaskRecord,
        deadlines: Deadlines,
        *,
        kill_grace: timedelta,
        now: Callable[[], datetime],
        finished: RecordEnd,
    ) -> None:
        self._record = record
        self._deadlines = deadlines
        self._kill_grace = kill_grace
        self._now = now
        self._finished = finished  # records a runnable's end (output, event, save)
        self._running: list[tuple[RunnablePlan, Future[ExitResult], Execution]] = []

    def add(self, runnable: RunnablePlan, execution: Execution) -> None:
        """Wait for a started background runnable; its run time stops counting when it ends."""
        done = asyncio.ensure_future(execution.wait())

        def ended(_: object) -> None:
            record = self._record.runnables[runnable.index]
            record.ended_at = record.ended_at or format_time(self._now())
            self._deadlines.ended(runnable)

        done.add_done_callback(ended)
        self._running.append((runnable, done, execution))

    def failure(self) -> ExitResult | None:
        """The first one, in start order, that already failed on its own with its exit status
        not ignored, as the task's result; None if none did."""
        return next(
            (
                ExitResult(task_code(done.result()))
                for runnable, done, _ in self._running
                if done.done() and not done.result().ok and not runnable.ignore_exit_status
            ),
            None,
        )

    async def stop(self) -> bool:
        """Stop every one still running, then record how each ended (in start order), and
        forget them all; False if one could not be stopped."""
        stops = (stop_within(execution, self._kill_grace) for _, _, execution in self._running)
        stopped = all(await asyncio.gather(*stops))
        for runnable, done, _ in self._running:
            await self._finished(runnable, await done)
        self._running.clear()
        return stopped
