"""sd_notify: the real agent tells a datagram socket (as systemd would bind it) how it is doing."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from batch_agent.notify import Notifier
from tests.helpers import job, script, wait_until


class Listener:
    """A unix datagram socket standing in for systemd's notify socket."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.setblocking(False)
        self.received: list[dict[str, str]] = []

    def drain(self) -> list[dict[str, str]]:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.received
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.received.append(fields)

    def seen(self, key: str, value: str | None = None) -> list[dict[str, str]]:
        return [m for m in self.drain() if key in m and (value is None or m[key] == value)]


@pytest.fixture
def listener() -> Iterator[Listener]:
    found = Listener(f"@batch-agent-test-{uuid.uuid4().hex}")
    yield found
    found.sock.close()


def test_abstract_and_path_sockets_receive_fields(listener, tmp_path):
    """A `@name` address reaches the abstract namespace, a path reaches a socket file."""
    Notifier({"NOTIFY_SOCKET": listener.address}).ready("starting")
    assert wait_until(lambda: listener.seen("READY", "1"))[0]["STATUS"] == "starting"
    path = Path(f"/tmp/ops-notify-{uuid.uuid4().hex[:8]}.sock")
    on_disk = Listener(str(path))
    try:
        Notifier({"NOTIFY_SOCKET": str(path)}).status("line one\nREADY=1")
        message = wait_until(lambda: on_disk.seen("STATUS"))[0]
        assert message == {"STATUS": "line one READY=1"}  # a newline cannot forge a field
    finally:
        on_disk.sock.close()
        path.unlink()


def test_without_notify_socket_nothing_is_sent():
    """Outside systemd every call is a no-op and there is no watchdog."""
    notifier = Notifier({})
    notifier.ready("x")
    notifier.watchdog()
    assert not notifier.enabled
    assert notifier.watchdog_interval is None


def test_watchdog_interval_is_half_and_only_ours():
    """The advised ping interval is half WATCHDOG_USEC, and none when another pid owns it."""
    mine = Notifier({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())})
    assert mine.watchdog_interval == timedelta(seconds=2)
    assert Notifier({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}).watchdog_interval is None
    assert Notifier({"WATCHDOG_USEC": "soon"}).watchdog_interval is None


def test_agent_sends_ready_status_watchdog_and_stopping(make_emulator, start_agent, listener):
    """The real agent: READY at start-up, STATUS after reports, WATCHDOG pings, STOPPING."""
    emu = make_emulator(job(script("sleep 60")))
    agent = start_agent(emu, NOTIFY_SOCKET=listener.address, WATCHDOG_USEC="1000000")
    ready = wait_until(lambda: listener.seen("READY", "1"), what="READY=1")
    assert "no report yet" in ready[0]["STATUS"]
    wait_until(
        lambda: any("1 task running; last report" in m["STATUS"] for m in listener.seen("STATUS")),
        what="a STATUS line with the running task",
    )
    # More pings than reports: the loop pings while it waits between reports (1 s apart).
    wait_until(lambda: len(listener.seen("WATCHDOG", "1")) >= 6, what="watchdog pings")
    assert agent.terminate() == 0, agent.log()
    assert listener.seen("STOPPING", "1")
    assert not any("READY" in m for m in listener.received[1:])  # READY exactly once
