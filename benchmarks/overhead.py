"""Per-runnable overhead: 100 runnables of `true` through the agent vs 100 bare `sh -c true`.

The agent's figure is the task's RUNNING -> SUCCEEDED span, taken from the eventTime of the two
status events the agent reported (its own clock, so the report cadence does not count). The
bare figure is 100 sequential subprocess.run(["sh", "-c", "true"]) in this process. Their
difference over 100 is what the agent adds to each runnable: its bookkeeping, persisting,
writing the script file and the waiter shell around each one. A third figure runs the waiter's
own command (`script.waiter_argv`, its go given at once) on a script file of `true` 100 times the
same way: what the waiter design costs (a second shell, its fork, the status file) when nothing
of it is done ahead. The agent forks each runnable's waiter while the one before it runs, so
only the first runnable pays all of that on its path. The agent runs as under systemd: state
dir on disk, runtime dir (scripts, exit statuses) on tmpfs, and the floor writes its status
file on tmpfs too; a fourth figure runs the agent without a runtime dir (everything in the
state dir, as where there is no tmpfs).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from _common import Agent, Figure, event_time, fmt_ms, runtime_dir, runtime_env

from batch_agent.emulator import Emulator
from batch_agent.tasks.script import waiter_argv, write_script

TARGET = 0.002  # seconds per runnable
TIMEOUT = 300.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runnables", type=int, default=100, help="runnables in the task")
    parser.add_argument("--repeats", type=int, default=5, help="agent/bare pairs, interleaved")
    args = parser.parse_args()

    per_runnable = []
    for i in range(args.repeats):
        agent_total = through_agent(args.runnables)
        bare_total = bare(args.runnables)
        floor_total = waiter_floor(args.runnables)
        extra = (agent_total - bare_total) / args.runnables
        per_runnable.append(extra)
        print(
            f"overhead run {i + 1}: agent={agent_total:.3f}s bare={bare_total:.3f}s "
            f"waiter floor={floor_total:.3f}s for {args.runnables} runnables -> "
            f"{fmt_ms(extra)} per runnable ({fmt_ms(floor_total / args.runnables)} floor)"
        )
    median = statistics.median(per_runnable)
    met = median <= TARGET
    print(
        f"overhead: min={fmt_ms(min(per_runnable))} median={fmt_ms(median)} "
        f"max={fmt_ms(max(per_runnable))} per runnable over {args.repeats} runs"
    )
    print(f"  target <= {fmt_ms(TARGET)} per runnable: {'met' if met else 'NOT met'}")


def run(repeats: int, runnables: int = 100) -> list[Figure]:
    """Per runnable: the agent's task span (runtime dir on tmpfs, and none), bare `sh -c true`
    and the waiter's command alone, interleaved, in ms."""
    agent: list[float] = []
    on_disk: list[float] = []
    bare_: list[float] = []
    floor: list[float] = []
    for _ in range(repeats):
        agent.append(1000 * through_agent(runnables) / runnables)
        bare_.append(1000 * bare(runnables) / runnables)
        floor.append(1000 * waiter_floor(runnables) / runnables)
        on_disk.append(1000 * through_agent(runnables, tmpfs=False) / runnables)
    met = statistics.median(agent) - statistics.median(bare_) <= TARGET * 1000
    name = f"per runnable, a task of {runnables} x `true` (RUNNING -> SUCCEEDED / {runnables})"
    target = f"median - baseline's <= {fmt_ms(TARGET)}"
    baseline = "`sh -c true`, sequential"
    return [
        Figure(name, "ms", agent, baseline, bare_, target, met),
        Figure("per runnable, the waiter's command alone (no agent)", "ms", floor, baseline, bare_),
        Figure(
            "per runnable, no runtime dir (all in the state dir)", "ms", on_disk, baseline, bare_
        ),
    ]


def through_agent(runnables: int, *, tmpfs: bool = True) -> float:
    """Seconds from RUNNING to SUCCEEDED of one task of `runnables` x `true` (run --once), with
    the scripts and exit statuses on tmpfs (`tmpfs`) or in the state dir."""
    job = {
        "taskGroups": [
            {"taskSpec": {"runnables": [{"script": {"text": "true"}}] * runnables}},
        ]
    }
    emu = Emulator(job, default_report_interval="1s", min_report_interval="0.2s", log=None)
    emu.start()
    agent: Agent | None = None
    try:
        with (
            tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp,
            runtime_dir() as runtime,
        ):
            env = runtime_env(runtime if tmpfs else None)
            agent = Agent(emu, Path(tmp) / "state", "--once", **env)
            try:
                status = agent.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                raise SystemExit(f"agent still running after {TIMEOUT}s") from None
            if status != 0:
                raise SystemExit(f"agent exited {status}:\n{agent.log()[-3000:]}")
            agent.close()
    finally:
        if agent is not None:
            agent.close()
        emu.stop()
    (name,) = emu.task_names()
    events = {e["taskState"]: event_time(e) for e in emu.task_events(name)}
    if emu.task_state(name) != "SUCCEEDED" or "RUNNING" not in events:
        raise SystemExit(f"task did not succeed: {emu.task_events(name)}")
    return (events["SUCCEEDED"] - events["RUNNING"]).total_seconds()


def waiter_floor(runnables: int) -> float:
    """Seconds for `runnables` sequential runs of the waiter's command on a script of `true`,
    script and status file on tmpfs (as the agent's runtime dir) where there is one."""
    with (
        tempfile.TemporaryDirectory(prefix="bench-overhead-floor-") as tmp,
        runtime_dir() as runtime,
    ):
        files = runtime or Path(tmp)
        program = write_script("true", files)
        argv = waiter_argv(program, files / "status", [], shell=True)  # as the agent runs it
        start = time.perf_counter()
        for _ in range(runnables):
            subprocess.run(argv, check=True, cwd=tmp, input=b"go\n")  # its go, at once
        return time.perf_counter() - start


def bare(runnables: int) -> float:
    """Seconds for `runnables` sequential subprocess.run(["sh", "-c", "true"])."""
    start = time.perf_counter()
    for _ in range(runnables):
        subprocess.run(["sh", "-c", "true"], check=True)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
