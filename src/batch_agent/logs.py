"""`batch-agent logs TASK`: a task's runnable output, read from its files in the state dir.

TASK is the task's name as reported, or its index. Reads the record as `status` does, and
each runnable's `runnable-K.stdout`/`.stderr`: per runnable, stdout then stderr (the files do
not keep the order between them). `follow` polls the files for new complete
lines until the task has ended and its files are drained, or the caller interrupts. Never
writes anything, never talks to the agent.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from batch_agent.names import parse_task_name
from batch_agent.status import read_view
from batch_agent.tasks.folders import task_dir
from batch_agent.tasks.record import TaskRecord
from batch_agent.tasks.taskoutput import STREAMS, output_path

POLL_SECONDS = 0.25


class TaskNotFound(Exception):
    """No task of that name or index in the state dir."""


@dataclass(frozen=True)
class OutputLine:
    task: str
    runnable: int
    stream: str
    text: str

    def plain(self) -> str:
        return f"[r{self.runnable} {self.stream}] {self.text}"

    def json(self) -> str:
        entry = {"task": self.task, "runnable": self.runnable, "stream": self.stream}
        return json.dumps({**entry, "line": self.text})


def find_task(state_dir: Path, which: str) -> TaskRecord:
    """The record of task `which` (its name, or its index); raises TaskNotFound or NoState."""
    records = read_view(state_dir).records
    for record in records:
        if record.task_id == which:
            return record
    if which.isdigit():
        found = [r for r in records if parse_task_name(r.task_id).index == int(which)]
        if found:
            return found[-1]  # the latest attempt
    known = ", ".join(r.task_id for r in records) or "none"
    raise TaskNotFound(f"no task {which!r} in {state_dir} (tasks: {known})")


class _Tail:
    """New complete lines of one file, from where the last read stopped. The file stays open
    once found, so lines written just before the task's folder is removed are still read."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None
        self._partial = b""

    def read(self, *, final: bool) -> list[str]:
        if self._fd is None:
            try:
                self._fd = os.open(self._path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:  # not there yet, or not a plain file
                return self._flush() if final else []
        chunks = []
        while chunk := os.read(self._fd, 1 << 20):
            chunks.append(chunk)
        *lines, self._partial = (self._partial + b"".join(chunks)).split(b"\n")
        return [line.decode(errors="replace") for line in lines] + (self._flush() if final else [])

    def _flush(self) -> list[str]:
        rest, self._partial = self._partial, b""
        return [rest.decode(errors="replace")] if rest else []

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def task_output(
    state_dir: Path,
    which: str,
    *,
    runnable: int | None = None,
    follow: bool = False,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[OutputLine]:
    """The task's output lines; with `follow`, until the task has ended. Raises TaskNotFound."""
    record = find_task(state_dir, which)
    folder = task_dir(state_dir / "tasks", record.task_id)
    tails: dict[tuple[int, str], _Tail] = {}
    try:
        yield from _follow(
            state_dir, record, folder, tails, runnable=runnable, follow=follow, sleep=sleep
        )
    finally:
        for tail in tails.values():
            tail.close()


def _follow(
    state_dir: Path,
    record: TaskRecord,
    folder: Path,
    tails: dict[tuple[int, str], _Tail],
    *,
    runnable: int | None,
    follow: bool,
    sleep: Callable[[float], None],
) -> Iterator[OutputLine]:
    gone = False  # the server deleted the task while we followed it
    while True:
        ended = record.state.is_terminal or not follow or gone
        wanted = [runnable] if runnable is not None else range(1, record.runnable + 1)
        for k in wanted:
            for stream in STREAMS:
                tail = tails.setdefault((k, stream), _Tail(output_path(folder, k, stream)))
                for text in tail.read(final=ended):
                    yield OutputLine(record.task_id, k, stream, text)
        if ended:
            return
        sleep(POLL_SECONDS)
        try:
            record = find_task(state_dir, record.task_id)
        except TaskNotFound:
            gone = True
