"""Task volumes: the `Volumes` prestart/poststop hook and the VM's mount table they share.

A volume is mounted once per VM and shared: `MountTable` records, per mountPath, what is mounted
there and which unfinished tasks use it, in one JSON file under the state dir, replaced
atomically on every change. The intent is written before a mount and the entry dropped only after
the unmount, so an agent that crashes in between finds the entry on restart: it neither mounts
twice nor forgets to unmount. Changes are serialised by one lock. The commands are mounts.py's;
this module must not change task state (the run fails the task from the hook's answer).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any

from batch_agent.tasks import mounts
from batch_agent.tasks.mounts import MountSettings
from batch_agent.tasks.plan import VolumeSpec

log = logging.getLogger(__name__)


def volume_failed(volume: VolumeSpec, error: str) -> str:
    """The cause of a task that failed on a volume (events wording, kept beside its one use)."""
    return f"{volume.label} could not be mounted: {error}"


class MountTable:
    """The mounts of this VM and their users; one per agent (and per state file)."""

    def __init__(self, file: Path, settings: MountSettings) -> None:
        self.file = file
        self.settings = settings
        self._lock = asyncio.Lock()

    async def acquire(
        self, task_id: str, volume: VolumeSpec, user: tuple[int, int] | None
    ) -> str | None:
        """Mount `volume` for `task_id`, or join the mount already there with the same source;
        None, or why it cannot be had. Idempotent for a task that already holds it."""
        if volume.kind == "path":
            return None  # nothing to mount: the VM's folder is shared with containers as is
        path, source = volume.mount_path, mounts.source(volume, self.settings)
        async with self._lock:
            table = self._load()
            entry = table.get(path)
            if entry is None and mounts.is_mounted(path):
                # Not the agent's (its intent would be recorded): used as is, never unmounted.
                log.info("volumes: %s was mounted by someone else; used as it is", path)
                return None
            if entry is not None and entry["source"] != source:
                if mounts.is_mounted(path):
                    users = ", ".join(entry["tasks"]) or "no task"
                    return f"{path} already holds {entry['source']} (used by {users})"
                entry = None  # a leftover (a reboot took its mount): ours to replace
            if entry is not None and mounts.is_mounted(path):
                if task_id not in entry["tasks"]:
                    entry["tasks"].append(task_id)
                    await self._save(table)
                return None
            # Not mounted (new, or gone with a reboot): earlier users are long finished.
            table[path] = {"source": source, "tasks": [task_id]}
            await self._save(table)  # the intent first: a crash from here on is found on restart
            error = await mounts.mount(volume, self.settings, user)
            if error is not None:
                del table[path]
                await self._save(table)
            return error

    async def release(self, task_id: str) -> None:
        """`task_id` is done with its volumes: unmount each no other task uses. Never raises;
        a mount that will not go keeps its entry (without users), for the next release."""
        async with self._lock:
            table = self._load()
            for path, entry in list(table.items()):
                if task_id in entry["tasks"]:
                    entry["tasks"].remove(task_id)
                if entry["tasks"]:
                    continue
                error = await mounts.unmount(path, self.settings)
                if error is None:
                    del table[path]
                else:
                    log.warning("volumes: %s stays mounted: %s", path, error)
            await self._save(table)

    def users(self) -> dict[str, list[str]]:
        """mountPath -> the tasks using it, as recorded."""
        return {path: list(e["tasks"]) for path, e in self._load().items()}

    def _load(self) -> dict[str, Any]:
        try:
            table = json.loads(self.file.read_text())
        except FileNotFoundError:
            return {}
        return table if isinstance(table, dict) else {}

    async def _save(self, table: dict[str, Any]) -> None:
        await asyncio.to_thread(self._write, table)

    def _write(self, table: dict[str, Any]) -> None:
        """Replace the file atomically (write, fsync, rename). Blocks."""
        self.file.parent.mkdir(parents=True, exist_ok=True)
        part = self.file.with_name(self.file.name + ".part")
        with part.open("w") as out:
            json.dump(table, out, indent=1, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        os.replace(part, self.file)
        folder = os.open(self.file.parent, os.O_RDONLY)
        try:
            os.fsync(folder)  # the rename itself survives a crash
        finally:
            os.close(folder)


class Volumes:
    """Prestart: every task volume is mounted (or joined) before the first runnable; the first
    that cannot be fails the task. Poststop: the task lets go of them all."""

    def __init__(
        self,
        table: MountTable,
        task_id: str,
        volumes: tuple[VolumeSpec, ...],
        user: tuple[int, int] | None,
    ) -> None:
        self._table = table
        self._task_id = task_id
        self._volumes = volumes
        self._user = user

    async def prestart(self) -> str | None:
        for volume in self._volumes:
            error = await self._table.acquire(self._task_id, volume, self._user)
            if error is not None:
                log.error("task %s: %s not mounted: %s", self._task_id, volume.label, error)
                return volume_failed(volume, error)
        return None

    async def poststop(self) -> None:
        if self._volumes:
            await self._table.release(self._task_id)
