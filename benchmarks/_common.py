"""Shared by the benchmarks: the real `batch-agent run` as a subprocess, /proc readings, and
`Figure`, what each benchmark hands to `all.py`.

A benchmark is a plain script (`.venv/bin/python benchmarks/NAME.py`) run from the repository.
The suite convention: a module `benchmarks/NAME.py` that defines `run(repeats: int) ->
list[Figure]` is run by `all.py`; it measures ours and its baseline interleaved (`interleaved`),
`repeats` times each, and raises `Skipped` when this machine cannot run it.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# The agent subprocess is started exactly as the end-to-end tests start it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from batch_agent.runtimedir import MEMORY_FILESYSTEMS, filesystem_type  # noqa: E402
from batch_agent.tasks.procfs import read_stat  # noqa: E402
from batch_agent.wire import parse_time  # noqa: E402
from tests.helpers import AgentProcess  # noqa: E402

Agent = AgentProcess

# Temporary files, the agent's state dir above all, go where an agent's state dir would be: on
# disk, as /var/lib/batch-agent. /var/tmp is on disk by convention, while /tmp is tmpfs on many
# systems; and on this project's development machine, where /tmp is on disk, the test suite's
# churn made creating a file there cost 10-50x what it does elsewhere on the same disk.
if Path("/var/tmp").is_dir() and filesystem_type(Path("/var/tmp")) not in MEMORY_FILESYSTEMS:
    tempfile.tempdir = "/var/tmp"


@contextlib.contextmanager
def runtime_dir() -> Iterator[Path | None]:
    """A fresh folder on tmpfs (in /dev/shm) standing in for the agent's runtime dir, as
    `/run/batch-agent` under systemd (the agent's environment: `runtime_env`); removed after.
    None where /dev/shm is not tmpfs: the agent then keeps everything in its state dir."""
    if filesystem_type(Path("/dev/shm")) not in MEMORY_FILESYSTEMS:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="bench-runtime-", dir="/dev/shm") as folder:
        yield Path(folder)


def runtime_env(folder: Path | None) -> dict[str, str]:
    """The agent's environment for the runtime dir `folder` (None: none)."""
    return {} if folder is None else {"BATCH_AGENT_RUNTIME_DIR": str(folder)}


def rss_bytes(pid: int) -> int:
    """VmRSS of `pid` from /proc/PID/status, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (all its threads) from /proc/PID/stat, in seconds."""
    found = read_stat(pid)
    if found is None:
        raise RuntimeError(f"no process {pid}")
    return (found.utime + found.stime) / CLOCK_TICKS


@contextlib.contextmanager
def docker_engine() -> Iterator[str]:
    """The DOCKER_HOST of a live engine: DOCKER_HOST's, the machine's own, else a private
    dockerd started here and stopped after. Raises docker_support.Unavailable without one."""
    from tests import docker_support

    daemon = None
    host = os.environ.get("DOCKER_HOST") or docker_support.engine_host()
    try:
        if host is None:
            daemon = docker_support.DockerDaemon()
            daemon.start()
            host = daemon.host
        yield host
    finally:
        if daemon is not None:
            daemon.stop()


def script_task(text: str) -> dict[str, Any]:
    """An AgentTask JSON (for Emulator.add_task) with one script runnable."""
    return {"intendedState": "ASSIGNED", "spec": {"runnables": [{"script": {"text": text}}]}}


def event_time(event: dict[str, Any]) -> datetime:
    """A StatusEvent's eventTime (RFC 3339) as a datetime."""
    return parse_time(str(event["eventTime"]))


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}ms"


class Skipped(Exception):
    """This machine cannot run the benchmark (no Docker engine, say); the message says why."""


@dataclass(frozen=True)
class Figure:
    """One measured figure: our samples and the baseline's from the same run, in `unit`.

    `baseline` names what ours is compared with ("" when nothing compares); `target` says what
    we aim for and `met` whether these samples reach it (None: no target).
    """

    name: str
    unit: str
    ours: Sequence[float]
    baseline: str = ""
    baseline_samples: Sequence[float] = ()
    target: str = ""
    met: bool | None = None


def interleaved(
    repeats: int, ours: Callable[[], float], baseline: Callable[[], float]
) -> tuple[list[float], list[float]]:
    """Call ours() then baseline(), `repeats` times; their samples, so that both see the same
    machine load."""
    mine: list[float] = []
    theirs: list[float] = []
    for _ in range(repeats):
        mine.append(ours())
        theirs.append(baseline())
    return mine, theirs


def spread(samples: Sequence[float], unit: str) -> str:
    """`min / median / max unit` with three significant digits, or "-" without samples."""
    if not samples:
        return "-"
    values = (min(samples), statistics.median(samples), max(samples))
    return " / ".join(f"{v:.3g}" for v in values) + f" {unit}"


def print_figures(figures: Sequence[Figure]) -> None:
    """Each figure on a few lines: ours, the baseline, the target and whether it is met."""
    for f in figures:
        print(f"{f.name}: {spread(f.ours, f.unit)} (min / median / max of {len(f.ours)})")
        if f.baseline:
            print(f"  baseline, {f.baseline}: {spread(f.baseline_samples, f.unit)}")
        if f.target:
            print(f"  target {f.target}: {verdict(f.met)}")


def verdict(met: bool | None) -> str:
    return "-" if met is None else ("met" if met else "NOT met")


def wait(predicate: Callable[[], object], what: str, timeout: float, every: float = 0.05) -> None:
    """Poll `predicate` every `every` seconds until it holds; exit the benchmark after `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)
