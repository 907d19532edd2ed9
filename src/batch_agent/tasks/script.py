"""Script runnables as local processes that outlive an agent crash and keep their exit code.

A runnable is started under a tiny `/bin/sh` waiter, in a new session (so the waiter's pid is
the process group id and one `killpg` reaches every child):

    /bin/sh -c 's=$1; shift; trap : TERM INT HUP QUIT; "$@"; rc=$?; echo "$rc" >"$s"; exit "$rc"'
        batch-waiter STATUS_FILE PROGRAM

The waiter forks and execs PROGRAM (a shebang picks the interpreter; a file without one that
fails with ENOEXEC is run by the forked shell as a shell script, as execvp would) and, when it
ends, writes `$?` (128+signo for a signal death) to STATUS_FILE. The trap is a handler, not an
ignore, so PROGRAM gets default signal dispositions while the waiter survives a SIGTERM/SIGINT
to the group and still records the status; only SIGKILL takes the waiter down with it.
STATUS_FILE is absent (or, for a runnable with a user, empty) until the waiter writes it: both
mean "not ended yet". The waiter's variables are not exported, so nothing of this machinery
leaks into PROGRAM's environment.
Output goes to files opened in append mode, never to a pipe the agent reads.

This module must not know about Batch, tasks, HTTP or the wire format, and must not block the
event loop beyond small local file operations (stat, open, reading a few bytes from /proc).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import stat
import subprocess
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from batch_agent.tasks.execution import EXIT_CODE_UNKNOWN, ExitResult

log = logging.getLogger(__name__)

SHELL = "/bin/sh"
WAITER_NAME = "batch-waiter"
WAITER_SCRIPT = 's=$1; shift; trap : TERM INT HUP QUIT; "$@"; rc=$?; echo "$rc" >"$s"; exit "$rc"'

STATUS_LOST = "exit status lost: the waiter was killed or the process vanished"
_PID_POLL = timedelta(milliseconds=200)  # reattached pids, when pidfd_open is not available
_STOP_POLL_MAX = timedelta(milliseconds=50)
_KILL_TIMEOUT = timedelta(seconds=10)  # after SIGKILL; only a process stuck in D state is slower


def write_script(text: str, directory: Path, *, owner: tuple[int, int] | None = None) -> Path:
    """Write `text` to a new private file (mode 0700) in `directory` and return its path.

    `owner=(uid, gid)` chowns it so that a runnable started with that `user` can execute it.
    Blocks on a small local write; raises OSError if the directory is not writable.
    """
    fd, name = tempfile.mkstemp(prefix="script-", dir=directory)
    try:
        os.fchmod(fd, 0o700)
        if owner is not None:
            os.fchown(fd, owner[0], owner[1])
        with os.fdopen(fd, "wb", closefd=False) as f:
            f.write(text.encode())
    finally:
        os.close(fd)
    return Path(name)


async def start_script(
    program: Path,
    *,
    env: dict[str, str],
    cwd: Path,
    stdout_path: Path,
    stderr_path: Path,
    status_path: Path,
    user: tuple[int, int] | None = None,
) -> ScriptExecution | ExitResult:
    """Start `program` under the waiter in a new session; see the module docstring.

    A relative `program` is taken relative to `cwd`. stdout/stderr are appended to the given
    files (created 0600 if missing); stdin is /dev/null; `env` is the complete environment.
    A stale `status_path` is removed (with `user`: truncated and given to that user, who runs
    the waiter and the program as that uid/gid with no supplementary groups).

    Never raises for a program that cannot start: returns an ExitResult with a reason and exit
    code 127 (not found) or 126 (not executable, or any other start failure). Failures the
    waiter only meets at exec time (e.g. unreadable by `user`) look like the program exiting
    126/127 with the shell's message in stderr. Blocks only for small local file operations.
    """
    if not program.is_absolute():
        program = cwd / program
    problem = _cannot_execute(program, user)
    if problem is not None:
        return problem

    extra: dict[str, Any] = {}
    if user is not None:
        extra = {"user": user[0], "group": user[1], "extra_groups": []}
    fds: list[int] = []
    try:
        if user is not None:  # the waiter, running as `user`, must be able to write it
            status_fd = os.open(status_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            fds.append(status_fd)
            os.fchown(status_fd, user[0], user[1])
        else:  # the waiter creates it; no stale status may stand in for this run's
            with contextlib.suppress(FileNotFoundError):
                os.unlink(status_path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        fds.append(stdout_fd := os.open(stdout_path, flags, 0o600))
        fds.append(stderr_fd := os.open(stderr_path, flags, 0o600))
        if user is not None:  # the user may read back what it wrote
            os.fchown(stdout_fd, user[0], user[1])
            os.fchown(stderr_fd, user[0], user[1])
        process = await asyncio.create_subprocess_exec(
            SHELL,
            "-c",
            WAITER_SCRIPT,
            WAITER_NAME,
            str(status_path),
            str(program),
            stdin=subprocess.DEVNULL,
            stdout=stdout_fd,
            stderr=stderr_fd,
            cwd=cwd,
            env=env,
            start_new_session=True,
            **extra,
        )
    except OSError as e:
        what = f": {e.filename}" if e.filename else ""
        code = 127 if e.errno == errno.ENOENT else 126
        return ExitResult(code, reason=f"cannot start {program}: {e.strerror}{what}")
    except ValueError as e:  # a NUL byte or '=' in the environment, say
        return ExitResult(126, reason=f"cannot start {program}: {e}")
    finally:
        for fd in fds:
            os.close(fd)
    # If the waiter is already gone its status file is written, which is all reattach needs.
    start_time = _stat(process.pid)
    return ScriptExecution(
        pid=process.pid,
        start_time=start_time[1] if start_time else 0,
        status_path=status_path,
        process=process,
    )


class ScriptExecution:
    """A script runnable started by `start_script` or found again by `reattach`.

    `pid` is the waiter's pid, which is also the process group and session id; `start_time` is
    field 22 of /proc/PID/stat at start, which tells the live waiter from a recycled pid.
    """

    def __init__(
        self,
        *,
        pid: int,
        start_time: int,
        status_path: Path,
        process: asyncio.subprocess.Process | None = None,
    ) -> None:
        self._pid = pid
        self.start_time = start_time
        self.status_path = status_path
        self._process = process  # None when reattached: we are not the parent
        self._waiting: asyncio.Task[ExitResult] | None = None
        self._stop_lock = asyncio.Lock()
        self._sent_kill = False

    def __repr__(self) -> str:
        return f"ScriptExecution(pid={self._pid}, start_time={self.start_time})"

    @property
    def pid(self) -> int:
        return self._pid

    @classmethod
    def reattach(cls, pid: int, start_time: int, status_path: Path) -> ScriptExecution | ExitResult:
        """Find a runnable again after an agent restart.

        Returns the recorded ExitResult if the waiter wrote one; else an execution to wait on or
        stop if `pid` still runs with the same `start_time`; else an ExitResult with exit code
        EXIT_CODE_UNKNOWN and a reason saying the status is lost. Blocks only on tiny reads.
        """
        result = read_status(status_path)
        if result is not None:
            return result
        if _is_alive(pid, start_time):
            return cls(pid=pid, start_time=start_time, status_path=status_path)
        # It may have ended between the two looks.
        return read_status(status_path) or ExitResult(EXIT_CODE_UNKNOWN, reason=STATUS_LOST)

    async def wait(self) -> ExitResult:
        """Wait for the waiter to end, then return the recorded status; never raises.

        Safe to call several times and concurrently; cancelling one caller cancels nobody else.
        As the parent, the waiter's own exit status stands in for a missing status file (e.g.
        after SIGKILL: 137). Reattached, a missing status file gives 137 if our `stop` sent
        SIGKILL, else EXIT_CODE_UNKNOWN with a reason.
        """
        if self._waiting is None:
            self._waiting = asyncio.ensure_future(self._wait())
        return await asyncio.shield(self._waiting)

    async def stop(self, grace: timedelta) -> bool:
        """SIGTERM the process group; SIGKILL it if anything of it still lives after `grace`.

        True once the waiter and every process left in its group are dead; False, after a
        warning, for a group that outlives SIGKILL by 10 s (a process stuck in the kernel).
        Idempotent; a group that is already gone is fine; never signals a recycled pid.
        """
        async with self._stop_lock:
            if not self._group_alive():
                await self._reap()
                return True
            self._signal_group(signal.SIGTERM)
            if not await self._until_dead(grace):
                log.info("script %d: still alive %ss after SIGTERM, killing", self._pid, grace)
                self._sent_kill = True
                self._signal_group(signal.SIGKILL)
                if not await self._until_dead(_KILL_TIMEOUT):
                    log.warning("script %d: process group survives SIGKILL", self._pid)
                    return False
            await self._reap()
            return True

    async def _wait(self) -> ExitResult:
        if self._process is not None:
            returncode = await self._process.wait()
            return read_status(self.status_path) or ExitResult.from_returncode(returncode)
        await self._watch_pid()
        result = read_status(self.status_path)
        if result is not None:
            return result
        if self._sent_kill:
            return ExitResult.from_returncode(-signal.SIGKILL)
        return ExitResult(EXIT_CODE_UNKNOWN, reason=STATUS_LOST)

    async def _watch_pid(self) -> None:
        """Return when the (non-child) waiter has ended, without blocking the loop."""
        try:
            pidfd = os.pidfd_open(self._pid)
        except ProcessLookupError:
            return
        except OSError:  # pidfd_open unsupported (Linux < 5.3, seccomp): poll /proc instead
            while _is_alive(self._pid, self.start_time):
                await asyncio.sleep(_PID_POLL.total_seconds())
            return
        try:
            if not _is_alive(self._pid, self.start_time):
                return  # ended, or the pid was recycled before we opened it
            loop = asyncio.get_running_loop()
            ended = loop.create_future()

            def on_readable() -> None:
                if not ended.done():
                    ended.set_result(None)

            loop.add_reader(pidfd, on_readable)
            try:
                await ended
            finally:
                loop.remove_reader(pidfd)
        finally:
            os.close(pidfd)

    async def _reap(self) -> None:
        """As the parent, collect the dead waiter so that no zombie or transport is left."""
        if self._process is not None:
            await self._process.wait()

    def _group_alive(self) -> bool:
        """Whether our waiter or any live process of its group remains (zombies do not count)."""
        leader = _stat(self._pid)
        if leader is not None and leader[1] != self.start_time:
            # The pid is another process now, so our group emptied long ago (a pid is not
            # reused while it names a process group).
            return False
        if leader is not None and leader[0] not in "ZX":
            return True
        try:
            os.killpg(self._pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return _group_has_live_member(self._pid)  # only zombies answer killpg? look closer

    def _signal_group(self, signo: signal.Signals) -> None:
        if not self._group_alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._pid, signo)

    async def _until_dead(self, timeout: timedelta) -> bool:
        """Poll until the group is dead; False if it still lives after `timeout`."""
        deadline = time.monotonic() + timeout.total_seconds()
        pause = 0.002
        while self._group_alive():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, _STOP_POLL_MAX.total_seconds())
        return True


def _cannot_execute(program: Path, user: tuple[int, int] | None) -> ExitResult | None:
    """What execve would refuse, found before starting, as an ExitResult; None if it looks fine."""
    try:
        st = os.stat(program)
    except FileNotFoundError:
        return ExitResult(127, reason=f"cannot execute {program}: No such file or directory")
    except OSError as e:
        return ExitResult(126, reason=f"cannot execute {program}: {e.strerror}")
    if stat.S_ISDIR(st.st_mode):
        return ExitResult(126, reason=f"cannot execute {program}: Is a directory")
    if not stat.S_ISREG(st.st_mode):
        return ExitResult(126, reason=f"cannot execute {program}: not a regular file")
    uid, gid = user if user is not None else (os.geteuid(), os.getegid())
    if uid == 0:
        bits = stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH
    elif st.st_uid == uid:
        bits = stat.S_IXUSR
    elif st.st_gid == gid:
        bits = stat.S_IXGRP
    else:
        bits = stat.S_IXOTH
    if not st.st_mode & bits:
        return ExitResult(126, reason=f"cannot execute {program}: Permission denied")
    interpreter = _interpreter(program)
    if interpreter is not None and not os.path.exists(interpreter):
        return ExitResult(
            127, reason=f"cannot execute {program}: bad interpreter {interpreter}: not found"
        )
    return None


def _interpreter(program: Path) -> str | None:
    """The interpreter named by the shebang line, or None (no shebang, or unreadable)."""
    try:
        with open(program, "rb") as f:
            head = f.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    words = head[2:].split(b"\n", 1)[0].split()
    return os.fsdecode(words[0]) if words else None


def read_status(path: Path) -> ExitResult | None:
    """The status the waiter recorded at `path`, or None if none yet (missing or still empty).

    Garbage in the file gives EXIT_CODE_UNKNOWN with a reason. Blocks on a tiny local read.
    """
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    if not text:
        return None
    try:
        return ExitResult.from_shell_status(int(text))
    except ValueError:
        return ExitResult(EXIT_CODE_UNKNOWN, reason=f"unreadable exit status {text[:40]!r}")


def find_waiter(status_path: Path) -> tuple[int, int] | None:
    """(pid, start time) of the live waiter recording into `status_path`, found by its command
    line, for an agent that crashed before it saved the pid. Blocks on a scan of /proc."""
    wanted = f"\0{WAITER_NAME}\0{status_path}\0".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        # The waiter leads its session; a forked child of it (a shell script without a
        # shebang, before or without exec) shares the command line but not that.
        if wanted in cmdline and _session(int(entry.name)) == int(entry.name):
            found = _stat(int(entry.name))
            if found is not None and found[0] not in "ZX":
                return int(entry.name), found[1]
    return None


def _session(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[3])  # state, ppid, pgrp, session


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, start time) from /proc/PID/stat, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm (field 2) may hold spaces and parentheses: the fields resume after the last ')'.
    fields = data[data.rfind(b")") + 2 :].split()
    return fields[0].decode(), int(fields[19])


def _is_alive(pid: int, start_time: int) -> bool:
    """Whether `pid` is still the process that started at `start_time`, and not a zombie."""
    found = _stat(pid)
    return found is not None and found[1] == start_time and found[0] not in "ZX"


def _group_has_live_member(pgid: int) -> bool:
    """Scan /proc for a non-zombie process in group `pgid` (a few ms; only while it has any)."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False
