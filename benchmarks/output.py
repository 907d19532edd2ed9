"""Output throughput: a task writing N MB through the agent vs the same command into a file.

Each repeat starts an emulator and an idle agent, reads the agent's idle RSS and CPU time,
assigns one script task writing BYTES (`yes` with lines of --line-bytes, `seq`, one line of
`y`s, or random bytes: see WRITERS), and samples the agent's VmRSS every 20 ms until the task
SUCCEEDED. The baseline, run
right after in the same repeat, is the same command with its output redirected to a file by
`sh`. Figures per repeat: wall time (the task's RUNNING -> SUCCEEDED eventTimes, the agent's
own clock, vs the bare command's), agent CPU seconds per 100 MB, peak RSS above idle, and the
live shipping rate (bytes over the span between the first and the last output line's log
timestamps). Then, with --idle-tasks K, the agent's CPU % over a window with 1 and with K
silent tasks (a shell loop around `sleep 1`) running: the shipping tick is one for the agent,
so it should not grow. With --journal (and in the suite), a third run each repeat: the agent
writing the journal format, as under systemd on a Batch VM (JOURNAL_STREAM names its stderr),
which copies at most 5,000 output lines into its log every 30 s: its wall time over the bare
command's. MB = 10**6 bytes.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from _common import Agent, Figure, cpu_seconds, event_time, rss_bytes, script_task
from _common import wait as common_wait

from batch_agent.emulator import Emulator

TIMEOUT = 600.0
wait = functools.partial(common_wait, timeout=TIMEOUT)  # polls until it holds

TARGETS = {"live MB/s": 50.0, "CPU s/100MB": 0.3, "wall x bare": 1.5, "RSS +MB": 32.0}
JOURNAL = "journal x bare"  # the wall time ratio with the journal format
# What a task writes, given its size in bytes and the line length for `yes`.
WRITERS: dict[str, Callable[[int, int], str]] = {
    "yes": lambda size, line: f"yes {'x' * (line - 1)} | head -c {size}",
    "seq": lambda size, _: f"seq 1 1000000000 | head -c {size}",
    "line": lambda size, _: f"head -c {size} /dev/zero | tr '\\0' y; echo",  # one line
    "binary": lambda size, _: f"head -c {size} /dev/urandom",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200, help="output size in MB")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats")
    parser.add_argument("--line-bytes", type=int, default=100, help="line length with yes")
    parser.add_argument("--writer", choices=sorted(WRITERS), default="yes")
    parser.add_argument("--idle-tasks", type=int, default=16, help="0: skip the idle test")
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--journal", action="store_true", help="also the journal format")
    args = parser.parse_args()

    size = args.mb * 10**6
    command = WRITERS[args.writer](size, args.line_bytes)
    print(f"output: `{command}` ({args.mb} MB), {args.repeats} repeats")
    rows = measure(command, size, args.repeats, shipped=args.writer != "line", journal=args.journal)
    for key, values in rows.items() if args.repeats else ():
        low, mid, high = min(values), statistics.median(values), max(values)
        line = f"{key:>12}: min {low:8.2f}  median {mid:8.2f}  max {high:8.2f}"
        if key in TARGETS or key == JOURNAL:
            goal = TARGETS.get(key, TARGETS["wall x bare"])
            met = mid >= goal if key == "live MB/s" else mid <= goal
            sign = ">=" if key == "live MB/s" else "<="
            line += f"   target {sign} {goal}: {'met' if met else 'NOT met'} (median)"
        print(line)
    if args.idle_tasks:
        one = idle_cpu(1, args.idle_seconds)
        many = idle_cpu(args.idle_tasks, args.idle_seconds)
        print(
            f"idle CPU with silent tasks running: 1 task {one:.3f}%, "
            f"{args.idle_tasks} tasks {many:.3f}% of one core over {args.idle_seconds:.0f}s each"
        )


def run(repeats: int) -> list[Figure]:
    """The suite's figures: 200 MB of 100-byte lines through the agent vs into a file."""
    size = 200 * 10**6
    rows = measure(WRITERS["yes"](size, 100), size, repeats, journal=True)
    bare = "the same `yes | head -c` into a file"
    goal = TARGETS["wall x bare"]
    figures = [
        Figure("200 MB task: wall time", "s", rows["agent s"], bare, rows["bare s"]),
        Figure(
            "200 MB task: wall time / the baseline's",
            "x",
            rows["wall x bare"],
            target=f"median <= {goal}",
            met=statistics.median(rows["wall x bare"]) <= goal,
        ),
        Figure(
            "200 MB task, the journal format (as under systemd): wall time / the baseline's",
            "x",
            rows[JOURNAL],
            target=f"median <= {goal}",
            met=statistics.median(rows[JOURNAL]) <= goal,
        ),
    ]
    for key, name, unit in (
        ("CPU s/100MB", "agent CPU per 100 MB", "s"),
        ("RSS +MB", "agent peak RSS above idle", "MB"),
        ("live MB/s", "live shipping", "MB/s"),
    ):
        sign = ">=" if key == "live MB/s" else "<="
        middle = statistics.median(rows[key])
        met = middle >= TARGETS[key] if sign == ">=" else middle <= TARGETS[key]
        figures.append(
            Figure(
                f"200 MB task: {name}", unit, rows[key], target=f"{sign} {TARGETS[key]}", met=met
            )
        )
    return figures


def measure(
    command: str, size: int, repeats: int, *, shipped: bool = True, journal: bool = False
) -> dict[str, list[float]]:
    """`repeats` interleaved pairs of `command` through the agent and bare; printed as they
    come. `shipped`: whether the output is lines whose shipping span says a live rate.
    `journal`: a third run each repeat, the agent writing the journal format (`JOURNAL x
    bare`)."""
    rows: dict[str, list[float]] = {k: [] for k in ("agent s", "bare s", *TARGETS)}
    if not shipped:
        del rows["live MB/s"]
    if journal:
        rows[JOURNAL] = []
    for i in range(repeats):
        agent_wall, cpu, idle_rss, peak_rss, live = through_agent(command, size, shipped)
        bare_wall = bare(command)
        if journal:
            journal_wall = through_agent(command, size, shipped=False, journal=True)[0]
            rows[JOURNAL].append(journal_wall / bare_wall)
        figures = {
            "agent s": agent_wall,
            "bare s": bare_wall,
            "live MB/s": live / 1e6,
            "CPU s/100MB": cpu / (size / 1e8),
            "wall x bare": agent_wall / bare_wall,
            "RSS +MB": (peak_rss - idle_rss) / 1e6,
        }
        if not shipped:
            del figures["live MB/s"]
        for key, value in figures.items():
            rows[key].append(value)
        print(
            f"  run {i + 1}: " + " ".join(f"{k}={v:.2f}" for k, v in figures.items()),
            f"(idle RSS {idle_rss / 1e6:.1f} MB)",
            flush=True,
        )
    return rows


def through_agent(
    command: str, size: int, shipped: bool = True, *, journal: bool = False
) -> tuple[float, float, int, int, float]:
    """(wall s, agent CPU s, idle RSS, peak RSS, live bytes/s: 0 unless `shipped`) of one task
    running `command`; `journal`: the agent writes the journal format, as under systemd (its
    stderr, the log file, named by JOURNAL_STREAM as systemd names the journal's stream)."""
    emu = Emulator(None, default_report_interval="1s", min_report_interval="0.2s", log=None)
    emu.start()
    agent: Agent | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="bench-output-") as tmp:
            env = {}
            if journal:
                log = Path(tmp) / "state-agent.log"  # the agent's stderr
                log.touch()
                env["JOURNAL_STREAM"] = f"{log.stat().st_dev}:{log.stat().st_ino}"
            agent = Agent(emu, Path(tmp) / "state", **env)
            wait(lambda: len(emu.reports) >= 2, "the agent reporting")
            pid = agent.proc.pid
            idle_rss, cpu_before = rss_bytes(pid), cpu_seconds(pid)
            peak = Peak(pid)
            name = emu.add_task(script_task(command))
            wait(lambda: emu.task_state(name) in ("SUCCEEDED", "FAILED"), "the task ending")
            cpu = cpu_seconds(pid) - cpu_before
            peak_rss = peak.stop()
            if emu.task_state(name) != "SUCCEEDED":
                raise SystemExit(f"task failed: {emu.task_events(name)}")
            agent.terminate()
            live = size / shipping_span(agent.log_path) if shipped else 0.0
    finally:
        if agent is not None:
            agent.close()
        emu.stop()
    events = {e["taskState"]: event_time(e) for e in emu.task_events(name)}
    wall = (events["SUCCEEDED"] - events["RUNNING"]).total_seconds()
    return wall, cpu, idle_rss, peak_rss, live


def bare(command: str) -> float:
    """Seconds for `command` with its output into a file, as `sh` runs it."""
    with tempfile.TemporaryDirectory(prefix="bench-output-bare-") as tmp:
        start = time.perf_counter()
        subprocess.run(["sh", "-c", f"{{ {command}; }} > {tmp}/out"], check=True)
        return time.perf_counter() - start


def idle_cpu(tasks: int, seconds: float) -> float:
    """The agent's CPU % of one core over `seconds` while `tasks` silent tasks run."""
    emu = Emulator(None, default_report_interval="10s", log=None)
    emu.start()
    agent: Agent | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="bench-output-idle-") as tmp:
            agent = Agent(emu, Path(tmp) / "state")
            wait(lambda: len(emu.reports) >= 1, "the agent reporting")
            stop = Path(tmp) / "stop"  # the tasks end by themselves once it exists
            text = f"while [ ! -e {stop} ]; do sleep 1; done"
            names = [emu.add_task(script_task(text)) for _ in range(tasks)]

            def running() -> bool:
                states = [emu.task_state(n) for n in names]
                if "FAILED" in states:  # say so now rather than wait for the timeout
                    failed = next(n for n, s in zip(names, states, strict=True) if s == "FAILED")
                    raise SystemExit(f"a silent task failed: {emu.task_events(failed)}")
                return all(state == "RUNNING" for state in states)

            try:
                wait(running, "tasks running")
                time.sleep(2.0)  # let the starts settle
                pid = agent.proc.pid
                before, start = cpu_seconds(pid), time.monotonic()
                time.sleep(seconds)
                return 100 * (cpu_seconds(pid) - before) / (time.monotonic() - start)
            finally:
                stop.touch()
                ended = ("SUCCEEDED", "FAILED")
                wait(lambda: all(emu.task_state(n) in ended for n in names), "tasks ending")
    finally:
        if agent is not None:
            agent.close()
        emu.stop()


class Peak:
    """Samples VmRSS of `pid` every 20 ms in a thread until `stop`, which returns the peak."""

    def __init__(self, pid: int) -> None:
        self._pid, self._peak, self._done = pid, rss_bytes(pid), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.wait(0.02):
            self._peak = max(self._peak, rss_bytes(self._pid))

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        return self._peak


def shipping_span(log: Path) -> float:
    """Seconds between the first and the last output line of task 0 in the agent's log."""
    marker = b"[task 0 r1 stdout] "
    with log.open("rb") as f:
        first = next(line for line in f if marker in line)
        f.seek(max(0, log.stat().st_size - 1_000_000))
        last = [line for line in f.read().split(b"\n") if marker in line][-1]
    return max((stamp(last) - stamp(first)).total_seconds(), 0.001)


def stamp(line: bytes) -> datetime:
    """The time at the start of a text log line (`2026-01-02 10:11:12,345`)."""
    return datetime.strptime(line[:23].decode(), "%Y-%m-%d %H:%M:%S,%f")


if __name__ == "__main__":
    main()
