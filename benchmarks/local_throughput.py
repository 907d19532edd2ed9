"""Many small tasks: 400 x `true` through `batch-agent local` vs `seq 400 | xargs -P 8 sh -c true`.

The job is one task group of 400 tasks, parallelism 8, taskCountPerNode 4 (so `local` starts 2
emulated VMs, one agent each). Ours is `batch-agent local JOB.json --json` run as a subprocess,
timed from its start to its exit (Python start-up of `local` and both agents included), and, from
the same run, the span from the first task's RUNNING to the last task's SUCCEEDED (the emulator's
change times: the steady state, start-up excluded). The baseline runs the same 400 `sh -c true`
with xargs, 8 at a time. A third figure runs the job again with `--min-report-interval 0.1s`,
the fixed cadence `local` had before its cadence followed the work. Runs are interleaved. More
figures from the first kind of run: the CPU time per task of the whole process tree (`local`,
its agents, their shells; user + system, from the children's rusage) against the same for
xargs, split into the agents with their shells (the summary's `cpu`) and `local` (the rest,
its start-up included), and the `state:report` calls per task (the summary's `reports`).

Two more figures, in the same repeats, split the CPU per task into what this design cannot go
below and what the agents add: the floor, 400 starts of the waiter's own command
(`script.waiter_argv` on a script of `true`, its go given at once, status files in a temporary
folder), 8 at a time, with no agent around (its tasks/s, and the CPU of its shells per task);
and the fixed cost, a `local` run of the same job with 8 tasks (one per slot: `local`'s and
both agents' start-up and stop, 8 tasks' work), whose CPU is spread over the 400 tasks of the
full run.

`--against SRC` compares instead with another checkout's code (its `src`, e.g. `main`'s in a
worktree): the same run alternately with ours and with SRC's (on `PYTHONPATH`, so its agents
run it too), ours first in even pairs and SRC's first in odd ones, the way changes are judged
on a shared machine; it also prints, per figure, the median of the pairs' differences and in
how many pairs ours was lower. A tree whose summary has no `cpu` shows its CPU as `local`'s
alone.

The agent's modules are compiled to bytecode first, as pip does when it installs the wheel: a
checkout run with PYTHONDONTWRITEBYTECODE would otherwise compile every module at every start
of `local` and of each agent (~0.2 s of CPU each, ~1.5 ms a task here), which no installed
agent does.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import Figure, print_figures

import batch_agent
from batch_agent.tasks.script import waiter_argv, write_script

TASKS, PARALLELISM, PER_VM = 400, 8, 4
TARGET = 400.0  # tasks per second
TIMEOUT = 600.0


def job(tasks: int = TASKS) -> dict[str, object]:
    spec = {"runnables": [{"script": {"text": "true"}}]}
    group = {
        "taskCount": tasks,
        "parallelism": PARALLELISM,
        "taskCountPerNode": PER_VM,
        "taskSpec": spec,
    }
    return {"taskGroups": [group]}


def _children_cpu() -> float:
    """User + system seconds of every waited-for descendant so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def through_local(
    config: Path, *flags: str, src: Path | None = None
) -> tuple[float, float, float, float, float]:
    """One local run (of the code in `src` when given): (end to end, first RUNNING to last
    SUCCEEDED) in tasks per second, CPU ms per task of the process tree and of its agents with
    their shells, state:report calls per task."""
    env = None
    if src is not None:
        env = dict(
            os.environ, PYTHONPATH=os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])
        )
    cpu = _children_cpu()
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "batch_agent.cli", "local", str(config), "--json", *flags],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    wall = time.perf_counter() - began
    cpu = _children_cpu() - cpu
    if done.returncode != 0:
        raise SystemExit(f"batch-agent local exited {done.returncode}:\n{done.stderr[-3000:]}")
    changes = [json.loads(line) for line in done.stdout.splitlines()]
    tasks = [c for c in changes if c["event"] == "task"]
    # A cadence slower than the tasks can report a task SUCCEEDED without a RUNNING before it;
    # the span then starts at the first task to leave ASSIGNED either way.
    first = min(c["time"] for c in tasks if c["state"] in ("RUNNING", "SUCCEEDED"))
    last = max(c["time"] for c in tasks if c["state"] == "SUCCEEDED")
    reports = changes[-1]["reports"] / TASKS
    agents = changes[-1].get("cpu", {}).get("agents", 0.0)
    rates = TASKS / wall, TASKS / max(last - first, 0.001)
    return *rates, cpu * 1000 / TASKS, agents * 1000 / TASKS, reports


def waiters(tmp: Path) -> tuple[float, float]:
    """Tasks per second of the waiter's own command on a script of `true`, TASKS times,
    PARALLELISM at a time, and the CPU ms per task of its shells (the floor of the design)."""
    script = write_script("true", tmp)
    go = Path(tmp, "go")
    go.write_text("go\n")
    statuses = Path(tempfile.mkdtemp(dir=tmp))

    def one(i: int) -> None:
        with go.open("rb") as stdin:
            argv = waiter_argv(script, statuses / f"status-{i}", [], shell=True)
            subprocess.run(argv, stdin=stdin, check=True, start_new_session=True)

    cpu = _children_cpu()
    began = time.perf_counter()
    with ThreadPoolExecutor(PARALLELISM) as pool:
        list(pool.map(one, range(TASKS)))
    rate = TASKS / (time.perf_counter() - began)
    return rate, (_children_cpu() - cpu) * 1000 / TASKS


def xargs() -> tuple[float, float]:
    """Tasks per second of `seq 400 | xargs -P 8 -n 1 sh -c true`, and its CPU ms per task."""
    cpu = _children_cpu()
    began = time.perf_counter()
    subprocess.run(f"seq {TASKS} | xargs -P {PARALLELISM} -n 1 sh -c true", shell=True, check=True)
    rate = TASKS / (time.perf_counter() - began)
    return rate, (_children_cpu() - cpu) * 1000 / TASKS


def run(repeats: int) -> list[Figure]:
    """The three figures, each run `repeats` times, interleaved with the xargs baseline."""
    end_to_end: list[float] = []
    steady: list[float] = []
    cpu: list[float] = []
    agents_cpu: list[float] = []
    reports: list[float] = []
    fixed: list[float] = []
    baseline: list[float] = []
    baseline_cpu: list[float] = []
    floor: list[float] = []
    floor_cpu: list[float] = []
    fixed_cpu: list[float] = []
    compileall.compile_dir(Path(batch_agent.__file__).parent, quiet=1)
    with tempfile.TemporaryDirectory(prefix="bench-local-") as tmp:
        config = Path(tmp, "many-small-tasks.json")
        config.write_text(json.dumps(job()))
        small = Path(tmp, "one-round.json")
        small.write_text(json.dumps(job(PARALLELISM)))
        for _ in range(repeats):
            rate, waiters_cpu = waiters(Path(tmp))
            floor.append(rate)
            floor_cpu.append(waiters_cpu)
            fixed_cpu.append(through_local(small)[2])  # its CPU spread over TASKS tasks
            whole, running, used, agents, calls = through_local(config)
            end_to_end.append(whole)
            steady.append(running)
            cpu.append(used)
            agents_cpu.append(agents)
            reports.append(calls)
            rate, base_cpu = xargs()
            baseline.append(rate)
            baseline_cpu.append(base_cpu)
            fixed.append(through_local(config, "--min-report-interval", "0.1s")[0])
    name = f"{TASKS} x `true`, parallelism {PARALLELISM}, {PER_VM} per VM"
    base = f"`seq {TASKS} | xargs -P {PARALLELISM} -n 1 sh -c true`"
    target = f"median >= {TARGET:.0f} tasks/s"

    def figure(label: str, samples: list[float]) -> Figure:
        met = statistics.median(samples) >= TARGET
        return Figure(f"{name}: {label}", "tasks/s", samples, base, baseline, target, met)

    # 400 tasks/s on this machine's CPUs leaves each task nproc / 400 s of CPU, all included.
    budget = 1000 * (os.cpu_count() or 1) / TARGET
    return [
        figure("`batch-agent local`, end to end", end_to_end),
        figure("first task running -> last task done", steady),
        figure("end to end, `--min-report-interval 0.1s`", fixed),
        Figure(
            f"{name}: CPU per task (`local`, agents, shells)",
            "ms",
            cpu,
            base,
            baseline_cpu,
            f"median <= {budget:.0f} ms (400 tasks/s on {os.cpu_count()} CPUs)",
            statistics.median(cpu) <= budget,
        ),
        Figure(f"{name}: CPU per task, the agents and their shells", "ms", agents_cpu),
        Figure(
            f"{name}: CPU per task, `local` (start-up included)",
            "ms",
            [whole - agents for whole, agents in zip(cpu, agents_cpu, strict=True)],
        ),
        Figure(f"{name}: `state:report` calls per task", "calls", reports),
        Figure(
            f"{TASKS} x the waiter's command alone on `true`, {PARALLELISM} at a time (no agent)",
            "tasks/s",
            floor,
            base,
            baseline,
        ),
        Figure(
            f"{TASKS} x the waiter's command alone: CPU per task of its shells",
            "ms",
            floor_cpu,
            base,
            baseline_cpu,
        ),
        Figure(
            f"{name}: fixed CPU (a run of {PARALLELISM} tasks: start-ups, stops), per task of"
            f" {TASKS}",
            "ms",
            fixed_cpu,
        ),
    ]


def against(repeats: int, src: Path) -> list[Figure]:
    """Ours against the code in `src`: `repeats` interleaved pairs of the default run."""
    compileall.compile_dir(Path(batch_agent.__file__).parent, quiet=1)
    compileall.compile_dir(src / "batch_agent", quiet=1)
    labels = (
        ("`batch-agent local`, end to end", "tasks/s"),
        ("first task running -> last task done", "tasks/s"),
        ("CPU per task (`local`, agents, shells)", "ms"),
        ("CPU per task, the agents and their shells", "ms"),
        ("CPU per task, `local` (start-up included)", "ms"),
        ("`state:report` calls per task", "calls"),
    )
    # per side, per figure of `labels`: its samples
    sides: dict[Path | None, list[list[float]]] = {None: [], src: []}
    for side in sides.values():
        side.extend([] for _ in labels)
    with tempfile.TemporaryDirectory(prefix="bench-local-") as tmp:
        config = Path(tmp, "many-small-tasks.json")
        config.write_text(json.dumps(job()))
        for i in range(repeats):
            for tree in (None, src) if i % 2 == 0 else (src, None):
                whole, running, cpu, agents, calls = through_local(config, src=tree)
                for samples, value in zip(
                    sides[tree], (whole, running, cpu, agents, cpu - agents, calls), strict=True
                ):
                    samples.append(value)
    name = f"{TASKS} x `true`, parallelism {PARALLELISM}, {PER_VM} per VM"
    return [
        Figure(f"{name}: {label}", unit, mine, f"the code in {src}", theirs)
        for (label, unit), mine, theirs in zip(labels, sides[None], sides[src], strict=True)
    ]


def print_pairs(figure: Figure) -> None:
    """The median of the pairs' differences and in how many pairs ours was lower: a change
    smaller than the spread of minutes apart still shows in every pair."""
    diffs = [a - b for a, b in zip(figure.ours, figure.baseline_samples, strict=True)]
    lower = sum(d < 0 for d in diffs)
    label = figure.name.split(": ", 1)[-1]
    print(
        f"  {label}: median difference {statistics.median(diffs):+.3g} {figure.unit},"
        f" ours lower in {lower} of {len(diffs)} pairs"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--against", type=Path, help="another checkout's src to compare with")
    args = parser.parse_args()
    if args.against is not None:
        print(f"load average {os.getloadavg()}")
        figures = against(args.repeats, args.against.resolve())
        print_figures(figures)
        print("Pair by pair (ours - theirs, each pair run back to back):")
        for f in figures:
            print_pairs(f)
        print(f"load average {os.getloadavg()}")
        return
    print_figures(run(args.repeats))


if __name__ == "__main__":
    main()
