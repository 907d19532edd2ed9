"""Cloud Logging shipping throughput: a task printing a file of N MB through the agent to the
emulator's entries:write, vs bare `cat` of the same file.

A file of --mb MB of --line-bytes lines is made once. Each repeat starts an emulator (its
Cloud Logging in `count_only` mode: no schema check or storage, so that the emulator, in this
process, takes as little of the machine as it can) and an agent with `--cloud-logging always`,
assigns one script task `cat FILE`, and times from the task's RUNNING event (the agent's
clock, the same machine) until the emulator has counted every line as an entry; the agent's
VmRSS is sampled every 20 ms meanwhile (its peak, and above its idle RSS). The baseline, right
after in the same repeat: `cat FILE > /dev/null`. Then the same with --random-mb MB of random
bytes (invalid UTF-8 and control characters: JSON up to 6 times the output), for the agent's
RSS above idle. MB = 10**6 bytes. The agent also ships the same lines to its own log (a file
here), as it always does.
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from _common import (
    Agent,
    Figure,
    cpu_seconds,
    event_time,
    print_figures,
    rss_bytes,
    script_task,
)
from _common import wait as common_wait

from batch_agent.emulator import Emulator

TIMEOUT = 3600.0
wait = functools.partial(common_wait, timeout=TIMEOUT)  # polls until it holds

MB = 10**6


def run(repeats: int, mb: int = 1000, line_bytes: int = 1000, random_mb: int = 50) -> list[Figure]:
    """The suite's figures: shipping MB/s (ours vs cat), and the agent's peak RSS; then the
    RSS above idle and MB/s of `random_mb` MB of random bytes (JSON up to 6 times as big)."""
    with tempfile.TemporaryDirectory(prefix="bench-cloudlog-") as tmp:
        source = Path(tmp) / "output.txt"
        lines = make_file(source, mb * MB, line_bytes)
        ours: list[float] = []
        bare: list[float] = []
        peaks: list[float] = []
        above: list[float] = []
        cpu: list[float] = []
        for _ in range(repeats):
            seconds, peak, idle, used = through_agent(source, lines, Path(tmp))
            ours.append(mb / seconds)
            cpu.append(used / mb * 100)
            peaks.append(peak / MB)
            above.append((peak - idle) / MB)
            bare.append(mb / cat(source))
        source.unlink()
        random_lines = make_random_file(source, random_mb * MB)
        random_rate: list[float] = []
        random_above: list[float] = []
        for _ in range(repeats):
            seconds, peak, idle, _ = through_agent(source, random_lines, Path(tmp))
            random_rate.append(random_mb / seconds)
            random_above.append((peak - idle) / MB)
    return [
        Figure(
            f"{mb} MB of {line_bytes}-byte lines to Cloud Logging",
            "MB/s",
            ours,
            baseline="cat FILE > /dev/null",
            baseline_samples=bare,
            target=">= 50 MB/s",
            met=min(ours) >= 50,
        ),
        Figure(
            "agent peak RSS while shipping", "MB", peaks, target="<= 100 MB", met=max(peaks) <= 100
        ),
        Figure(
            "agent peak RSS above idle",
            "MB",
            above,
            target="<= 32 MB",
            met=max(above) <= 32,
        ),
        Figure("agent CPU while shipping, per 100 MB", "CPU s", cpu),
        Figure(f"{random_mb} MB of random bytes to Cloud Logging", "MB/s", random_rate),
        Figure(
            "agent peak RSS above idle, shipping random bytes",
            "MB",
            random_above,
            target="<= 32 MB",
            met=max(random_above) <= 32,
        ),
    ]


def make_file(path: Path, size: int, line_bytes: int) -> int:
    """Write `size` bytes of numbered lines of `line_bytes` bytes (newline included); return
    how many lines."""
    count = size // line_bytes
    filler = "x" * (line_bytes - 12)
    with path.open("w") as out:
        for start in range(0, count, 10_000):
            block = range(start, min(count, start + 10_000))
            out.write("".join(f"{i:010d} {filler}\n" for i in block))
    return count


def make_random_file(path: Path, size: int) -> int:
    """Write `size` random bytes; return how many entries they make (a line each, the
    unterminated last one too: none is longer than a piece)."""
    data = os.urandom(size)
    path.write_bytes(data)
    return data.count(b"\n") + (not data.endswith(b"\n"))


def through_agent(source: Path, lines: int, tmp: Path) -> tuple[float, int, int, float]:
    """(seconds from RUNNING to the last entry counted, peak RSS, idle RSS, the agent's CPU
    seconds meanwhile) of one task."""
    # No auto-delete: a DELETED task waits only DRAIN_TIMEOUT for its lines, less than 1 GB takes.
    emu = Emulator(
        None,
        default_report_interval="1s",
        min_report_interval="0.2s",
        log=None,
        auto_delete=False,
    )
    emu.logs.count_only = True
    emu.start()
    agent: Agent | None = None
    try:
        state = Path(tempfile.mkdtemp(prefix="state-", dir=tmp))
        agent = Agent(
            emu,
            state / "state",
            BATCH_AGENT_LOGGING_ENDPOINT=emu.url,
            BATCH_AGENT_CLOUD_LOGGING="always",
        )
        wait(lambda: len(emu.reports) >= 2, "the agent reporting")
        pid = agent.proc.pid
        idle = rss_bytes(pid)
        peak = Peak(pid)
        cpu = cpu_seconds(pid)
        name = emu.add_task(script_task(f"cat {source}"))
        wait(lambda: emu.logs.received("batch_task_logs") >= lines, "every line counted")
        done = datetime.now(UTC)
        cpu = cpu_seconds(pid) - cpu
        peak_rss = peak.stop()
        running = next(e for e in emu.task_events(name) if e.get("taskState") == "RUNNING")
        seconds = (done - event_time(running)).total_seconds()
        agent.terminate()
    finally:
        if agent is not None:
            agent.close()
        emu.stop()
    return seconds, peak_rss, idle, cpu


def cat(source: Path) -> float:
    """Seconds for `cat FILE > /dev/null`."""
    import subprocess

    start = time.perf_counter()
    subprocess.run(["sh", "-c", f"cat {source} > /dev/null"], check=True)
    return time.perf_counter() - start


class Peak:
    """The highest VmRSS of a process, sampled every 20 ms in a thread until `stop`."""

    def __init__(self, pid: int) -> None:
        self._pid, self._peak, self._done = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.wait(0.02):
            try:
                self._peak = max(self._peak, rss_bytes(self._pid))
            except (OSError, RuntimeError):
                return

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        return self._peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=1000, help="output size in MB (1000: 1 GB)")
    parser.add_argument("--line-bytes", type=int, default=1000, help="bytes per line")
    parser.add_argument("--random-mb", type=int, default=50, help="random bytes, in MB")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats")
    args = parser.parse_args()
    print_figures(run(args.repeats, args.mb, args.line_bytes, args.random_mb))


if __name__ == "__main__":
    main()
