"""The contract between a task run and the ways a runnable can run (script, container).

A driver turns a runnable into an Execution in two steps, so that the run can persist its
intent between them: `prepare` (checks and local set-up; nothing runs yet) and
`Prepared.start`. What a restarted agent needs to find the runnable again is its `Handle`,
which the run stores in the runnable's record; `recover(handle)` finds it again. Drivers never
raise for a runnable that cannot run: an ExitResult says why. They know nothing of task
states, events, persistence or Batch's reserved exit codes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Protocol

from batch_agent.tasks.execution import Execution, ExitResult, Handle
from batch_agent.tasks.filework import FileWork
from batch_agent.tasks.folders import TaskFolders, status_path, work_dir
from batch_agent.tasks.plan import RunnablePlan, TaskPlan
from batch_agent.tasks.taskoutput import output_path


@dataclass(frozen=True)
class Started:
    execution: Execution
    handle: Handle


class Prepared(Protocol):
    @property
    def handle(self) -> Handle:
        """What is known before the start (enough to look for it after a crash mid-start)."""
        ...

    async def start(self, intent: asyncio.Future[None]) -> Started | ExitResult:
        """Start it once `intent` (the save of the runnable's intent to start) is done without
        error, or, for a driver whose `find` can tell an unrecorded start, at once. An
        ExitResult (`not_started`, or 126/127) when it cannot run, or when the intent's save
        it waited for failed."""
        ...


class Driver(Protocol):
    def prepare(self, runnable: RunnablePlan) -> Prepared | ExitResult:
        """Check and set up `runnable` without running anything. May do small local I/O."""
        ...

    async def recover(self, runnable: RunnablePlan, handle: Handle) -> Execution | ExitResult:
        """The execution an earlier agent started with `handle`, still running or ended;
        EXIT_CODE_UNKNOWN with a reason when its status was lost."""
        ...

    async def find(self, runnable: RunnablePlan) -> Started | None:
        """`runnable` as an earlier agent may have started it without recording it (it died
        between the start and the save of the intent), running or ended; None if it never
        started. Only a driver that starts before its intent is saved finds anything."""
        ...

    def ahead(self, runnable: RunnablePlan, *, hooks_done: bool = False) -> None:
        """`runnable` is likely to start next: do now, in the background, what its start
        needs and what is harmless if it never starts (a script's files; once the task's
        prestart hooks are done, its waiter too, waiting for its go). May do nothing."""
        ...

    async def dismiss_ahead(self) -> None:
        """The task's sequence is over: undo what `ahead` made ready that did not start and
        would hold on (a script's waiter waiting for its go)."""
        ...


@dataclass
class SecretValues:
    """The values of a task's secrets, filled by the Secrets hook before any runnable starts
    and read by the drivers as they build a runnable's environment; in memory only, never
    saved (a restarted agent's prestart fetches them again)."""

    task: dict[str, str] = field(default_factory=dict)  # the task level's secret variables
    runnables: dict[int, dict[str, str]] = field(default_factory=dict)  # by 1-based index
    logins: dict[int, tuple[str | None, str | None]] = field(default_factory=dict)  # registry

    def task_variables(self, plan: TaskPlan) -> dict[str, str]:
        """The task level: its variables, then its secrets (later wins)."""
        return {**plan.variables, **self.task}

    def runnable_variables(self, runnable: RunnablePlan) -> dict[str, str]:
        """The runnable level: its variables, then its secrets (later wins)."""
        return {**runnable.variables, **self.runnables.get(runnable.index, {})}


@dataclass(frozen=True)
class TaskContext:
    """What the drivers of one task share."""

    plan: TaskPlan
    folder: Path  # the task's folder in the state dir, the agent's: output, work/ (folders.py)
    runtime: Path  # its folder for exit statuses: `folder`, or one on tmpfs (runtimedir.py)
    scripts: Path  # where its scripts from `text` are written: `folder` or `runtime`
    task_id: str
    instance: str  # `zones/<zone>/instances/<id>`, a container label
    base_env: Mapping[str, str]
    folders: TaskFolders  # makes folder, its work/ and runtime, once
    kill_grace: timedelta = timedelta(seconds=10)
    secrets: SecretValues = field(default_factory=SecretValues)
    files: FileWork = field(default_factory=FileWork)  # the agent's, for its own folders

    @property
    def work(self) -> Path:
        """The working directory of the task's scripts, the only place in the folder that its
        user may write."""
        return work_dir(self.folder)

    def status(self, k: int) -> Path:
        """Where the waiter of script runnable `k` (1-based) writes its exit status."""
        return status_path(self.runtime, k)

    def output(self, k: int, stream: str) -> Path:
        """Where runnable `k` (1-based) writes `stream`."""
        return output_path(self.folder, k, stream)

    def batch_variables(self) -> dict[str, str]:
        """Variables Batch always sets; what the server passes for them (task count, hosts
        file, retry attempt) wins over what the agent derives from the task's name."""
        values = {"BATCH_TASK_RETRY_ATTEMPT": str(self.plan.retry_attempt or 0)}
        if self.plan.task_index is not None:
            values["BATCH_TASK_INDEX"] = str(self.plan.task_index)
        values |= {k: v for k, v in self.plan.variables.items() if k.startswith("BATCH_")}
        return values


STOP_SLACK = timedelta(seconds=10)  # beyond the grace, how long a stop may take at most


async def stop_within(execution: Execution, grace: timedelta) -> bool:
    """Stop `execution` (SIGTERM, `grace`, SIGKILL); False if it could not be stopped. The
    executions bound their own wait after SIGKILL; STOP_SLACK only catches a stop that hangs
    altogether (an engine that never answers)."""
    try:  # asyncio.timeout, not 3.11's wait_for, which can swallow a cancel (deadlines.py)
        async with asyncio.timeout((grace + 2 * STOP_SLACK).total_seconds()):
            return await execution.stop(grace)
    except TimeoutError:
        return False


class Finished:
    """An execution that ended before this agent saw it: its result is already known."""

    def __init__(self, result: ExitResult) -> None:
        self._result = result

    @property
    def pid(self) -> int | None:
        return None

    async def wait(self) -> ExitResult:
        return self._result

    async def stop(self, grace: timedelta) -> bool:
        return True
