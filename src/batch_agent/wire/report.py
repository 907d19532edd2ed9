"""The `state:report` exchange, named as in batch.v1.json: `ReportAgentStateRequest` (what we
tell the server: the agent, its tasks' status events, the VM) and `ReportAgentStateResponse`
(what it answers), with `parse_response` for an answer body.

Plain code, no pydantic: every report goes through here, the first one at the VM's start-up.
The messages are named tuples (immutable, keyword-built), not dataclasses: a frozen dataclass
execs six generated methods when its module is imported, ~1.5 ms of every agent's start-up
each, where a named tuple costs a tenth of that. The request side is built by the agent from
its own data, each message with an explicit `to_wire()` (camelCase, unset fields left out,
int64 and uint64 as decimal strings, times in RFC 3339); `tests/test_wire.py` holds them to
the discovery document. The response
side is checked field by field: whatever a server sends, `parse_response` costs time bounded
by the body's size and raises only MalformedResponse; it keeps the response's tasks raw for
`parse_agent_task`. This module knows nothing of HTTP.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Any, NamedTuple

from batch_agent.wire.encoding import format_time, parse_time, quote, report_interval

log = logging.getLogger(__name__)


# --- request side: what we tell the server (enum values are the wire strings) ---------------


class AgentState(StrEnum):
    AGENT_STARTING = "AGENT_STARTING"
    AGENT_RUNNING = "AGENT_RUNNING"
    AGENT_STOPPED = "AGENT_STOPPED"


class TaskState(StrEnum):
    ASSIGNED = "ASSIGNED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"

    @property
    def is_terminal(self) -> bool:
        return self in (TaskState.SUCCEEDED, TaskState.FAILED)


def _set(wire: dict[str, Any], key: str, value: object) -> None:
    if value is not None:
        wire[key] = value


def _time(value: datetime | None) -> str | None:
    return format_time(value) if value is not None else None


# Every message is built with keywords (`StatusEvent(type=..., task_state=...)`); the order of
# fields (those without a default first, as a named tuple needs) is no part of the contract.


class TaskExecution(NamedTuple):
    """How a task ended (`exitCode`), carried by its FAILED event."""

    exit_code: int | None = None

    def to_wire(self) -> dict[str, Any]:
        return {} if self.exit_code is None else {"exitCode": self.exit_code}


class StatusEvent(NamedTuple):
    """One entry of a task's history, as a report carries it."""

    type: str | None = None
    description: str | None = None
    event_time: datetime | None = None
    task_execution: TaskExecution | None = None
    task_state: TaskState | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {}
        _set(wire, "type", self.type)
        _set(wire, "description", self.description)
        _set(wire, "eventTime", _time(self.event_time))
        if self.task_execution is not None:
            wire["taskExecution"] = self.task_execution.to_wire()
        if self.task_state is not None:
            wire["taskState"] = self.task_state.value
        return wire

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> StatusEvent:
        """An event from its `to_wire()` form, as a task record keeps it. For the agent's own
        records only: anything else may raise (ValueError for a bad time or state, ...)."""
        when = wire.get("eventTime")
        execution = wire.get("taskExecution")
        state = wire.get("taskState")
        return cls(
            type=wire.get("type"),
            description=wire.get("description"),
            event_time=parse_time(when) if when is not None else None,
            task_execution=(
                TaskExecution(exit_code=execution.get("exitCode"))
                if execution is not None
                else None
            ),
            task_state=TaskState(state) if state is not None else None,
        )


class TaskStatus(NamedTuple):
    """A task's state and its whole history of events."""

    state: TaskState
    status_events: Sequence[StatusEvent] = ()

    def to_wire(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "statusEvents": [event.to_wire() for event in self.status_events],
        }


class AgentTaskInfo(NamedTuple):
    """One task in a report: its name as received, the runnable it is at, its status."""

    task_id: str
    task_status: TaskStatus
    runnable: int | None = None  # int64: a decimal string on the wire

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"taskId": self.task_id}
        if self.runnable is not None:
            wire["runnable"] = str(self.runnable)
        wire["taskStatus"] = self.task_status.to_wire()
        return wire


class AgentInfo(NamedTuple):
    """The agent's state and its tasks."""

    state: AgentState
    report_time: datetime
    job_id: str | None = None
    task_group_id: str | None = None
    tasks: Sequence[AgentTaskInfo] = ()

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "state": self.state.value,
            "reportTime": format_time(self.report_time),
        }
        _set(wire, "jobId", self.job_id)
        _set(wire, "taskGroupId", self.task_group_id)
        wire["tasks"] = [task.to_wire() for task in self.tasks]
        return wire


class AgentTimingInfo(NamedTuple):
    """When the VM booted, its startup script ran and the agent started."""

    boot_time: datetime | None = None
    script_startup_time: datetime | None = None
    agent_startup_time: datetime | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {}
        _set(wire, "bootTime", _time(self.boot_time))
        _set(wire, "scriptStartupTime", _time(self.script_startup_time))
        _set(wire, "agentStartupTime", _time(self.agent_startup_time))
        return wire


class AgentMetadata(NamedTuple):
    """The VM as the server knows it (metadata server facts, os-release, our version)."""

    instance: str | None = None
    instance_id: int | None = None  # uint64: a decimal string on the wire
    zone: str | None = None
    machine_type: str | None = None
    creator: str | None = None
    creation_time: datetime | None = None
    image_version: str | None = None
    instance_preemption_notice_received: bool | None = None
    os_release: Mapping[str, str] = MappingProxyType({})
    version: str | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {}
        _set(wire, "instance", self.instance)
        _set(wire, "instanceId", str(self.instance_id) if self.instance_id is not None else None)
        _set(wire, "zone", self.zone)
        _set(wire, "machineType", self.machine_type)
        _set(wire, "creator", self.creator)
        _set(wire, "creationTime", _time(self.creation_time))
        _set(wire, "imageVersion", self.image_version)
        _set(wire, "instancePreemptionNoticeReceived", self.instance_preemption_notice_received)
        wire["osRelease"] = dict(self.os_release)
        _set(wire, "version", self.version)
        return wire


class ReportAgentStateRequest(NamedTuple):
    """One report: the agent, its tasks, the VM."""

    agent_info: AgentInfo
    agent_timing_info: AgentTimingInfo | None = None
    metadata: AgentMetadata | None = None

    def to_wire(self) -> dict[str, Any]:
        """The JSON object to send."""
        wire: dict[str, Any] = {"agentInfo": self.agent_info.to_wire()}
        if self.agent_timing_info is not None:
            wire["agentTimingInfo"] = self.agent_timing_info.to_wire()
        if self.metadata is not None:
            wire["metadata"] = self.metadata.to_wire()
        return wire


# --- response side: what the server answers ---------------------------------------------------


class MalformedResponse(ValueError):
    """A `state:report` answer that is not a ReportAgentStateResponse at all."""


def _field(body: Mapping[str, Any], camel: str, snake: str) -> Any:
    # proto3 JSON: parsers accept the field's JSON name and its proto name; the JSON name wins.
    return body[camel] if camel in body else body.get(snake)


class ReportAgentStateResponse(NamedTuple):
    """Only `tasks` that is not a list makes a response unusable: bad intervals are clamped or
    ignored (and logged), and each task is parsed on its own with `parse_agent_task`."""

    # Kept raw (anything JSON, not only objects): each is parsed with parse_agent_task so a bad
    # one fails alone.
    tasks: list[Any]
    default_report_interval: timedelta | None = None
    min_report_interval: timedelta | None = None
    use_batch_monitored_resource: bool | None = None

    @classmethod
    def from_wire(cls, body: Mapping[str, Any]) -> ReportAgentStateResponse:
        """A response from its parsed JSON object; raises MalformedResponse when `tasks` is
        there and neither a list nor null. Unknown fields are ignored."""
        default_interval = report_interval(
            _field(body, "defaultReportInterval", "default_report_interval"),
            "defaultReportInterval",
        )
        min_interval = report_interval(
            _field(body, "minReportInterval", "min_report_interval"), "minReportInterval"
        )
        flag = _field(body, "useBatchMonitoredResource", "use_batch_monitored_resource")
        if flag is not None and not isinstance(flag, bool):
            log.warning(
                "control plane: useBatchMonitoredResource %s is not a boolean; ignored",
                quote(flag),
            )
            flag = None
        tasks = body.get("tasks")
        if tasks is None:  # JSON null for a repeated field: none
            tasks = []
        if not isinstance(tasks, list):
            raise MalformedResponse(f"tasks: {quote(tasks)} is not a list")
        return cls(
            default_report_interval=default_interval,
            min_report_interval=min_interval,
            tasks=tasks,
            use_batch_monitored_resource=flag,
        )


def _no_constants(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def parse_response(content: bytes | str) -> ReportAgentStateResponse:
    """Parse a `state:report` answer body; raises MalformedResponse (and nothing else) when
    it is not JSON (NaN and Infinity included), not an object, or its `tasks` is not a list.
    The cost is bounded by the body's size: JSON nesting and integer digits are limited by
    the standard library's json (RecursionError, ValueError), both caught here; each field is
    then checked in time bounded by its own size (`encoding`)."""
    try:
        body = json.loads(content, parse_constant=_no_constants)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise MalformedResponse(f"the body is not JSON: {error}") from None
    if not isinstance(body, dict):
        raise MalformedResponse(f"the body is not a JSON object: {quote(body)}")
    return ReportAgentStateResponse.from_wire(body)
