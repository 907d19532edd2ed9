"""The report loop, a checklist: wait for the cadence -> report the snapshot -> apply the answer.

Drives control (the Batch API), vm (facts about this machine, the preemption watch), the
store and the task set, which wiring.py builds at start-up. Cadence: `defaultReportInterval`
between idle reports, an early report after a task changed, never two reports closer than
`minReportInterval` (counted from the previous answer), and an early report waits for a burst
of changes to pause (`Burst`: a task's end and the next one's start go in one report). A
failed call is retried with capped, jittered backoff (at least the server's Retry-After) while
tasks keep running; a call the server rejects for good (a 400, say) ends the loop (`Rejected`),
as does `--once` after `unreachable_timeout` without an answer (`Unreachable`). Its waits end
at a stop and ping systemd's watchdog (waits.py). Blocking calls run in worker threads; the
loop never blocks."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from batch_agent import clients, wiring
from batch_agent.burst import Burst
from batch_agent.cloudlog import AgentLog, CloudLogWriter, report_text
from batch_agent.config import Config
from batch_agent.control import Backoff, ControlPlaneError
from batch_agent.firstreport import FirstReport, Sent, report_request
from batch_agent.logformat import HeldRecords
from batch_agent.statedir import StateDirLock, claim_state_dir
from batch_agent.store import TaskStore
from batch_agent.tasks.assembly import preload_task_side
from batch_agent.tasks.masking import Masker
from batch_agent.tasks.taskset import TaskSet
from batch_agent.telemetry import Telemetry
from batch_agent.vm import EarlyAnswers, Machine, MetadataServer, watch_preemption
from batch_agent.waits import Waits
from batch_agent.wire import (
    AgentState,
    ReportAgentStateResponse,
    format_time,
)

log = logging.getLogger(__name__)

STOP_REPORT_DEADLINE = timedelta(seconds=5)  # the last report (AGENT_STOPPED) on the way out
LOGS_AT_STOP = timedelta(seconds=5)  # the exit's wait for output on its way to Cloud Logging
ABANDON_SLACK = timedelta(seconds=10)  # beyond the kill grace, for abandoned tasks to end


class Unreachable(Exception):
    """The control plane (or metadata server) could not be reached within the budget."""


class Rejected(Exception):
    """The control plane refused a report for good (not worth retrying): the loop ends."""


@dataclass
class Outcome:
    """How `run --once` ended."""

    failed: bool


class Reporter:
    def __init__(
        self,
        config: Config,
        *,
        stop: asyncio.Event,
        started: datetime,
        early: EarlyAnswers | None = None,
        state: tuple[StateDirLock, TaskStore] | None = None,
        first: FirstReport | None = None,
        held: HeldRecords | None = None,
    ) -> None:
        # `early`, `state`, `first`, `held`: the metadata's answers, the state dir's lock and
        # store, the first report under way and the log records so far, which the CLI set going
        # before its imports. The lock before anything: a second agent must touch nothing
        # (raises StateDirBusy). Held for the life of the process, never released.
        if state is None:
            state = claim_state_dir(config.state_dir), TaskStore(config.state_dir / "state.db")
        self._state_lock, self._store = state
        self._config = config
        self._stop = stop
        self._first = first
        self._held = held
        self._sent: Sent | None = None  # the first report, once start-up found it went
        self._control = first.control if first is not None else clients.control_plane(config, early)
        self._early = early
        self._secrets = clients.secrets_client(config)
        self._logging = clients.logging_client(config)
        self._log_writer: CloudLogWriter | None = None  # made at start-up
        self._writing: asyncio.Task[None] | None = None
        self._once = False  # run's: an agent that ends after its tasks loads nothing ahead
        # The agent's own log to Cloud Logging (batch_agent_logs), unless it is off (`tasks`:
        # task output only, as `batch-agent local` asks, which reads the agent's stderr).
        shipped = config.cloud_logging not in ("never", "tasks")
        self._agent_log = AgentLog() if shipped else None
        self._masker = Masker()  # every secret value a task resolves, masked from then on
        self._metadata = MetadataServer(config.metadata_host)
        self._tasks: TaskSet | None = None
        self._changed = asyncio.Event()  # a task changed: report early
        self._changed.set()  # the first report is due at once
        self._burst = Burst()  # early reports wait for the changes to pause
        self._urgent = asyncio.Event()  # report now, even before minReportInterval
        self._default_interval = config.default_report_interval
        self._min_interval = config.min_report_interval
        self._started = started
        self._last_success = self._started
        self._state = AgentState.AGENT_STARTING
        self._machine: Machine | None = None  # read in start-up
        self._last_report = float("-inf")  # loop time of the last answer (or failure)
        self._telemetry = Telemetry(config, self._store, started=self._started)
        self._waits = Waits(
            stop, ping_every=self._telemetry.watchdog_interval, ping=self._telemetry.watchdog
        )
        self._abandoned = False  # see abandon()

    def abandon(self) -> None:
        """The process that started this agent (`batch-agent local`) is gone: cancel every
        task, then stop. An agent on a VM never does this; its tasks outlive it."""
        log.warning("the process that started this agent is gone: cancelling its tasks")
        self._abandoned = True
        self._stop.set()

    async def run(self, *, once: bool = False) -> Outcome:
        """Report until stopped (or, with once, until every task received has ended and its
        final state was reported). Raises Unreachable or Rejected as the class docs say."""
        self._once = once
        if self._agent_log is not None:  # before masked_log: its filter goes on this one too
            logging.getLogger().addHandler(self._agent_log)
        with wiring.masked_log(self._masker):
            if self._held is not None:
                self._held.hand_over(self._agent_log)
            try:
                tasks = await self._start_up(once=once)
                while not self._stop.is_set():
                    if await self._wait_for_cadence():
                        break
                    all_done_before = tasks.all_done()
                    response = await self._report_with_retries(once=once)
                    if response is None:  # stopped while retrying
                        break
                    new = await tasks.apply(response.tasks)
                    if once and all_done_before and not new and tasks.all_done():
                        break
                return Outcome(failed=tasks.any_failed())
            finally:
                await self._shut_down()

    # -- the steps ----------------------------------------------------------------------------

    async def _start_up(self, *, once: bool) -> TaskSet:
        # One budget for the whole start-up, counted from the agent's start.
        give_up_at = self._started + self._config.unreachable_timeout if once else None
        if self._first is not None:  # its machine is ours; its answer, the first report's
            self._sent = await asyncio.wrap_future(self._first.sent)
            self._first = None
        try:
            self._machine = machine = (
                self._sent.machine
                if self._sent is not None
                else await wiring.wait_for_machine(
                    self._config,
                    self._metadata,
                    sleep=self._waits.sleep,
                    give_up_at=give_up_at,
                    early=self._early,
                )
            )
        except wiring.MetadataUnanswered as error:
            raise Unreachable(str(error)) from error
        recorded_boot = self._store.fact("boot_time")
        writer = self._log_writer = wiring.log_writer(
            self._config,
            machine.identity,
            client=self._logging,
            masker=self._masker,
            agent_log=self._agent_log,
            save=self._store.save_many,
            on_change=self._on_change,
        )
        settings = wiring.task_settings(
            self._config,
            machine.identity,
            secrets=self._secrets,
            masker=self._masker,
            telemetry=self._telemetry,
            drain_logs=writer.drain,
        )
        self._tasks = TaskSet(self._store, settings, on_change=self._on_change)
        writer.follow(self._tasks.all_records)  # writing starts after the first report's call
        rebooted = recorded_boot is not None and recorded_boot != format_time(machine.boot_time)
        await self._tasks.resume(rebooted=rebooted)
        await self._store.set_fact("boot_time", format_time(machine.boot_time))
        await self._telemetry.ready(self._tasks, healthy=self._healthy)
        return self._tasks

    def _after_first_call(self) -> None:
        """Once the first report's call is over (answered or not), start what it does not need
        and would compete with for the GIL: the Cloud Logging writer, the preemption watch (a
        long poll, in a thread) and, unless `--once`, the task side's import (in a thread).
        Nothing waits meanwhile: log records queue, output stays in its files, the first
        report carries the preemption notice the start-up read. Idempotent."""
        if self._writing is not None or self._log_writer is None:
            return
        self._writing = asyncio.create_task(self._log_writer.run())
        loop = asyncio.get_running_loop()

        def on_notice() -> None:  # called from the watch's thread
            loop.call_soon_threadsafe(self._on_preempted)

        watch_preemption(self._metadata, on_notice)
        if not self._once:  # an agent that stays: its first task should not wait for imports
            preload_task_side(loop)

    async def _wait_for_cadence(self) -> bool:
        """Wait until the next report is due; True if told to stop meanwhile."""
        if not self._changed.is_set() and not self._urgent.is_set():
            await self._waits.sleep(self._default_interval.total_seconds(), wake=self._changed)
        if not self._urgent.is_set() and await self._waits.sleep(self._until_min_interval()):
            return True
        while not self._urgent.is_set() and (left := self._burst.wait(time.monotonic())) > 0:
            if await self._waits.sleep(left):
                return True
        self._burst.reported()
        self._urgent.clear()
        self._changed.clear()
        return self._stop.is_set()

    def _on_change(self) -> None:
        """A task changed (called on the loop): report early, once the burst has paused."""
        self._burst.changed(time.monotonic())
        self._changed.set()

    async def _report_with_retries(self, *, once: bool) -> ReportAgentStateResponse | None:
        """One report, retried until it is answered; None if stopped meanwhile."""
        backoff: Backoff | None = None  # made at the first failure (it seeds a Random)
        last_success = self._last_success
        while True:
            deadline = None
            if once:  # no call may outlast the budget of --once
                budget = self._config.unreachable_timeout - (datetime.now(UTC) - last_success)
                deadline = max(budget, timedelta(seconds=1))
            try:
                response = await self._report_unless_stopped(self._state, deadline)
                if response is None:
                    return None
            except ControlPlaneError as error:
                if not error.retryable:
                    raise Rejected(str(error)) from error
                if once and datetime.now(UTC) - last_success > self._config.unreachable_timeout:
                    raise Unreachable(str(error)) from error
                backoff = backoff or Backoff()
                delay = max(backoff.next_delay(), error.retry_after or timedelta(0))
                log.warning("report failed (%s); retrying in %.1fs", error, delay.total_seconds())
                if await self._waits.sleep(delay.total_seconds()):
                    return None
                continue
            self._last_success = datetime.now(UTC)
            self._state = AgentState.AGENT_RUNNING
            return response

    async def _report_unless_stopped(
        self, state: AgentState, deadline: timedelta | None
    ) -> ReportAgentStateResponse | None:
        """A report, or None if told to stop first: the call in flight is then abandoned, so
        that a hanging server never holds up the exit (systemd waits 30 s, not a deadline)."""
        call = asyncio.ensure_future(self._report(state, deadline=deadline))
        await asyncio.wait({call, self._waits.stopped()}, return_when="FIRST_COMPLETED")
        if call.done():
            return call.result()
        self._control.abort()
        with contextlib.suppress(ControlPlaneError):
            await call
        return None

    async def _report(
        self, state: AgentState, *, deadline: timedelta | None = None
    ) -> ReportAgentStateResponse:
        assert self._machine is not None
        loop = asyncio.get_running_loop()
        sent, self._sent = self._sent, None
        call: asyncio.Future[ReportAgentStateResponse]
        if sent is not None:  # the first report, sent at start-up (firstreport.py)
            request, call = sent.request, asyncio.wrap_future(sent.answer)
        else:
            request = report_request(  # made once: for the call and the log
                state, self._machine, started=self._started, config=self._config, tasks=self._tasks
            ).to_wire()
            await self._store.settled()  # persist before report: every change it holds is on disk
            began = time.monotonic()
            # In a worker thread from now on: the log's text is made while the call waits.
            call = loop.run_in_executor(
                None,
                functools.partial(
                    self._control.report, self._machine.identity.parent, request, deadline=deadline
                ),
            )
        if self._agent_log is not None:
            self._agent_log.report(report_text(request))
        error: ControlPlaneError | None = None
        try:
            response = await call
        except ControlPlaneError as failed:
            error = failed
        finally:
            self._last_report = loop.time()  # from the answer: never two closer than the min
            self._after_first_call()
        await self._reported(sent.seconds if sent is not None else time.monotonic() - began, error)
        if error is not None:
            raise error
        if self._log_writer is not None:
            self._log_writer.use_batch_resource(response.use_batch_monitored_resource)
        if response.default_report_interval is not None:
            self._default_interval = max(response.default_report_interval, timedelta(0))
        if response.min_report_interval is not None:
            self._min_interval = max(response.min_report_interval, timedelta(0))
        return response

    async def _shut_down(self) -> None:
        """Leave tasks running (they outlive the agent), send AGENT_STOPPED once, close."""
        self._telemetry.stopping()
        if self._log_writer is not None and self._writing is not None:
            await self._log_writer.flush(LOGS_AT_STOP)
        if self._tasks is not None:
            if self._abandoned:
                await self._tasks.cancel_all(self._config.kill_grace + ABANDON_SLACK)
            await self._tasks.close()
        self._secrets.abort()  # a prestart's worker thread blocked on a secret would hold up exit
        if self._machine is not None and self._state is not AgentState.AGENT_STARTING:
            try:
                await asyncio.sleep(min(self._until_min_interval(), 2.0))
                # Bounded in the call: a worker thread still blocked would hold up the exit.
                await self._report(AgentState.AGENT_STOPPED, deadline=STOP_REPORT_DEADLINE)
            except ControlPlaneError as error:
                log.warning("last report (AGENT_STOPPED) failed: %s", error)
        await self._telemetry.stopped()
        if self._writing is not None:  # the offsets are on disk: the next agent goes on
            self._writing.cancel()
            await asyncio.gather(self._writing, return_exceptions=True)
        if self._agent_log is not None:
            logging.getLogger().removeHandler(self._agent_log)
        self._waits.close()
        self._logging.close()
        self._control.close()
        self._secrets.close()
        self._store.close()

    # -- helpers ------------------------------------------------------------------------------

    async def _reported(self, seconds: float, error: ControlPlaneError | None) -> None:
        """Tell systemd, the metrics and `batch-agent status` how the report went."""
        if error is None:
            self._last_success = datetime.now(UTC)
        await self._telemetry.reported(seconds, error, last_success=self._last_success)

    def _healthy(self) -> bool:
        """The last successful report is within 3 report intervals (called from a thread)."""
        return datetime.now(UTC) - self._last_success <= 3 * self._default_interval

    def _on_preempted(self) -> None:
        log.warning("preemption notice received: this VM is going away")
        if self._machine is not None:
            self._machine = self._machine.preempted()
        if self._tasks is not None:
            self._tasks.preempted()
        self._urgent.set()
        self._changed.set()

    def _until_min_interval(self) -> float:
        """Seconds to wait so that no report follows the last sooner than minReportInterval."""
        elapsed = asyncio.get_running_loop().time() - self._last_report
        return max(self._min_interval.total_seconds() - elapsed, 0.0)
