"""Per runnable on a real systemd: 100 runnables of `true` through the agent installed as on a
Batch VM, the task's runnables in one transient scope, vs 100 bare `sh -c true` in the same
machine.

The machine is `tests/systemd_support.py`'s: Debian bookworm booted by systemd as PID 1 in a
container of a Docker engine (DOCKER_HOST's, or a private dockerd started as the tests do), the
agent installed by scripts/vm-startup.sh from a wheel built here, reporting to an emulator in
this process. Each repeat, interleaved, in that machine:
- through the agent: a task of 100 `true` runnables; its RUNNING -> SUCCEEDED span (the agent's
  own event times) over 100;
- bare: 100 sequential `subprocess.run(["sh", "-c", "true"])` by the machine's python3;
- a scope alone: 100 sequential `systemd-run --scope --quiet --collect true`, what a scope
  costs where none of it is done ahead: what each runnable paid when each had a scope of its
  own (now a task's first makes the scope and the others join it).
Skipped where the machine cannot boot systemd in a container. Takes a minute or two to set up
(the wheelhouse, the boot, the install). Run: `.venv/bin/python benchmarks/systemd_overhead.py`
(`--repeats N`).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
from collections.abc import Iterator
from pathlib import Path

from _common import Figure, Skipped, docker_engine, event_time, print_figures, wait

from batch_agent.emulator import Emulator
from tests.systemd_support import Machine, Unavailable, booted, build_wheelhouse, install

RUNNABLES = 100
TARGET = 2.0  # ms per runnable over bare
TIMEOUT = 300.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    try:
        print_figures(run(args.repeats))
    except Skipped as e:
        raise SystemExit(f"skipped: {e}") from None


def run(repeats: int) -> list[Figure]:
    """Per runnable through the agent, bare `sh -c true` and a scope alone, interleaved, in
    ms, all in a machine booted by systemd."""
    agent: list[float] = []
    bare: list[float] = []
    scope: list[float] = []
    with machine() as (box, emu):
        for _ in range(repeats):
            agent.append(1000 * through_agent(emu) / RUNNABLES)
            bare.append(1000 * in_machine(box, ["sh", "-c", "true"]) / RUNNABLES)
            scope.append(1000 * in_machine(box, [*SCOPE, "true"]) / RUNNABLES)
    met = statistics.median(agent) - statistics.median(bare) <= TARGET
    baseline = "`sh -c true`, sequential, in the same machine"
    return [
        Figure(
            f"per runnable under systemd, a task of {RUNNABLES} x `true` (one scope)",
            "ms",
            agent,
            baseline,
            bare,
            f"median - baseline's <= {TARGET:g}ms",
            met,
        ),
        Figure("per runnable under systemd, `systemd-run --scope true` alone", "ms", scope),
    ]


SCOPE = ["systemd-run", "--scope", "--quiet", "--collect"]


@contextlib.contextmanager
def machine() -> Iterator[tuple[Machine, Emulator]]:
    """A machine booted by systemd with the agent installed and reporting to an emulator."""
    emu = Emulator(None, default_report_interval="1s", min_report_interval="0.2s", log=None)
    try:
        emu.start()
        with (
            docker_engine() as host,
            tempfile.TemporaryDirectory(prefix="bench-systemd-") as tmp,
            booted(host) as box,
        ):
            install(box, emu, build_wheelhouse(Path(tmp)))
            wait(lambda: len(emu.reports) >= 2, "the agent's first reports", TIMEOUT)
            yield box, emu
    except Unavailable as e:
        raise Skipped(f"no machine booted by systemd: {e}") from None
    finally:
        emu.stop()


def through_agent(emu: Emulator) -> float:
    """Seconds from RUNNING to SUCCEEDED of a task of RUNNABLES x `true`."""
    runnables = [{"script": {"text": "true"}}] * RUNNABLES
    name = emu.add_task({"intendedState": "ASSIGNED", "spec": {"runnables": runnables}})
    wait(lambda: emu.task_state(name) in ("SUCCEEDED", "FAILED"), "the task's end", TIMEOUT)
    events = {e["taskState"]: event_time(e) for e in emu.task_events(name)}
    if emu.task_state(name) != "SUCCEEDED" or "RUNNING" not in events:
        raise SystemExit(f"task did not succeed: {emu.task_events(name)}")
    return (events["SUCCEEDED"] - events["RUNNING"]).total_seconds()


def in_machine(box: Machine, argv: list[str]) -> float:
    """Seconds for RUNNABLES sequential runs of `argv` by the machine's python3."""
    code = (
        "import subprocess, sys, time\n"
        "start = time.perf_counter()\n"
        f"for _ in range({RUNNABLES}):\n"
        f"    subprocess.run({argv!r}, check=True)\n"
        "print(time.perf_counter() - start)\n"
    )
    return float(box.check("python3", "-c", code).strip())


if __name__ == "__main__":
    main()
