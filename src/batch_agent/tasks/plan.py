"""AgentTask (spec and/or agentTaskSpec) -> one validated, normalised TaskPlan.

Pure: no processes, no I/O. Every problem is collected with the JSON path of the field, so a bad
task fails with an event that says what is wrong and where, and nothing else is affected.
Variables and secret references are checked and merged in `planenv`, volumes in `planvolumes`;
their types are importable from here too, as parts of the plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from batch_agent.names import parse_task_name
from batch_agent.tasks.planenv import (
    Encrypted,
    SecretRefs,
    check_secrets,
    check_variables,
    is_secret_path,
    task_environment,
)
from batch_agent.tasks.planvolumes import VolumeSpec, default_volumes, plan_mounts
from batch_agent.wire import (
    AgentContainer,
    AgentTask,
    AgentTaskRunnable,
    AgentTaskSpec,
    Container,
    Runnable,
    TaskSpec,
    format_duration,
)

__all__ = [
    "Action",
    "BarrierSpec",
    "ContainerSpec",
    "Encrypted",
    "PlanError",
    "RunnablePlan",
    "ScriptSpec",
    "SecretRefs",
    "TaskPlan",
    "VolumeSpec",
    "is_secret_path",
    "make_plan",
]


@dataclass(frozen=True)
class ContainerSpec:
    """The `Container` fields of a runnable, named as in the API."""

    image_uri: str
    commands: tuple[str, ...] = ()
    entrypoint: str | None = None
    volumes: tuple[str, ...] = ()
    options: str | None = None
    block_external_network: bool = False
    username: str | None = None
    password: str | None = None
    enable_image_streaming: bool = False


@dataclass(frozen=True)
class ScriptSpec:
    """A script runnable: its `text`, or the `path` of a file on the VM (exactly one is set)."""

    text: str | None = None
    path: str | None = None


@dataclass(frozen=True)
class BarrierSpec:
    """A barrier: the task waits until every task of its group has reached it."""

    name: str = ""


Action = ScriptSpec | ContainerSpec | BarrierSpec


@dataclass(frozen=True)
class RunnablePlan:
    index: int  # 1-based, as AgentTaskInfo.runnable counts
    action: Action
    display_name: str | None = None
    ignore_exit_status: bool = False
    background: bool = False
    always_run: bool = False
    timeout: timedelta | None = None
    variables: dict[str, str] = field(default_factory=dict)
    secrets: SecretRefs = field(default_factory=SecretRefs)

    @property
    def label(self) -> str:
        """How logs and events name it: `runnables[0]` or its displayName."""
        return self.display_name or f"runnables[{self.index - 1}]"


@dataclass(frozen=True)
class TaskPlan:
    task_id: str
    runnables: tuple[RunnablePlan, ...]
    variables: dict[str, str] = field(default_factory=dict)
    secrets: SecretRefs = field(default_factory=SecretRefs)
    max_run_duration: timedelta | None = None
    user: tuple[int, int] | None = None
    task_index: int | None = None  # BATCH_TASK_INDEX, from the task's name
    retry_attempt: int | None = None  # BATCH_TASK_RETRY_ATTEMPT, when the name says
    # Task volumes as `docker run --volume` mounts, for containers that name none.
    volumes: tuple[str, ...] = ()
    mounts: tuple[VolumeSpec, ...] = ()  # what the Volumes hook mounts before the runnables


class PlanError(Exception):
    """The task cannot run; `problems` are `path: what is wrong` strings."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def make_plan(task: AgentTask) -> TaskPlan:
    """Normalise and validate; raises PlanError listing every problem found."""
    problems: list[str] = []
    spec, agent_spec = task.spec, task.agent_task_spec
    # `spec` carries barriers and display names; `agentTaskSpec` the user account. When both
    # carry runnables they describe the same work, and `spec` is the richer one.
    raw: list[Runnable | AgentTaskRunnable] = []
    if spec is not None and spec.runnables:
        raw = list(spec.runnables)
    elif agent_spec is not None:
        raw = list(agent_spec.runnables)
    if not raw:
        problems.append("runnables: a task needs at least one runnable")
    runnables = tuple(_runnable(i, r, problems) for i, r in enumerate(raw))
    name = parse_task_name(task.task)
    mounts = plan_mounts(spec.volumes if spec is not None else [], problems)
    variables, secrets = task_environment(spec, agent_spec, problems)
    plan = TaskPlan(
        task_id=task.task,
        runnables=runnables,
        variables=variables,
        secrets=secrets,
        max_run_duration=_max_run_duration(spec, agent_spec, problems),
        user=_user(agent_spec, problems),
        task_index=name.index,
        retry_attempt=name.attempt,
        volumes=default_volumes(mounts),
        mounts=mounts,
    )
    if problems:
        raise PlanError(problems)
    return plan


def _runnable(i: int, r: Runnable | AgentTaskRunnable, problems: list[str]) -> RunnablePlan:
    where = f"runnables[{i}]"
    barrier = r.barrier if isinstance(r, Runnable) else None
    kinds = [
        k
        for k, v in (("script", r.script), ("container", r.container), ("barrier", barrier))
        if v is not None
    ]
    if not kinds:
        problems.append(f"{where}: needs one of script, container or barrier")
    elif len(kinds) > 1:
        problems.append(f"{where}: has both {kinds[0]} and {kinds[1]}; give only one")
    action: Action = BarrierSpec((barrier.name or "") if barrier is not None else "")
    if r.script is not None:
        text, path = r.script.text, r.script.path
        if not text and not path:
            problems.append(f'{where}.script: needs "text" or "path"')
        elif text and path:
            problems.append(f'{where}.script: has both "text" and "path"; give only one')
        action = ScriptSpec(text=text or None, path=path or None)
    if r.container is not None:
        action = _container(r.container, where, problems) or action
    if r.timeout is not None and r.timeout <= timedelta(0):
        problems.append(f"{where}.timeout: {format_duration(r.timeout)} is not positive")
    variables = check_variables(r.environment.variables if r.environment else {}, where, problems)
    secrets = check_secrets(r.environment, f"{where}.environment", problems)
    return RunnablePlan(
        index=i + 1,
        action=action,
        display_name=r.display_name if isinstance(r, Runnable) else None,
        ignore_exit_status=r.ignore_exit_status,
        background=r.background,
        always_run=r.always_run,
        timeout=r.timeout,
        variables=variables,
        secrets=secrets,
    )


def _container(
    c: Container | AgentContainer, where: str, problems: list[str]
) -> ContainerSpec | None:
    if not c.image_uri:
        problems.append(f'{where}.container: needs "imageUri"')
        return None
    # username/password given as Secret Manager version paths are resolved in the prestart.
    full = c if isinstance(c, Container) else None
    return ContainerSpec(
        image_uri=c.image_uri,
        commands=tuple(c.commands),
        entrypoint=c.entrypoint or None,
        volumes=tuple(c.volumes),
        options=c.options or None,
        block_external_network=bool(full and full.block_external_network),
        username=full.username if full else None,
        password=full.password if full else None,
        enable_image_streaming=bool(full and full.enable_image_streaming),
    )


def _max_run_duration(
    spec: TaskSpec | None, agent_spec: AgentTaskSpec | None, problems: list[str]
) -> timedelta | None:
    value = spec.max_run_duration if spec is not None else None
    if value is None and agent_spec is not None:
        value = agent_spec.max_run_duration
    if value is not None and value <= timedelta(0):
        problems.append(f"maxRunDuration: {format_duration(value)} is not positive")
    return value


def _user(agent_spec: AgentTaskSpec | None, problems: list[str]) -> tuple[int, int] | None:
    account = agent_spec.user_account if agent_spec is not None else None
    if account is None:
        return None
    if account.uid is None or account.gid is None:
        problems.append("userAccount: needs both uid and gid")
        return None
    if account.uid < 0 or account.gid < 0:
        problems.append("userAccount: uid and gid must not be negative")
        return None
    return account.uid, account.gid
