"""Script runnables in transient systemd scopes, and what their cgroups account.

When systemd is PID 1 (`/run/systemd/system` exists, as `sd_booted()` checks) and the agent
runs as root (only root may make a scope in the system's manager: an agent of `batch-agent
local` run by a user on a laptop would see every runnable refused), each script runnable runs
in a scope of its own under `SLICE`, so that the agent's unit holds only the
agent: a restart of the unit finds no "left-over process" in its cgroup, and each runnable's CPU
and memory are accounted by its scope. The scope is made by putting `systemd-run --scope` in
front of the waiter's command: systemd-run moves itself into the new scope, waits for systemd
to start it, and execs the waiter in place, so the pid the agent started is the waiter's, with
the same /proc start time and command line (what `script.py` and a restarted agent rely on).
With a runnable's `user`, `setpriv` (util-linux) drops to that uid and gid with no
supplementary groups after systemd-run and before the waiter, again in place: systemd-run must
run as root to make the scope, and its own `--uid` would rewrite HOME, USER and SHELL.

This module only builds argv lists and reads /proc and /sys/fs/cgroup; it starts nothing and
knows nothing of Batch, tasks or HTTP.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
from pathlib import Path

SLICE = "batch-tasks.slice"
UNIT_PREFIX = "batch-task-"
SYSTEMD_BOOTED = Path("/run/systemd/system")
CGROUP_ROOT = Path("/sys/fs/cgroup")
_RUNNABLE = re.compile(r"runnable-(\d+)")


def systemd_booted(marker: Path = SYSTEMD_BOOTED) -> bool:
    """Whether systemd is the init system (what `sd_booted()` checks). Blocks on one stat."""
    return marker.is_dir()


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
    if user is not None:
        if setpriv is None:
            raise ValueError("a scope with a user needs setpriv")
        uid, gid = user
        argv += [setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]
    return argv


def launcher(status_path: Path, user: tuple[int, int] | None) -> list[str] | None:
    """The scope command to put in front of a runnable's waiter when systemd is PID 1, we are
    root and the tools it needs are installed; None otherwise (the waiter then runs in a plain
    session). Blocks on a stat and a PATH lookup."""
    if os.geteuid() != 0 or not systemd_booted():
        return None
    systemd_run = shutil.which("systemd-run")
    setpriv = shutil.which("setpriv") if user is not None else None
    if systemd_run is None or (user is not None and setpriv is None):
        return None
    return scope_argv(unit_name(status_path), systemd_run=systemd_run, user=user, setpriv=setpriv)


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
