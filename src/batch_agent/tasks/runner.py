"""TaskRun: one task's life, from ASSIGNED to SUCCEEDED or FAILED.

Phases, in order: prestart hooks -> ASSIGNED -> RUNNING -> the runnables (order, alwaysRun,
ignoreExitStatus, background, barriers, timeouts, cancellation) -> poststop hooks -> the
terminal state. Each runnable runs through the driver of its kind (`driver.Driver`); the run
never asks how. State changes go through the task set's `transition` (the `Lifecycle` given
to the run); the run knows nothing of HTTP or of the store's form. After an agent restart the
same code resumes from the record: finished runnables are not run again, started ones are
recovered from their handle.

What is saved when (each `persist` is one fsync; the in-process tests pin these down):
- a state change or an event: at once, before it is reported (`transition`, `_event`);
- a runnable's intent to start: before it starts, so a crash never leads to a second start;
- a container's start and end: at once (it is found by labels, and removed after it ends);
- a script's pid and exit code: with the next save; until then the waiter's command line and
  its status file let a restarted agent find both;
- output offsets: by the shipping tick, when they moved.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from batch_agent.tasks import events
from batch_agent.tasks.driver import Driver, Finished
from batch_agent.tasks.events import ExitCode
from batch_agent.tasks.execution import EXIT_CODE_UNKNOWN, Execution, ExitResult
from batch_agent.tasks.hooks import Hook
from batch_agent.tasks.plan import BarrierSpec, RunnablePlan, TaskPlan
from batch_agent.tasks.record import RunnableRecord, TaskRecord
from batch_agent.tasks.taskoutput import Sink, TaskOutput
from batch_agent.wire import TaskState, format_duration, parse_time

log = logging.getLogger(__name__)

SHIP_EVERY = 0.5  # seconds between output shipments while a runnable runs
STOP_SLACK = timedelta(seconds=10)  # beyond the grace, how long a stop may take at most


class Lifecycle(Protocol):
    """What a run needs from its task set."""

    async def transition(
        self,
        record: TaskRecord,
        new: TaskState,
        *,
        exit_code: int | None = None,
        cause: str | None = None,
    ) -> None:
        """The only way a task's state changes: edge check, event, persist, report early."""
        ...

    async def persist(self, record: TaskRecord) -> None:
        """Save the record (no state change); returns once it is on disk."""
        ...

    def notify(self) -> None:
        """Something worth reporting happened: report early."""
        ...


@dataclass(frozen=True)
class RunSettings:
    output: Sink  # where runnables' output lines go
    kill_grace: timedelta = timedelta(seconds=10)
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))


def next_runnable(
    runnables: tuple[RunnablePlan, ...], after: int, *, failed: bool, expired: bool
) -> RunnablePlan | None:
    """The next runnable to start after 1-based index `after`, or None when the task is done.

    After a failure only alwaysRun runnables start; once maxRunDuration expired nothing does.
    """
    if expired:
        return None
    for runnable in runnables[after:]:
        if failed and not runnable.always_run:
            continue
        return runnable
    return None


def task_code(result: ExitResult) -> int:
    """The task exit code for a runnable's result: 50000 when it has no code of its own."""
    if not result.started or result.exit_code == EXIT_CODE_UNKNOWN:
        return ExitCode.AGENT_FAILURE
    return result.exit_code


class TaskRun:
    def __init__(
        self,
        record: TaskRecord,
        plan: TaskPlan,
        *,
        lifecycle: Lifecycle,
        drivers: Mapping[type, Driver],
        hooks: Sequence[Hook],
        folder: Path,
        settings: RunSettings,
    ) -> None:
        self.record = record
        self.plan = plan
        self._lifecycle = lifecycle
        self._drivers = drivers  # by the type of a runnable's action
        self._hooks = hooks
        self._settings = settings
        self._cancelled = asyncio.Event()
        self._barrier_moved = asyncio.Event()
        self._reached_barrier = 0
        self._task_output = TaskOutput(folder, f"task {plan.task_index}", settings.output)
        self._preempted = False

    # -- commands from the task set -----------------------------------------------------------

    def cancel(self) -> None:
        """The server said CANCELLED (or DELETED): stop everything of the task, then FAILED."""
        self._cancelled.set()

    def preempted(self) -> None:
        """The VM got its preemption notice: failures from now on are the preemption's."""
        self._preempted = True

    def update_barrier(self, reached: int) -> None:
        if reached > self._reached_barrier:
            self._reached_barrier = reached
            self._barrier_moved.set()

    # -- the run ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Drive the task to a terminal state. Cancelling this coroutine (agent stop) leaves
        processes running and the record as persisted, for the next agent to resume."""
        if self.record.state.is_terminal:
            return
        if self._cancelled.is_set() and self.record.state is TaskState.ASSIGNED:
            # ASSIGNED -> FAILED: cancelled before anything started
            await self._transition_to_failed(
                ExitResult(ExitCode.AGENT_FAILURE, reason=events.CANCELLED_BEFORE_START)
            )
            return
        for hook in self._hooks:
            problem = await hook.prestart()
            if problem is not None:
                # ASSIGNED (or RUNNING, on resume) -> FAILED: the task cannot run here
                await self._poststop()
                await self._transition_to_failed(ExitResult(ExitCode.AGENT_FAILURE, reason=problem))
                return
        if self.record.state is TaskState.ASSIGNED:
            await self._lifecycle.transition(self.record, TaskState.RUNNING)
        shipping = asyncio.create_task(self._ship_continuously())
        try:
            outcome = await self._run_sequence()
        finally:
            shipping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await shipping
        await self._ship(final=True)
        await self._poststop()
        if not outcome.ok and self._preempted:
            # The VM is going away: the kills that follow are not the user's failure.
            outcome = ExitResult(ExitCode.PREEMPTED, reason=events.PREEMPTED)
        if outcome.ok:
            await self._lifecycle.transition(self.record, TaskState.SUCCEEDED, exit_code=0)
        else:
            await self._transition_to_failed(outcome)

    async def _transition_to_failed(self, outcome: ExitResult) -> None:
        await self._lifecycle.transition(
            self.record, TaskState.FAILED, exit_code=outcome.exit_code, cause=outcome.reason
        )

    async def _poststop(self) -> None:
        for hook in reversed(self._hooks):
            await hook.poststop()

    async def _run_sequence(self) -> ExitResult:
        """Run runnables in order; the task's outcome (`reason`: why, for reserved codes)."""
        failure: ExitResult | None = None
        background: list[tuple[RunnablePlan, asyncio.Future[ExitResult], Execution]] = []
        position = 0
        while True:
            expired = self._remaining() == timedelta(0)
            if expired and failure is None:
                failure = ExitResult(ExitCode.TIMED_OUT, reason=self._max_run_cause())
            runnable = next_runnable(
                self.plan.runnables, position, failed=failure is not None, expired=expired
            )
            if runnable is None or self._cancelled.is_set():
                break
            position = runnable.index
            if isinstance(runnable.action, BarrierSpec):
                await self._wait_barrier(runnable)
                continue
            started = await self._start(runnable)
            if isinstance(started, ExitResult):
                failure = failure or started
                continue
            if runnable.background:
                background.append((runnable, asyncio.ensure_future(started.wait()), started))
                continue
            outcome = await self._wait(runnable, started)
            if outcome is not None and failure is None:
                failure = outcome
        # A background runnable that failed on its own, before we stop the rest, fails the task
        # only when nothing else did (our choice; Batch does not say).
        background_failure = next(
            (
                ExitResult(task_code(done.result()))
                for runnable, done, _ in background
                if done.done() and not done.result().ok and not runnable.ignore_exit_status
            ),
            None,
        )
        stopped = await self._stop_all([execution for _, _, execution in background])
        for runnable, done, _ in background:
            await self._finished(runnable, await done)
        if self._cancelled.is_set():
            if not stopped:
                return ExitResult(ExitCode.NOT_CANCELLABLE, reason=events.NOT_CANCELLABLE)
            code = failure.exit_code if failure else ExitCode.AGENT_FAILURE
            return ExitResult(code, reason=events.CANCELLED)
        return failure or background_failure or ExitResult(0)

    async def _wait(self, runnable: RunnablePlan, execution: Execution) -> ExitResult | None:
        """Wait for a foreground runnable, enforcing its timeout, maxRunDuration and cancel.
        Returns the failure it caused, if any."""
        limit, cause = self._limit(runnable)
        waiting = asyncio.ensure_future(execution.wait())
        cancelled = asyncio.ensure_future(self._cancelled.wait())
        timeout = limit.total_seconds() if limit is not None else None
        try:
            await asyncio.wait({waiting, cancelled}, timeout=timeout, return_when="FIRST_COMPLETED")
        finally:
            cancelled.cancel()
        if not waiting.done():
            stopped = await self._stop(execution)
            if not stopped:
                waiting.cancel()
                return ExitResult(ExitCode.NOT_CANCELLABLE, reason=events.NOT_CANCELLABLE)
            result = await waiting
            await self._finished(runnable, result)
            if self._cancelled.is_set():
                return ExitResult(task_code(result), reason=events.CANCELLED)
            log.info("task %s: %s timed out (%s)", self.record.task_id, runnable.label, cause)
            return ExitResult(ExitCode.TIMED_OUT, reason=cause)
        result = waiting.result()
        await self._finished(runnable, result)
        if result.ok or runnable.ignore_exit_status:
            return None
        return ExitResult(task_code(result), reason=_lost(result))

    async def _start(self, runnable: RunnablePlan) -> Execution | ExitResult:
        """Start (or, after an agent restart, recover) one runnable through its driver; an
        ExitResult (with the task's code and the event's cause) when it could not start."""
        k = runnable.index
        driver = self._drivers[type(runnable.action)]
        known = self.record.runnables.get(k)
        if known is not None:
            log.info("task %s: reattaching to %s", self.record.task_id, runnable.label)
            if known.exit_code is not None:  # ended and recorded before a restart
                return Finished(ExitResult(known.exit_code))
            found = await driver.recover(runnable, known.handle())
            if isinstance(found, ExitResult):
                return ExitResult(task_code(found), reason=found.reason)
            return found
        prepared = driver.prepare(runnable)
        if isinstance(prepared, ExitResult):
            return self._cannot_start(k, prepared)
        # Persist the intent first: a crash after the start must never lead to a second start.
        self.record.runnables[k] = RunnableRecord()
        self.record.runnables[k].adopt(prepared.handle)
        self.record.runnable = max(self.record.runnable, k)
        await self._lifecycle.persist(self.record)
        started = await prepared.start()
        if isinstance(started, ExitResult):
            self.record.runnables[k].exit_code = task_code(started)
            await self._lifecycle.persist(self.record)
            return self._cannot_start(k, started)
        self.record.runnables[k].adopt(started.handle)  # a script's pid: saved with the next save
        if runnable.display_name:
            await self._event(events.runnable_started(runnable.display_name))
        elif started.handle.container:
            await self._lifecycle.persist(self.record)
        self._lifecycle.notify()
        log.info("task %s: started %s", self.record.task_id, runnable.label)
        return started.execution

    def _cannot_start(self, k: int, result: ExitResult) -> ExitResult:
        code = task_code(result)
        return ExitResult(code, reason=events.cannot_start(k, result.reason or f"exit code {code}"))

    async def _finished(self, runnable: RunnablePlan, result: ExitResult) -> None:
        record = self.record.runnables.setdefault(runnable.index, RunnableRecord())
        if record.exit_code is not None:
            return  # recorded before an agent restart
        record.exit_code = task_code(result)
        await self._ship(final=True, only=runnable.index)
        if runnable.display_name:
            await self._event(events.runnable_finished(runnable.display_name, record.exit_code))
        elif record.container:
            await self._lifecycle.persist(self.record)  # the container is removed after this
        self._lifecycle.notify()
        log.info(
            "task %s: %s exited %d%s",
            self.record.task_id,
            runnable.label,
            result.exit_code,
            f" ({result.reason})" if result.reason else "",
        )

    async def _wait_barrier(self, runnable: RunnablePlan) -> None:
        """Report `runnable = k` and wait for `reachedBarrier >= k`, cancel or the deadline."""
        k = runnable.index
        self.record.runnable = max(self.record.runnable, k)
        assert isinstance(runnable.action, BarrierSpec)
        if runnable.display_name:
            await self._event(events.barrier_reached(runnable.display_name))
        else:
            await self._lifecycle.persist(self.record)
        self._lifecycle.notify()
        while self._reached_barrier < k and not self._cancelled.is_set():
            remaining = self._remaining()
            if remaining == timedelta(0):
                return
            self._barrier_moved.clear()
            waits = [
                asyncio.ensure_future(self._barrier_moved.wait()),
                asyncio.ensure_future(self._cancelled.wait()),
            ]
            timeout = remaining.total_seconds() if remaining is not None else None
            try:
                await asyncio.wait(waits, timeout=timeout, return_when="FIRST_COMPLETED")
            finally:
                for w in waits:
                    w.cancel()

    async def _stop(self, execution: Execution) -> bool:
        """Stop one execution; False if it could not be stopped. The executions bound their
        own wait after SIGKILL; STOP_SLACK only catches a stop that hangs altogether (an engine
        that never answers)."""
        grace = self._settings.kill_grace
        try:
            return await asyncio.wait_for(
                execution.stop(grace), (grace + 2 * STOP_SLACK).total_seconds()
            )
        except TimeoutError:
            return False

    async def _stop_all(self, executions: list[Execution]) -> bool:
        results = await asyncio.gather(*(self._stop(e) for e in executions))
        return all(results)

    # -- limits -------------------------------------------------------------------------------

    def _remaining(self) -> timedelta | None:
        """Time left of maxRunDuration, counted from the persisted start (restarts don't reset)."""
        if self.plan.max_run_duration is None or self.record.started_at is None:
            return None
        started = parse_time(self.record.started_at)
        left = started + self.plan.max_run_duration - self._settings.now()
        return max(left, timedelta(0))

    def _max_run_cause(self) -> str:
        assert self.plan.max_run_duration is not None
        return events.timed_out(
            events.max_run_duration(format_duration(self.plan.max_run_duration))
        )

    def _limit(self, runnable: RunnablePlan) -> tuple[timedelta | None, str | None]:
        remaining = self._remaining()
        if runnable.timeout is not None and (remaining is None or runnable.timeout < remaining):
            limit = runnable.timeout
            return limit, events.timed_out(
                events.runnable_timeout(runnable.index, format_duration(limit))
            )
        if remaining is not None:
            return remaining, self._max_run_cause()
        return None, None

    # -- output -------------------------------------------------------------------------------

    async def _ship_continuously(self) -> None:
        """Ship output while runnables run; persist the offsets so that an agent restarted
        after a crash goes on from there instead of shipping lines twice."""
        shipped = self._offsets()
        while True:
            await asyncio.sleep(SHIP_EVERY)
            await self._ship(final=False)
            offsets = self._offsets()
            if offsets != shipped:
                shipped = offsets
                await self._lifecycle.persist(self.record)

    def _offsets(self) -> list[tuple[int, int]]:
        return [(r.stdout_offset, r.stderr_offset) for r in self.record.runnables.values()]

    async def _ship(self, *, final: bool, only: int | None = None) -> None:
        """Ship new output lines (in a worker thread), then record the custom events they held."""
        runnables = self.record.runnables
        if only is not None:
            chosen = {only: runnables[only]}
        else:  # those still running; a finished one was shipped to its end already
            chosen = {k: r for k, r in runnables.items() if r.exit_code is None}
        custom = await asyncio.to_thread(self._task_output.ship, chosen, final=final)
        if custom:
            for description in custom:
                self.record.add_event(description, at=self._settings.now())
            await self._lifecycle.persist(self.record)
            self._lifecycle.notify()

    async def _event(self, description: str) -> None:
        """An informational event: saved at once, like a state change."""
        self.record.add_event(description, at=self._settings.now())
        await self._lifecycle.persist(self.record)


def _lost(result: ExitResult) -> str | None:
    """The cause to name when a runnable's own status was lost (its code becomes 50000)."""
    return result.reason if result.exit_code == EXIT_CODE_UNKNOWN else None
