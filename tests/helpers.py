"""Shared test helpers: polling with a deadline and the real agent as a subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from batch_agent.emulator import Emulator
from batch_agent.emulator.backend import Reply
from batch_agent.local.agents import agent_env as local_agent_env
from batch_agent.tasks.procfs import read_stat

AGENT = [sys.executable, "-m", "batch_agent.cli"]


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    """Poll `predicate` until truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.05)


def agent_env(emu: Emulator, state_dir: Path, vm: int = 0, **extra: str) -> dict[str, str]:
    """The environment `batch-agent local` gives its agents, with test-sized limits."""
    env = local_agent_env(emu.vms[vm].metadata_host, emu.url, state_dir, kill_grace="2")
    env.update({"BATCH_AGENT_UNREACHABLE_TIMEOUT": "5", **extra})
    return env


class AgentProcess:
    """`batch-agent run` as a real subprocess; its log goes to a file the test can read."""

    def __init__(self, emu: Emulator, state_dir: Path, *args: str, vm: int = 0, **env: str):
        self.log_path = state_dir.parent / f"{state_dir.name}-agent.log"
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [*AGENT, "run", *args],
            env=agent_env(emu, state_dir, vm, **env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._log.close()

    def terminate(self, timeout: float = 15) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        self.proc.kill()
        self.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def job(*runnables: dict[str, Any], task_count: int = 1, **task_spec: Any) -> dict[str, Any]:
    """A Batch job config with one task group."""
    return {
        "taskGroups": [
            {"taskCount": task_count, "taskSpec": {"runnables": list(runnables), **task_spec}}
        ]
    }


def script(text: str, **fields: Any) -> dict[str, Any]:
    return {"script": {"text": text}, **fields}


def final_event(emu: Emulator, name: str) -> dict[str, Any]:
    return emu.task_events(name)[-1]


def exit_code(emu: Emulator, name: str) -> int | None:
    """The task's exit code: 0 when it succeeded (its event carries no taskExecution)."""
    event = final_event(emu, name)
    if event.get("taskState") == "SUCCEEDED":
        return 0
    execution = event.get("taskExecution") or {}
    code = execution.get("exitCode")
    return int(code) if code is not None else None


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as gone: nothing reaps orphans here)."""
    found = read_stat(pid)
    return found is not None and found.alive


def wait_until_shipped_and_saved(state_dir: Path, size: int) -> None:
    """Until a task's first runnable's stdout offset, as the agent saved it, is `size`: a line
    shipped but not yet saved is shipped again after a kill -9."""
    wait_until(
        lambda: any(
            r["runnables"].get("1", {}).get("stdout_offset") == size
            for r in stored_records(state_dir)
        ),
        what="the shipped offset persisted",
    )


def stored_records(state_dir: Path) -> list[dict[str, Any]]:
    """The task records an agent persisted in `state_dir` (read while it runs), oldest first."""
    db = state_dir / "state.db"
    if not db.exists():
        return []
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT record FROM tasks ORDER BY rowid").fetchall()
    except sqlite3.OperationalError:  # the agent has not made its tables yet
        return []
    finally:
        conn.close()
    return [json.loads(text) for (text,) in rows]


class WatchedEmulator(Emulator):
    """An emulator that counts the `instance/preempted?wait_for_change=true` long-polls it got,
    so a test can wait for an agent's preemption watch to be in place."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._polls = 0
        self._polls_lock = threading.Lock()

    @property
    def preemption_polls(self) -> int:
        with self._polls_lock:
            return self._polls

    def answer_metadata(self, vm: int, key: str, query: Mapping[str, str]) -> Reply:
        if key == "instance/preempted" and query.get("wait_for_change") == "true":
            with self._polls_lock:
                self._polls += 1
        return super().answer_metadata(vm, key, query)


@contextlib.contextmanager
def tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (e.g. "1m") mounted at `mount` (made here) while inside; root only:
    the caller skips without it."""
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)


def fill(disk: Path) -> Path:
    """Write a file into `disk` until it is full; returns the file."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError as error:
        assert error.errno == 28, error  # ENOSPC
    finally:
        os.close(fd)
    return filler
