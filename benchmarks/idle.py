"""Footprint: the agent's start-up, `batch-agent version`, and its RSS and CPU idle and busy.

Five measures, each as min/median/max of `--repeats` samples:
- start-up to the first report: a fresh agent and state dir each time, from its Popen to the
  emulator's stamp of its first report (the same clock), interleaved with the baseline
  `python -c pass` (the interpreter's own start);
- the CPU time (user + system, all threads) the agent had used when its first report was seen
  (polled every ms, so it may include a ms of what follows), next to `python -c pass`'s: a
  start-up is CPU-bound, and CPU moves less than wall time with the machine's load;
- `batch-agent version`, interleaved with `python -c pass`;
- one agent with no task (defaultReportInterval "10s"): after 5 s to settle, its peak VmRSS
  (sampled once a second) and its CPU (utime+stime across the window) in each of `repeats`
  windows of `--seconds`;
- the same agent with `--tasks` (64) tasks running, each a script blocked in `read` from a
  FIFO (as idle as `sleep`, and released at the end so that no task outlives the run): its
  peak VmRSS in each window, next to the idle windows of the same process as the baseline.
MB = 10**6 bytes. CPU time comes in clock ticks (usually 10 ms), so short windows are coarse.

`--against SRC` compares the start-up instead with another checkout's code (its `src`, on
`PYTHONPATH`): `--repeats` pairs of a first report with ours and with SRC's, ours first in even
pairs and SRC's first in odd ones, and the same for `batch-agent version`.

The agent's modules are compiled to bytecode first, as pip does when it installs the wheel on
a VM: a checkout run with PYTHONDONTWRITEBYTECODE would otherwise compile every module at
every start, which no installed agent does.
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    Agent,
    Figure,
    cpu_seconds,
    interleaved,
    print_figures,
    rss_bytes,
    script_task,
)
from dispatch import wait_for

import batch_agent
from batch_agent.emulator import Emulator

RSS_TARGET_MB = 50.0
BUSY_RSS_TARGET_MB = 55.0
TASKS = 64
FIRST_REPORT_TARGET = 0.2  # seconds from start
CPU_TARGET_PERCENT = 0.2
SETTLE = 5.0  # seconds: start-up, the first reports and, with tasks, their start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="each sampling window")
    parser.add_argument("--repeats", type=int, default=5, help="samples of each figure")
    parser.add_argument("--tasks", type=int, default=TASKS, help="tasks running when busy")
    parser.add_argument("--against", type=Path, help="another checkout's src to compare with")
    args = parser.parse_args()
    if args.against is not None:
        print(f"load average {os.getloadavg()}")
        print_figures(against(args.repeats, args.against.resolve()))
        print(f"load average {os.getloadavg()}")
        return
    print_figures(run(args.repeats, window=args.seconds, tasks=args.tasks))


def run(repeats: int, window: float = 10.0, tasks: int = TASKS) -> list[Figure]:
    """The start-up figures, then the idle and busy windows of one agent."""
    compileall.compile_dir(Path(batch_agent.__file__).parent, quiet=1)
    first_cpu: list[float] = []
    bare_cpu: list[float] = []
    first, bare = interleaved(
        repeats, lambda: first_report(first_cpu), lambda: python_pass(bare_cpu)
    )
    version, bare_version = interleaved(
        repeats, lambda: timed([sys.executable, "-m", "batch_agent.cli", "version"]), python_pass
    )
    idle_rss, idle_cpu, busy_rss = windows(repeats, window, tasks)
    every = f"each of {repeats} windows of {window:.0f}s"
    return [
        against_python(
            "start-up: agent process started -> its first report received",
            first,
            bare,
            target=f"median <= {FIRST_REPORT_TARGET * 1000:.0f} ms",
            met=statistics.median(first) <= FIRST_REPORT_TARGET,
        ),
        against_python(
            "start-up CPU: user + system time of the agent at its first report", first_cpu, bare_cpu
        ),
        against_python("`batch-agent version`", version, bare_version),
        Figure(
            f"idle agent, {every}: peak RSS",
            "MB",
            idle_rss,
            target=f"<= {RSS_TARGET_MB:.0f} MB",
            met=max(idle_rss) <= RSS_TARGET_MB,
        ),
        Figure(
            f"idle agent, {every}: CPU",
            "% of a core",
            idle_cpu,
            target=f"<= {CPU_TARGET_PERCENT} %",
            met=statistics.median(idle_cpu) <= CPU_TARGET_PERCENT,
        ),
        Figure(
            f"{tasks} tasks running (blocked in `read`), {every}: peak RSS",
            "MB",
            busy_rss,
            baseline="the same agent idle, before the tasks",
            baseline_samples=idle_rss,
            target=f"<= {BUSY_RSS_TARGET_MB:.0f} MB",
            met=max(busy_rss) <= BUSY_RSS_TARGET_MB,
        ),
    ]


def against(repeats: int, src: Path) -> list[Figure]:
    """The start-up figures of ours against the code in `src`: `repeats` alternating pairs."""
    compileall.compile_dir(Path(batch_agent.__file__).parent, quiet=1)
    compileall.compile_dir(src / "batch_agent", quiet=1)
    theirs_env = {"PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    # per side (None: ours): first report s, CPU at it s, `version` s
    sides: dict[Path | None, tuple[list[float], list[float], list[float]]] = {
        None: ([], [], []),
        src: ([], [], []),
    }
    version = [sys.executable, "-m", "batch_agent.cli", "version"]
    for i in range(repeats):
        for tree in (None, src) if i % 2 == 0 else (src, None):
            first, cpu, took = sides[tree]
            env = {} if tree is None else theirs_env
            first.append(first_report(cpu, **env))
            took.append(timed(version, env=env))
    (first, cpu, took), (their_first, their_cpu, their_took) = sides[None], sides[src]
    pairs = (
        ("start-up: agent process started -> its first report received", first, their_first),
        ("start-up CPU: user + system time of the agent at its first report", cpu, their_cpu),
        ("`batch-agent version`", took, their_took),
    )
    return [
        Figure(
            name,
            "ms",
            [s * 1000 for s in ours],
            baseline=f"`{src}`",
            baseline_samples=[s * 1000 for s in theirs],
        )
        for name, ours, theirs in pairs
    ]


def against_python(name: str, ours: list[float], bare: list[float], **target: Any) -> Figure:
    """A figure in ms from samples in seconds, against `python -c pass`'s."""
    return Figure(
        name,
        "ms",
        [s * 1000 for s in ours],
        baseline="`python -c pass`",
        baseline_samples=[s * 1000 for s in bare],
        **target,
    )


def python_pass(cpu: list[float] | None = None) -> float:
    """The baseline: the interpreter starting and exiting (its CPU seconds appended to
    `cpu` when given)."""
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    _, status, usage = os.wait4(proc.pid, 0)
    took = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"`python -c pass` exited {proc.returncode}")
    if cpu is not None:
        cpu.append(usage.ru_utime + usage.ru_stime)
    return took


def first_report(cpu: list[float], **env: str) -> float:
    """Seconds from starting a fresh agent (with `env` added to its environment) to its first
    report reaching the emulator; the agent's CPU seconds by then are appended to `cpu`."""
    emu = Emulator(None, default_report_interval="10s", log=None)
    emu.start()
    agent: Agent | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="bench-start-") as tmp:
            start = time.monotonic()
            agent = Agent(emu, Path(tmp) / "state", **env)
            while not emu.reports:
                if agent.proc.poll() is not None or time.monotonic() - start > 30:
                    raise SystemExit(f"no first report:\n{agent.log()[-3000:]}")
                time.sleep(0.001)
            cpu.append(cpu_seconds(agent.proc.pid))
            agent.close()
    finally:
        if agent is not None:
            agent.close()
        emu.stop()
    return emu.reports[0].time - start


def timed(command: list[str], env: dict[str, str] | None = None) -> float:
    """Seconds `command` took (with `env` added to our environment)."""
    start = time.monotonic()
    environ = None if not env else {**os.environ, **env}
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=environ)
    return time.monotonic() - start


def windows(
    repeats: int, window: float, tasks: int
) -> tuple[list[float], list[float], list[float]]:
    """(peak RSS MB and CPU % of each idle window, peak RSS MB of each window with `tasks`)."""
    idle_rss, idle_cpu, busy_rss = [], [], []
    emu = Emulator(None, default_report_interval="10s", log=None)
    emu.start()
    agent: Agent | None = None
    gate_fd = -1
    try:
        with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp:
            agent = Agent(emu, Path(tmp) / "state")
            time.sleep(SETTLE)
            for _ in range(repeats):
                rss, wall, cpu = sample(agent, window)
                idle_rss.append(max(rss) / 1e6)
                idle_cpu.append(100 * cpu / wall)
            gate = Path(tmp) / "gate"
            os.mkfifo(gate)
            gate_fd = os.open(gate, os.O_RDWR)  # a writer always exists: `read` waits
            names = [emu.add_task(script_task(f"read _ < {gate}")) for _ in range(tasks)]
            running = f"{tasks} tasks running"
            wait_for(lambda: all(emu.task_state(n) == "RUNNING" for n in names), running)
            time.sleep(SETTLE)
            for _ in range(repeats):
                rss, _wall, _cpu = sample(agent, window)
                busy_rss.append(max(rss) / 1e6)
            os.write(gate_fd, b"\n" * tasks)
            done = "the tasks to end"
            wait_for(lambda: all(emu.task_state(n) == "SUCCEEDED" for n in names), done)
            agent.close()
    finally:
        if agent is not None:
            agent.close()
        if gate_fd >= 0:
            os.close(gate_fd)
        emu.stop()
    return idle_rss, idle_cpu, busy_rss


def sample(agent: Agent, seconds: float) -> tuple[list[int], float, float]:
    """VmRSS once a second for `seconds`; returns (RSS samples, wall s, CPU s)."""
    pid = agent.proc.pid
    if agent.proc.poll() is not None:
        raise SystemExit(f"agent exited early:\n{agent.log()[-3000:]}")
    cpu_before, start = cpu_seconds(pid), time.monotonic()
    rss = [rss_bytes(pid)]
    tick = 1
    while tick <= seconds:
        time.sleep(max(0.0, start + tick - time.monotonic()))
        rss.append(rss_bytes(pid))
        tick += 1
    return rss, time.monotonic() - start, cpu_seconds(pid) - cpu_before


if __name__ == "__main__":
    main()
