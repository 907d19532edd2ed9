"""What the agent knows about one task: the durable record the store keeps and reports show.

A TaskRecord is plain data with a JSON form. `TaskRecord.transition` checks the edge against
`EDGES` and appends the StatusEvent with the state, so a state and its event never disagree;
it is called only by the task set's `transition`, which also persists and asks for a report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from batch_agent.tasks import events
from batch_agent.tasks.execution import Handle
from batch_agent.wire import (
    AgentTaskInfo,
    StatusEvent,
    TaskExecution,
    TaskState,
    TaskStatus,
    format_time,
)

EDGES: dict[TaskState, frozenset[TaskState]] = {
    TaskState.ASSIGNED: frozenset({TaskState.RUNNING, TaskState.FAILED}),
    TaskState.RUNNING: frozenset({TaskState.SUCCEEDED, TaskState.FAILED}),
    TaskState.SUCCEEDED: frozenset(),
    TaskState.FAILED: frozenset(),
}
"""The task states an agent may move a task between (a failure may come before the start)."""


class IllegalTransition(ValueError):
    """A state change that `EDGES` does not allow: a bug in the agent, never the user's."""


@dataclass
class RunnableRecord:
    """One started runnable: enough to find it again after an agent restart.

    Its JSON form is kept until a field changes: a task's record is saved whole at each
    runnable's start, and encoding every ended runnable again each time made a task of N
    runnables cost O(N^2).
    """

    container: bool = False  # found again by its labels, not by pid
    pid: int | None = None
    start_time: int | None = None  # /proc/PID/stat field 22, tells a live pid from a recycled one
    exit_code: int | None = None
    stdout_offset: int = 0
    stderr_offset: int = 0
    started_at: str | None = None  # RFC 3339: the task's run time is the sum of these spans
    ended_at: str | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        object.__setattr__(self, "_json", None)  # any change: encoded again when next saved

    def to_json(self) -> str:
        """The fields as a JSON object (what `RunnableRecord(**json.loads(...))` reads)."""
        text: str | None = self.__dict__.get("_json")
        if text is None:
            fields = {k: v for k, v in vars(self).items() if k != "_json"}
            text = json.dumps(fields)
            object.__setattr__(self, "_json", text)
        return text

    def handle(self) -> Handle:
        return Handle(container=self.container, pid=self.pid, start_time=self.start_time)

    def adopt(self, handle: Handle) -> None:
        """Keep what a restarted agent needs to find the runnable again."""
        self.container, self.pid, self.start_time = handle.container, handle.pid, handle.start_time


@dataclass
class TaskRecord:
    task_id: str
    raw: dict[str, Any]  # the AgentTask as received, to rebuild the plan after a restart
    state: TaskState = TaskState.ASSIGNED
    events: list[dict[str, Any]] = field(default_factory=list)  # StatusEvent wire JSON
    runnable: int = 0  # highest 1-based index started (AgentTaskInfo.runnable)
    exit_code: int | None = None
    started_at: str | None = None  # RFC 3339; maxRunDuration counts from here
    custom_events: int = 0  # custom status events printed, recorded or not
    runnables: dict[int, RunnableRecord] = field(default_factory=dict)
    # Cloud Logging's shipping state (offsets, the write under way): cloudlog.tasklogs owns it.
    cloud_log: dict[str, Any] = field(default_factory=dict)
    # Under which folder the task's exit statuses (and scripts) are (its folder there is named as
    # in the state dir; runtimedir.py), fixed before its first runnable starts: a restarted
    # agent finds them whatever its own setting. None: the state dir's (older records).
    runtime: str | None = None

    def transition(
        self,
        new: TaskState,
        *,
        at: datetime,
        where: str,
        exit_code: int | None = None,
        cause: str | None = None,
    ) -> None:
        """Move to `new` and append its STATUS_CHANGED event; raises IllegalTransition for an
        edge `EDGES` does not allow (the record is then unchanged)."""
        if new not in EDGES[self.state]:
            raise IllegalTransition(f"task {self.task_id}: {self.state} -> {new} is not allowed")
        if cause and exit_code is not None and events.is_reserved(exit_code):
            # Google's sentence for a reserved code has no room for our cause: it goes in an
            # event of its own just before.
            self.add_event(events.reserved_detail(exit_code, cause), at=at)
        description = events.state_changed(
            self.state, new, where=where, exit_code=exit_code, cause=cause
        )
        # Discovery, StatusEvent.taskExecution: "only defined for task-level status events where
        # the task fails". A SUCCEEDED task's code is 0 by TaskExecution.exitCode's own text.
        failed = new is TaskState.FAILED and exit_code is not None
        event = StatusEvent(
            type=events.STATUS_CHANGED,
            description=description,
            event_time=at,
            task_state=new,
            task_execution=TaskExecution(exit_code=exit_code) if failed else None,
        )
        self.events.append(event.to_wire())
        self.state = new
        if new.is_terminal:
            self.exit_code = exit_code
        if new is TaskState.RUNNING and self.started_at is None:
            self.started_at = format_time(at)

    def add_event(self, description: str, *, at: datetime) -> None:
        """An informational event (displayName, custom): the state does not change."""
        event = StatusEvent(type=events.STATUS_CHANGED, description=description, event_time=at)
        self.events.append(event.to_wire())

    def info(self) -> AgentTaskInfo:
        """The full status as a report carries it."""
        return AgentTaskInfo(
            task_id=self.task_id,
            runnable=self.runnable or None,
            task_status=TaskStatus(
                state=self.state,
                status_events=[StatusEvent.from_wire(e) for e in self.events],
            ),
        )

    def to_json(self) -> str:
        """Everything but `raw`, which never changes and is stored once (see TaskStore)."""
        runnables = ", ".join(f'"{k}": {r.to_json()}' for k, r in self.runnables.items())
        head = json.dumps(
            {
                "task_id": self.task_id,
                "state": self.state.value,
                "events": self.events,
                "runnable": self.runnable,
                "exit_code": self.exit_code,
                "started_at": self.started_at,
                "custom_events": self.custom_events,
                "cloud_log": self.cloud_log,
                "runtime": self.runtime,
            }
        )
        return f'{head[:-1]}, "runnables": {{{runnables}}}}}'

    @classmethod
    def from_json(cls, text: str, raw: dict[str, Any]) -> TaskRecord:
        data = json.loads(text)
        data["state"] = TaskState(data["state"])
        data["runnables"] = {int(k): RunnableRecord(**v) for k, v in data["runnables"].items()}
        return cls(raw=raw, **data)
