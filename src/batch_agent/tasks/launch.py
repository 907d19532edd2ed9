"""Launcher: starts one task's runnables, as scripts or containers, and finds them again.

Turns a RunnablePlan into an Execution (through script.py or docker/): the program file,
the environment, the container labels and the task's internal network. It never persists or
reports anything: the runner records what it returns. Knows nothing of HTTP or the store.
"""

from __future__ import annotations

import hashlib
import pwd
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from batch_agent.tasks import events
from batch_agent.tasks.env import runnable_environment
from batch_agent.tasks.events import ExitCode
from batch_agent.tasks.execution import EXIT_CODE_UNKNOWN, Execution, ExitResult
from batch_agent.tasks.plan import RunnablePlan, TaskPlan
from batch_agent.tasks.record import RunnableRecord
from batch_agent.tasks.script import (
    ScriptExecution,
    find_waiter,
    read_status,
    start_script,
    write_script,
)
from batch_agent.tasks.taskoutput import output_path

if TYPE_CHECKING:
    from batch_agent.tasks.docker import ContainerEngine

LABEL_TASK = "batch-agent.task"  # container labels: how a restarted agent finds them again
LABEL_RUNNABLE = "batch-agent.runnable"
LABEL_INSTANCE = "batch-agent.instance"


def task_dir(workdir: Path, task_id: str) -> Path:
    """The folder of a task's scripts, output and exit statuses: one per task name."""
    return workdir / (task_id.strip("/").replace("/", "_") or "task")


class Launcher:
    def __init__(
        self,
        plan: TaskPlan,
        folder: Path,
        *,
        task_id: str,
        base_env: Mapping[str, str],
        containers: Callable[[], ContainerEngine],
        instance: str,
    ) -> None:
        self._plan = plan
        self._dir = folder
        self._task_id = task_id
        self._base_env = base_env
        self._containers = containers  # made on first use: script-only VMs never load docker
        self._instance = instance

    def program(self, runnable: RunnablePlan) -> Path | ExitResult:
        """The file a script runnable executes: its text written out, or its checked path."""
        k = runnable.index
        if runnable.script_text is not None:
            return write_script(runnable.script_text, self._dir, owner=self._plan.user)
        path = Path(runnable.script_path or "")
        if not path.is_file():
            problem = f'runnables[{k - 1}].script.path: "{path}" does not exist'
            return ExitResult(ExitCode.AGENT_FAILURE, reason=events.invalid_spec([problem]))
        return path

    async def start(self, runnable: RunnablePlan, program: Path | None) -> Execution | ExitResult:
        """Start a container runnable, or a script runnable's `program`; never raises for a
        runnable that cannot start (an ExitResult says why)."""
        k = runnable.index
        if runnable.container is not None:
            spec = runnable.container
            # Nothing of the agent's environment goes in: the image's own PATH and HOME apply.
            env = {**self._plan.variables, **runnable.variables, **self._batch_vars()}
            return await self._containers().start(
                spec,
                env=env,
                labels=self._labels(k),
                user=self._plan.user,
                default_volumes=list(self._plan.volumes),
                network=self.network if spec.block_external_network else None,
                stdout_path=self.output(k, "stdout"),
                stderr_path=self.output(k, "stderr"),
                name_hint=f"task{self._plan.task_index}-r{k}",
            )
        assert program is not None
        user = self._plan.user
        env = runnable_environment(
            self._base_env,
            self._plan.variables,
            runnable.variables,
            self._batch_vars(),
            home=_home_of(user[0]) if user is not None else "/root",
        )
        return await start_script(
            program,
            env=env,
            cwd=self._dir,
            stdout_path=self.output(k, "stdout"),
            stderr_path=self.output(k, "stderr"),
            status_path=self._status(k),
            user=user,
        )

    async def find(self, runnable: RunnablePlan, known: RunnableRecord) -> Execution | ExitResult:
        """A runnable an earlier agent started: its recorded result, or what still runs. A lost
        status is an agent failure (50000), never a second start."""
        status = self._status(runnable.index)
        found: Execution | ExitResult | None
        if known.exit_code is not None:
            found = ExitResult(known.exit_code)
        elif known.container:
            executions = await self._containers().find(self._labels(runnable.index))
            found = executions[0] if executions else None
        elif known.pid is None or known.start_time is None:
            # The pid is saved lazily (with the next save): find the waiter by its command line.
            waiter = find_waiter(status)
            found = read_status(status)
            if found is None and waiter is not None:
                found = ScriptExecution.reattach(waiter[0], waiter[1], status)
        else:
            found = ScriptExecution.reattach(known.pid, known.start_time, status)
        if found is not None and not isinstance(found, ExitResult):
            return found
        if found is None or found.exit_code == EXIT_CODE_UNKNOWN:
            reason = f"{runnable.label}: its exit status was lost while the agent was down"
            return ExitResult(ExitCode.AGENT_FAILURE, reason=reason)
        return Finished(found)

    @property
    def network(self) -> str:
        """The task's own internal network, shared by its blockExternalNetwork containers."""
        digest = hashlib.sha256(self._task_id.encode()).hexdigest()[:12]
        return f"batch-agent-{digest}"

    def output(self, k: int, stream: str) -> Path:
        return output_path(self._dir, k, stream)

    def _status(self, k: int) -> Path:
        return self._dir / f"runnable-{k}.status"

    def _labels(self, k: int) -> dict[str, str]:
        return {LABEL_TASK: self._task_id, LABEL_RUNNABLE: str(k), LABEL_INSTANCE: self._instance}

    def _batch_vars(self) -> dict[str, str]:
        """Variables Batch always sets; what the server passes for them (task count, hosts
        file, retry attempt) wins over the agent's own defaults."""
        values = {"BATCH_TASK_RETRY_ATTEMPT": "0"}
        if self._plan.task_index is not None:
            values["BATCH_TASK_INDEX"] = str(self._plan.task_index)
        values |= {k: v for k, v in self._plan.variables.items() if k.startswith("BATCH_")}
        return values


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


def _home_of(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_dir
    except KeyError:
        return "/"
