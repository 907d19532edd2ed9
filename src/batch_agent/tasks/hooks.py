"""Work around a task's runnables: prestart hooks before the first, poststop hooks after the last.

A hook's `prestart` makes the task ready to run (its folder and user, its secrets; volumes
will plug in here) and says why the task cannot run, if it cannot: the run then fails
the task with 50000 before any runnable starts. `poststop` undoes what the task left behind
(its internal network today; unmounts and the last log flush will join). Both run again when
a restarted agent resumes a task, so each must be idempotent. Hooks never change task state.
"""

from __future__ import annotations

import asyncio
import json
import logging
import pwd
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from batch_agent.tasks import events
from batch_agent.tasks.container_driver import ContainerDriver
from batch_agent.tasks.driver import SecretValues
from batch_agent.tasks.filework import FileWork
from batch_agent.tasks.folders import TaskFolders
from batch_agent.tasks.masking import Masker
from batch_agent.tasks.plan import ContainerSpec, SecretRefs, TaskPlan, is_secret_path

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
    and owns the folder's `work/` (see folders.py); so does its folder for exit statuses (and
    scripts), `runtime`, when that is elsewhere."""

    def __init__(
        self, folder: Path, user: tuple[int, int] | None, folders: TaskFolders, files: FileWork
    ) -> None:
        self._folder = folder
        self._user = user
        self._folders = folders
        self._files = files

    async def prestart(self) -> str | None:
        if self._user is not None:
            uid = self._user[0]
            try:
                pwd.getpwuid(uid)
            except KeyError:
                return events.unknown_user(uid)
        try:  # a new directory costs a disk's journal: off the event loop
            await self._files.run(self._folders.make)
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


class SecretUnavailable(Exception):
    """A secret that cannot be had; the message is the API's error, never a value."""


class SecretSource(Protocol):
    """Secret Manager and Cloud KMS as the tasks need them (the agent's wiring adapts control's
    client). Both BLOCK (retries included) and raise SecretUnavailable."""

    def access(self, version_path: str) -> str:
        """The payload of a Secret Manager version, as text."""
        ...

    def decrypt(self, key_name: str, cipher_text: str) -> bytes:
        """The plaintext of a base64 KMS ciphertext."""
        ...


class _Failed(Exception):
    """One secret failed; the message is the whole event description."""


def needs_secrets(plan: TaskPlan) -> bool:
    """Whether the task reads Secret Manager or KMS (so its output must be masked)."""
    return bool(plan.secrets) or any(r.secrets or _logins(r.action) for r in plan.runnables)


class Secrets:
    """Before any runnable starts, every secret of the task (task and runnable levels, and
    container logins given as Secret Manager paths) is resolved into `values`, which the
    drivers read as they build environments, and into `masker`. Values live in memory only:
    after an agent restart this prestart runs again and fetches them again."""

    def __init__(
        self, plan: TaskPlan, values: SecretValues, source: SecretSource | None, masker: Masker
    ) -> None:
        self._plan = plan
        self._values = values
        self._source = source
        self._masker = masker

    def needed(self) -> bool:
        return needs_secrets(self._plan)

    async def prestart(self) -> str | None:
        if not self.needed():
            return None
        try:
            await asyncio.to_thread(self._resolve_all)
        except _Failed as failure:
            return str(failure)
        self._masker.resolved(self._plan.task_id)
        return None

    async def poststop(self) -> None:
        """Every runnable has ended: drop the values (the masker keeps masking them)."""
        values = self._values
        values.task, values.runnables, values.logins = {}, {}, {}

    def _resolve_all(self) -> None:
        values, cache = self._values, _Cache(self._source)
        values.task = self._level(self._plan.secrets, "the task", cache)
        for runnable in self._plan.runnables:
            if runnable.secrets:
                values.runnables[runnable.index] = self._level(
                    runnable.secrets, runnable.label, cache
                )
            logins = _logins(runnable.action)
            if logins:
                assert isinstance(runnable.action, ContainerSpec)
                resolved = {
                    field: cache.access(path, f"{runnable.label}.container.{field}")
                    for field, path in logins.items()
                }
                values.logins[runnable.index] = (
                    resolved.get("username", runnable.action.username),
                    resolved.get("password", runnable.action.password),
                )
        for value in cache.values():
            self._masker.add(value)

    def _level(self, refs: SecretRefs, owner: str, cache: _Cache) -> dict[str, str]:
        found = {
            name: cache.access(path, f"variable {name} of {owner}")
            for name, path in refs.secret.items()
        }
        for encrypted in refs.encrypted:
            found |= cache.decrypt(
                encrypted.key_name, encrypted.cipher_text, f"encryptedVariables of {owner}"
            )
        return found


def _logins(action: object) -> dict[str, str]:
    """The container login fields given as Secret Manager paths."""
    if not isinstance(action, ContainerSpec):
        return {}
    fields = {"username": action.username, "password": action.password}
    return {name: path for name, path in fields.items() if path and is_secret_path(path)}


class _Cache:
    """One prestart's look-ups: each path asked once; every value kept for the masker."""

    def __init__(self, source: SecretSource | None) -> None:
        self._source = source
        self._found: dict[tuple[str, str], str] = {}
        self._plain: list[str] = []

    def values(self) -> list[str]:
        return [*self._found.values(), *self._plain]

    def access(self, path: str, what: str) -> str:
        if ("secret", path) not in self._found:
            self._found["secret", path] = self._fetch(lambda s: s.access(path), what, path)
        return self._found["secret", path]

    def decrypt(self, key: str, cipher_text: str, what: str) -> dict[str, str]:
        plain = self._fetch(lambda s: s.decrypt(key, cipher_text).decode(), what, key)
        self._plain.append(plain)
        try:
            decoded = json.loads(plain)
        except ValueError:
            decoded = None
        if not isinstance(decoded, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in decoded.items()
        ):
            raise _Failed(
                events.secret_unavailable(
                    what, key, "the plaintext is not a JSON object of variable names to strings"
                )
            )
        self._plain.extend(decoded.values())
        return decoded

    def _fetch(self, call: Callable[[SecretSource], str], what: str, path: str) -> str:
        if self._source is None:
            raise _Failed(events.secret_unavailable(what, path, "this agent has no secrets client"))
        try:
            return call(self._source)
        except SecretUnavailable as error:
            raise _Failed(events.secret_unavailable(what, path, str(error))) from None
        except UnicodeDecodeError:
            raise _Failed(
                events.secret_unavailable(what, path, "the plaintext is not UTF-8")
            ) from None
