"""The container driver: a runnable's `container` run on the Docker engine (`tasks/docker`).

Gives each container the task's environment, labels to find it by after an agent restart,
the task's volumes when it names none, and the task's own internal network when it blocks
external access. The engine (and so the docker SDK) is made on first use by the agent, so a
VM that runs only scripts never loads it. Knows nothing of task states or persistence.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from batch_agent.tasks import events
from batch_agent.tasks.driver import Started, TaskContext
from batch_agent.tasks.execution import EXIT_CODE_UNKNOWN, Execution, ExitResult, Handle
from batch_agent.tasks.plan import ContainerSpec, RunnablePlan

if TYPE_CHECKING:
    from batch_agent.tasks.docker import ContainerEngine

LABEL_TASK = "batch-agent.task"  # container labels: how a restarted agent finds them again
LABEL_RUNNABLE = "batch-agent.runnable"
LABEL_INSTANCE = "batch-agent.instance"

EngineFactory = Callable[[], "ContainerEngine"]


class ContainerDriver:
    def __init__(self, context: TaskContext, engine: EngineFactory) -> None:
        self.context = context
        self.engine = engine  # made on first call

    def prepare(self, runnable: RunnablePlan) -> PreparedContainer | ExitResult:
        assert isinstance(runnable.action, ContainerSpec)
        return PreparedContainer(self, runnable, runnable.action)

    def ahead(self, runnable: RunnablePlan, *, hooks_done: bool = False) -> None:
        """Nothing to do ahead: an image pull is not harmless (it may fail the task)."""

    async def dismiss_ahead(self) -> None:
        """Nothing was made ready ahead."""

    async def find(self, runnable: RunnablePlan) -> Started | None:
        """None: a container starts only once its intent is saved."""
        return None

    async def recover(self, runnable: RunnablePlan, handle: Handle) -> Execution | ExitResult:
        from batch_agent.tasks.docker import EngineError

        try:
            found = await self.engine().find(self.labels(runnable.index))
        except EngineError as error:
            return ExitResult(EXIT_CODE_UNKNOWN, reason=f"{runnable.label}: {error}")
        if found:
            return found[0]
        return ExitResult(EXIT_CODE_UNKNOWN, reason=events.container_vanished(runnable.label))

    async def release(self) -> None:
        """The task's runnables have ended: remove its internal network."""
        await self.engine().remove_network(self.network)

    @property
    def network(self) -> str:
        """The task's own internal network, shared by its blockExternalNetwork containers."""
        return task_network(self.context.task_id)

    def labels(self, k: int) -> dict[str, str]:
        context = self.context
        return {
            LABEL_TASK: context.task_id,
            LABEL_RUNNABLE: str(k),
            LABEL_INSTANCE: context.instance,
        }


@dataclass
class PreparedContainer:
    driver: ContainerDriver
    runnable: RunnablePlan
    spec: ContainerSpec

    @property
    def handle(self) -> Handle:
        return Handle(container=True)

    async def start(self, intent: asyncio.Future[None]) -> Started | ExitResult:
        await intent  # a container is created only once its intent is on disk
        driver, context, k = self.driver, self.driver.context, self.runnable.index
        plan = context.plan
        # Nothing of the agent's environment goes in: the image's own PATH and HOME apply.
        secrets = context.secrets
        env = {
            **secrets.task_variables(plan),
            **secrets.runnable_variables(self.runnable),
            **context.batch_variables(),
        }
        spec = self.spec
        if k in secrets.logins:  # Secret Manager paths resolved by the prestart
            username, password = secrets.logins[k]
            spec = replace(spec, username=username, password=password)
        started = await driver.engine().start(
            spec,
            env=env,
            labels=driver.labels(k),
            user=plan.user,
            default_volumes=list(plan.volumes),
            network=driver.network if self.spec.block_external_network else None,
            stdout_path=context.output(k, "stdout"),
            stderr_path=context.output(k, "stderr"),
            name_hint=f"task{plan.task_index}-r{k}",
        )
        if isinstance(started, ExitResult):
            return started
        return Started(started, self.handle)


def task_network(task_id: str) -> str:
    digest = hashlib.sha256(task_id.encode()).hexdigest()[:12]
    return f"batch-agent-{digest}"


async def remove_task_containers(engine: ContainerEngine, task_id: str) -> str | None:
    """Remove every container of `task_id` (a deleted task); the error, if the engine failed."""
    from batch_agent.tasks.docker import EngineError

    try:
        await engine.remove_all({LABEL_TASK: task_id})
    except EngineError as error:
        return str(error)
    return None
