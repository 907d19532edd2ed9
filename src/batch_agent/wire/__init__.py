"""The Batch v1 agent wire format (`state:report`), types named as in batch.v1.json.

Import everything from here (`from batch_agent.wire import AgentTask, parse_response`); the
modules are `encoding` (the JSON encoding's wrinkles in plain code: int64 as strings,
`google-duration`, RFC 3339 times; bounded-cost number parsing), `report` (the request and the
response, plain dataclasses and a hand-written parser) and `task` (the tasks a response
assigns, plain dataclasses parsed one by one by a parser their field types drive).
Whatever a server sends, parsing costs time bounded by the body's size and raises only the
documented errors (`parse_response`: MalformedResponse; `parse_agent_task`: none).

This package imports nothing else of ours and knows nothing of HTTP. `task` is imported at the
first use of one of its names, not with the package (see `__getattr__`): a report never loads
it.
"""

from typing import TYPE_CHECKING, Any

from batch_agent.wire.encoding import (
    MAX_REPORT_INTERVAL,
    MAX_TASK_DURATION,
    format_duration,
    format_time,
    parse_duration,
    parse_time,
)
from batch_agent.wire.report import (
    AgentInfo,
    AgentMetadata,
    AgentState,
    AgentTaskInfo,
    AgentTimingInfo,
    MalformedResponse,
    ReportAgentStateRequest,
    ReportAgentStateResponse,
    StatusEvent,
    TaskExecution,
    TaskState,
    TaskStatus,
    parse_response,
)

if TYPE_CHECKING:  # at run time `__getattr__` imports them at their first use
    from batch_agent.wire.task import (
        GCS,
        NFS,
        ActionCondition,
        AgentContainer,
        AgentEnvironment,
        AgentKMSEnvMap,
        AgentScript,
        AgentTask,
        AgentTaskHead,
        AgentTaskLoggingOption,
        AgentTaskRunnable,
        AgentTaskSpec,
        AgentTaskUserAccount,
        BadAgentTask,
        Barrier,
        ComputeResource,
        Container,
        Duration,
        Environment,
        Int32,
        Int64,
        IntendedState,
        KMSEnvMap,
        LifecyclePolicy,
        Runnable,
        Script,
        TaskSpec,
        Volume,
        parse_agent_task,
        parse_task_head,
    )

__all__ = [
    "GCS",
    "MAX_REPORT_INTERVAL",
    "MAX_TASK_DURATION",
    "NFS",
    "ActionCondition",
    "AgentContainer",
    "AgentEnvironment",
    "AgentInfo",
    "AgentKMSEnvMap",
    "AgentMetadata",
    "AgentScript",
    "AgentState",
    "AgentTask",
    "AgentTaskHead",
    "AgentTaskInfo",
    "AgentTaskLoggingOption",
    "AgentTaskRunnable",
    "AgentTaskSpec",
    "AgentTaskUserAccount",
    "AgentTimingInfo",
    "BadAgentTask",
    "Barrier",
    "ComputeResource",
    "Container",
    "Duration",
    "Environment",
    "Int32",
    "Int64",
    "IntendedState",
    "KMSEnvMap",
    "LifecyclePolicy",
    "MalformedResponse",
    "ReportAgentStateRequest",
    "ReportAgentStateResponse",
    "Runnable",
    "Script",
    "StatusEvent",
    "TaskExecution",
    "TaskSpec",
    "TaskState",
    "TaskStatus",
    "Volume",
    "format_duration",
    "format_time",
    "parse_agent_task",
    "parse_duration",
    "parse_response",
    "parse_task_head",
    "parse_time",
]


def __getattr__(name: str) -> Any:
    """The names of `task` (the only ones of `__all__` not bound above), imported at the first
    use of one: an agent with no task yet reports without the task models."""
    if name in __all__:
        from batch_agent.wire import task

        value = getattr(task, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
