"""Idle footprint: RSS and CPU of `batch-agent run` with no task, reporting every 10 s.

Starts an emulator with no job (defaultReportInterval "10s") and the real agent as a
subprocess, lets it settle, then samples VmRSS once a second and takes utime+stime across the
window (MB = 10**6 bytes). CPU time comes in clock ticks (usually 10 ms), so short windows
are coarse. Then, `--repeats` times, interleaved: start-up to the first report (a fresh agent
and state dir; from Popen to the emulator's stamp of the report, the same clock), and
`batch-agent version` next to its baseline, `python -c pass`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import CLOCK_TICKS, Agent, Figure, cpu_seconds, fmt_ms, rss_bytes

from batch_agent.emulator import Emulator

RSS_TARGET_MB = 50.0
FIRST_REPORT_TARGET = 0.2  # seconds from start
CPU_TARGET_PERCENT = 0.2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="sampling window")
    parser.add_argument("--settle", type=float, default=5.0, help="wait before sampling")
    parser.add_argument("--repeats", type=int, default=5, help="start-ups and versions timed")
    args = parser.parse_args()

    emu = Emulator(None, default_report_interval="10s", log=None)
    emu.start()
    agent: Agent | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp:
            agent = Agent(emu, Path(tmp) / "state")
            time.sleep(args.settle)
            if agent.proc.poll() is not None:
                raise SystemExit(f"agent exited early:\n{agent.log()[-3000:]}")
            rss, reports, wall, cpu = sample(agent.proc.pid, emu, args.seconds)
            agent.close()
    finally:
        if agent is not None:
            agent.close()
        emu.stop()

    mb = [r / 1e6 for r in rss]
    mean, peak = statistics.fmean(mb), max(mb)
    cpu_percent = 100 * cpu / wall
    print(
        f"idle: rss_mean={mean:.1f}MB rss_peak={peak:.1f}MB cpu={cpu_percent:.3f}% "
        f"over {wall:.0f}s ({reports} reports, {len(mb)} RSS samples, "
        f"cpu {cpu:.2f}s in {1000 / CLOCK_TICKS:.0f}ms ticks)"
    )
    print(f"  target rss_peak <= {RSS_TARGET_MB:.0f}MB: {verdict(peak <= RSS_TARGET_MB)}")
    print(f"  target cpu <= {CPU_TARGET_PERCENT}%: {verdict(cpu_percent <= CPU_TARGET_PERCENT)}")

    first, version, bare = [], [], []
    for _ in range(args.repeats):
        first.append(first_report())
        version.append(timed([sys.executable, "-m", "batch_agent.cli", "version"]))
        bare.append(timed([sys.executable, "-c", "pass"]))
    print(f"start-up to first report: {summary(first)}")
    print(f"  target median <= {fmt_ms(FIRST_REPORT_TARGET)}: ", end="")
    print(verdict(statistics.median(first) <= FIRST_REPORT_TARGET))
    print(f"batch-agent version: {summary(version)}")
    print(f"  baseline python -c pass: {summary(bare)}")


def first_report() -> float:
    """Seconds from starting a fresh agent to its first report reaching the emulator."""
    emu = Emulator(None, default_report_interval="10s", log=None)
    emu.start()
    agent: Agent | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="bench-start-") as tmp:
            start = time.monotonic()
            agent = Agent(emu, Path(tmp) / "state")
            while not emu.reports:
                if agent.proc.poll() is not None or time.monotonic() - start > 30:
                    raise SystemExit(f"no first report:\n{agent.log()[-3000:]}")
                time.sleep(0.002)
            agent.close()
    finally:
        if agent is not None:
            agent.close()
        emu.stop()
    return emu.reports[0].time - start


def timed(command: list[str]) -> float:
    start = time.monotonic()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - start


def summary(samples: list[float]) -> str:
    return (
        f"min={fmt_ms(min(samples))} median={fmt_ms(statistics.median(samples))} "
        f"max={fmt_ms(max(samples))}"
    )


def run(repeats: int, window: float = 10.0) -> list[Figure]:
    """Peak RSS (MB) and CPU (% of a core) in each of `repeats` windows of one idle agent."""
    peaks, cpus = [], []
    emu = Emulator(None, default_report_interval="10s", log=None)
    emu.start()
    agent: Agent | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp:
            agent = Agent(emu, Path(tmp) / "state")
            time.sleep(5.0)  # settle: start-up and the first reports
            for _ in range(repeats):
                rss, _reports, wall, cpu = sample(agent.proc.pid, emu, window)
                peaks.append(max(rss) / 1e6)
                cpus.append(100 * cpu / wall)
            agent.close()
    finally:
        if agent is not None:
            agent.close()
        emu.stop()
    every = f"idle agent, each of {repeats} windows of {window:.0f}s"
    return [
        Figure(
            f"{every}: peak RSS",
            "MB",
            peaks,
            target=f"<= {RSS_TARGET_MB:.0f} MB",
            met=max(peaks) <= RSS_TARGET_MB,
        ),
        Figure(
            f"{every}: CPU",
            "% of a core",
            cpus,
            target=f"<= {CPU_TARGET_PERCENT} %",
            met=statistics.median(cpus) <= CPU_TARGET_PERCENT,
        ),
    ]


def sample(pid: int, emu: Emulator, seconds: float) -> tuple[list[int], int, float, float]:
    """RSS once a second for `seconds`; returns (rss samples, reports seen, wall s, cpu s)."""
    reports_before = len(emu.reports)
    cpu_before, start = cpu_seconds(pid), time.monotonic()
    rss = [rss_bytes(pid)]
    tick = 1
    while tick <= seconds:
        time.sleep(max(0.0, start + tick - time.monotonic()))
        rss.append(rss_bytes(pid))
        tick += 1
    cpu, wall = cpu_seconds(pid) - cpu_before, time.monotonic() - start
    return rss, len(emu.reports) - reports_before, wall, cpu


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


if __name__ == "__main__":
    main()
