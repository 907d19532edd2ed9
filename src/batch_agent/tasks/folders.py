"""A task's folder on disk: its name, its layout, and making and removing it safely.

Each task gets one folder directly under the agent's `tasks/` directory, named by a readable,
sanitised tail of the task's name and a hash of all of it (`task_dir`): one path component
whatever the server sends (`.`, `..`, `a/../..`, empty, 10 kB), and two names never share one.

The folder belongs to the agent (mode 0711) and holds the files the agent itself opens: each
runnable's `runnable-K.status`, `.stdout` and `.stderr`, and the scripts written from `text`;
the scripts and statuses may be in a folder of the same name on tmpfs instead (runtimedir.py),
made and removed the same way.
With a userAccount, the agent hands those files to the user by fd (so the user's waiter can
write its status and the user can read its own output), but the user cannot add, rename or
replace a name in the folder: no path the agent opens as root leads through a symlink or a
hard link the user planted. The user's own place is `work/` (its scripts' working directory),
which it owns; the agent never opens anything below it. `remove_task_dir` deletes only a
direct child of `tasks/`, never through a symlink.

Must not know about task states, drivers or processes. Blocks on small local file operations.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import stat
from pathlib import Path

log = logging.getLogger(__name__)

WORK = "work"
_PREFIX_CHARS = 48  # of the name's tail: where Batch puts what tells its tasks apart
_HASH_CHARS = 16
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def task_dir(workdir: Path, task_id: str) -> Path:
    """The folder of task `task_id`: `<safe tail of the name>-<sha256 prefix of all of it>`.

    Always one component directly under `workdir`; distinct names give distinct folders.
    Pure: no I/O.
    """
    digest = hashlib.sha256(task_id.encode("utf-8", "surrogatepass")).hexdigest()
    prefix = _UNSAFE.sub("_", task_id[-_PREFIX_CHARS:]).lstrip("._-") or "task"
    return workdir / f"{prefix}-{digest[:_HASH_CHARS]}"


def work_dir(folder: Path) -> Path:
    """The task user's own folder inside the task's folder: its scripts' working directory."""
    return folder / WORK


def status_path(folder: Path, k: int) -> Path:
    """Where the waiter of runnable `k` (1-based) writes its exit status."""
    return folder / f"runnable-{k}.status"


def make_task_folder(
    folder: Path, user: tuple[int, int] | None, runtime: Path | None = None
) -> None:
    """Make `folder` (the agent's, mode 0711) and its `work/` (the user's, mode 0700), and
    `runtime` (the agent's, 0711: the task's exit statuses, maybe scripts) when it is elsewhere.

    Idempotent (a resumed task finds them as they were). Raises OSError if any exists as
    something other than a directory (a symlink included) or cannot be made.
    """
    agent = (os.geteuid(), os.getegid())
    folder.parent.mkdir(parents=True, exist_ok=True)
    _own_directory(folder, agent, 0o711)
    _own_directory(work_dir(folder), user or agent, 0o700)
    if runtime is not None and runtime != folder:
        runtime.parent.mkdir(mode=0o711, parents=True, exist_ok=True)  # made at start-up
        _own_directory(runtime, agent, 0o711)


class TaskFolders:
    """One task's folders (`make_task_folder`), made once for its run: the script driver's
    first file work and the TaskFolder hook both need them, whichever comes first. Called in
    the tasks' one file thread (filework.py) only, so without a lock; a failed make is tried
    again at the next call."""

    def __init__(self, folder: Path, user: tuple[int, int] | None, runtime: Path) -> None:
        self._args = folder, user, runtime
        self._made = False

    def make(self) -> None:
        if not self._made:
            make_task_folder(*self._args)
            self._made = True


def _own_directory(path: Path, owner: tuple[int, int], mode: int) -> None:
    """Make `path` a directory with that owner and mode, through an fd that is not a symlink's."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, mode)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchown(fd, *owner)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def remove_task_dir(workdir: Path, folder: Path) -> None:
    """Delete `folder` and all in it, if it is a direct child of `workdir` that is no symlink.

    A symlink there is unlinked, never followed; a missing folder is fine. Never raises for a
    failed removal (it is logged); raises ValueError for a folder outside `workdir`.
    """
    if folder.parent != workdir or folder.name in ("", ".", "..") or os.sep in folder.name:
        raise ValueError(f"not a task folder of {workdir}: {folder}")
    try:
        found = os.lstat(folder)
        if stat.S_ISDIR(found.st_mode):
            shutil.rmtree(folder)  # fd-based on Linux: it never follows a symlink inside
        else:
            os.unlink(folder)
    except FileNotFoundError:
        return
    except OSError as error:
        log.warning("task folder %s: not removed: %s", folder, error)
