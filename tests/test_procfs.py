"""The /proc reader: the stat line parsed once and the scans on it, against real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from batch_agent.tasks import procfs
from tests.helpers import wait_until

PY = sys.executable
# A real stat line with comm cut out: fields 3..52 of a sleeping process.
TAIL = (
    b"S 41 42 43 0 -1 4194560 170 0 0 0 7 5 0 0 20 0 1 0 98765 2473984 221 "
    b"18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; killed and reaped at its end."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


def test_parse_splits_at_the_last_parenthesis() -> None:
    """A comm holding spaces and parentheses does not shift the fields after it."""
    found = procfs.parse_stat(b"123 (a) S (b c)) " + TAIL)
    assert found == procfs.ProcStat(
        pid=123,
        comm="a) S (b c)",
        state="S",
        ppid=41,
        pgrp=42,
        session=43,
        start_time=98765,
        utime=7,
        stime=5,
    )
    assert found.alive


def test_parse_rejects_what_is_not_a_stat_line() -> None:
    """Text without the parenthesised comm or with too few fields is a ValueError."""
    for text in (b"", b"123 sleep S 1 2 3", b"123 (sleep) S 1 2 3\n", b"x (sleep) " + TAIL):
        with pytest.raises(ValueError):
            procfs.parse_stat(text)


def test_zombie_and_dead_states_are_not_alive() -> None:
    """States Z and X mean the process has ended."""
    for state in (b"Z", b"X"):
        line = b"7 (sh) " + state + TAIL[1:]
        assert not procfs.parse_stat(line).alive


def test_a_real_process_with_an_odd_name(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """A live process named `a) (b c)` reads back with its comm, parent, group and session."""
    odd = tmp_path / "a) (b c)"
    odd.symlink_to("/bin/sleep")
    process = subprocess.Popen([str(odd), "60"], start_new_session=True)
    processes.append(process)
    # Until exec, the child still has the forking process's name.
    found = wait_until(lambda: (s := procfs.read_stat(process.pid)) and s.comm == odd.name and s)
    assert (found.pid, found.ppid) == (process.pid, os.getpid())
    assert found.pgrp == found.session == process.pid
    assert found.alive and found.state in ("S", "R")
    ours = procfs.read_stat(os.getpid())
    assert ours is not None and found.start_time >= ours.start_time
    assert procfs.is_alive(process.pid, found.start_time)
    assert not procfs.is_alive(process.pid, found.start_time + 1)


def test_ended_processes(processes: list[subprocess.Popen[bytes]]) -> None:
    """An unreaped child is a zombie (not alive); once reaped it has no stat at all."""
    process = subprocess.Popen(["/bin/true"])
    processes.append(process)
    pid = process.pid
    zombie = wait_until(lambda: (s := procfs.read_stat(pid)) and s.state == "Z" and s)
    assert not zombie.alive and not procfs.is_alive(pid, zombie.start_time)
    process.wait()
    assert procfs.read_stat(pid) is None


def test_cpu_time_is_read() -> None:
    """This test process has used CPU time, and utime/stime say so."""
    ours = procfs.read_stat(os.getpid())
    assert ours is not None and ours.utime + ours.stime > 0


def test_group_and_session_members(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """A session's members include a child in a group of its own; the leader's group does not."""
    own_group = "import os, time; os.setpgid(0, 0); print(os.getpid(), flush=True); time.sleep(60)"
    text = f"sleep 60 & echo $! > sleeper; {PY} -c '{own_group}' > mover & wait"
    started = time.monotonic()
    leader = subprocess.Popen(["/bin/sh", "-c", text], cwd=tmp_path, start_new_session=True)
    processes.append(leader)
    try:
        sleeper = wait_until(lambda: _pid_in(tmp_path / "sleeper"))
        mover = wait_until(lambda: _pid_in(tmp_path / "mover"))
        wait_until(lambda: (s := procfs.read_stat(mover)) and s.pgrp == mover)
        session = {p.pid for p in procfs.session_members(leader.pid)}
        group = {p.pid for p in procfs.group_members(leader.pid)}
        assert session == {leader.pid, sleeper, mover}
        among = procfs.pids_since(leader.pid, started=started)
        if among is not None:  # None when the pid counter came round meanwhile
            assert {p.pid for p in procfs.session_members(leader.pid, among)} == {sleeper, mover}
        assert group == {leader.pid, sleeper}
        assert {p.pid for p in procfs.group_members(mover)} == {mover}
    finally:
        os.killpg(leader.pid, signal.SIGKILL)
        for pid in _pids_in(tmp_path):
            os.kill(pid, signal.SIGKILL)


def test_pids_since_names_what_was_handed_out_since_or_nothing() -> None:
    """The pids handed out after one, up to the kernel's last; None for a pid the counter has
    not reached (it came round since), or once so long has passed that it could have."""
    started = time.monotonic()
    child = subprocess.Popen(["/bin/true"])
    child.wait()
    later = subprocess.Popen(["/bin/true"])
    later.wait()
    among = procfs.pids_since(child.pid, started=started)
    if among is None:  # the counter came round between the two: rare, and then right
        assert later.pid < child.pid
        return
    assert among.start == child.pid + 1 and later.pid in among
    assert procfs.pids_since(among.stop + 10**6, started=started) is None
    assert procfs.pids_since(child.pid, started=started - 3600) is None


def test_with_cmdline_finds_live_processes_only(processes: list[subprocess.Popen[bytes]]) -> None:
    """Processes whose arguments contain the needle are found while they run, not as zombies."""
    token = f"procfs-test-{uuid.uuid4()}"
    process = subprocess.Popen([PY, "-c", "import sys, time; time.sleep(60)", token])
    processes.append(process)
    needle = f"\0{token}\0".encode()
    # Popen returns once exec has begun, before the kernel has set the new command line up.
    found = wait_until(lambda: procfs.with_cmdline(needle))
    assert [p.pid for p in found] == [process.pid]
    process.kill()
    wait_until(lambda: (s := procfs.read_stat(process.pid)) and s.state == "Z")
    assert procfs.with_cmdline(needle) == []
    assert procfs.with_cmdline(f"\0no-such-{token}\0".encode()) == []


def _pid_in(path: Path) -> int | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return int(text) if text.endswith("\n") else None


def _pids_in(folder: Path) -> list[int]:
    pids = (_pid_in(folder / name) for name in ("sleeper", "mover"))
    return [pid for pid in pids if pid is not None and procfs.read_stat(pid) is not None]
