"""Every report's request, and a new agent's first report, sent while the agent still starts.

On a VM's first boot the agent's state dir is new, and its first report (AGENT_STARTING, no
task) needs only the metadata server's answers, the boot time and the Batch API client: none of
the event loop, the store, Cloud Logging or the task side, which the agent imports after the
Google client stack (about a third of its start-up). `FirstReport` sends that report from a
thread as soon as the client stack is imported (cli.py) while the main thread imports the rest,
so the server hears of the VM, and answers with its first tasks, that much sooner. The report
loop takes its answer as its first cycle's (reporter.py): the log line, the figures, retries,
the server's intervals and the tasks the answer brings are as for any report.

An agent whose state dir existed does not use it: its first report must carry the tasks its
store holds. Neither does one whose token is not the metadata server's (Application Default
Credentials load their key-file machinery on first use: imports best kept off this thread).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from batch_agent.clients import control_plane
from batch_agent.config import Config
from batch_agent.osrelease import read_os_release
from batch_agent.vm import EarlyAnswers, Machine, read_machine
from batch_agent.wire import (
    AgentInfo,
    AgentState,
    AgentTimingInfo,
    ReportAgentStateRequest,
    ReportAgentStateResponse,
)

if TYPE_CHECKING:  # the task side is imported after the first report
    from batch_agent.tasks.taskset import TaskSet


def report_request(
    state: AgentState,
    machine: Machine,
    *,
    started: datetime,
    config: Config,
    tasks: TaskSet | None = None,
) -> ReportAgentStateRequest:
    """The request of a report (every report's, the first's too) from this agent, started at
    `started`, on `machine`, with what `tasks` hold (None: none yet)."""
    job_id, group_id = tasks.job_and_group() if tasks is not None else (None, None)
    return ReportAgentStateRequest(
        agent_info=AgentInfo(
            state=state,
            report_time=datetime.now(UTC),
            job_id=job_id,
            task_group_id=group_id,
            tasks=tasks.snapshot() if tasks is not None else [],
        ),
        agent_timing_info=AgentTimingInfo(
            boot_time=machine.boot_time,
            agent_startup_time=started,
            script_startup_time=config.script_startup_time,
        ),
        metadata=machine.metadata,
    )


class Sent:
    """The first report, on its way: the machine it describes, its request as sent, its
    `answer` (the exception: a ControlPlaneError) and, once that is there, how long the call
    took (`seconds`)."""

    def __init__(self, machine: Machine, request: dict[str, Any]) -> None:
        self.machine = machine
        self.request = request
        self.answer: Future[ReportAgentStateResponse] = Future()
        self.seconds = 0.0


class FirstReport:
    """The first report of an agent started at `started`, sent at once from a daemon thread
    through `control` (which the report loop then keeps). `sent` resolves when it went, None
    when it did not: the metadata server's early answers were unusable (or anything else
    failed before the call), and the loop's own start-up reads them again and says why."""

    def __init__(
        self, config: Config, early: EarlyAnswers, *, started: datetime, once: bool
    ) -> None:
        self.control = control_plane(config, early)
        self.started = started
        self.sent: Future[Sent | None] = Future()
        threading.Thread(
            target=self._send, args=(config, early, once), name="first-report", daemon=True
        ).start()

    def _send(self, config: Config, early: EarlyAnswers, once: bool) -> None:
        try:
            machine = read_machine(
                early,
                version=config.reported_version,
                os_release=read_os_release(config.os_release),
                proc_stat=config.proc_stat,
            )
            request = report_request(
                AgentState.AGENT_STARTING, machine, started=self.started, config=config
            ).to_wire()
        except BaseException:
            self.sent.set_result(None)
            return
        sent = Sent(machine, request)
        self.sent.set_result(sent)
        deadline = config.unreachable_timeout if once else None  # `--once`: its budget bounds it
        began = time.monotonic()
        try:
            response = self.control.report(machine.identity.parent, request, deadline=deadline)
        except BaseException as error:  # a ControlPlaneError: report() raises nothing else
            failed: BaseException | None = error
        else:
            failed = None
        sent.seconds = time.monotonic() - began  # before the answer: its reader reads this
        if failed is not None:
            sent.answer.set_exception(failed)
        else:
            sent.answer.set_result(response)
