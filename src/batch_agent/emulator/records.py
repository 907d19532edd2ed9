"""What the emulator remembers per task and per report, and the read-only view it hands out.

Plain data: no locks, no I/O. `ServerTask` is mutated only under the emulator's lock, by
`state.JobState` and its helper `dispatch` (send bookkeeping); `TaskView` is a frozen copy safe to
hand to other threads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from batch_agent.emulator import tasknames

TERMINAL = frozenset({"SUCCEEDED", "FAILED"})


@dataclass(frozen=True)
class Report:
    """A valid report as received: when (time.monotonic()), from which VM, and its JSON body."""

    time: float
    vm: int
    body: dict[str, Any]


@dataclass
class ServerTask:
    """One task: the AgentTask JSON we send (verbatim for `add_task`) and what was reported.

    `name` is the current attempt's (`AgentTask.task`; a retry gets a new one), `resource` the
    Task's API name, the same for every attempt (for `add_task`, the name it was given).
    `state` is what the agent last reported for the current attempt (None before its first
    report); `phase` adds the server's own states (PENDING, ASSIGNED, UNEXECUTED).
    """

    name: str
    resource: str
    sent: dict[str, Any]
    in_plan: bool
    index: int
    vm: int | None = None
    intended: str | None = None  # CANCELLED / DELETED once decided, overriding `sent`
    state: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    runnable: int = 0
    deleted_sends: int = 0
    dropped: bool = False
    withdrawn: bool = False  # cancelled or deleted before it was ever assigned
    attempt: int = 0  # BATCH_TASK_RETRY_ATTEMPT of the current attempt
    retrying: bool = False  # this attempt FAILED; a new one starts once the agent forgot it
    exit_code: int | None = None
    started: float | None = None  # time.time() the first attempt was seen running
    attempt_started: float | None = None
    ended: float | None = None

    @property
    def is_finished(self) -> bool:
        """Reported SUCCEEDED/FAILED for good, or deleted: it no longer runs for the job."""
        if self.retrying:
            return False
        return self.state in TERMINAL or self.withdrawn or self.intended == "DELETED"

    @property
    def phase(self) -> str:
        if self.state is not None:
            return self.state
        if self.withdrawn:
            return "UNEXECUTED"
        return "ASSIGNED" if self.vm is not None else "PENDING"

    @property
    def group(self) -> str:
        """Which task group it is in (tasks of one group share barriers); an unknown form of
        name is a group of its own."""
        parts = tasknames.parse(self.name)
        return self.name if parts is None else f"{parts.job}/{parts.group}"

    def view(self) -> TaskView:
        """A frozen copy of what a watcher needs."""
        return TaskView(
            index=self.index,
            name=self.name,
            phase=self.phase,
            attempt=self.attempt,
            runnable=self.runnable,
            vm=self.vm,
            exit_code=self.exit_code,
            started=self.started,
            attempt_started=self.attempt_started,
            ended=self.ended,
            retrying=self.retrying,
        )


@dataclass(frozen=True)
class TaskView:
    """A task as the emulator sees it now (see `Emulator.task_views`); times are time.time().

    `phase`: PENDING, ASSIGNED, RUNNING, SUCCEEDED, FAILED or UNEXECUTED; `attempt` is the
    current attempt's BATCH_TASK_RETRY_ATTEMPT; `retrying`: FAILED, another attempt follows.
    """

    index: int
    name: str
    phase: str
    attempt: int
    runnable: int
    vm: int | None
    exit_code: int | None
    started: float | None
    attempt_started: float | None
    ended: float | None
    retrying: bool
