"""How one task's run is put together: the settings every task shares, and `make_run`.

`make_run` gives a task its folder, its drivers (script, container) sharing one context and one
set of secret values, its hooks in order (TaskFolder, Secrets, Volumes, and ContainerNetwork
when a container blocks external networks), its lifecycle behind the masker, and for containers
the mounts of its volumes; `EngineOnDemand` is the Docker engine the tasks share, made at the
first need of it; `preload_task_side` imports what a task's start needs ahead of the first.
Nothing here starts a runnable or changes a task's state: `TaskRun.run` does.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from batch_agent.tasks.filework import FileWork
from batch_agent.tasks.folders import TaskFolders, task_dir
from batch_agent.tasks.lifecycle import Lifecycle
from batch_agent.tasks.masking import MaskedEvents, Masker
from batch_agent.tasks.mounts import MountSettings, container_volumes
from batch_agent.tasks.record import TaskRecord
from batch_agent.tasks.shipping import Shipping
from batch_agent.tasks.taskoutput import Sink

log = logging.getLogger(__name__)

# What runs a task (plans, drivers, hooks, the run) is imported by `make_run`: the settings
# are made at start-up, before the first report, which must not wait for all of that.
if TYPE_CHECKING:
    from batch_agent.tasks.container_driver import EngineFactory
    from batch_agent.tasks.docker import ContainerEngine
    from batch_agent.tasks.hooks import SecretSource
    from batch_agent.tasks.plan import TaskPlan
    from batch_agent.tasks.runner import TaskRun
    from batch_agent.tasks.volumes import MountTable


@dataclass(frozen=True)
class TaskSettings:
    """What every task of this agent shares."""

    workdir: Path  # each task gets a folder below it
    where: str  # `zones/<zone>/instances/<id>`, for event wording and container labels
    base_env: Mapping[str, str]
    output: Sink
    shipping: Shipping = field(default_factory=Shipping)  # one output tick for all tasks
    files: FileWork = field(default_factory=FileWork)  # one thread for the tasks' folders
    docker_host: str | None = None
    kill_grace: timedelta = timedelta(seconds=10)
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    mounts: MountSettings = field(default_factory=MountSettings)
    # Where new tasks' exit statuses go (runtimedir.py); None: `workdir`. Their scripts too
    # when `runtime_exec` (its mount is not `noexec`), else they stay in `workdir`.
    runtime: Path | None = None
    runtime_exec: bool = True

    @functools.cached_property
    def mount_table(self) -> MountTable:
        """The VM's one table of task volumes (shared by every task of the agent)."""
        from batch_agent.tasks.volumes import MountTable

        return MountTable(self.workdir.parent / "mounts.json", self.mounts)

    secrets: SecretSource | None = None  # Secret Manager and KMS; None: tasks using them fail
    masker: Masker = field(default_factory=Masker)  # every resolved value, masked everywhere
    # Waits (bounded) until a deleted task's output is all shipped to Cloud Logging.
    drain_logs: Callable[[TaskRecord], Awaitable[None]] | None = None


class EngineOnDemand:
    """The one Docker engine of the agent's tasks, made (and the docker SDK loaded) only when a
    task needs it: an agent that runs only scripts never loads the SDK."""

    def __init__(self, docker_host: str | None) -> None:
        self._docker_host = docker_host
        self._engine: ContainerEngine | None = None

    def __call__(self) -> ContainerEngine:
        if self._engine is None:
            from batch_agent.tasks.docker import ContainerEngine

            self._engine = ContainerEngine(self._docker_host)
        return self._engine

    def close(self) -> None:
        """Close the engine, if one was made."""
        if self._engine is not None:
            self._engine.close()


def make_run(
    record: TaskRecord,
    plan: TaskPlan,
    settings: TaskSettings,
    *,
    lifecycle: Lifecycle,
    engine: EngineFactory,
    resumed: bool = False,
) -> TaskRun:
    """A task's run with its drivers and hooks, in the task's folder under the workdir;
    `resumed`: its record is an earlier agent's (see `Runnables`)."""
    from batch_agent.tasks.container_driver import ContainerDriver
    from batch_agent.tasks.driver import Driver, SecretValues, TaskContext
    from batch_agent.tasks.hooks import ContainerNetwork, Secrets, TaskFolder
    from batch_agent.tasks.plan import ContainerSpec, ScriptSpec
    from batch_agent.tasks.runner import RunSettings, TaskRun
    from batch_agent.tasks.script_driver import ScriptDriver
    from batch_agent.tasks.volumes import Volumes

    folder = task_dir(settings.workdir, record.task_id)
    choose_runtime(record, settings)  # a record of an older agent may not have it
    runtime = runtime_folder(record, settings.workdir)
    # Scripts only where programs may run: the state dir, or a runtime dir not mounted noexec.
    in_runtime = settings.runtime is not None and runtime.parent == settings.runtime
    scripts = runtime if in_runtime and settings.runtime_exec else folder
    if plan.mounts:  # which disks are existing ones (read-only in containers) the VM tells
        plan = replace(plan, volumes=container_volumes(plan.mounts, settings.mounts))
    secrets = SecretValues()  # filled by the Secrets hook, read by the drivers
    folders = TaskFolders(folder, plan.user, runtime)
    context = TaskContext(
        plan=plan,
        folder=folder,
        runtime=runtime,
        scripts=scripts,
        task_id=record.task_id,
        instance=settings.where,
        base_env=settings.base_env,
        folders=folders,
        kill_grace=settings.kill_grace,
        secrets=secrets,
        files=settings.files,
    )
    containers = ContainerDriver(context, engine)
    drivers: dict[type, Driver] = {ScriptSpec: ScriptDriver(context), ContainerSpec: containers}
    return TaskRun(
        record,
        plan,
        lifecycle=MaskedEvents(lifecycle, settings.masker),
        drivers=drivers,
        hooks=[
            TaskFolder(folder, plan.user, folders, settings.files),
            Secrets(plan, secrets, settings.secrets, settings.masker),
            Volumes(settings.mount_table, record.task_id, plan.mounts, plan.user),
            *([ContainerNetwork(containers)] if _blocks_networks(plan) else []),
        ],
        folder=folder,
        settings=RunSettings(
            settings.output, settings.shipping, kill_grace=settings.kill_grace, now=settings.now
        ),
        resumed=resumed,
    )


def choose_runtime(record: TaskRecord, settings: TaskSettings) -> None:
    """Fix where the task's exit statuses (and scripts) go, once and before anything of it
    starts, so that a restarted agent finds them whatever its own setting. Pure."""
    if record.runtime is None and not record.runnables:
        record.runtime = str(settings.runtime or settings.workdir)


def runtime_folder(record: TaskRecord, workdir: Path) -> Path:
    """The task's folder for its exit statuses (and scripts): under the root its record names
    (in the runtime dir, or `workdir` itself), named as its folder in `workdir`. Pure."""
    root = Path(record.runtime) if record.runtime is not None else workdir
    return task_dir(root, record.task_id)


def _blocks_networks(plan: TaskPlan) -> bool:
    """Whether a container of the task gets the task's own internal network (a script-only
    task must never load the docker SDK, not even to clean up)."""
    from batch_agent.tasks.plan import ContainerSpec

    return any(
        isinstance(r.action, ContainerSpec) and r.action.block_external_network
        for r in plan.runnables
    )


# What a task's start imports and the first report never waits for: the task models, plans,
# runs, drivers, hooks.
TASK_SIDE = (
    "batch_agent.wire.task",
    "batch_agent.tasks.plan",
    "batch_agent.tasks.runner",
    "batch_agent.tasks.hooks",
    "batch_agent.tasks.volumes",
    "batch_agent.tasks.script_driver",
    "batch_agent.tasks.container_driver",
)


def preload_task_side(loop: asyncio.AbstractEventLoop) -> None:
    """Import the task side now, in a worker thread, rather than with the first task, whose
    start it would delay (for once the first report is over); say how long it took."""
    began = loop.time()

    def load() -> None:
        for name in TASK_SIDE:
            importlib.import_module(name)

    def loaded(future: asyncio.Future[None]) -> None:
        if not future.cancelled() and future.exception() is None:
            took = 1000 * (loop.time() - began)
            log.info("task side loaded in %.0f ms, ahead of the first task", took)

    loop.run_in_executor(None, load).add_done_callback(loaded)
