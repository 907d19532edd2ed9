"""Script runnables as local processes that outlive an agent crash and keep their exit code.

A runnable is started under a tiny `/bin/sh` waiter, in a new session (so the waiter's pid is
also the process group and session id, through which everything the program starts is found
and signalled):

    /bin/sh -c 's=$1; shift; read -r g || exit 0; exec </dev/null; trap : TERM INT HUP QUIT;
        "$@"; rc=$?; echo "$rc" >"$s"; exit "$rc"' batch-waiter STATUS_FILE PROGRAM

The waiter first waits for its go: a line on its stdin, a pipe whose other end only the agent
holds. Without it (end of file: the agent let it go, or died) it exits at once, having run
nothing and recorded nothing. So a waiter can be forked ahead, while the runnable before it
still runs, and its start is then one write (`ScriptExecution.go`): the fork and the exec of
the waiter's shell, most of a start's cost, are off the path from one runnable to the next.
Given its go, the waiter forks and execs PROGRAM, its stdin /dev/null (a shebang picks the
interpreter; a file without one that fails with ENOEXEC is run by the forked shell as a shell
script, as execvp would; a script text known to have none is given as `/bin/sh PROGRAM`, the
same a failed exec sooner) and, when it ends, writes `$?` (128+signo for a signal death) to
STATUS_FILE. The trap is a handler, not an
ignore, so PROGRAM gets default signal dispositions while the waiter survives a SIGTERM/SIGINT
to the group and still records the status; only SIGKILL takes the waiter down with it.
STATUS_FILE is absent (or, for a runnable with a user, empty) until the waiter writes it: both
mean "not ended yet". The waiter's variables are not exported, so nothing of this machinery
leaks into PROGRAM's environment.
Output goes to files opened in append mode, never to a pipe the agent reads.
When systemd is PID 1 the waiter goes into its task's scope: its command is prefixed with
`systemd-run --scope` (and, with a user, `setpriv`), which make the scope and exec it in place,
so that the pid started is still the waiter's, with its start time and command line; or, when
the task has a waiter alive in a scope already, it joins that one before its go (`scope.py`).

This module starts runnables in two steps, `open_files` (the checks and file work, for a worker
thread) and `spawn_opened` (the fork, cheap enough for the event loop's thread: see there), or
both at once (`start_script`), and finds an unrecorded waiter by its command line
(`find_waiter`, a /proc scan for worker threads); `waiter.py` follows a started one
(`ScriptExecution`, `read_status`), and is re-exported here. This module must not know about
Batch, tasks, HTTP or the wire format.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from batch_agent.tasks import procfs, scope
from batch_agent.tasks.execution import ExitResult
from batch_agent.tasks.waiter import LEFTOVER_GRACE, STATUS_LOST, ScriptExecution, read_status

__all__ = [
    "SHELL",
    "STATUS_LOST",
    "WAITER_NAME",
    "OpenedFiles",
    "ScriptExecution",
    "find_waiter",
    "open_files",
    "read_status",
    "spawn_opened",
    "start_script",
    "waiter_argv",
    "write_script",
]

SHELL = "/bin/sh"
WAITER_NAME = "batch-waiter"
WAITER_SCRIPT = (
    "s=$1; shift; read -r g || exit 0; exec </dev/null; trap : TERM INT HUP QUIT; "
    '"$@"; rc=$?; echo "$rc" >"$s"; exit "$rc"'
)


def write_script(text: str, directory: Path, *, owner: tuple[int, int] | None = None) -> Path:
    """Write `text` to a new private file (mode 0700) in `directory` and return its path.

    `owner=(uid, gid)` chowns it so that a runnable started with that `user` can execute it.
    Blocks on a small local write; raises OSError if the directory is not writable.

    Scripts are written in worker threads while the event loop's thread forks waiters: a child
    forked while a script is open for writing holds it open too, and exec'ing the script
    meanwhile fails with ETXTBSY ("Text file busy", 126). That cannot happen as long as every
    fork is on the loop's thread: the fd is O_CLOEXEC, `Popen` returns only once its child has
    exec'd, and a script's waiter is forked only after its write is done, so every child that
    got a copy has let it go before anyone execs the script. Fork from no other thread.
    """
    fd, name = tempfile.mkstemp(prefix="script-", dir=directory)  # O_CLOEXEC
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
    leftover_grace: timedelta = LEFTOVER_GRACE,
) -> ScriptExecution | ExitResult:
    """`open_files` in a worker thread (the event loop goes on while the files are made), then
    `spawn_opened` on the loop's thread."""
    files = await asyncio.to_thread(
        open_files,
        program,
        cwd=cwd,
        stdout_path=stdout_path,
        stderr_path=stderr_path,
        status_path=status_path,
        user=user,
    )
    if isinstance(files, ExitResult):
        return files
    launch = scope.launcher(status_path, user)  # a scope of its own, under systemd
    return spawn_opened(
        files, env=env, cwd=cwd, user=user, leftover_grace=leftover_grace, launch=launch
    )


@dataclass
class OpenedFiles:
    """What one start of the waiter needs, checked and open: `spawn_opened` closes the fds."""

    program: Path
    shell: bool  # run by /bin/sh: see `open_files`
    status_path: Path
    stdout: int
    stderr: int
    status: int | None  # with a user only: the waiter, as that user, must be able to write it

    def close(self) -> None:
        for fd in (self.stdout, self.stderr, self.status):
            if fd is not None:
                os.close(fd)


def open_files(
    program: Path,
    *,
    cwd: Path,
    stdout_path: Path,
    stderr_path: Path,
    status_path: Path,
    user: tuple[int, int] | None = None,
    shell: bool = False,
) -> OpenedFiles | ExitResult:
    """Check `program` and open the files of its start; see the module docstring.

    `shell`: the waiter runs `/bin/sh PROGRAM`, for a script known to have no shebang: what
    its exec would come to after ENOEXEC, one failed exec sooner (`program`, which sh only
    reads, is then not checked: sh says what is wrong with it, in stderr).

    A relative `program` is taken relative to `cwd`. stdout/stderr are opened for appending
    (created 0600 if missing). A stale `status_path` is removed (with `user`: truncated and
    given to that user, who runs the waiter and the program; stdout and stderr are given to it
    too, so that it can read them back). None of the three is opened through a symlink or when
    it is not a regular file (126): with `user`, they must be in a folder that user cannot
    write, so that it cannot swap a name for another. A program that cannot start gives an
    ExitResult with a reason and exit code 127 (not found) or 126 (not executable, or any other
    failure); this never raises. Blocks on small local file operations: for a worker thread.
    """
    if not program.is_absolute():
        program = cwd / program
    problem = None if shell else _cannot_execute(program, user)
    if problem is not None:
        return problem
    fds: list[int] = []
    try:
        status_fd = None
        if user is not None:  # the waiter, running as `user`, must be able to write it
            fds.append(status_fd := _open_regular(status_path, os.O_TRUNC))
            os.fchown(status_fd, user[0], user[1])
        else:  # the waiter creates it; no stale status may stand in for this run's
            with contextlib.suppress(FileNotFoundError):
                os.unlink(status_path)
        fds.append(stdout_fd := _open_regular(stdout_path, os.O_APPEND))
        fds.append(stderr_fd := _open_regular(stderr_path, os.O_APPEND))
        if user is not None:  # the user may read back what it wrote
            os.fchown(stdout_fd, user[0], user[1])
            os.fchown(stderr_fd, user[0], user[1])
    except OSError as e:
        for fd in fds:
            os.close(fd)
        return _not_started(program, e)
    return OpenedFiles(program, shell, status_path, stdout_fd, stderr_fd, status_fd)


def spawn_opened(
    files: OpenedFiles,
    *,
    env: dict[str, str],
    cwd: Path,
    user: tuple[int, int] | None = None,
    leftover_grace: timedelta = LEFTOVER_GRACE,
    go: bool = True,
    launch: scope.Launch | None = None,
) -> ScriptExecution | ExitResult:
    """Start the waiter in a new session on the files `open_files` opened, and close them.

    `go=False` leaves the waiter waiting for its go (`ScriptExecution.go`, or `dismiss`): the
    program does not run before. The program's stdin is /dev/null; `env` is the complete
    environment; with `user`, the waiter and the program run as that uid/gid with no
    supplementary groups. Never raises for a program that cannot start (an ExitResult, as
    `open_files`); failures the waiter only meets at exec time (e.g. unreadable by `user`)
    look like the program exiting 126/127 with the shell's message in stderr.
    `leftover_grace` is the execution's grace before SIGKILL for what the program leaves
    running when it ends (see `ScriptExecution`). `launch` (`scope.launcher`) puts the waiter
    in a scope, under systemd: its prefix goes in front of the waiter's command; a scope it is
    to join is the caller's to join (`scope.join`, which may wait), before the go.

    Forks in the calling thread, which must be the event loop's, where every waiter is forked
    (see `write_script`). Python forks with vfork unless it must switch to a `user` itself
    (under systemd, setpriv does that after the exec), so the loop waits only until the waiter
    is exec'd, a fraction of a millisecond. A full fork, for a `user` without systemd, stalls
    the loop ~1 ms.
    """
    if go and launch is not None and launch.join:
        raise ValueError("a waiter that joins a scope gets its go once it has joined")
    extra: dict[str, Any] = {}
    if user is not None and launch is None:  # in a scope, setpriv drops to the user
        extra = {"user": user[0], "group": user[1], "extra_groups": []}
    prefix = launch.prefix if launch is not None else []
    waits, go_end = os.pipe()  # the waiter's stdin; only we hold the other end
    try:
        started = time.monotonic()  # before the waiter's pid is handed out
        process = subprocess.Popen(  # on the loop's thread: see write_script
            waiter_argv(files.program, files.status_path, prefix, shell=files.shell),
            stdin=waits,
            stdout=files.stdout,
            stderr=files.stderr,
            cwd=cwd,
            env=env,
            start_new_session=True,
            **extra,
        )
    except OSError as e:
        os.close(go_end)
        return _not_started(files.program, e)
    except ValueError as e:  # a NUL byte or '=' in the environment, say
        os.close(go_end)
        return ExitResult(126, reason=f"cannot start {files.program}: {e}")
    finally:
        files.close()
        os.close(waits)
    # If the waiter is already gone its status file is written, which is all reattach needs.
    waiter = procfs.read_stat(process.pid)
    execution = ScriptExecution(
        pid=process.pid,
        start_time=waiter.start_time if waiter else 0,
        status_path=files.status_path,
        process=process,
        leftover_grace=leftover_grace,
        started=started,
        go=go_end,
    )
    if go:
        execution.go()
    return execution


def _not_started(program: Path, error: OSError) -> ExitResult:
    what = f": {error.filename}" if error.filename else ""
    code = 127 if error.errno == errno.ENOENT else 126
    return ExitResult(code, reason=f"cannot start {program}: {error.strerror}{what}")


def waiter_argv(
    program: Path, status_path: Path, prefix: list[str], *, shell: bool = False
) -> list[str]:
    """The waiter's command for `program` (run by /bin/sh if `shell`), after `prefix` (a
    scope's command, or nothing), which must exec what follows it in place. Pure."""
    run = [SHELL, str(program)] if shell else [str(program)]
    return [*prefix, SHELL, "-c", WAITER_SCRIPT, WAITER_NAME, str(status_path), *run]


def _open_regular(path: Path, flags: int) -> int:
    """Open `path` for writing (created 0600 if missing) only if it is a regular file and no
    symlink: never a file elsewhere that someone pointed this name at. Raises OSError."""
    fd = os.open(
        path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | flags, 0o600
    )
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        os.set_blocking(fd, True)  # O_NONBLOCK was only so that a FIFO cannot hang the open
    except BaseException:
        os.close(fd)
        raise
    return fd


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
    # Not read as root for a user: the path may lead through folders that user can write.
    # Its waiter meets a bad interpreter at exec time instead (127, the message in stderr).
    interpreter = _interpreter(program) if user is None else None
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


def find_waiter(status_path: Path) -> tuple[int, int] | None:
    """(pid, start time) of the live waiter recording into `status_path`, found by its command
    line, for an agent that crashed before it saved the pid. Blocks on a scan of /proc."""
    wanted = f"\0{WAITER_NAME}\0{status_path}\0".encode()
    for found in procfs.with_cmdline(wanted):
        # The waiter leads its session; a forked child of it (a shell script without a
        # shebang, before or without exec) shares the command line but not that.
        if found.session == found.pid:
            return found.pid, found.start_time
    return None
