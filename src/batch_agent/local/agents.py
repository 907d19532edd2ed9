"""The agents of a local run: one `batch-agent run --log-format json` subprocess per emulated VM.

Each agent may ship its runnables' output to the emulator's Cloud Logging (the session asks it
to, whatever the job's logsPolicy: that is where a local run reads it). Its stderr (its log,
with its copy of the output, one JSON object per line) is drained by a thread into a queue of
`Line`s and copied verbatim to `agent.log` in the agent's directory, so an agent never blocks on
a full pipe. Agents run in their own session: a Ctrl-C at the terminal reaches `local`, which
cancels the job first and stops the agents after (an agent stop leaves tasks running by design).
Must not import agent code or decide anything about the job.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO

# --exit-with-parent: should `local` die without stopping them (SIGKILL, a crash), the agents
# cancel their tasks and exit rather than retry a control plane that is gone, forever.
AGENT_COMMAND = (
    *(sys.executable, "-m", "batch_agent.cli", "run"),
    *("--log-format", "json", "--exit-with-parent"),
)
_OUTPUT_LOGGER = "batch_agent.output"
_CHATTER = (b'"severity": "INFO"', b'"severity": "DEBUG"')  # as `--log-format json` spells them
_CHUNK = 65536  # bytes read from an agent's stderr at once
_TAG = re.compile(r"task (\d+) r(\d+)")


@dataclass(frozen=True)
class Line:
    """One line to show: a runnable's output (`task`/`runnable` set; read from Cloud Logging, see
    `taskoutput`) or an agent's own log line (from its stderr; `vm` None: from no agent)."""

    vm: int | None
    severity: str
    message: str
    task: int | None = None
    runnable: int | None = None
    stream: str | None = None


def is_chatter(raw: bytes) -> bool:
    """An INFO or DEBUG line of an agent's JSON log: its chatter and its copy of the output,
    most of its lines (several per task). `local` shows none of them (`LocalRun._show`), so
    they go to agent.log only, undecoded. A quote inside a JSON string is escaped, so only the
    line's own severity matches."""
    info, debug = _CHATTER
    return raw.startswith(b"{") and (info in raw or debug in raw)


def parse_line(vm: int, text: str) -> Line:
    """Read one stderr line of an agent run with `--log-format json`; other text (a traceback
    before logging is set up) becomes an ERROR line of the agent's own."""
    try:
        entry = json.loads(text)
    except ValueError:
        return Line(vm, "ERROR", text)
    if not isinstance(entry, dict):
        return Line(vm, "ERROR", text)
    severity, message = str(entry.get("severity", "INFO")), str(entry.get("message", ""))
    match = _TAG.fullmatch(str(entry.get("task", "")))
    if entry.get("logger") == _OUTPUT_LOGGER and match:
        stream = str(entry.get("stream", "stdout"))
        return Line(vm, severity, message, int(match[1]), int(match[2]), stream)
    if "exception" in entry:
        message += "\n" + str(entry["exception"])
    return Line(vm, severity, message)


class AgentProcess:
    """One agent subprocess and the thread draining its stderr into `lines`."""

    def __init__(self, vm: int, directory: Path, env: dict[str, str], lines: queue.Queue[Line]):
        self.vm = vm
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [*AGENT_COMMAND],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        assert self.proc.stderr is not None
        self._terminated = False
        self._drain = threading.Thread(
            target=self._read,
            args=(self.proc.stderr, lines),
            name=f"agent-{vm}-stderr",
            daemon=True,
        )
        self._drain.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self, pipe: IO[bytes], lines: queue.Queue[Line]) -> None:
        """Copy the pipe to agent.log as it comes, a chunk at a time, and queue the lines that
        are not chatter (a line cut by a chunk's end waits for the rest)."""
        fd = pipe.fileno()
        with pipe, (self.directory / "agent.log").open("wb") as copy:
            rest = b""
            while chunk := os.read(fd, _CHUNK):
                copy.write(chunk)
                *whole, rest = (rest + chunk).split(b"\n")
                for raw in whole:
                    self._take(raw, lines)
            self._take(rest, lines)

    def _take(self, raw: bytes, lines: queue.Queue[Line]) -> None:
        if raw and not is_chatter(raw):
            text = raw.decode("utf-8", "replace").rstrip("\r")
            if text:
                lines.put(parse_line(self.vm, text))

    def terminate(self) -> None:
        """Ask the agent to stop (SIGTERM), once: it reports AGENT_STOPPED and exits."""
        if not self._terminated and self.proc.poll() is None:
            self._terminated = True
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float) -> int:
        """SIGTERM, wait up to `timeout` seconds, then SIGKILL; waits for the drain to finish.
        Idempotent; returns the exit status."""
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        status = self.proc.wait()
        self._drain.join()
        return status


def agent_env(
    metadata_host: str, endpoint: str, state_dir: Path, kill_grace: str
) -> dict[str, str]:
    """This process's environment minus agent and Google settings, plus the emulated VM's."""
    ours = ("BATCH_AGENT_", "GOOGLE_", "GCE_METADATA_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    env.update(
        GCE_METADATA_HOST=metadata_host,
        BATCH_AGENT_ENDPOINT=endpoint,
        # The emulator also plays Secret Manager and Cloud KMS: a job's secrets run unchanged.
        BATCH_AGENT_SECRETMANAGER_ENDPOINT=endpoint,
        BATCH_AGENT_KMS_ENDPOINT=endpoint,
        BATCH_AGENT_LOGGING_ENDPOINT=endpoint,  # and Cloud Logging's entries:write
        BATCH_AGENT_STATE_DIR=str(state_dir),
        BATCH_AGENT_KILL_GRACE=kill_grace,
        PYTHONUNBUFFERED="1",
    )
    return env
