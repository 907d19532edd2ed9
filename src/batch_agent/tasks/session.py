"""A process session led by one process, watched and stopped as one unit.

A script runnable's waiter leads its own session, so its pid is also the id of its process group
and of its session. What the runnable starts stays in that session unless it calls setsid
itself: in the waiter's process group by default (`cmd &`), in groups of its own under job
control or setpgid. `ProcessSession` tells whether anything of the session still lives (the
leader, or any member once the leader has ended) and stops all of it: SIGTERM to every group
of the session, a grace period, SIGKILL.

It never signals a recycled id: the kernel does not reuse a pid while it names a live process
group or session, and the leader's /proc start time tells its pid, once reused, from it.

Looking for members once the leader has ended is a scan of /proc, a read of every process's
stat file (~20 us each, more on a busy VM; the cost of every short runnable's end): for a
session whose leader we started moments ago, only the pids handed out since the leader's are
read (`procfs.pids_since`), usually a handful.

Process layer only: knows nothing of Batch, tasks, scripts or HTTP. On the event loop it reads
at most `_READS_ON_LOOP` /proc/PID/stat files and sends signals; larger scans run in worker
threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from datetime import timedelta

from batch_agent.tasks import procfs

log = logging.getLogger(__name__)

KILL_TIMEOUT = timedelta(seconds=10)  # after SIGKILL; only a process stuck in D state is slower
_POLL_MIN = timedelta(milliseconds=2)
_POLL_MAX = timedelta(milliseconds=50)
_READS_ON_LOOP = 32  # stat files read on the event loop; more go to a worker thread


class ProcessSession:
    """The session (and process group) `sid`, led by the process that started at `start_time`.

    `started` is the `time.monotonic()` taken just before the leader was started, when we
    started it: then its members are looked for among the pids handed out since. `killed`
    becomes True once `terminate` has had to send SIGKILL.
    """

    def __init__(self, sid: int, start_time: int, *, started: float | None = None) -> None:
        self.sid = sid
        self.start_time = start_time
        self.started = started
        self.killed = False

    def __repr__(self) -> str:
        return f"ProcessSession(sid={self.sid}, start_time={self.start_time})"

    def group_may_exist(self) -> bool:
        """Whether any process of the leader's group (a zombie, perhaps) may exist; no scan.

        False means nothing of that group is left; True may be only zombies. Members the
        session keeps in other process groups are not seen: `alive` scans for those.
        """
        if self._recycled(procfs.read_stat(self.sid)):
            return False
        try:
            os.killpg(self.sid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    async def alive(self) -> bool:
        """Whether the leader or any live process of the session remains (zombies do not count).

        Scans /proc in a worker thread once the leader has ended.
        """
        leader = procfs.read_stat(self.sid)
        if self._recycled(leader):
            return False  # the session emptied long ago
        if leader is not None and leader.alive:
            return True
        return bool(await self._members())

    async def signal(self, signo: signal.Signals) -> None:
        """Send `signo` to every process group of the session; nothing if it is gone."""
        if self._recycled(procfs.read_stat(self.sid)):
            return
        groups = {self.sid} | {member.pgrp for member in await self._members()}
        for pgrp in sorted(groups):
            with contextlib.suppress(ProcessLookupError):  # that group ended meanwhile
                os.killpg(pgrp, signo)

    async def terminate(self, grace: timedelta, *, kill_timeout: timedelta = KILL_TIMEOUT) -> bool:
        """SIGTERM the session; SIGKILL it if anything of it still lives after `grace`.

        True once all of it is dead (at once if it already is); False, after a warning, if
        something outlives SIGKILL by `kill_timeout` (a process stuck in the kernel). Safe to
        call again and concurrently: each call sends its own signals on its own schedule.
        """
        if not await self.alive():
            return True
        await self.signal(signal.SIGTERM)
        if await self._until_dead(grace):
            return True
        log.info(
            "session %d: still alive %ss after SIGTERM, killing", self.sid, grace.total_seconds()
        )
        self.killed = True
        await self.signal(signal.SIGKILL)
        if await self._until_dead(kill_timeout):
            return True
        log.warning("session %d: survives SIGKILL", self.sid)
        return False

    def _recycled(self, leader: procfs.ProcStat | None) -> bool:
        """Whether `sid` names another process now (so our session emptied long ago)."""
        return leader is not None and leader.start_time != self.start_time

    async def _members(self) -> list[procfs.ProcStat]:
        """The live members of the session other than its leader's pid (which, once the leader
        has ended, may start another process: that one is not ours)."""
        among = None
        if self.started is not None:
            among = procfs.pids_since(self.sid, started=self.started)
        if among is not None and len(among) <= _READS_ON_LOOP:
            members = procfs.session_members(self.sid, among)
        else:
            members = await asyncio.to_thread(procfs.session_members, self.sid, among)
        return [member for member in members if member.pid != self.sid]

    async def _until_dead(self, timeout: timedelta) -> bool:
        """Poll until nothing of the session lives; False if something still does after
        `timeout`."""
        deadline = time.monotonic() + timeout.total_seconds()
        pause = _POLL_MIN.total_seconds()
        while await self.alive():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, _POLL_MAX.total_seconds())
        return True
