"""The state dir itself: its modes and the lock that lets one agent at a time use it.

The state dir and its `tasks/` are 0711: a userAccount task passes through to its own folder
(which the task-folder hook chowns to that user), nobody else lists them or reads the database
(`store` makes its files 0600). The lock is an exclusive flock on `STATE_DIR/lock`, taken at
start-up and held for the life of the process: a second agent on the same state dir would run
the same tasks again. Knows nothing of tasks, sqlite or HTTP.
"""

from __future__ import annotations

import array
import fcntl
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

DIR_MODE = 0o711  # others may pass through (to a task folder they own), never list
LOCK_MODE = 0o600
# linux/fs.h: the inode flags ioctls (an int, whatever their size says) and FS_TOPDIR_FL
_FS_IOC_GETFLAGS, _FS_IOC_SETFLAGS = 0x80086601, 0x40086602
_FS_TOPDIR_FL = 0x00020000


class StateDirBusy(Exception):
    """Another agent holds the state dir."""


class StateDirLock:
    """An exclusive flock on `STATE_DIR/lock`: held until `release`, or the process ends."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def release(self) -> None:
        os.close(self._fd)  # closing the only descriptor drops the flock


def claim_state_dir(state_dir: Path) -> StateDirLock:
    """Make the state dir and its `tasks/` (0711, existing ones tightened) and take its lock.
    Raises StateDirBusy while another agent holds it. Blocks briefly: call at start-up."""
    state_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    # O_CLOEXEC: a task's process must never inherit the lock and hold it past the agent.
    fd = os.open(state_dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, LOCK_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StateDirBusy(
            f"state dir {state_dir} is in use by another agent (pid {holder})"
        ) from None
    os.fchmod(fd, LOCK_MODE)
    os.ftruncate(fd, 0)
    try:
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # for the message above; only a hint
    except OSError as error:
        log.warning("state dir: pid not written to the lock file: %s", error)
    for folder in (state_dir, state_dir / "tasks"):
        folder.mkdir(mode=DIR_MODE, exist_ok=True)
        os.chmod(folder, DIR_MODE)
    spread_subfolders(state_dir / "tasks")
    return StateDirLock(fd)


def spread_subfolders(folder: Path) -> None:
    """Ask ext4 to place each new folder in `folder` as it places top-level ones, in the block
    group with the most free inodes (the "top of directory hierarchy" flag, `chattr +T`),
    rather than in the group of `folder` itself.

    A task folder and its files are made, then deleted, thousands of times in `tasks/`: in one
    group, on an ext4 without a journal, that churn made a new task's folders and files cost
    several times as much kernel time (docs/choices.md, "Task folders"). Elsewhere (no such
    flag, not ext4) this does nothing.
    """
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        flags = array.array("i", [0])
        fcntl.ioctl(fd, _FS_IOC_GETFLAGS, flags, True)
        if not flags[0] & _FS_TOPDIR_FL:
            flags[0] |= _FS_TOPDIR_FL
            fcntl.ioctl(fd, _FS_IOC_SETFLAGS, flags)
    except OSError as error:  # ENOTTY, EOPNOTSUPP: a filesystem without these flags
        log.debug("state dir: %s keeps its folders' placement: %s", folder, error)
    finally:
        os.close(fd)
