"""Pydantic models of the Batch v1 agent wire format (`state:report`), named as in batch.v1.json.

The wrinkles of the JSON encoding are absorbed here, once: int64 travels as a decimal string,
`google-duration` as `"1.5s"`, `google-datetime` as RFC 3339, unknown fields are ignored (the
server evolves). Response tasks are kept raw and parsed one by one with `parse_agent_task`, so
that one malformed task fails alone instead of taking the whole response with it.

This module imports nothing of ours and knows nothing of HTTP.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

_DURATION = re.compile(r"^(-?\d+)(?:\.(\d{1,9}))?s$")


def parse_duration(value: object) -> timedelta:
    """`"1.5s"` -> timedelta(seconds=1.5); raises ValueError naming the bad value."""
    if isinstance(value, timedelta):
        return value
    match = _DURATION.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"{_quote(value)} is not a duration")
    whole, fraction = match.group(1), match.group(2) or ""
    nanos = int(fraction.ljust(9, "0"))
    sign = -1 if whole.startswith("-") else 1
    return sign * timedelta(seconds=abs(int(whole)), microseconds=nanos // 1000)


def format_duration(value: timedelta) -> str:
    """timedelta -> `"1.5s"`, the shortest exact form."""
    seconds = Decimal(value.days * 86400 + value.seconds) + Decimal(value.microseconds) / 10**6
    text = format(seconds.normalize(), "f")
    return f"{text}s"


def format_time(value: datetime) -> str:
    """An aware datetime -> RFC 3339 in UTC with a `Z`."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(value: str) -> datetime:
    """RFC 3339 (`Z` or an offset; naive taken as UTC) -> an aware datetime; ValueError if not."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _quote(value: object) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def _to_duration(value: object) -> timedelta:
    try:
        return parse_duration(value)
    except ValueError as error:
        raise PydanticCustomError("duration", str(error)) from None


def _to_int64(value: object) -> int:
    if isinstance(value, bool):
        raise PydanticCustomError("int64", f"{_quote(value)} is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(Decimal(value)) if value.strip() == value else int("x")
        except (InvalidOperation, ValueError):
            pass
    raise PydanticCustomError("int64", f"{_quote(value)} is not an integer")


def _to_time(value: object) -> datetime:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return parse_time(value)
        except ValueError:
            pass
    raise PydanticCustomError("time", f"{_quote(value)} is not an RFC 3339 time")


Int64 = Annotated[int, BeforeValidator(_to_int64), PlainSerializer(str, return_type=str)]
Duration = Annotated[
    timedelta, BeforeValidator(_to_duration), PlainSerializer(format_duration, return_type=str)
]
Timestamp = Annotated[
    datetime, BeforeValidator(_to_time), PlainSerializer(format_time, return_type=str)
]


class WireModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields ignored."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )

    def to_wire(self) -> dict[str, Any]:
        """The JSON object to send: camelCase, unset fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# --- enums (values are the wire strings) -----------------------------------------------------


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


class IntendedState(StrEnum):
    ASSIGNED = "ASSIGNED"
    CANCELLED = "CANCELLED"
    DELETED = "DELETED"


# --- response side: what the server asks of us -----------------------------------------------


class Barrier(WireModel):
    name: str | None = None


class Script(WireModel):
    path: str | None = None
    text: str | None = None


class AgentScript(Script):
    pass


class Container(WireModel):
    image_uri: str | None = None
    commands: list[str] = Field(default_factory=list)
    entrypoint: str | None = None
    volumes: list[str] = Field(default_factory=list)
    options: str | None = None
    block_external_network: bool | None = None
    username: str | None = None
    password: str | None = None
    enable_image_streaming: bool | None = None


class AgentContainer(WireModel):
    image_uri: str | None = None
    commands: list[str] = Field(default_factory=list)
    entrypoint: str | None = None
    volumes: list[str] = Field(default_factory=list)
    options: str | None = None


class KMSEnvMap(WireModel):
    key_name: str | None = None
    cipher_text: str | None = None


class AgentKMSEnvMap(KMSEnvMap):
    pass


class Environment(WireModel):
    variables: dict[str, str] = Field(default_factory=dict)
    secret_variables: dict[str, str] = Field(default_factory=dict)
    encrypted_variables: KMSEnvMap | None = None


class AgentEnvironment(WireModel):
    variables: dict[str, str] = Field(default_factory=dict)
    secret_variables: dict[str, str] = Field(default_factory=dict)
    encrypted_variables: AgentKMSEnvMap | None = None


class AgentTaskRunnable(WireModel):
    script: AgentScript | None = None
    container: AgentContainer | None = None
    environment: AgentEnvironment | None = None
    ignore_exit_status: bool = False
    background: bool = False
    always_run: bool = False
    timeout: Duration | None = None


class Runnable(WireModel):
    script: Script | None = None
    container: Container | None = None
    barrier: Barrier | None = None
    display_name: str | None = None
    environment: Environment | None = None
    ignore_exit_status: bool = False
    background: bool = False
    always_run: bool = False
    timeout: Duration | None = None
    labels: dict[str, str] = Field(default_factory=dict)


class NFS(WireModel):
    server: str | None = None
    remote_path: str | None = None


class GCS(WireModel):
    remote_path: str | None = None


class Volume(WireModel):
    mount_path: str | None = None
    nfs: NFS | None = None
    gcs: GCS | None = None
    device_name: str | None = None
    mount_options: list[str] = Field(default_factory=list)


class ComputeResource(WireModel):
    cpu_milli: Int64 | None = None
    memory_mib: Int64 | None = None
    boot_disk_mib: Int64 | None = None


class ActionCondition(WireModel):
    exit_codes: list[int] = Field(default_factory=list)


class LifecyclePolicy(WireModel):
    action: str | None = None
    action_condition: ActionCondition | None = None


class TaskSpec(WireModel):
    runnables: list[Runnable] = Field(default_factory=list)
    compute_resource: ComputeResource | None = None
    max_run_duration: Duration | None = None
    max_retry_count: int | None = None
    lifecycle_policies: list[LifecyclePolicy] = Field(default_factory=list)
    environments: dict[str, str] = Field(default_factory=dict)
    volumes: list[Volume] = Field(default_factory=list)
    environment: Environment | None = None


class AgentTaskUserAccount(WireModel):
    uid: Int64 | None = None
    gid: Int64 | None = None


class AgentTaskLoggingOption(WireModel):
    labels: dict[str, str] = Field(default_factory=dict)


class AgentTaskSpec(WireModel):
    runnables: list[AgentTaskRunnable] = Field(default_factory=list)
    environment: AgentEnvironment | None = None
    max_run_duration: Duration | None = None
    user_account: AgentTaskUserAccount | None = None
    logging_option: AgentTaskLoggingOption | None = None


class AgentTask(WireModel):
    task: str
    intended_state: IntendedState | None = None
    reached_barrier: Int64 = 0
    spec: TaskSpec | None = None
    agent_task_spec: AgentTaskSpec | None = None
    task_source: str | None = None


class ReportAgentStateResponse(WireModel):
    default_report_interval: Duration | None = None
    min_report_interval: Duration | None = None
    # Kept raw: each is parsed with parse_agent_task so a bad one fails alone.
    tasks: list[dict[str, Any]] = Field(default_factory=list)
    use_batch_monitored_resource: bool | None = None


class BadAgentTask(BaseModel):
    """A response task that could not be parsed; `problems` name the field and what is wrong."""

    task: str
    intended_state: IntendedState | None
    problems: list[str]


def parse_agent_task(raw: dict[str, Any]) -> AgentTask | BadAgentTask:
    """Parse one response task; never raises for a task that carries a name."""
    try:
        return AgentTask.model_validate(raw)
    except ValidationError as error:
        name = raw.get("task") if isinstance(raw.get("task"), str) else ""
        intended = raw.get("intendedState")
        known = intended if intended in IntendedState.__members__ else None
        problems = [f"{_json_path(item['loc'])}: {item['msg']}" for item in error.errors()]
        return BadAgentTask(
            task=str(name),
            intended_state=IntendedState(known) if known else None,
            problems=problems,
        )


def _json_path(loc: tuple[int | str, ...]) -> str:
    """('spec', 'runnables', 1, 'timeout') -> 'runnables[1].timeout' (spec is implied)."""
    parts = list(loc)
    if parts and parts[0] in ("spec", "agentTaskSpec"):
        parts = parts[1:]
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text or "task"


# --- request side: what we tell the server ---------------------------------------------------


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
    instance_id: Int64 | None = None
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
