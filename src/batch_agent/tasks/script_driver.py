"""The script driver: a runnable's `text` or `path` run under the waiter of `script.py`.

Turns a RunnablePlan into the program file, the runnable's environment and the files of its
output and exit status in the task's folder (the program runs in its `work/`, see folders.py);
finds a waiter again by pid and start time, or by its command line when the pid was not saved
yet. Knows nothing of task states or persistence.
"""

from __future__ import annotations

import asyncio
import pwd
import threading
from dataclasses import dataclass
from pathlib import Path

from batch_agent.tasks import events
from batch_agent.tasks.driver import Finished, Started, TaskContext
from batch_agent.tasks.env import runnable_environment
from batch_agent.tasks.execution import EXIT_CODE_UNKNOWN, Execution, ExitResult, Handle
from batch_agent.tasks.plan import RunnablePlan, ScriptSpec
from batch_agent.tasks.script import (
    ScriptExecution,
    find_waiter,
    read_status,
    spawn_script,
    write_script,
)


class ScriptDriver:
    def __init__(self, context: TaskContext) -> None:
        self._context = context

    def prepare(self, runnable: RunnablePlan) -> PreparedScript | ExitResult:
        """Check that the script's path exists; a text is written to its file at the start."""
        spec = runnable.action
        assert isinstance(spec, ScriptSpec)
        if spec.text is None:
            program = Path(spec.path or "")
            if not program.is_file():
                missing = events.missing_script(runnable.index, str(program))
                return ExitResult.not_started(missing)
        return PreparedScript(self._context, runnable, spec)

    async def recover(self, runnable: RunnablePlan, handle: Handle) -> Execution | ExitResult:
        status = self._context.status(runnable.index)
        grace = self._context.kill_grace
        found: ScriptExecution | ExitResult | None
        if handle.pid is None or handle.start_time is None:
            # The pid is saved lazily (with the next save): find the waiter by its command line.
            waiter = await asyncio.to_thread(find_waiter, status)
            found = read_status(status)
            if found is None and waiter is not None:
                found = ScriptExecution.reattach(*waiter, status, leftover_grace=grace)
        else:
            found = ScriptExecution.reattach(
                handle.pid, handle.start_time, status, leftover_grace=grace
            )
        if isinstance(found, ScriptExecution):
            return found
        if found is None or found.exit_code == EXIT_CODE_UNKNOWN:
            return ExitResult(EXIT_CODE_UNKNOWN, reason=events.status_lost(runnable.label))
        return Finished(found)


@dataclass
class PreparedScript:
    context: TaskContext
    runnable: RunnablePlan
    spec: ScriptSpec

    @property
    def handle(self) -> Handle:
        return Handle()

    async def start(self, intent: asyncio.Future[None]) -> Started | ExitResult:
        context, k = self.context, self.runnable.index
        # The worker thread writes the script and opens the output files while the intent is
        # being saved, then waits for the save (set from the loop) before it forks.
        saved, ok = threading.Event(), []

        def on_saved(future: asyncio.Future[None]) -> None:
            if not future.cancelled() and future.exception() is None:
                ok.append(True)
            saved.set()

        def may_start() -> bool:
            saved.wait()
            return bool(ok)

        intent.add_done_callback(on_saved)
        user = context.plan.user
        env = runnable_environment(
            context.base_env,
            context.secrets.task_variables(context.plan),
            context.secrets.runnable_variables(self.runnable),
            context.batch_variables(),
            home=_home_of(user[0]) if user is not None else "/root",
        )

        def write_and_spawn() -> ScriptExecution | ExitResult:
            """The file work and the fork in one trip to a worker thread."""
            if self.spec.text is None:
                program = Path(self.spec.path or "")
            else:
                try:
                    program = write_script(self.spec.text, context.scripts, owner=user)
                except OSError as error:
                    return ExitResult.not_started(events.script_not_written(error))
            return spawn_script(
                program,
                env=env,
                cwd=context.work,
                stdout_path=context.output(k, "stdout"),
                stderr_path=context.output(k, "stderr"),
                status_path=context.status(k),
                user=user,
                leftover_grace=context.kill_grace,
                gate=may_start,
            )

        started = await asyncio.to_thread(write_and_spawn)
        if isinstance(started, ExitResult):
            return started
        return Started(started, Handle(pid=started.pid, start_time=started.start_time))


def _home_of(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_dir
    except KeyError:
        return "/"
