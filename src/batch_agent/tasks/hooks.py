"""Work around a task's runnables: prestart hooks before the first, poststop hooks after the last.

A hook's `prestart` makes the task ready to run (its folder and user today; volumes and
secrets will plug in here) and says why the task cannot run, if it cannot: the run then fails
the task with 50000 before any runnable starts. `poststop` undoes what the task left behind
(its internal network today; unmounts and the last log flush will join). Both run again when
a restarted agent resumes a task, so each must be idempotent. Hooks never change task state.
"""

from __future__ import annotations

import logging
import pwd
from pathlib import Path
from typing import Protocol

from batch_agent.tasks import events
from batch_agent.tasks.container_driver import ContainerDriver
from batch_agent.tasks.folders import make_task_folder

log = logging.getLogger(__name__)


class Hook(Protocol):
    async def prestart(self) -> str | None:
        """Prepare; the reason the task cannot run (named for a status event), or None."""
        ...

    async def poststop(self) -> None:
        """Release what prestart or the runnables left; never raises for a failed cleanup."""
        ...


class TaskFolder:
    """The task's folder exists and is the agent's; with a userAccount, that user exists here
    and owns the folder's `work/` (see folders.py)."""

    def __init__(self, folder: Path, user: tuple[int, int] | None) -> None:
        self._folder = folder
        self._user = user

    async def prestart(self) -> str | None:
        if self._user is not None:
            uid = self._user[0]
            try:
                pwd.getpwuid(uid)
            except KeyError:
                return events.unknown_user(uid)
        try:
            make_task_folder(self._folder, self._user)
        except OSError as error:
            return events.task_folder_failed(str(self._folder), error.strerror or str(error))
        return None

    async def poststop(self) -> None:
        return None


class ContainerNetwork:
    """The task's internal network (blockExternalNetwork) is removed once its runnables end."""

    def __init__(self, driver: ContainerDriver) -> None:
        self._driver = driver

    async def prestart(self) -> str | None:
        return None  # made by the first container that needs it

    async def poststop(self) -> None:
        from batch_agent.tasks.docker import EngineError

        try:
            await self._driver.release()
        except (TimeoutError, EngineError) as error:
            log.warning("task %s: network not removed: %s", self._driver.context.task_id, error)
