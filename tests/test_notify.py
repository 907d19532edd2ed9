"""systemd: sd_notify to a datagram socket (as systemd binds it) and the journal log format."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from batch_agent.journal import JournalOutput
from batch_agent.notify import Notifier
from batch_agent.tasks.output import Lines
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
    notifier.alive("x")
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


def test_journal_format_is_detected_from_journal_stream(make_emulator, start_agent, tmp_path):
    """With stderr the journal's stream: `<N>` priorities, no timestamps, output lines tagged."""
    emu = make_emulator(job(script("echo out; echo err >&2")))
    log_path = tmp_path / "state-agent.log"  # where start_agent sends the agent's stderr
    log_path.touch()
    found = log_path.stat()
    agent = start_agent(emu, "--once", JOURNAL_STREAM=f"{found.st_dev}:{found.st_ino}")
    assert agent.wait() == 0, agent.log()
    lines = agent.log().splitlines()
    assert lines and all(re.match(r"<[2-7]>\S", line) for line in lines), lines
    assert not any(re.search(r"\d\d:\d\d:\d\d", line) for line in lines)  # journald stamps
    assert "<6>[task 0 r1 stdout] out" in lines
    assert "<3>[task 0 r1 stderr] err" in lines


def test_journal_copy_of_output_stops_at_its_limit_and_says_so():
    """At most `copied` output lines a window go to the journal; the first left out brings a
    warning, and the next window's first write says how many were left out."""
    raw = io.BytesIO()
    now = [100.0]
    sink = JournalOutput(io.TextIOWrapper(raw), copied=5, window=30.0, clock=lambda: now[0])
    sink.write("task 0 r1", "stdout", Lines(b"1\n2\n3"))
    sink.write("task 0 r1", "stderr", Lines(b"4\n5\n6\n7"))  # 2 fit, 2 left out
    sink.write("task 1 r1", "stdout", Lines(b"8"))  # left out, no second warning
    now[0] += 30.0
    sink.write("task 1 r1", "stdout", Lines(b"9"))
    lines = raw.getvalue().decode().splitlines()
    output = [line for line in lines if "] " in line and "batch_agent" not in line]
    assert output == [
        "<6>[task 0 r1 stdout] 1",
        "<6>[task 0 r1 stdout] 2",
        "<6>[task 0 r1 stdout] 3",
        "<3>[task 0 r1 stderr] 4",
        "<3>[task 0 r1 stderr] 5",
        "<6>[task 1 r1 stdout] 9",
    ]
    warnings = [line for line in lines if line.startswith("<4>batch_agent.journal: ")]
    assert len(warnings) == 2, lines
    assert "more than 5 lines" in warnings[0] and lines.index(warnings[0]) == 5  # after 4, 5
    assert warnings[1].startswith("<4>batch_agent.journal: 3 lines of runnables' output")
    assert lines[-2:] == [warnings[1], "<6>[task 1 r1 stdout] 9"]


def test_journal_copy_of_a_flood_keeps_the_agents_own_lines(make_emulator, start_agent, tmp_path):
    """A task printing more than the journal's share of output: the first 5,000 lines are
    copied, a warning says the rest are not, and the agent's own lines are all there."""
    emu = make_emulator(job(script("seq 1 12000")))
    log_path = tmp_path / "state-agent.log"  # where start_agent sends the agent's stderr
    log_path.touch()
    found = log_path.stat()
    agent = start_agent(emu, "--once", JOURNAL_STREAM=f"{found.st_dev}:{found.st_ino}")
    assert agent.wait() == 0, agent.log()[-3000:]
    lines = agent.log().splitlines()
    copied = [line for line in lines if line.startswith("<6>[task 0 r1 stdout] ")]
    assert copied == [f"<6>[task 0 r1 stdout] {n}" for n in range(1, 5001)]
    assert any("more than 5000 lines of runnables' output" in line for line in lines)
    assert any("from RUNNING to SUCCEEDED" in line for line in lines), lines[-20:]


def test_journal_stream_of_another_file_keeps_text(make_emulator, start_agent):
    """An inherited JOURNAL_STREAM that is not our stderr leaves the timestamped text format."""
    emu = make_emulator(job(script("true")))
    agent = start_agent(emu, "--once", JOURNAL_STREAM="1:1")
    assert agent.wait() == 0
    assert all(re.match(r"\d{4}-\d\d-\d\d ", line) for line in agent.log().splitlines())


def test_json_lines_about_a_task_carry_its_id_and_runnable(make_emulator, start_agent):
    """--log-format json: the agent's lines about a task have `task` (and `runnable`) fields."""
    emu = make_emulator(job(script("exit 3")))
    agent = start_agent(emu, "--once", "--log-format", "json")
    assert agent.wait() == 1
    entries = [json.loads(line) for line in agent.log().splitlines()]
    about = [e for e in entries if e["logger"] != "batch_agent.output" and "task" in e]
    task0 = emu.task_names()[0]
    assert about and all(e["task"] == task0 for e in about), entries
    assert any(e.get("runnable") == 1 for e in about), about
