"""The `state:report` exchange, named as in batch.v1.json: `ReportAgentStateRequest` (what we
tell the server: the agent, its tasks' status events, the VM) and `ReportAgentStateResponse`
(what it answers), with `parse_response` for an answer body.

Whatever a server sends, `parse_response` costs time bounded by the body's size and raises
only MalformedResponse; it keeps the response's tasks raw for `parse_agent_task`. This module
knows nothing of HTTP.
"""

from __future__ import annotations

import json
import logging
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, ValidationError

from batch_agent.wire.encoding import (
    Int64,
    ReportInterval,
    Timestamp,
    UInt64,
    WireModel,
    json_path,
    quote,
)

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


class TaskExecution(WireModel):
    exit_code: int | None = None


class StatusEvent(WireModel):
    type: str | None = None
    description: str | None = None
    event_time: Timestamp | None = None
    task_execution: TaskExecution | None = None
    task_state: TaskState | None = None


class TaskStatus(WireModel):
    state: TaskState
    status_events: list[StatusEvent] = Field(default_factory=list)


class AgentTaskInfo(WireModel):
    task_id: str
    runnable: Int64 | None = None
    task_status: TaskStatus


class AgentInfo(WireModel):
    state: AgentState
    report_time: Timestamp
    job_id: str | None = None
    task_group_id: str | None = None
    tasks: list[AgentTaskInfo] = Field(default_factory=list)


class AgentTimingInfo(WireModel):
    boot_time: Timestamp | None = None
    script_startup_time: Timestamp | None = None
    agent_startup_time: Timestamp | None = None


class AgentMetadata(WireModel):
    instance: str | None = None
    instance_id: UInt64 | None = None
    zone: str | None = None
    machine_type: str | None = None
    creator: str | None = None
    creation_time: Timestamp | None = None
    image_version: str | None = None
    instance_preemption_notice_received: bool | None = None
    os_release: dict[str, str] = Field(default_factory=dict)
    version: str | None = None


class ReportAgentStateRequest(WireModel):
    agent_info: AgentInfo
    agent_timing_info: AgentTimingInfo | None = None
    metadata: AgentMetadata | None = None


# --- response side: what the server answers ---------------------------------------------------


def _report_flag(value: object) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    log.warning(
        "control plane: useBatchMonitoredResource %s is not a boolean; ignored", quote(value)
    )
    return None


def _task_list(value: object) -> object:
    return [] if value is None else value  # JSON null for a repeated field: none


class ReportAgentStateResponse(WireModel):
    """Only `tasks` that is not a list makes a response unusable: bad intervals are clamped or
    ignored (and logged), and each task is parsed on its own with `parse_agent_task`."""

    default_report_interval: ReportInterval = None
    min_report_interval: ReportInterval = None
    # Kept raw (anything JSON, not only objects): each is parsed with parse_agent_task so a bad
    # one fails alone.
    tasks: Annotated[list[Any], BeforeValidator(_task_list)] = Field(default_factory=list)
    use_batch_monitored_resource: Annotated[bool | None, BeforeValidator(_report_flag)] = None


class MalformedResponse(ValueError):
    """A `state:report` answer that is not a ReportAgentStateResponse at all."""


def _no_constants(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def parse_response(content: bytes | str) -> ReportAgentStateResponse:
    """Parse a `state:report` answer body; raises MalformedResponse (and nothing else) when
    it is not JSON (NaN and Infinity included), not an object, or its `tasks` is not a list.
    The cost is bounded by the body's size: JSON nesting and integer digits are limited by
    the standard library's json (RecursionError, ValueError), both caught here."""
    try:
        body = json.loads(content, parse_constant=_no_constants)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise MalformedResponse(f"the body is not JSON: {error}") from None
    if not isinstance(body, dict):
        raise MalformedResponse(f"the body is not a JSON object: {quote(body)}")
    try:
        return ReportAgentStateResponse.model_validate(body)
    except ValidationError as error:
        problems = [f"{json_path(e['loc'])}: {e['msg']}" for e in error.errors()]
        raise MalformedResponse("; ".join(problems)) from None
