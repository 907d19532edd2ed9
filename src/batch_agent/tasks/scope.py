"""Script runnables in transient systemd scopes, and what their cgroups account.

When systemd is PID 1 (`/run/systemd/system` exists, as `sd_booted()` checks) and the agent
runs as root (only root may make a scope in the system's manager: an agent of `batch-agent
local` run by a user on a laptop would see every runnable refused), a task's script runnables
run in a scope under `SLICE`, so that the agent's unit holds only the agent: a restart of the
unit finds no "left-over process" in its cgroup, and the task's CPU and memory are accounted by
its scope. A scope is made by putting `systemd-run --scope` in front of the waiter's command:
systemd-run moves itself into the new scope, waits for systemd to start it, and execs the
waiter in place, so the pid the agent started is the waiter's, with the same /proc start time
and command line (what `script.py` and a restarted agent rely on).

Making a scope costs a runnable 6-70 ms (systemd-run's start and systemd's own work), more than
the rest of a start. So a runnable whose task has a waiter alive in a scope joins that scope
instead (`Launch.join`): its waiter starts plainly and, before its go, its pid is written into
the cgroup.procs of each hierarchy the live waiter is in, a fraction of a millisecond. systemd
keeps a scope while any process is in its cgroup, so the scope lives as long as the task has a
waiter in it. A scope whose last process ended in the moment between our look and the write is
either gone (the write fails: the runnable makes a scope of its own) or, if systemd had not yet
acted on its emptiness, the runnable runs in a cgroup whose unit systemd has let go of: still
under `SLICE`, out of the agent's unit and accounted, only no longer a unit of its own.

With a runnable's `user`, `setpriv` (util-linux) drops to that uid and gid with no
supplementary groups after systemd-run (or, joining, at once) and before the waiter, again in
place: systemd-run must run as root to make the scope, and its own `--uid` would rewrite HOME,
USER and SHELL.

This module builds argv lists, reads /proc and /sys/fs/cgroup and writes pids into cgroup.procs;
it starts nothing and knows nothing of Batch, tasks or HTTP.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import secrets
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from batch_agent.tasks import procfs

SLICE = "batch-tasks.slice"
UNIT_PREFIX = "batch-task-"
SYSTEMD_BOOTED = Path("/run/systemd/system")
CGROUP_ROOT = Path("/sys/fs/cgroup")
_RUNNABLE = re.compile(r"runnable-(\d+)")


def systemd_booted(marker: Path = SYSTEMD_BOOTED) -> bool:
    """Whether systemd is the init system (what `sd_booted()` checks). Blocks on one stat."""
    return marker.is_dir()


@functools.cache
def in_use() -> bool:
    """Whether runnables go in scopes here: systemd is PID 1 and we are root. Looked up once
    (a stat): neither changes while the agent runs, and it is asked a few times a runnable."""
    return os.geteuid() == 0 and systemd_booted()


def unit_name(status_path: Path) -> str:
    """A new scope unit name for the runnable whose waiter writes `status_path`:
    `batch-task-<hash of its task folder>-r<K>-<random>.scope`. The random part keeps a rerun
    from colliding with a scope that what the previous run left still holds. Pure but random."""
    folder = hashlib.sha256(str(status_path.parent).encode(errors="surrogateescape"))
    found = _RUNNABLE.fullmatch(status_path.stem)
    runnable = f"r{found.group(1)}" if found else "r"
    return f"{UNIT_PREFIX}{folder.hexdigest()[:12]}-{runnable}-{secrets.token_hex(3)}.scope"


def scope_argv(
    unit: str, *, systemd_run: str, user: tuple[int, int] | None = None, setpriv: str | None = None
) -> list[str]:
    """The command that runs the command appended to it in the transient scope `unit` under
    `SLICE` (as `user` when given, through `setpriv`), in place. Pure."""
    argv = [systemd_run, "--scope", f"--unit={unit}", f"--slice={SLICE}", "--collect", "--quiet"]
    # Off by default on a legacy cgroup hierarchy (v1), where they cost a little; always
    # there on v2. What `batch-agent status` shows for the runnable.
    argv += ["--property=CPUAccounting=yes", "--property=MemoryAccounting=yes", "--"]
    return argv + _drop_to(user, setpriv)


@dataclass(frozen=True)
class Launch:
    """How a runnable's waiter goes into its task's scope: `prefix` goes in front of its command
    (systemd-run making a scope, and/or setpriv); `join`, when not empty, are the cgroup.procs
    files of the scope that process `beside` is in, which the started pid is written into
    (`join`)."""

    prefix: list[str]
    join: tuple[Path, ...] = ()
    beside: int = 0  # the pid whose scope `join` is (0: none joined)


def launcher(
    status_path: Path, user: tuple[int, int] | None, beside: Iterable[tuple[int, int]] = ()
) -> Launch | None:
    """How to put a runnable's waiter in a scope when systemd is PID 1, we are root and the tools
    it needs are installed; None otherwise (the waiter then runs in a plain session). `beside`:
    the (pid, start time) of the task's other waiters, in the order to try: the scope of the
    first one alive in one is joined, else a scope is made. Blocks on a few /proc reads under
    systemd."""
    if not in_use():
        return None
    systemd_run = _tool("systemd-run")
    setpriv = _tool("setpriv") if user is not None else None
    if systemd_run is None or (user is not None and setpriv is None):
        return None
    for pid, start_time in beside:
        files = procs_files(pid)
        if files and procfs.is_alive(pid, start_time):  # alive after the look: still there
            return Launch(_drop_to(user, setpriv), files, pid)
    unit = unit_name(status_path)
    return Launch(scope_argv(unit, systemd_run=systemd_run, user=user, setpriv=setpriv))


@functools.cache
def _tool(name: str) -> str | None:
    """Where `name` is on PATH, looked up once: it was a PATH search a runnable."""
    return shutil.which(name)


def being_made(beside: Iterable[tuple[int, int]]) -> bool:
    """Whether the first live waiter of `beside` ((pid, start time), as for `launcher`) is still
    systemd-run making its scope (the process is systemd-run's until it execs the waiter): a
    waiter forked now would find no scope to join and make one more. Blocks on a few /proc
    reads under systemd, nothing otherwise."""
    if not in_use():
        return False
    for pid, start_time in beside:
        found = procfs.read_stat(pid)
        if found is not None and found.start_time == start_time and found.alive:
            return found.comm == "systemd-run"
    return False


def join(files: Iterable[Path], pid: int) -> bool:
    """Put `pid` in the cgroups whose cgroup.procs `files` are; False if a write fails (the
    scope is gone; what was written stays written). Blocks on a few writes to /sys/fs/cgroup."""
    try:
        for path in files:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, str(pid).encode())
            finally:
                os.close(fd)
    except OSError:
        return False
    return True


def procs_files(
    pid: int, proc: Path = Path("/proc"), mounts: Path = Path("/proc/self/mountinfo")
) -> tuple[Path, ...] | None:
    """The cgroup.procs file of the cgroup `pid` is in on each hierarchy mounted here (one on
    cgroup v2, one a controller on v1), when it runs in a task scope: writing a pid into all of
    them puts it beside `pid`. None when it is in no task scope, gone, or a hierarchy it is in
    has no mount that shows its cgroup. Blocks on a small read of /proc."""
    try:
        text = (proc / str(pid) / "cgroup").read_text()
    except OSError:
        return None
    if f"/{SLICE}/{UNIT_PREFIX}" not in text:
        return None
    files = []
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        mount = _mount_of(frozenset(controllers.split(",")) if controllers else None, mounts)
        if mount is None:
            return None
        point, root = mount
        relative = os.path.relpath(path, root)
        if relative.startswith(".."):
            return None
        files.append(Path(os.path.normpath(point / relative)) / "cgroup.procs")
    return tuple(files)


def _mount_of(controllers: frozenset[str] | None, mounts: Path) -> tuple[Path, str] | None:
    """Where the hierarchy of `controllers` (as /proc/PID/cgroup names them, `name=systemd` one
    of them; None for cgroup v2's) is mounted, and the cgroup at the mount's root."""
    for options, point, root in _cgroup_mounts(mounts):
        if options is None and controllers is None:
            return point, root
        if options is not None and controllers is not None and controllers <= options:
            return point, root
    return None


@functools.cache
def _cgroup_mounts(mounts: Path) -> tuple[tuple[frozenset[str] | None, Path, str], ...]:
    """Each cgroup mount here: its options (None for cgroup v2: controllers and `name=`s among
    them for v1), mount point and the cgroup at its root. Read once: hierarchies are mounted at
    boot."""
    found = []
    try:
        lines = mounts.read_text().splitlines()
    except OSError:
        return ()
    for line in lines:  # ID PARENT MAJ:MIN ROOT POINT OPTIONS [TAGS...] - TYPE SOURCE OPTIONS
        fields, _, after = line.partition(" - ")
        parts, tail = fields.split(" "), after.split(" ")
        if len(parts) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        options = None if tail[0] == "cgroup2" else frozenset(tail[2].split(","))
        found.append((options, Path(parts[4].replace("\\040", " ")), parts[3]))
    return tuple(found)


def _drop_to(user: tuple[int, int] | None, setpriv: str | None) -> list[str]:
    """setpriv's command that runs what follows as `user`, in place; nothing without a user."""
    if user is None:
        return []
    if setpriv is None:
        raise ValueError("a scope with a user needs setpriv")
    uid, gid = user
    return [setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]


def cgroup_of(pid: int, proc: Path = Path("/proc")) -> str | None:
    """The cgroup path of `pid` when it runs in a task scope, from the unified hierarchy or, on
    a legacy one, systemd's own: `/batch.slice/batch-tasks.slice/batch-task-....scope` (a dash
    in a slice's name nests it in its prefix's), below the container's cgroup in a container
    without a cgroup namespace. None when it is in no task scope, or gone."""
    try:
        text = (proc / str(pid) / "cgroup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers in ("", "name=systemd") and f"/{SLICE}/{UNIT_PREFIX}" in path:
            return path
    return None


def usage(cgroup: str, root: Path = CGROUP_ROOT) -> dict[str, str | int | float | None]:
    """What the cgroup accounts: its scope unit, `memory_bytes` and `cpu_seconds`, from cgroup
    v2 (memory.current, cpu.stat) or else v1 (memory.usage_in_bytes, cpuacct.usage); a figure
    the kernel does not give (that accounting is off) is None. Blocks on a few small reads."""
    path = cgroup.lstrip("/")
    memory = _number(root / path / "memory.current")
    if memory is None:
        memory = _number(root / "memory" / path / "memory.usage_in_bytes")
    cpu: float | None = None
    with contextlib.suppress(OSError, ValueError):
        for line in (root / path / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                cpu = int(value) / 1e6
    nanoseconds = _number(root / "cpuacct" / path / "cpuacct.usage")
    if cpu is None and nanoseconds is not None:
        cpu = nanoseconds / 1e9
    return {"unit": cgroup.rsplit("/", 1)[-1], "memory_bytes": memory, "cpu_seconds": cpu}


def _number(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None
