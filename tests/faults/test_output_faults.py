"""Output floods against the real agent process and the emulator: every line exactly once, in
order; the agent's memory bounded whatever a task prints (a flood at full speed, one endless
line, binary bytes), read from /proc/PID/status while the task runs; the agent's log parsed."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batch_agent.emulator import Emulator
from batch_agent.tasks.output import MAX_LINE
from tests.helpers import AgentProcess, wait_until

pytestmark = pytest.mark.timeout(600)

RSS_BOUND = 32 * 1024 * 1024  # bytes above the idle agent's RSS
LINE = b"%099d\n" % 7  # 100 bytes with its newline


def rss(pid: int) -> int:
    """VmRSS of `pid` in bytes, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def run_task(
    make_emulator: Any, start_agent: Any, text: str, timeout: float = 300
) -> tuple[AgentProcess, int, int]:
    """Run one script task on an idle agent until it succeeds; return the agent, its idle RSS
    and its peak RSS while the task ran (sampled every poll)."""
    emu: Emulator = make_emulator()
    agent = start_agent(emu)
    wait_until(lambda: len(emu.reports) >= 2, what="the agent reporting, idle")
    idle = rss(agent.proc.pid)
    peak = idle
    name = emu.add_task({"intendedState": "ASSIGNED", "spec": {"runnables": [script(text)]}})

    def done() -> bool:
        nonlocal peak
        peak = max(peak, rss(agent.proc.pid))
        return emu.task_state(name) == "SUCCEEDED"

    wait_until(done, timeout=timeout, what="the task SUCCEEDED")
    assert agent.terminate() == 0
    return agent, idle, peak


def script(text: str) -> dict[str, Any]:
    return {"script": {"text": text}}


def shipped(log: Path, tag: bytes) -> Iterator[bytes]:
    """The messages of the agent's log lines whose head ends with `[tag] `, in order."""
    marker = b"[" + tag + b"] "
    with log.open("rb") as f:
        for line in f:
            at = line.find(marker)
            if at >= 0:
                yield line[at + len(marker) : -1]


def test_16_concurrent_writers_ship_every_line_exactly_once(make_emulator, start_agent):
    """Sixteen tasks printing `seq 300000` at once: each line of each task in the log once,
    in order (the periodic and the final shipments never overlap)."""
    group = {
        "taskCount": 16,
        "taskCountPerNode": 16,
        "taskSpec": {"runnables": [script("seq 300000")]},
    }
    emu = make_emulator({"taskGroups": [group]})
    agent = start_agent(emu)
    wait_until(
        lambda: (
            len(emu.task_names()) == 16
            and all(emu.task_state(n) == "SUCCEEDED" for n in emu.task_names())
        ),
        timeout=300,
        what="16 tasks SUCCEEDED",
    )
    assert agent.terminate() == 0
    for i in range(16):
        expected = 1
        for message in shipped(agent.log_path, b"task %d r1 stdout" % i):
            assert int(message) == expected, f"task {i}: {message!r} where {expected} was due"
            expected += 1
        assert expected == 300_001, f"task {i}: {expected - 1} lines"


def test_200_mb_at_full_speed_in_bounded_memory(make_emulator, start_agent):
    """200 MB of 100-byte lines as fast as `yes` writes them: all 2,000,000 lines shipped,
    the agent within RSS_BOUND of its idle RSS."""
    agent, idle, peak = run_task(
        make_emulator, start_agent, f"yes {LINE[:-1].decode()} | head -c 200000000"
    )
    count = 0
    for message in shipped(agent.log_path, b"task 0 r1 stdout"):
        assert message == LINE[:-1]
        count += 1
    assert count == 2_000_000
    assert peak - idle <= RSS_BOUND, f"RSS {idle / 1e6:.0f} MB idle, {peak / 1e6:.0f} MB peak"


def test_a_50_mb_line_is_cut_into_marked_pieces_in_bounded_memory(make_emulator, start_agent):
    """One 50 MB line goes out in numbered MAX_LINE pieces, the last marked `end`, nothing lost;
    the agent stays within RSS_BOUND of its idle RSS; the line after it is whole."""
    size = 50_000_000
    text = f"head -c {size} /dev/zero | tr '\\0' y; echo; echo after"
    agent, idle, peak = run_task(make_emulator, start_agent, text)
    total, parts = 0, 0
    with agent.log_path.open("rb") as f:
        for line in f:
            if b"[task 0 r1 stdout part " not in line:
                continue
            head, _, piece = line[:-1].partition(b"] ")
            parts += 1
            assert head.endswith(b"part %d" % parts) or head.endswith(b"part %d end" % parts)
            assert set(piece) == {ord("y")} and len(piece) <= MAX_LINE
            total += len(piece)
    assert head.endswith(b" end") and parts == -(-size // MAX_LINE)
    assert total == size
    assert list(shipped(agent.log_path, b"task 0 r1 stdout")) == [b"after"]
    assert peak - idle <= RSS_BOUND, f"RSS {idle / 1e6:.0f} MB idle, {peak / 1e6:.0f} MB peak"


def test_binary_output_is_shipped_with_replacement_never_a_crash(
    make_emulator, start_agent, tmp_path
):
    """Random bytes: every line shipped, invalid UTF-8 as U+FFFD, the log itself valid UTF-8,
    the task SUCCEEDED and the agent alive until told to stop."""
    rng = random.Random(7)
    lines = [rng.randbytes(rng.randrange(200)).replace(b"\n", b"x") for _ in range(20_000)]
    data = tmp_path / "binary"
    data.write_bytes(b"\n".join(lines) + b"\n")
    agent, idle, peak = run_task(make_emulator, start_agent, f"cat {data}")
    log = agent.log_path.read_bytes().decode("utf-8")  # strict: we wrote no invalid UTF-8
    marker = "[task 0 r1 stdout] "
    messages = [line.split(marker, 1)[1] for line in log.split("\n") if marker in line]
    assert messages == [line.decode("utf-8", errors="replace") for line in lines]
    assert "\ufffd" in log
    assert peak - idle <= RSS_BOUND
