"""The process table as Linux's /proc shows it: one parser of /proc/PID/stat and the scans on it.

`read_stat` reads one process's stat line into a `ProcStat`; the scans (`processes`,
`group_members`, `session_members`, `with_cmdline`) read the line of every process, or of the
few pids `pids_since` names: those the kernel has handed out since a given one, when it cannot
have come round to it again (the descendants of a process started moments ago are among them).

Process layer only: knows nothing of Batch, tasks, runnables or HTTP, and starts or signals
nothing. `read_stat` and `is_alive` read one small file and may run on the event loop; the scans
block for a few milliseconds per hundred processes, so async code calls them through
`asyncio.to_thread`.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

PROC = "/proc"
_ENDED = ("Z", "X", "x")  # zombie (ended, not yet reaped) and dead
_RESERVED_PIDS = 300  # where the kernel's pid counter starts again after pid_max
# Pids one CPU could hand out per second at the very most: creating a thread or a process
# costs tens of microseconds of kernel time, so real rates stay well under a tenth of this.
_PIDS_PER_CPU_SECOND = 250_000


@dataclass(frozen=True)
class ProcStat:
    """The fields of one /proc/PID/stat line that we use.

    `start_time` (field 22) counts clock ticks since boot: with the pid it names one process,
    as pids are recycled. `utime` and `stime` (fields 14, 15) are the CPU time of all its
    threads, in clock ticks (`os.sysconf("SC_CLK_TCK")` a second).
    """

    pid: int
    comm: str
    state: str
    ppid: int
    pgrp: int
    session: int
    start_time: int
    utime: int
    stime: int

    @property
    def alive(self) -> bool:
        """False for a process that has ended, reaped or not (a zombie is not alive)."""
        return self.state not in _ENDED


def parse_stat(data: bytes) -> ProcStat:
    """Parse the text of a /proc/PID/stat file; raises ValueError if it is not one.

    comm (field 2, in parentheses) may hold any byte but NUL, spaces and parentheses included,
    and the kernel does not escape them: the other fields resume after the *last* ')'.
    """
    head, paren, tail = data.rpartition(b")")
    pid, open_paren, comm = head.partition(b" (")
    fields = tail.split()
    if not paren or not open_paren or len(fields) < 20:
        raise ValueError(f"not a /proc/PID/stat line: {data[:80]!r}")
    # fields[0] is field 3 (state): field n is fields[n - 3].
    return ProcStat(
        pid=int(pid),
        comm=comm.decode(errors="replace"),
        state=fields[0].decode(errors="replace"),
        ppid=int(fields[1]),
        pgrp=int(fields[2]),
        session=int(fields[3]),
        utime=int(fields[11]),
        stime=int(fields[12]),
        start_time=int(fields[19]),
    )


def read_stat(pid: int) -> ProcStat | None:
    """The stat line of process `pid`, or None if there is no such process (zombies have one).

    Blocks on one tiny read from /proc.
    """
    try:
        with open(f"{PROC}/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):  # ESRCH: it ended while we opened it
        return None
    return parse_stat(data)


def is_alive(pid: int, start_time: int) -> bool:
    """Whether `pid` is still the process that started at `start_time`, and not a zombie."""
    found = read_stat(pid)
    return found is not None and found.start_time == start_time and found.alive


def processes() -> Iterator[ProcStat]:
    """Every process /proc lists, zombies included; one that ends meanwhile is skipped.

    Blocks on a scan of /proc.
    """
    for name in os.listdir(PROC):
        if not name.isdigit():
            continue
        try:
            found = read_stat(int(name))
        except OSError:  # not ours to read (hidepid), say
            continue
        if found is not None:
            yield found


def group_members(pgrp: int) -> list[ProcStat]:
    """The live (non-zombie) processes of process group `pgrp`. Blocks on a scan of /proc."""
    return [p for p in processes() if p.pgrp == pgrp and p.alive]


def session_members(session: int, among: Iterable[int] | None = None) -> list[ProcStat]:
    """The live (non-zombie) processes of session `session`, whatever their process group,
    looked for among the pids `among` (e.g. from `pids_since`), or everywhere.

    Blocks on a scan of /proc, or on a read per pid of `among`.
    """
    found = processes() if among is None else _existing(among)
    return [p for p in found if p.session == session and p.alive]


def pids_since(pid: int, *, started: float) -> range | None:
    """The pids the kernel has handed out after `pid`, which it handed out at or after the
    `time.monotonic()` `started`: every descendant of process `pid` is among them. None when
    that cannot be told: the pid counter passed its maximum since (it starts again from 300,
    and could come round to `pid` and beyond), or it may have, as so much time has passed
    that all CPUs creating threads flat out could have used up every free pid, or /proc is
    not our pid namespace's. Blocks on a tiny read.
    """
    if not _our_namespace():
        return None
    try:
        with open(f"{PROC}/loadavg", "rb") as f:  # "0.00 0.01 0.05 1/123 4567"
            fields = f.read().split()
        threads, last = int(fields[3].partition(b"/")[2]), int(fields[4])
        pid_max = _pid_max()
    except (OSError, ValueError, IndexError):
        return None
    if last < pid:
        return None
    free = pid_max - _RESERVED_PIDS - threads  # what a full round of the counter takes
    most = (time.monotonic() - started) * _cpus() * _PIDS_PER_CPU_SECOND
    if most >= free:
        return None
    return range(pid + 1, last + 1)


@functools.cache
def _pid_max() -> int:
    """kernel.pid_max, read once: raised later, it only makes `pids_since` more careful;
    lowered, the counter's wrap below `pid` is still seen (`last < pid`). Raises OSError or
    ValueError, and is then read again next time."""
    with open(f"{PROC}/sys/kernel/pid_max", "rb") as f:
        return int(f.read())


@functools.cache
def _cpus() -> int:
    """The CPUs online at start-up (os.cpu_count reads sysfs on every call; a VM's count does
    not change under a running agent)."""
    return os.cpu_count() or 1


@functools.cache
def _our_namespace() -> bool:
    """Whether /proc shows our own pid namespace (else its numbers and its counter are not
    ours)."""
    try:
        return os.readlink(f"{PROC}/self") == str(os.getpid())
    except OSError:
        return False


def _existing(pids: Iterable[int]) -> Iterator[ProcStat]:
    for pid in pids:
        try:
            found = read_stat(pid)
        except OSError:  # not ours to read (hidepid), say
            continue
        if found is not None:
            yield found


def with_cmdline(needle: bytes) -> list[ProcStat]:
    """The live processes whose command line (NUL-separated arguments, as in
    /proc/PID/cmdline) contains `needle`. Blocks on a scan of /proc."""
    found: list[ProcStat] = []
    for name in os.listdir(PROC):
        if not name.isdigit():
            continue
        try:
            with open(f"{PROC}/{name}/cmdline", "rb") as f:
                if needle not in f.read():
                    continue
            stat = read_stat(int(name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if stat is not None and stat.alive:
            found.append(stat)
    return found
