"""A started script runnable seen through its waiter: its recorded status, waiting, stopping.

`script.py` starts each runnable under a `/bin/sh` waiter that leads a session of its own and
writes the program's exit status to a status file when the program ends (see there). A
`ScriptExecution` follows one waiter, as its parent or, after an agent restart, by pid and
/proc start time (`reattach`). When the waiter has ended, whatever the runnable left running in
its session (`cmd &`) is stopped too (SIGTERM, a grace period, SIGKILL) before `wait` returns,
so that nothing of a runnable outlives it and writes on into files its task has deleted.

Must not know about Batch, tasks, HTTP or the wire format. It blocks the event loop only for
tiny reads (a status file, one /proc/PID/stat); /proc scans run in worker threads.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import stat
import subprocess
from datetime import timedelta
from pathlib import Path

from batch_agent.tasks import procfs
from batch_agent.tasks.execution import EXIT_CODE_UNKNOWN, ExitResult
from batch_agent.tasks.session import ProcessSession

log = logging.getLogger(__name__)

STATUS_LOST = "exit status lost: the waiter was killed or the process vanished"
LEFTOVER_GRACE = timedelta(seconds=10)  # as the agent's kill grace
_STATUS_MAX = 64  # bytes: "255\n" is what a waiter writes
_PID_POLL = timedelta(milliseconds=200)  # reattached pids, when pidfd_open is not available


def read_status(path: Path) -> ExitResult | None:
    """The status the waiter recorded at `path`, or None if none yet (missing or still empty).

    Garbage in the file gives EXIT_CODE_UNKNOWN with a reason, and so does a symlink or
    anything else that is not a regular file (never followed or read). Blocks on a tiny local
    read: at most `_STATUS_MAX` bytes, whatever the file's size.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as error:  # ELOOP: a symlink
        return ExitResult(EXIT_CODE_UNKNOWN, reason=f"unreadable exit status: {error.strerror}")
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return ExitResult(EXIT_CODE_UNKNOWN, reason="unreadable exit status: not a file")
        text = os.read(fd, _STATUS_MAX).decode(errors="replace").strip()
    finally:
        os.close(fd)
    if not text:
        return None
    try:
        return ExitResult.from_shell_status(int(text))
    except ValueError:
        return ExitResult(EXIT_CODE_UNKNOWN, reason=f"unreadable exit status {text[:40]!r}")


class ScriptExecution:
    """A script runnable started by `start_script` or found again by `reattach`.

    `pid` is the waiter's pid, which is also the process group and session id; `start_time` is
    field 22 of /proc/PID/stat at start, which tells the live waiter from a recycled pid.
    `leftover_grace` is the grace between SIGTERM and SIGKILL for what the runnable leaves
    running when its waiter ends. `ended` is the result of a waiter that has already ended.
    `started` is the `time.monotonic()` taken just before we started the waiter (None when
    reattached): what it left running is then looked for among the pids handed out since.
    `go` is our end of the pipe of a waiter still waiting for its go (see script.py): `go()`
    lets it run the program, `dismiss()` lets it end without.
    """

    def __init__(
        self,
        *,
        pid: int,
        start_time: int,
        status_path: Path,
        process: subprocess.Popen[bytes] | None = None,
        leftover_grace: timedelta = LEFTOVER_GRACE,
        ended: ExitResult | None = None,
        started: float | None = None,
        go: int | None = None,
    ) -> None:
        self._pid = pid
        self.start_time = start_time
        self.status_path = status_path
        self._process = process  # None when reattached: we are not the parent
        self._session = ProcessSession(pid, start_time, started=started)
        self._leftover_grace = leftover_grace
        self._ended = ended
        self._waiting: asyncio.Task[ExitResult] | None = None
        self._reaping: asyncio.Future[int] | None = None
        self._stop_lock = asyncio.Lock()
        self._go = go

    def go(self) -> None:
        """Let a waiter that waits for its go run the program (nothing if it had it)."""
        fd, self._go = self._go, None
        if fd is None:
            return
        try:
            os.write(fd, b"go\n")
        except BrokenPipeError:  # it is gone already (killed): `wait` says how it ended
            pass
        finally:
            os.close(fd)

    async def dismiss(self) -> None:
        """Let a waiter that waits for its go end without running anything, and reap it."""
        fd, self._go = self._go, None
        if fd is None:
            return
        os.close(fd)  # end of file: it exits at once, recording nothing
        if self._process is not None:
            await self._reap(self._process)

    def __repr__(self) -> str:
        return f"ScriptExecution(pid={self._pid}, start_time={self.start_time})"

    @property
    def pid(self) -> int:
        return self._pid

    @classmethod
    def reattach(
        cls,
        pid: int,
        start_time: int,
        status_path: Path,
        *,
        leftover_grace: timedelta = LEFTOVER_GRACE,
    ) -> ScriptExecution | ExitResult:
        """Find a runnable again after an agent restart.

        Returns an execution to wait on or stop if `pid` still runs with the same `start_time`.
        Else the waiter has ended, and this returns its recorded ExitResult; but while processes
        of the waiter's group may be left, an execution instead, whose `wait` stops them and then
        returns that result. A status that is lost (an ExitResult with exit code
        EXIT_CODE_UNKNOWN and a reason) is returned as it is, for the caller to act on.
        Blocks only on tiny reads and a signal 0 (no /proc scan).
        """
        result = read_status(status_path)
        if result is None and procfs.is_alive(pid, start_time):
            return cls(
                pid=pid,
                start_time=start_time,
                status_path=status_path,
                leftover_grace=leftover_grace,
            )
        # It may have ended between the two looks.
        result = result or read_status(status_path)
        if result is None:
            return ExitResult(EXIT_CODE_UNKNOWN, reason=STATUS_LOST)
        if result.exit_code == EXIT_CODE_UNKNOWN:  # garbage in the status file
            return result
        if not ProcessSession(pid, start_time).group_may_exist():
            return result
        return cls(
            pid=pid,
            start_time=start_time,
            status_path=status_path,
            leftover_grace=leftover_grace,
            ended=result,
        )

    async def wait(self) -> ExitResult:
        """Wait for the waiter to end and for what it left running to be stopped, then return
        the recorded status; never raises.

        Safe to call several times and concurrently; cancelling one caller cancels nobody else.
        As the parent, the waiter's own exit status stands in for a missing status file (e.g.
        after SIGKILL: 137). Reattached, a missing status file gives 137 if our `stop` sent
        SIGKILL, else EXIT_CODE_UNKNOWN with a reason. Processes left in the session get
        SIGTERM and, after `leftover_grace`, SIGKILL; they do not change the result.
        """
        if self._waiting is None:
            self._waiting = asyncio.ensure_future(self._wait())
        return await asyncio.shield(self._waiting)

    async def stop(self, grace: timedelta) -> bool:
        """SIGTERM the session; SIGKILL it if anything of it still lives after `grace`.

        True once the waiter and every process left in its session are dead; False, after a
        warning, for a session that outlives SIGKILL by 10 s (a process stuck in the kernel).
        Idempotent; a session that is already gone is fine; never signals a recycled pid.
        """
        if self._go is not None:  # never given its go: it ends at once
            await self.dismiss()
        async with self._stop_lock:
            if not await self._session.terminate(grace):
                return False
            if self._process is not None:
                await self._reap(self._process)  # no zombie is left
            return True

    async def _wait(self) -> ExitResult:
        result = await self._waiter_result()
        try:
            if await self._session.alive():
                log.info("script %d: ended; stopping what it left running", self._pid)
                await self._session.terminate(self._leftover_grace)  # warns if that fails
        except OSError as e:  # EPERM: a member that changed its uid, say
            log.warning("script %d: cannot stop what it left running: %s", self._pid, e)
        return result

    async def _waiter_result(self) -> ExitResult:
        """The status of the waiter, once it has ended."""
        if self._ended is not None:
            return self._ended
        if self._process is not None:
            returncode = await self._reap(self._process)
            return read_status(self.status_path) or ExitResult.from_returncode(returncode)
        await self._watch_pid()
        result = read_status(self.status_path)
        if result is not None:
            return result
        if self._session.killed:
            return ExitResult.from_returncode(-signal.SIGKILL)
        return ExitResult(EXIT_CODE_UNKNOWN, reason=STATUS_LOST)

    async def _watch_pid(self) -> None:
        """Return when the (non-child) waiter has ended, without blocking the loop."""
        try:
            pidfd = os.pidfd_open(self._pid)
        except ProcessLookupError:
            return
        except OSError:  # pidfd_open unsupported (Linux < 5.3, seccomp): poll /proc instead
            while procfs.is_alive(self._pid, self.start_time):
                await asyncio.sleep(_PID_POLL.total_seconds())
            return
        try:
            if not procfs.is_alive(self._pid, self.start_time):
                return  # ended, or the pid was recycled before we opened it
            await _readable(pidfd)
        finally:
            os.close(pidfd)

    async def _reap(self, process: subprocess.Popen[bytes]) -> int:
        """Wait for our child, the waiter, to end and collect it; its return code. Once for
        all callers: the first starts it, the others share it."""
        if self._reaping is None:
            self._reaping = asyncio.ensure_future(_child_ended(process))
        return await asyncio.shield(self._reaping)


async def _child_ended(process: subprocess.Popen[bytes]) -> int:
    """Wait for our child `process` to end, on the event loop (a pidfd becomes readable when
    it does), then reap it; its return code."""
    try:
        pidfd = os.pidfd_open(process.pid)  # not reaped yet: the pid is still ours
    except OSError:  # pidfd_open unsupported (Linux < 5.3, seccomp): a thread waits instead
        return await asyncio.to_thread(process.wait)
    try:
        await _readable(pidfd)
    finally:
        os.close(pidfd)
    return process.wait()  # it has ended: collecting it does not block


async def _readable(fd: int) -> None:
    """Return once `fd` is readable (a pidfd: its process has ended)."""
    loop = asyncio.get_running_loop()
    ended = loop.create_future()

    def on_readable() -> None:
        if not ended.done():
            ended.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        await ended
    finally:
        loop.remove_reader(fd)
