"""TaskRun: one task's life, from ASSIGNED to SUCCEEDED or FAILED.

Phases, in order: prestart hooks -> ASSIGNED -> RUNNING -> the runnables (order, alwaysRun,
ignoreExitStatus, background, barriers, timeouts, cancellation) -> poststop hooks -> the
terminal state. Which runnable comes next and what its result means are `sequence`'s pure
rules, the time limits `deadlines`', the background runnables' bookkeeping `background`'s.
Each runnable runs through the driver of its kind (`driver.Driver`), started or recovered and
its end recorded by `runnables`; the run never asks how. State changes go through the task
set's `transition` (the `Lifecycle` given to the run); the run knows nothing of HTTP or of the
store's form. After an agent restart the same code resumes from the record: finished
runnables are not run again, started ones are recovered from their handle.

What is saved when, here and in `runnables` (each save is one commit, fsynced only for the
terminal state: see `TaskSet.transition`; the in-process tests pin these down):
- a state change or an event: at once, before it is reported (`transition`, `Runnables.event`);
- a runnable's intent to start: before a container starts; while a script starts (its files
  made, and its waiter forked, while the runnable before it ran: its start is the waiter's go,
  see script.py; a waiter whose agent dies before its go runs nothing). A crash never leads
  to a second start: an agent that resumes a task looks for the first runnable its record
  does not hold (`Driver.find`: a script's waiter or status file) before it starts it;
- ASSIGNED -> RUNNING: in one save with the first runnable's intent (on its own only when no
  intent comes first: a barrier first, or nothing starts). A save writes the whole record, so
  after a crash the disk holds both or neither. Neither: the task is ASSIGNED with no runnable;
  the next agent finds the first runnable if it started (and saves RUNNING then), else starts
  it. Both: the next agent recovers that runnable from its handle and never starts it again,
  and the RUNNING event, on disk with the record, is reported then; the early report is asked
  for only after the save, so the server never hears of RUNNING before the disk has it. A save
  the state dir refuses leaves both in memory, written together later;
- a container's start and end: at once (it is found by labels, and removed after it ends);
- a script's pid and exit code: with the next save; until then the waiter's command line and
  its status file let a restarted agent find both;
- output offsets: by the agent's shipping tick after a round that moved them (<= every 0.5 s).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from batch_agent.tasks import events, limits, scope
from batch_agent.tasks.background import BackgroundRunnables
from batch_agent.tasks.barrier import Barriers
from batch_agent.tasks.deadlines import Deadlines
from batch_agent.tasks.driver import Driver, stop_within
from batch_agent.tasks.events import ExitCode
from batch_agent.tasks.execution import Execution, ExitResult
from batch_agent.tasks.hooks import Hook
from batch_agent.tasks.lifecycle import Lifecycle
from batch_agent.tasks.plan import BarrierSpec, RunnablePlan, TaskPlan
from batch_agent.tasks.record import TaskRecord
from batch_agent.tasks.runnables import Runnables
from batch_agent.tasks.sequence import lost_cause, next_runnable, task_code, task_outcome
from batch_agent.tasks.shipping import LiveOutput, Shipping
from batch_agent.tasks.taskoutput import Sink, TaskOutput
from batch_agent.wire import TaskState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSettings:
    output: Sink  # where runnables' output lines go
    shipping: Shipping = field(default_factory=Shipping)  # the agent's one shipping tick
    kill_grace: timedelta = timedelta(seconds=10)
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))


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
        resumed: bool = False,
    ) -> None:
        self.record = record
        self.plan = plan
        self._lifecycle = lifecycle
        self._hooks = hooks
        self._settings = settings
        self._cancelled = asyncio.Event()
        self._barriers = Barriers()
        self._deadlines = Deadlines(plan, record, settings.now)
        task_output = TaskOutput(folder, f"task {plan.task_index}", settings.output)
        self._output = LiveOutput(record, task_output, lifecycle, settings.now)
        self._runnables = Runnables(
            record,
            lifecycle=lifecycle,
            drivers=drivers,
            deadlines=self._deadlines,
            output=self._output,
            now=settings.now,
            resumed=resumed,
        )
        self._background = BackgroundRunnables(
            record,
            self._deadlines,
            kill_grace=settings.kill_grace,
            now=settings.now,
            finished=self._runnables.finished,
        )
        self._preempted = False

    # -- commands from the task set -----------------------------------------------------------

    def cancel(self) -> None:
        """The server said CANCELLED (or DELETED): stop everything of the task, then FAILED."""
        self._cancelled.set()

    def preempted(self) -> None:
        """The VM got its preemption notice: failures from now on are the preemption's."""
        self._preempted = True

    def update_barrier(self, reached: int) -> None:
        self._barriers.update(reached)

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
        if self.plan.runnables:  # its files while the hooks run: the first comes first
            self._runnables.ahead(self.plan.runnables[0])
        for hook in self._hooks:
            problem = await hook.prestart()
            if problem is not None:
                # ASSIGNED (or RUNNING, on resume) -> FAILED: the task cannot run here
                await self._poststop()
                await self._transition_to_failed(ExitResult(ExitCode.AGENT_FAILURE, reason=problem))
                return
        self._settings.shipping.follow(self._output)
        watch = asyncio.create_task(self._deadlines.watch())
        try:
            outcome = await self._run_sequence()
        finally:
            self._settings.shipping.unfollow(self._output)
            await self._runnables.dismiss_ahead()
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
        await self._enter_running()  # when no runnable started, RUNNING comes before the end
        await self._output.ship(final=True)
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
        position = 0
        while True:
            expired = self._deadlines.expired()
            if expired and failure is None:
                failure = ExitResult(ExitCode.TIMED_OUT, reason=limits.max_run_cause(self.plan))
            runnable = next_runnable(
                self.plan.runnables, position, failed=failure is not None, expired=expired
            )
            if runnable is None or self._cancelled.is_set():
                break
            position = runnable.index
            if isinstance(runnable.action, BarrierSpec):
                await self._wait_barrier(runnable)
            else:
                # The next, while this one starts and runs; under systemd the two after it too,
                # so that a waiter joins its task's scope beside one still waiting for its go
                # even when this one is as short as `true`, and that go need not wait for the
                # fork under way (script_driver.Members). Not elsewhere: there it only costs
                # (0.18 ms a runnable of `true` for a second one, measured).
                depth = 3 if scope.in_use() else 1
                for following in self.plan.runnables[position : position + depth]:
                    self._runnables.ahead(following, hooks_done=True)
                started = await self._runnables.start(runnable)
                if isinstance(started, ExitResult):
                    failure = failure or started
                    continue
                if runnable.background:
                    self._background.add(runnable, started)
                    continue
                outcome = await self._wait(runnable, started)
                failure = failure or outcome
            limit = await self._limit_reached()  # always: it stops what must stop
            failure = failure or limit
        on_its_own = self._background.failure()  # before we stop the rest
        stopped = await self._background.stop()
        cancelled = self._cancelled.is_set()
        return task_outcome(failure, on_its_own, cancelled=cancelled, stopped=stopped)

    async def _limit_reached(self) -> ExitResult | None:
        """If a time limit was reached: the first one exceeded fails the task and all of its
        runnables (Batch's "set timeouts"), so the background ones are stopped too; what is
        left to run are alwaysRun runnables, unless maxRunDuration was the limit."""
        if not self._deadlines.reached.is_set():
            return None
        cause = self._deadlines.cause
        log.info("task %s: time limit reached (%s)", self.record.task_id, cause)
        await self._background.stop()
        self._deadlines.rearm()
        return ExitResult(ExitCode.TIMED_OUT, reason=cause)

    async def _wait(self, runnable: RunnablePlan, execution: Execution) -> ExitResult | None:
        """Wait for a foreground runnable, enforcing the time limits and cancel. Returns the
        failure it caused, if any."""
        waiting = asyncio.ensure_future(execution.wait())
        interrupts = [
            asyncio.ensure_future(self._cancelled.wait()),
            asyncio.ensure_future(self._deadlines.reached.wait()),
        ]
        try:
            await asyncio.wait({waiting, *interrupts}, return_when="FIRST_COMPLETED")
        finally:
            for interrupt in interrupts:
                interrupt.cancel()
        if not waiting.done():
            stopped = await stop_within(execution, self._settings.kill_grace)
            if not stopped:
                waiting.cancel()
                return ExitResult(ExitCode.NOT_CANCELLABLE, reason=events.NOT_CANCELLABLE)
            result = await waiting
            await self._runnables.finished(runnable, result)
            if self._cancelled.is_set():
                return ExitResult(task_code(result), reason=events.CANCELLED)
            return ExitResult(ExitCode.TIMED_OUT, reason=self._deadlines.cause)
        result = waiting.result()
        await self._runnables.finished(runnable, result)
        if result.ok or runnable.ignore_exit_status:
            return None
        return ExitResult(task_code(result), reason=lost_cause(result))

    async def _wait_barrier(self, runnable: RunnablePlan) -> None:
        """Report `runnable = k` and wait for `reachedBarrier >= k`, cancel or the deadline."""
        k = runnable.index
        await self._enter_running()
        self.record.runnable = max(self.record.runnable, k)
        assert isinstance(runnable.action, BarrierSpec)
        if runnable.display_name:
            await self._runnables.event(events.barrier_reached(runnable.display_name))
        else:
            await self._lifecycle.persist(self.record)
        self._lifecycle.notify()
        await self._barriers.wait(k, interrupts=(self._cancelled, self._deadlines.reached))

    async def _enter_running(self) -> None:
        """ASSIGNED -> RUNNING on its own save, when no runnable's intent carried it."""
        if self.record.state is TaskState.ASSIGNED:
            # ASSIGNED -> RUNNING: the first runnable is a barrier, or none started
            await self._lifecycle.transition(self.record, TaskState.RUNNING)
