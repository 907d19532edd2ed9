"""Pydantic models of the Batch v1 agent wire format (`state:report`), named as in batch.v1.json.

The wrinkles of the JSON encoding are absorbed here, once: int64 travels as a decimal string,
`google-duration` as `"1.5s"`, `google-datetime` as RFC 3339, unknown fields are ignored (the
server evolves). Response tasks are kept raw and parsed one by one with `parse_agent_task`, so
that one malformed task fails alone instead of taking the whole response with it. Whatever a
server sends, parsing costs time bounded by the body's size and raises only the documented
errors (`parse_response`: MalformedResponse; `parse_agent_task`: none).

This module imports nothing of ours and knows nothing of HTTP.
"""

from __future__ import annotations

import json
import logging
import re
import reprlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    ValidationInfo,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

log = logging.getLogger(__name__)

# Numbers arrive as text from a server we do not control. Each is checked for length and shape
# before it is converted, so that parsing costs microseconds whatever is sent ("1e600000" or a
# million digits), and each is checked for range before it becomes a timedelta, so that neither
# timedelta nor `datetime.now() + duration` can overflow later.
_MAX_NUMBER_TEXT = 64  # characters; longer than any int64 or any duration we accept
_DURATION = re.compile(r"(-?)([0-9]+)(?:\.([0-9]{1,9}))?s")
_INTEGER = re.compile(r"-?[0-9]+")
MAX_TASK_DURATION = timedelta(days=36525)  # 100 years: a task timeout or maxRunDuration
MAX_REPORT_INTERVAL = timedelta(hours=1)  # the report intervals a response may set
_RANGES = {
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}


def _microseconds(value: object) -> int | None:
    """`"-1.5s"` -> -1500000 (nanoseconds truncated); None if not a short duration string."""
    if not isinstance(value, str) or len(value) > _MAX_NUMBER_TEXT:
        return None
    match = _DURATION.fullmatch(value)
    if match is None:
        return None
    sign, whole, fraction = match.groups()
    micros = int(whole) * 10**6 + int((fraction or "").ljust(9, "0")) // 1000
    return -micros if sign else micros


def parse_duration(value: object, maximum: timedelta = MAX_TASK_DURATION) -> timedelta:
    """`"1.5s"` -> timedelta(seconds=1.5); raises ValueError naming the bad value, also for a
    duration longer than `maximum` either way (100 years by default)."""
    if isinstance(value, timedelta):
        micros: int | None = value // timedelta(microseconds=1)
    else:
        micros = _microseconds(value)
    if micros is None:
        raise ValueError(f"{_quote(value)} is not a duration")
    if abs(micros) > maximum // timedelta(microseconds=1):
        raise ValueError(f"{_quote(value)} is out of range (longer than {_describe(maximum)})")
    return timedelta(microseconds=micros)


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


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 60, 60


def _quote(value: object) -> str:
    """A bad value as a problem message shows it: strings quoted, everything cut short."""
    if isinstance(value, str):
        return f'"{value}"' if len(value) <= 60 else f'"{value[:50]}..." ({len(value)} chars)'
    if isinstance(value, int) and value.bit_length() > 128:
        return f"a {value.bit_length()}-bit number"
    return _REPR.repr(value)


def _describe(value: timedelta) -> str:
    return f"{value.days // 365} years" if value.days >= 365 else format_duration(value)


def _to_duration(value: object) -> timedelta:
    try:
        return parse_duration(value)
    except ValueError as error:
        raise PydanticCustomError("duration", str(error)) from None


def _integer(kind: str) -> BeforeValidator:
    """A validator for an integer of `kind` (int32, int64, uint64): a JSON number or, as
    proto3 JSON allows and int64 requires, a decimal string; out-of-range values are errors."""
    low, high = _RANGES[kind]

    def validate(value: object) -> int:
        number = value
        if isinstance(value, str) and len(value) <= _MAX_NUMBER_TEXT and _INTEGER.fullmatch(value):
            number = int(value)
        if not isinstance(number, int) or isinstance(number, bool):
            raise PydanticCustomError(kind, f"{_quote(value)} is not an integer")
        if not low <= number <= high:
            raise PydanticCustomError(kind, f"{_quote(value)} is out of range for {kind}")
        return number

    return BeforeValidator(validate)


def _to_time(value: object) -> datetime:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and len(value) <= _MAX_NUMBER_TEXT:
        try:
            return parse_time(value)
        except ValueError:
            pass
    raise PydanticCustomError("time", f"{_quote(value)} is not an RFC 3339 time")


def _to_report_interval(value: object, info: ValidationInfo) -> timedelta | None:
    """A response's report interval, clamped to [0, MAX_REPORT_INTERVAL]; None (the agent
    keeps its current interval) for one that is not a duration. Logged, never an error: a
    bad interval must not cost us the tasks in the same response."""
    if value is None:
        return None
    name = to_camel(info.field_name or "interval")
    if isinstance(value, timedelta):
        micros: int | None = value // timedelta(microseconds=1)
    else:
        micros = _microseconds(value)
    if micros is None:
        log.warning("control plane: %s %s is not a duration; ignored", name, _quote(value))
        return None
    clamped = min(max(micros, 0), MAX_REPORT_INTERVAL // timedelta(microseconds=1))
    if clamped != micros:
        log.warning(
            "control plane: %s %s is out of range; using %s",
            name,
            _quote(value),
            format_duration(timedelta(microseconds=clamped)),
        )
    return timedelta(microseconds=clamped)


Int32 = Annotated[int, _integer("int32")]
Int64 = Annotated[int, _integer("int64"), PlainSerializer(str, return_type=str)]
UInt64 = Annotated[int, _integer("uint64"), PlainSerializer(str, return_type=str)]
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
    exit_codes: list[Int32] = Field(default_factory=list)


class LifecyclePolicy(WireModel):
    action: str | None = None
    action_condition: ActionCondition | None = None


class TaskSpec(WireModel):
    runnables: list[Runnable] = Field(default_factory=list)
    compute_resource: ComputeResource | None = None
    max_run_duration: Duration | None = None
    max_retry_count: Int32 | None = None
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


def _unspecified_is_unset(value: object) -> object:
    # The proto3 zero value, which the discovery document lists: the same as no value.
    return None if value == "INTENDED_STATE_UNSPECIFIED" else value


class AgentTask(WireModel):
    task: str
    intended_state: Annotated[IntendedState | None, BeforeValidator(_unspecified_is_unset)] = None
    reached_barrier: Int64 = 0
    spec: TaskSpec | None = None
    agent_task_spec: AgentTaskSpec | None = None
    task_source: str | None = None


def _report_flag(value: object) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    log.warning(
        "control plane: useBatchMonitoredResource %s is not a boolean; ignored", _quote(value)
    )
    return None


def _task_list(value: object) -> object:
    return [] if value is None else value  # JSON null for a repeated field: none


ReportInterval = Annotated[
    timedelta | None,
    BeforeValidator(_to_report_interval),
    PlainSerializer(lambda v: None if v is None else format_duration(v)),
]


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
        raise MalformedResponse(f"the body is not a JSON object: {_quote(body)}")
    try:
        return ReportAgentStateResponse.model_validate(body)
    except ValidationError as error:
        problems = [f"{_json_path(e['loc'])}: {e['msg']}" for e in error.errors()]
        raise MalformedResponse("; ".join(problems)) from None


class BadAgentTask(BaseModel):
    """A response task that could not be parsed; `problems` name the field and what is wrong."""

    task: str
    intended_state: IntendedState | None
    problems: list[str]


_MAX_PROBLEMS = 20  # a task with a thousand bad fields fails with an event of readable size


def parse_agent_task(raw: object) -> AgentTask | BadAgentTask:
    """Parse one response task (any JSON value); never raises. A task that is not an object,
    or whose name is not a string, is a BadAgentTask named ""."""
    if not isinstance(raw, dict):
        return BadAgentTask(task="", intended_state=None, problems=["task: not an object"])
    try:
        return AgentTask.model_validate(raw)
    except ValidationError as error:
        name = raw.get("task")
        intended = raw.get("intendedState")
        problems = [f"{_json_path(item['loc'])}: {item['msg']}" for item in error.errors()]
        if len(problems) > _MAX_PROBLEMS:
            more = len(problems) - _MAX_PROBLEMS
            problems = [*problems[:_MAX_PROBLEMS], f"... and {more} more problems"]
        return BadAgentTask(
            task=name if isinstance(name, str) else "",
            # isinstance first: a list or dict here is unhashable.
            intended_state=(
                IntendedState(intended)
                if isinstance(intended, str) and intended in IntendedState.__members__
                else None
            ),
            problems=problems,
        )


def _json_path(loc: tuple[int | str, ...]) -> str:
    """('spec', 'runnables', 1, 'timeout') -> 'runnables[1].timeout' (spec is implied)."""
    parts = list(loc)
    if parts and parts[0] in ("spec", "agentTaskSpec"):
        parts = parts[1:]
    text = ""
    for part in parts:
        part = part if isinstance(part, int) or len(part) <= 40 else part[:37] + "..."
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else part
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
