"""The runtime dir: a folder on tmpfs (`/run/batch-agent`) for the task files that need not
outlive a reboot.

Each script runnable makes four files: its script (from `text`), its stdout and stderr, and the
status file its waiter writes. Output must survive a reboot (it can be huge, and its shipping
resumes from it) and stays in the task's folder in the state dir. The script and the status
only have to survive the agent (a `kill -9`, a restart, an upgrade): after a reboot the next
agent fails every unfinished task (50003) whatever its files say. A new file on tmpfs costs
microseconds of kernel time, on a disk's ext4 0.15-1 ms, so they go to
`RUNTIME_DIR/tasks/<the task's folder name>` when the runtime dir is on tmpfs (the scripts only
if its mount allows exec: `allows_exec`), and to the task's folder in the state dir otherwise:
no runtime dir set, or one that is not a directory of ours (a symlink, another owner), cannot
be made, or is on a disk (where it would gain nothing).

The runtime dir and its `tasks/` are the agent's, 0711 like the state dir: a userAccount task's
waiter passes through to its own status file (chowned to it), nobody lists them. A task's
folder there is named and made like its folder in the state dir (`folders`). Under systemd the
unit's `RuntimeDirectory=batch-agent` makes `/run/batch-agent` and `RuntimeDirectoryPreserve=yes`
keeps it while the agent is stopped or restarted (its tasks run on). Blocks on a few small
local file operations: call at start-up.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

DIR_MODE = 0o711  # as the state dir: others may pass through to a file they own, never list
MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})
MOUNTINFO = Path("/proc/self/mountinfo")


def tasks_root(runtime_dir: Path | None, state_tasks: Path) -> Path:
    """The folder under which tasks' exit statuses (and scripts) go: `runtime_dir/tasks` when
    `runtime_dir` is usable (see the module docstring), else `state_tasks` (the state dir's
    `tasks/`, where output goes too). Never raises for an unusable runtime dir: it logs why."""
    if runtime_dir is None:
        return state_tasks
    problem = _unusable(runtime_dir)
    if problem is not None:
        log.info(
            "runtime dir %s: not used (%s); scripts and exit statuses go to %s",
            runtime_dir,
            problem,
            state_tasks,
        )
        return state_tasks
    return runtime_dir / "tasks"


def _unusable(runtime_dir: Path) -> str | None:
    """Why `runtime_dir` cannot hold task files, or None once it and its `tasks/` are made
    (if missing) and ours, 0711. Nothing is made on a disk."""
    try:
        fstype = filesystem_type(runtime_dir)  # of the deepest existing folder, if it is missing
        if fstype not in MEMORY_FILESYSTEMS:
            return f"on {fstype or 'an unknown file system'}, not tmpfs"
        runtime_dir.parent.mkdir(parents=True, exist_ok=True)
        for folder in (runtime_dir, runtime_dir / "tasks"):
            problem = _own_directory(folder)
            if problem is not None:
                return problem
    except OSError as error:
        return error.strerror or str(error)
    return None


def _own_directory(folder: Path) -> str | None:
    """Make `folder` (0711) if missing; why it cannot be ours, or None once it is, 0711."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(folder, DIR_MODE)
    try:  # through an fd that is no symlink's
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:  # ELOOP, ENOTDIR
        return f"{folder}: {error.strerror}"
    try:
        owner = os.fstat(fd).st_uid
        if owner != os.geteuid():
            return f"{folder} belongs to uid {owner}"
        os.fchmod(fd, DIR_MODE)
    finally:
        os.close(fd)
    return None


def filesystem_type(path: Path, mountinfo: Path = MOUNTINFO) -> str | None:
    """The type of the file system `path` is on (`tmpfs`, `ext4`); None if the mount table
    says nothing."""
    return _mount_of(path, mountinfo)[0]


def allows_exec(path: Path, mountinfo: Path = MOUNTINFO) -> bool:
    """Whether programs on the file system `path` is on may run: not mounted `noexec`, as
    /run often is (Debian's initramfs, Docker's `--tmpfs`). Scripts go to the runtime dir only
    then; exit statuses go there either way."""
    return "noexec" not in _mount_of(path, mountinfo)[1]


def _mount_of(path: Path, mountinfo: Path) -> tuple[str | None, list[str]]:
    """The type and the mount options of the deepest mount point above `path`'s real path."""
    real = os.path.realpath(path)
    best = ""
    found: tuple[str | None, list[str]] = (None, [])
    for line in mountinfo.read_text(errors="replace").splitlines():
        # "36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw": field 5 is
        # the mount point (spaces escaped as \040), 6 its options; the type follows " - ".
        fields, _, tail = line.partition(" - ")
        parts = fields.split()
        if len(parts) < 6 or not tail:
            continue
        point = _unescape(parts[4])
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, found = point, (tail.split()[0], parts[5].split(","))
    return found


def _unescape(field: str) -> str:
    """A mountinfo field with its octal escapes (`\\040` for a space) undone."""
    if "\\" not in field:
        return field
    return field.encode().decode("unicode_escape").encode("latin-1").decode(errors="replace")
