"""Fixtures: an emulator on 127.0.0.1:0 in a thread, temp state dirs, agent subprocesses."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from batch_agent.emulator import Emulator
from batch_agent.runtimedir import MEMORY_FILESYSTEMS, filesystem_type
from tests import docker_support
from tests.docker_support import BUSYBOX_IMAGE, Registry, Unavailable
from tests.helpers import AgentProcess


@pytest.fixture(scope="session", autouse=True)
def _no_process_outlives_the_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """At the end, kill what the tests started and did not stop (a task's waiter left by a
    failed test, the agents of a `local` killed by its timeout), named on stderr: a CI machine
    must not keep them. Found by the session's temp folders in their command line or
    environment, or the session's mark in their environment (`local` gives its agents ours,
    minus the agent's settings); this process and its parents are spared."""
    session = f"BATCH_TESTS_SESSION={os.getpid()}-{time.time_ns()}"
    os.environ.update([session.split("=")])
    yield
    marks = [str(tmp_path_factory.getbasetemp()).encode(), b"/dev/shm/batch-agent-test-"]
    marks.append(session.encode())
    spared = set()
    pid = os.getpid()
    while pid > 1:
        spared.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    spared_groups = {os.getpgid(pid) for pid in spared if pid > 1}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in spared:
            continue
        try:
            seen = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or a kernel thread
            continue
        if any(mark in seen for mark in marks):
            sys.stderr.write(f"\nkilled a leftover process {entry.name}: {seen[:200]!r}\n")
            with contextlib.suppress(OSError):  # its group too: a waiter's script, say
                group = os.getpgid(int(entry.name))
                if group not in spared_groups:
                    os.killpg(group, signal.SIGKILL)
                os.kill(int(entry.name), signal.SIGKILL)


@pytest.fixture
def make_emulator() -> Iterator[Callable[..., Emulator]]:
    started: list[Emulator] = []

    def make(
        job: dict[str, Any] | None = None, *, kind: type[Emulator] = Emulator, **kwargs: Any
    ) -> Emulator:
        """An emulator (of class `kind`, a test's subclass that watches it) serving `job`."""
        kwargs.setdefault("default_report_interval", "1s")
        kwargs.setdefault("min_report_interval", "0.2s")
        kwargs.setdefault("log", None)
        emu = kind(job, **kwargs)
        emu.start()
        started.append(emu)
        return emu

    yield make
    for emu in started:
        emu.stop()


@pytest.fixture
def emu() -> Iterator[Emulator]:
    """An emulator without a job, at its default intervals."""
    emulator = Emulator(job=None, vms=1, log=None)
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    agents: list[AgentProcess] = []

    def start(
        emu: Emulator, *args: str, state: str = "state", vm: int = 0, **env: str
    ) -> AgentProcess:
        agent = AgentProcess(emu, tmp_path / state, *args, vm=vm, **env)
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        agent.close()


@pytest.fixture(scope="session")
def batch_user() -> pwd.struct_passwd:
    """A real non-root user for userAccount tests."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create a user")
    try:
        return pwd.getpwnam("batchtest")
    except KeyError:
        subprocess.run(["useradd", "--create-home", "batchtest"], check=True)
        return pwd.getpwnam("batchtest")


# --- Docker: a real engine and a private registry, shared by every test that needs them ------


def _unavailable(why: str) -> None:
    """Skip, or fail under CI, where the engine is part of what must be tested."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"Docker engine unavailable: {why}")
    pytest.skip(f"Docker engine unavailable: {why}")


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[str]:
    """The DOCKER_HOST of a live engine holding local/busybox: the one DOCKER_HOST names, else
    a private dockerd started (and stopped) here, never the machine's own engine."""
    daemon = None
    host = None
    try:
        host = docker_support.engine_host()
        if host is None:
            daemon = docker_support.DockerDaemon()
            daemon.start()
            host = daemon.host
        docker_support.import_busybox(host)
    except Unavailable as e:
        if daemon is not None:
            daemon.stop()
        _unavailable(str(e))
    assert host is not None
    try:
        yield host
    finally:  # its bridge and FORWARD rule must not outlive the session
        if daemon is not None:
            daemon.stop()


@pytest.fixture(scope="session")
def registry(docker_engine: str) -> Iterator[Registry]:
    """A private registry with htpasswd auth on 127.0.0.1, holding busybox (as `.image`)."""
    reg = Registry()
    try:
        reg.start()
        reg.image = reg.push(docker_engine, BUSYBOX_IMAGE, "busybox")
    except Unavailable as e:
        reg.stop()
        _unavailable(str(e))
    yield reg
    reg.stop()


@pytest.fixture
def tmpfs() -> Iterator[Path]:
    """A fresh folder on tmpfs (/dev/shm), as a runtime dir; removed after the test."""
    if filesystem_type(Path("/dev/shm")) not in MEMORY_FILESYSTEMS:
        pytest.skip("no tmpfs at /dev/shm")
    folder = Path(tempfile.mkdtemp(prefix="batch-agent-test-", dir="/dev/shm"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)
