"""Shared by the benchmarks: the real `batch-agent run` as a subprocess, and /proc readings.

Mirrors tests/helpers.py (`agent_env`, `AgentProcess`) without importing the test package, so
that a benchmark is a plain script: `.venv/bin/python benchmarks/NAME.py`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from batch_agent.emulator import Emulator

AGENT = [sys.executable, "-m", "batch_agent.cli"]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def agent_env(emu: Emulator, state_dir: Path, vm: int = 0, **extra: str) -> dict[str, str]:
    """The agent's environment, built as tests/helpers.py builds it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCH_AGENT_", "GOOGLE_"))}
    env.update(
        GCE_METADATA_HOST=emu.vms[vm].metadata_host,
        BATCH_AGENT_ENDPOINT=emu.url,
        BATCH_AGENT_STATE_DIR=str(state_dir),
        BATCH_AGENT_KILL_GRACE="2",
        BATCH_AGENT_UNREACHABLE_TIMEOUT="5",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class Agent:
    """`batch-agent run ARGS` as a subprocess; its log goes to STATE_DIR-agent.log."""

    def __init__(self, emu: Emulator, state_dir: Path, *args: str) -> None:
        self.log_path = state_dir.parent / f"{state_dir.name}-agent.log"
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [*AGENT, "run", *args],
            env=agent_env(emu, state_dir),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds; idempotent."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def rss_bytes(pid: int) -> int:
    """VmRSS of `pid` from /proc/PID/status, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (all its threads) from /proc/PID/stat, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def script_task(text: str) -> dict[str, Any]:
    """An AgentTask JSON (for Emulator.add_task) with one script runnable."""
    return {"intendedState": "ASSIGNED", "spec": {"runnables": [{"script": {"text": text}}]}}


def event_time(event: dict[str, Any]) -> datetime:
    """A StatusEvent's eventTime (RFC 3339) as a datetime; digits past microseconds are cut."""
    return datetime.fromisoformat(str(event["eventTime"]))


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}ms"
