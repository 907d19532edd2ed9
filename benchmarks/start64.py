"""64 tasks at once: from the response that assigns them to all 64 running, vs 64 bare Popens.

Each repeat starts a fresh emulator and agent, waits for the agent's first reports, then adds
64 one-runnable tasks mid-interval (all carried by one response; a report arriving while they
are added voids the repeat). Each task's script is `echo N > CLOCK; read _ < GATE`: its first
command stamps a line on `dispatch.FifoClock`, then it blocks until released. The agent's
figure runs from that response's `Report.time` to the 64th line read; with all 64 running, the
agent's thread count and VmRSS are read from /proc/PID/status. The gate is then opened (64
newlines, one per blocked `read`) and the tasks end. The baseline, in the same repeat: the same
script started 64 times by `subprocess.Popen(["/bin/sh", SCRIPT])` from this process, from the
first Popen to the 64th line. A third figure starts the same scripts through the waiter's own
command (`script.waiter_argv`, its go given at once), 64 times, the same way: the floor of the
waiter design (a second shell per runnable, its status file) with no agent around it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from _common import Agent, Figure, fmt_ms, rss_bytes, runtime_dir, runtime_env
from dispatch import AFTER_REPORT, FifoClock, wait_for

from batch_agent.emulator import Emulator
from batch_agent.tasks.script import waiter_argv, write_script

TASKS = 64
TARGET_RATIO = 2.0  # the agent within 2x of bare Popen
TIMEOUT = 60.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=TASKS)
    parser.add_argument("--repeats", type=int, default=5, help="agent/bare pairs, interleaved")
    args = parser.parse_args()

    agent_s, bare_s, floor_s, threads, rss = [], [], [], [], []
    for i in range(args.repeats):
        took, thread_count, rss_mb = through_agent(args.tasks)
        bare_took = bare(args.tasks)
        floor_s.append(bare(args.tasks, waiter=True))
        agent_s.append(took)
        bare_s.append(bare_took)
        threads.append(thread_count)
        rss.append(rss_mb)
        print(
            f"start{args.tasks} run {i + 1}: agent={fmt_ms(took)} bare={fmt_ms(bare_took)} "
            f"threads={thread_count} rss={rss_mb:.1f}MB"
        )
    print(f"start{args.tasks}: agent {summary(agent_s)}")
    print(f"  bare Popen {summary(bare_s)}")
    print(f"  the waiter's command alone {summary(floor_s)}")
    print(f"  agent threads with {args.tasks} running: {min(threads)}..{max(threads)}")
    print(f"  agent VmRSS with {args.tasks} running: {min(rss):.1f}..{max(rss):.1f}MB")
    ratio = statistics.median(agent_s) / statistics.median(bare_s)
    met = ratio <= TARGET_RATIO
    print(
        f"  target median within {TARGET_RATIO}x of bare: {ratio:.2f}x", "met" if met else "NOT met"
    )


def run(repeats: int, tasks: int = TASKS) -> list[Figure]:
    """The assigning response -> all running, and bare Popens, interleaved, in ms."""
    agent: list[float] = []
    warm: list[float] = []
    bare_: list[float] = []
    floor: list[float] = []
    for _ in range(repeats):
        agent.append(1000 * through_agent(tasks)[0])
        bare_.append(1000 * bare(tasks))
        warm.append(1000 * through_agent(tasks, warm=True)[0])
        floor.append(1000 * bare(tasks, waiter=True))
    met = statistics.median(agent) <= TARGET_RATIO * statistics.median(bare_)
    name = f"{tasks} tasks in one response: assigning response -> all {tasks} running"
    baseline = f"{tasks} x `Popen(['/bin/sh', SCRIPT])` -> all running"
    target = f"median <= {TARGET_RATIO:g} x baseline's"
    warm_name = "the same, after a first task ran to its end"
    return [
        Figure(name, "ms", agent, baseline, bare_, target, met),
        Figure(warm_name, "ms", warm, baseline, bare_),
        Figure(f"{tasks} x the waiter's command alone (no agent)", "ms", floor, baseline, bare_),
    ]


def through_agent(tasks: int, *, warm: bool = False) -> tuple[float, int, float]:
    """(seconds from the assigning response to all running, threads, VmRSS MB then); `warm`:
    a task of `true` runs to its end first, so that the task side is imported already."""
    emu = Emulator(None, default_report_interval="1s", min_report_interval="0.2s", log=None)
    emu.start()
    agent: Agent | None = None
    with tempfile.TemporaryDirectory(prefix="bench-start64-") as tmp, runtime_dir() as runtime:
        clock = FifoClock(Path(tmp) / "clock")
        gate = Path(tmp) / "gate"
        os.mkfifo(gate)
        gate_fd = os.open(gate, os.O_RDWR)  # a writer always exists: `read` waits for a line
        try:
            agent = Agent(emu, Path(tmp) / "state", **runtime_env(runtime))
            wait_for(lambda: len(emu.reports) >= 2, "the agent's first reports")
            if warm:
                first = emu.add_task(task("warm", clock.path, gate, text="true"))
                wait_for(lambda: emu.task_state(first) == "SUCCEEDED", "the first task's end")
            count = len(emu.reports)
            wait_for(lambda: len(emu.reports) > count, "a report")
            time.sleep(AFTER_REPORT)
            before = len(emu.reports)
            names = [emu.add_task(task(f"t{i}", clock.path, gate)) for i in range(tasks)]
            if len(emu.reports) != before:
                raise SystemExit("a report arrived while adding the tasks; rerun")
            ran = clock.expect_all({f"t{i}" for i in range(tasks)})
            took = ran - emu.reports[before].time
            thread_count = threads_of(agent.proc.pid)
            rss_mb = rss_bytes(agent.proc.pid) / 1e6
            os.write(gate_fd, b"\n" * tasks)
            wait_for(lambda: all(emu.task_state(n) == "SUCCEEDED" for n in names), "all to end")
            agent.close()
        finally:
            if agent is not None:
                agent.close()
            emu.stop()
            clock.close()
            os.close(gate_fd)
    return took, thread_count, rss_mb


def bare(tasks: int, *, waiter: bool = False) -> float:
    """Seconds from the first of `tasks` Popen(["/bin/sh", SCRIPT]) to the last one running;
    `waiter`: each script through the waiter's command instead, as the agent forks it."""
    with tempfile.TemporaryDirectory(prefix="bench-start64-bare-") as tmp:
        clock = FifoClock(Path(tmp) / "clock")
        gate = Path(tmp) / "gate"
        os.mkfifo(gate)
        gate_fd = os.open(gate, os.O_RDWR)
        go = Path(tmp) / "go"
        go.write_text("go\n")  # each waiter's go, there at once
        argvs = []
        for i in range(tasks):
            folder = Path(tmp, f"b{i}")
            folder.mkdir()
            script = write_script(f"echo b{i} > {clock.path}; read _ < {gate}", folder)
            waits = waiter_argv(script, folder / "status", [], shell=True)
            argvs.append(waits if waiter else ["/bin/sh", str(script)])
        try:
            start = time.monotonic()
            processes = []
            for argv in argvs:
                with go.open("rb") as stdin:
                    processes.append(subprocess.Popen(argv, stdin=stdin))
            ran = clock.expect_all({f"b{i}" for i in range(tasks)})
            os.write(gate_fd, b"\n" * tasks)
            for process in processes:
                process.wait()
        finally:
            clock.close()
            os.close(gate_fd)
    return ran - start


def task(token: str, clock: Path, gate: Path, text: str = "") -> dict[str, object]:
    text = text or f"echo {token} > {clock}; read _ < {gate}"
    return {"intendedState": "ASSIGNED", "spec": {"runnables": [{"script": {"text": text}}]}}


def threads_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise RuntimeError(f"no Threads for pid {pid}")


def summary(samples: list[float]) -> str:
    return (
        f"min={fmt_ms(min(samples))} median={fmt_ms(statistics.median(samples))} "
        f"max={fmt_ms(max(samples))}"
    )


if __name__ == "__main__":
    main()
