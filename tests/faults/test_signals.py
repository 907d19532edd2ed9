"""Signals and hanging servers against the real agent process: it stops when told, in time,
and only then."""

from __future__ import annotations

import signal
import socket
import threading
import time

import pytest

from tests.faults.rawserver import RawServer
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(120)


def hang(conn: socket.socket, stopping: threading.Event) -> None:
    """Read the request, then never answer."""
    stopping.wait()


@pytest.fixture
def hanging_server():
    server = RawServer(hang)
    server.start()
    yield server
    server.stop()


def test_sighup_is_ignored(make_emulator, start_agent):
    """A SIGHUP neither ends the agent nor stops its reports."""
    emu = make_emulator(default_report_interval="0.2s", min_report_interval="0.1s")
    agent = start_agent(emu)
    wait_until(lambda: len(emu.reports) >= 2, what="first reports")
    agent.proc.send_signal(signal.SIGHUP)
    seen = len(emu.reports)
    wait_until(lambda: len(emu.reports) >= seen + 3, what="reports after SIGHUP")
    assert agent.proc.poll() is None
    assert "SIGHUP ignored" in agent.log()
    assert agent.terminate() == 0


def test_sigterm_while_a_report_hangs_exits_at_once(make_emulator, start_agent, hanging_server):
    """SIGTERM during a report the server never answers ends the agent well within systemd's
    stop timeout, not after the call's deadline."""
    emu = make_emulator()
    agent = start_agent(emu, BATCH_AGENT_ENDPOINT=hanging_server.url)
    wait_until(lambda: hanging_server.requests, what="a report in flight")
    began = time.monotonic()
    assert agent.terminate(timeout=30) == 0, agent.log()
    assert time.monotonic() - began < 15, agent.log()


def test_once_gives_up_within_its_budget_on_a_hanging_server(
    make_emulator, start_agent, hanging_server
):
    """`run --once` against a server that never answers exits 3 once its budget is spent; no
    single call outlasts the budget."""
    emu = make_emulator()
    began = time.monotonic()
    agent = start_agent(
        emu,
        "--once",
        BATCH_AGENT_ENDPOINT=hanging_server.url,
        BATCH_AGENT_UNREACHABLE_TIMEOUT="3",
    )
    assert agent.wait(60) == 3, agent.log()
    assert time.monotonic() - began < 30, agent.log()
