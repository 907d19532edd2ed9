"""AgentTask (spec and/or agentTaskSpec) -> one validated, normalised TaskPlan.

Pure: no processes, no I/O. Every problem is collected with the JSON path of the field, so a bad
task fails with an event that says what is wrong and where, and nothing else is affected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta

from batch_agent.names import parse_task_name
from batch_agent.wire import (
    AgentContainer,
    AgentEnvironment,
    AgentTask,
    AgentTaskRunnable,
    AgentTaskSpec,
    Container,
    Environment,
    Runnable,
    TaskSpec,
    Volume,
    format_duration,
)

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECRET_PATH = re.compile(r"^projects/[^/]+/secrets/[^/]+/versions/[^/]+$")
_KMS_KEY = re.compile(r"^projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+$")


def is_secret_path(value: str | None) -> bool:
    """Whether `value` names a Secret Manager version (`projects/P/secrets/S/versions/V`)."""
    return bool(value) and _SECRET_PATH.match(value or "") is not None


@dataclass(frozen=True)
class Encrypted:
    """An `encryptedVariables`: a KMS ciphertext of a JSON object of variable names to values."""

    key_name: str
    cipher_text: str


@dataclass(frozen=True)
class SecretRefs:
    """Where a level's secret variables come from; paths only, never values. Later wins:
    `secret` (name -> Secret Manager version path), then each of `encrypted` in order."""

    secret: dict[str, str] = field(default_factory=dict)
    encrypted: tuple[Encrypted, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.secret or self.encrypted)

    def __or__(self, later: SecretRefs) -> SecretRefs:
        return SecretRefs(self.secret | later.secret, self.encrypted + later.encrypted)


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
class VolumeSpec:
    """One task volume: what to mount (`kind` and `remote`) at `mount_path`, with options.

    `remote` is `bucket[/prefix]` for "gcs", `server:/path` for "nfs", the device name for
    "disk"; "path" (a volume with only a mountPath) mounts nothing: the VM's folder is shared.
    """

    index: int  # 0-based, as in spec.volumes
    mount_path: str
    kind: str  # "gcs" | "nfs" | "disk" | "path"
    remote: str = ""
    options: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """How events name it: `volumes[0] (/mnt/disks/data)`."""
        return f"volumes[{self.index}] ({self.mount_path})"


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
    mounts = _mounts(spec.volumes if spec is not None else [], problems)
    variables, secrets = _task_variables(spec, agent_spec, problems)
    plan = TaskPlan(
        task_id=task.task,
        runnables=runnables,
        variables=variables,
        secrets=secrets,
        max_run_duration=_max_run_duration(spec, agent_spec, problems),
        user=_user(agent_spec, problems),
        task_index=name.index,
        retry_attempt=name.attempt,
        volumes=_volumes(mounts),
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
    variables = _variables(r.environment.variables if r.environment else {}, where, problems)
    secrets = _secrets(r.environment, f"{where}.environment", problems)
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


def _task_variables(
    spec: TaskSpec | None, agent_spec: AgentTaskSpec | None, problems: list[str]
) -> tuple[dict[str, str], SecretRefs]:
    """The task level's variables and secrets. Both specs count, later wins (README):
    `agentTaskSpec.environment`, then `spec.environments`, then `spec.environment`."""
    merged: dict[str, str] = {}
    secrets = SecretRefs()
    if agent_spec is not None and agent_spec.environment is not None:
        where = "agentTaskSpec.environment"
        merged |= _variables(agent_spec.environment.variables, where, problems)
        secrets |= _secrets(agent_spec.environment, where, problems)
    if spec is not None:
        merged |= _variables(spec.environments, "environments", problems)
        if spec.environment is not None:
            merged |= _variables(spec.environment.variables, "environment", problems)
            secrets |= _secrets(spec.environment, "environment", problems)
    return merged, secrets


def _variables(values: dict[str, str], where: str, problems: list[str]) -> dict[str, str]:
    for name, value in values.items():
        if not _ENV_NAME.match(name):
            problems.append(f'{where}.variables: "{name}" is not a valid variable name')
        elif "\0" in value:
            problems.append(f"{where}.variables.{name}: contains a NUL byte")
    return dict(values)


def _secrets(
    environment: Environment | AgentEnvironment | None, where: str, problems: list[str]
) -> SecretRefs:
    """The secretVariables and encryptedVariables of one environment, checked (paths only)."""
    if environment is None:
        return SecretRefs()
    for name, path in environment.secret_variables.items():
        if not _ENV_NAME.match(name):
            problems.append(f'{where}.secretVariables: "{name}" is not a valid variable name')
        elif not is_secret_path(path):
            problems.append(
                f"{where}.secretVariables.{name}: {path!r} is not a Secret Manager version "
                "(projects/P/secrets/S/versions/V)"
            )
    encrypted: tuple[Encrypted, ...] = ()
    kms = environment.encrypted_variables
    if kms is not None and (kms.key_name or kms.cipher_text):
        if not kms.key_name or not _KMS_KEY.match(kms.key_name):
            problems.append(
                f"{where}.encryptedVariables.keyName: {kms.key_name!r} is not a Cloud KMS key "
                "(projects/P/locations/L/keyRings/R/cryptoKeys/K)"
            )
        elif not kms.cipher_text:
            problems.append(f"{where}.encryptedVariables.cipherText: empty")
        else:
            encrypted = (Encrypted(kms.key_name, kms.cipher_text),)
    return SecretRefs(dict(environment.secret_variables), encrypted)


def _max_run_duration(
    spec: TaskSpec | None, agent_spec: AgentTaskSpec | None, problems: list[str]
) -> timedelta | None:
    value = spec.max_run_duration if spec is not None else None
    if value is None and agent_spec is not None:
        value = agent_spec.max_run_duration
    if value is not None and value <= timedelta(0):
        problems.append(f"maxRunDuration: {format_duration(value)} is not positive")
    return value


def _mounts(volumes: list[Volume], problems: list[str]) -> tuple[VolumeSpec, ...]:
    """spec.volumes as VolumeSpecs: exactly one source each, absolute distinct mountPaths."""
    specs: list[VolumeSpec] = []
    for i, v in enumerate(volumes):
        where = f"volumes[{i}]"
        path = v.mount_path or ""
        if not path.startswith("/"):
            problems.append(f'{where}.mountPath: needs an absolute path, got "{path}"')
            continue
        if path.rstrip("/") in (s.mount_path.rstrip("/") for s in specs):
            problems.append(f"{where}.mountPath: {path} is already another volume's")
            continue
        given = [k for k, x in (("gcs", v.gcs), ("nfs", v.nfs), ("deviceName", v.device_name)) if x]
        if len(given) > 1:
            problems.append(f"{where}: has both {given[0]} and {given[1]}; give only one")
            continue
        options = tuple(v.mount_options)
        if v.gcs is not None:
            remote = (v.gcs.remote_path or "").strip("/")
            if not remote:
                problems.append(f'{where}.gcs: needs "remotePath" (a bucket or bucket/path)')
                continue
            specs.append(VolumeSpec(i, path, "gcs", remote, options))
        elif v.nfs is not None:
            if not v.nfs.server or not (v.nfs.remote_path or "").startswith("/"):
                problems.append(f'{where}.nfs: needs "server" and an absolute "remotePath"')
                continue
            specs.append(VolumeSpec(i, path, "nfs", f"{v.nfs.server}:{v.nfs.remote_path}", options))
        elif v.device_name:
            if "/" in v.device_name or v.device_name in (".", ".."):
                problems.append(f'{where}.deviceName: "{v.device_name}" is not a device name')
                continue
            specs.append(VolumeSpec(i, path, "disk", v.device_name, options))
        else:
            specs.append(VolumeSpec(i, path, "path", "", options))
    return tuple(specs)


def _volumes(mounts: tuple[VolumeSpec, ...]) -> tuple[str, ...]:
    """Each task volume's mountPath, mounted at the same path in containers that name no
    volumes: read-write whatever its mountOptions say (Batch's rule, Container.volumes). Which
    disks are existing ones, read-only there, only the VM can tell: `mounts.container_volumes`
    refines this when the task's run is made."""
    return tuple(f"{m.mount_path}:{m.mount_path}" for m in mounts)


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
