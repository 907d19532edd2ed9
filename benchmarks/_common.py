"""Shared by the benchmarks: the real `batch-agent run` as a subprocess, and /proc readings.

A benchmark is a plain script (`.venv/bin/python benchmarks/NAME.py`) run from the repository.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# The agent subprocess is started exactly as the end-to-end tests start it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from batch_agent.tasks.procfs import read_stat  # noqa: E402
from batch_agent.wire import parse_time  # noqa: E402
from tests.helpers import AgentProcess  # noqa: E402

Agent = AgentProcess


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


def script_task(text: str) -> dict[str, Any]:
    """An AgentTask JSON (for Emulator.add_task) with one script runnable."""
    return {"intendedState": "ASSIGNED", "spec": {"runnables": [{"script": {"text": text}}]}}


def event_time(event: dict[str, Any]) -> datetime:
    """A StatusEvent's eventTime (RFC 3339) as a datetime."""
    return parse_time(str(event["eventTime"]))


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}ms"
