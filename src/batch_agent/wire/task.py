"""The tasks a `state:report` response assigns: `AgentTask` and its spec, named as in
batch.v1.json, and `parse_agent_task`, which parses one of them on its own.

A response's tasks are parsed one by one so that one malformed task fails alone (as a
`BadAgentTask` naming its problems) instead of taking the whole response with it; parsing
never raises and costs time bounded by the task's size. This module knows nothing of HTTP
and of what the agent does with a task.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, Field, ValidationError

from batch_agent.wire.encoding import json_path
from batch_agent.wire.fields import Duration, Int32, Int64, WireModel


class IntendedState(StrEnum):  # values are the wire strings
    ASSIGNED = "ASSIGNED"
    CANCELLED = "CANCELLED"
    DELETED = "DELETED"


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
        problems = [f"{json_path(item['loc'])}: {item['msg']}" for item in error.errors()]
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
