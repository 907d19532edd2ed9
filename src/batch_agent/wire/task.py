"""The tasks a `state:report` response assigns: `AgentTask` and its spec, named as in
batch.v1.json, and `parse_agent_task`, which parses one of them on its own (`parse_task_head`
only its name, intended state and barrier: all that a task the agent holds needs).

Plain frozen dataclasses, read by `convert.py` (each field by the converter its type names;
`Int32`/`Int64` are a JSON number or a decimal string, `Duration` is `"1.5s"`; unknown fields
are ignored and JSON null is the same as no value). No pydantic: it and the models it built
cost an agent ~150 ms of CPU at its first task. A response's tasks are parsed one by one so
that one malformed task fails alone (as a `BadAgentTask` naming its problems, `path: what is
wrong`) instead of taking the whole response with it; parsing never raises and costs time
bounded by the task's size. This module knows nothing of HTTP and of what the agent does with
a task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Any

from batch_agent.wire import convert
from batch_agent.wire.encoding import json_path, quote


class IntendedState(StrEnum):  # values are the wire strings
    ASSIGNED = "ASSIGNED"
    CANCELLED = "CANCELLED"
    DELETED = "DELETED"


# Field types whose JSON encoding has a wrinkle: the converter is named by the annotation.
Int32 = Annotated[int, "int32"]
Int64 = Annotated[int, "int64"]  # a decimal string on the wire (a JSON number is read too)
Duration = Annotated[timedelta, "duration"]  # "3600s", "1.5s"

# Each class has a docstring: without one, @dataclass makes one from inspect.signature when the
# module is imported (see report.py).


@dataclass(frozen=True, slots=True, kw_only=True)
class Barrier:
    """A barrier runnable: every task of the group waits here for the others."""

    name: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Script:
    """A script runnable: a file to run, or its text."""

    path: str | None = None
    text: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentScript(Script):
    """A script runnable of an `agentTaskSpec`."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Container:
    """A container runnable."""

    image_uri: str | None = None
    commands: list[str] = field(default_factory=list)
    entrypoint: str | None = None
    volumes: list[str] = field(default_factory=list)
    options: str | None = None
    block_external_network: bool | None = None
    username: str | None = None
    password: str | None = None
    enable_image_streaming: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentContainer:
    """A container runnable of an `agentTaskSpec`."""

    image_uri: str | None = None
    commands: list[str] = field(default_factory=list)
    entrypoint: str | None = None
    volumes: list[str] = field(default_factory=list)
    options: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class KMSEnvMap:
    """Variables encrypted with a Cloud KMS key: a JSON map once decrypted."""

    key_name: str | None = None
    cipher_text: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentKMSEnvMap(KMSEnvMap):
    """`KMSEnvMap` of an `agentTaskSpec`."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Environment:
    """Variables of a task or a runnable: plain, from Secret Manager, encrypted."""

    variables: dict[str, str] = field(default_factory=dict)
    secret_variables: dict[str, str] = field(default_factory=dict)
    encrypted_variables: KMSEnvMap | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentEnvironment:
    """`Environment` of an `agentTaskSpec`."""

    variables: dict[str, str] = field(default_factory=dict)
    secret_variables: dict[str, str] = field(default_factory=dict)
    encrypted_variables: AgentKMSEnvMap | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentTaskRunnable:
    """A runnable of an `agentTaskSpec` (no barriers, no names)."""

    script: AgentScript | None = None
    container: AgentContainer | None = None
    environment: AgentEnvironment | None = None
    ignore_exit_status: bool = False
    background: bool = False
    always_run: bool = False
    timeout: Duration | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Runnable:
    """A runnable of a `spec`."""

    script: Script | None = None
    container: Container | None = None
    barrier: Barrier | None = None
    display_name: str | None = None
    environment: Environment | None = None
    ignore_exit_status: bool = False
    background: bool = False
    always_run: bool = False
    timeout: Duration | None = None
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class NFS:
    """An NFS export to mount."""

    server: str | None = None
    remote_path: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class GCS:
    """A Cloud Storage bucket (and path) to mount."""

    remote_path: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Volume:
    """A volume to mount at `mount_path`: NFS, a bucket or a disk."""

    mount_path: str | None = None
    nfs: NFS | None = None
    gcs: GCS | None = None
    device_name: str | None = None
    mount_options: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class ComputeResource:
    """What a task asks of the VM."""

    cpu_milli: Int64 | None = None
    memory_mib: Int64 | None = None
    boot_disk_mib: Int64 | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ActionCondition:
    """The exit codes a lifecycle policy applies to."""

    exit_codes: list[Int32] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class LifecyclePolicy:
    """What to do (retry, fail) when a task ends with one of some exit codes."""

    action: str | None = None
    action_condition: ActionCondition | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskSpec:
    """A task's `spec`: its runnables (barriers and names too), limits, volumes, variables."""

    runnables: list[Runnable] = field(default_factory=list)
    compute_resource: ComputeResource | None = None
    max_run_duration: Duration | None = None
    max_retry_count: Int32 | None = None
    lifecycle_policies: list[LifecyclePolicy] = field(default_factory=list)
    environments: dict[str, str] = field(default_factory=dict)
    volumes: list[Volume] = field(default_factory=list)
    environment: Environment | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentTaskUserAccount:
    """The user a task's runnables run as."""

    uid: Int64 | None = None
    gid: Int64 | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentTaskLoggingOption:
    """Ship the task's output to Cloud Logging, with these labels."""

    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentTaskSpec:
    """A task's `agentTaskSpec`: its runnables, variables, limit, user and logging."""

    runnables: list[AgentTaskRunnable] = field(default_factory=list)
    environment: AgentEnvironment | None = None
    max_run_duration: Duration | None = None
    user_account: AgentTaskUserAccount | None = None
    logging_option: AgentTaskLoggingOption | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentTask:
    """One task of a response: its name, what the server wants of it, and its work."""

    task: str
    intended_state: IntendedState | None = None
    reached_barrier: Int64 = 0
    spec: TaskSpec | None = None
    agent_task_spec: AgentTaskSpec | None = None
    task_source: str | None = None

    @classmethod
    def from_wire(cls, raw: object) -> AgentTask:
        """A task from its JSON form; raises ValueError naming every problem (for callers
        sure of it: a response's tasks go through `parse_agent_task`)."""
        task = parse_agent_task(raw)
        if isinstance(task, BadAgentTask):
            raise ValueError("; ".join(task.problems))
        return task


@dataclass(frozen=True, slots=True, kw_only=True)
class BadAgentTask:
    """A response task that could not be parsed; `problems` name the field and what is wrong."""

    task: str
    intended_state: IntendedState | None
    problems: list[str]


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentTaskHead:
    """What a response says of a task the agent holds already: its name, intended state and
    barrier, its spec not read again (it never changes for a name)."""

    task: str
    intended_state: IntendedState | None = None
    reached_barrier: Int64 = 0


def parse_task_head(raw: object) -> AgentTaskHead | None:
    """`raw`'s head, read as `parse_agent_task` reads those fields; None where it cannot be
    read (`parse_agent_task` then says why). Never raises."""
    problems: list[str] = []
    head = convert.message(AgentTaskHead, raw, (), problems)
    return None if problems else head


_MAX_PROBLEMS = 20  # a task with a thousand bad fields fails with an event of readable size


def parse_agent_task(raw: object) -> AgentTask | BadAgentTask:
    """Parse one response task (any JSON value); never raises. A task that is not an object,
    or whose name is not a string, is a BadAgentTask named ""."""
    if not isinstance(raw, dict):
        return BadAgentTask(task="", intended_state=None, problems=["task: not an object"])
    problems: list[str] = []
    task = convert.message(AgentTask, raw, (), problems)
    if not problems and isinstance(task, AgentTask):
        return task
    if len(problems) > _MAX_PROBLEMS:
        more = len(problems) - _MAX_PROBLEMS
        problems = [*problems[:_MAX_PROBLEMS], f"... and {more} more problems"]
    name = raw.get("task")
    intended = raw.get("intendedState")
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


def _intended_state(value: Any, path: convert.Path, problems: list[str]) -> Any:
    if value == "INTENDED_STATE_UNSPECIFIED":  # the proto3 zero value: the same as no value
        return None
    if isinstance(value, str) and value in IntendedState.__members__:
        return IntendedState(value)
    problems.append(f"{json_path(path)}: {quote(value)} is not one of {', '.join(IntendedState)}")
    return convert.BAD


convert.CONVERTERS[IntendedState] = _intended_state
