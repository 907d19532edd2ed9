"""The script driver: a runnable's `text` or `path` run under the waiter of `script.py`.

Turns a RunnablePlan into the program file, the runnable's environment and the files of its
output and exit status in the task's folder (the program runs in its `work/`, see folders.py);
finds a waiter again by pid and start time, or by its command line when the pid was not saved
yet. Knows nothing of task states or persistence.

A script starts without waiting for its intent's save: from its first instant its waiter
(by its command line), then its status file, tell a restarted agent that it started (`find`).
New files could cost as much as the rest of a start on a disk (0.02-0.7 ms each on the
development machine's ext4, by the folder's history; opening one again, a few us): `ahead`
makes the next runnable's script and output files while the one before it runs (the first's
with the task's folder), so that its start only opens them. Files made for a runnable that
never starts are left empty in the task's folder, harmless. Once the task's prestart hooks are
done (its secrets known), `ahead` also forks the runnable's waiter, which waits for its go
(script.py): the start is then one write, and the fork and the waiter's exec (about half of a
short runnable's cost over its own) happen while the runnable before it runs. A waiter that
never gets its go is dismissed when the task's sequence ends (`dismiss_ahead`).
"""

from __future__ import annotations

import asyncio
import pwd
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batch_agent.tasks import events, scope
from batch_agent.tasks.driver import Finished, Started, TaskContext
from batch_agent.tasks.env import runnable_environment
from batch_agent.tasks.execution import EXIT_CODE_UNKNOWN, Execution, ExitResult, Handle
from batch_agent.tasks.plan import RunnablePlan, ScriptSpec
from batch_agent.tasks.script import (
    OpenedFiles,
    ScriptExecution,
    find_waiter,
    open_files,
    read_status,
    spawn_opened,
    write_script,
)

SCOPE_WAIT = 1.0  # seconds an ahead fork waits at most for the scope it is to join
SCOPE_POLL = 0.005

# What `ahead` makes ready: the program's path (its files made), its waiter (forked, waiting
# for its go), or why not (the start then tries again).
Ahead = Path | ScriptExecution | ExitResult


class ScriptDriver:
    def __init__(self, context: TaskContext) -> None:
        self._context = context
        # Script runnables whose files are being made ahead, by index: the program's path
        # once made (or why not), or its waiter, forked and waiting for its go.
        self._ahead: dict[int, asyncio.Future[Ahead]] = {}
        self._waiting: dict[int, ScriptExecution] = {}  # waiters forked ahead, not yet started
        self._members = Members(self._waiting)  # under systemd: the task's scope, shared

    def prepare(self, runnable: RunnablePlan) -> PreparedScript | ExitResult:
        """Check that the script's path exists; a text is written to its file at the start
        (or was, by `ahead`)."""
        spec = runnable.action
        assert isinstance(spec, ScriptSpec)
        if spec.text is None:
            program = Path(spec.path or "")
            if not program.is_file():
                missing = events.missing_script(runnable.index, str(program))
                return ExitResult.not_started(missing)
        made = self._ahead.pop(runnable.index, None)
        return PreparedScript(self._context, runnable, spec, made, self._waiting, self._members)

    def ahead(self, runnable: RunnablePlan, *, hooks_done: bool = False) -> None:
        """Make the script file and output files of `runnable`, a `text` one, now (in the
        tasks' file thread): it is likely to start next. With `hooks_done` (its secrets are
        known), fork its waiter too, to wait for its go."""
        spec = runnable.action
        if not isinstance(spec, ScriptSpec) or spec.text is None or runnable.index in self._ahead:
            return
        context = self._context

        def make() -> Ahead:
            try:  # the first ask may come before the TaskFolder hook
                context.folders.make()
            except OSError as error:  # the hook says so, in its event; the start tries again
                return ExitResult.not_started(str(error))
            files = _write_and_open(context, runnable.index, spec)
            if isinstance(files, ExitResult):
                return files
            files.close()
            return files.program

        made = context.files.submit(make)
        if hooks_done:
            forked = asyncio.ensure_future(self._fork(runnable, made))
            self._members.forking(forked)
            self._ahead[runnable.index] = forked
        else:
            self._ahead[runnable.index] = made

    async def _fork(self, runnable: RunnablePlan, made: asyncio.Future[Ahead]) -> Ahead:
        """Once `runnable`'s files are made, its waiter, forked to wait for its go."""
        program = await made
        if not isinstance(program, Path):
            return program
        # Under systemd, the runnable before may still be in systemd-run, its scope not made:
        # forked now, this one would make a scope of its own rather than join that one.
        waited = 0.0
        while waited < SCOPE_WAIT and scope.being_made(self._members.beside()):
            await asyncio.sleep(SCOPE_POLL)
            waited += SCOPE_POLL
        spec, context = runnable.action, self._context
        assert isinstance(spec, ScriptSpec)
        files = _open(context, runnable.index, spec, program)
        if isinstance(files, ExitResult):
            return files
        waiter = await _spawn(context, runnable, files, self._members, go=False)
        if isinstance(waiter, ScriptExecution):
            self._waiting[runnable.index] = waiter
        return waiter

    async def dismiss_ahead(self) -> None:
        """Let every waiter forked ahead that did not start end without running anything."""
        for pending in self._ahead.values():
            pending.cancel()  # a fork not made yet is not made
        self._ahead.clear()
        waiting = list(self._waiting.values())
        self._waiting.clear()
        for waiter in waiting:
            await waiter.dismiss()

    async def find(self, runnable: RunnablePlan) -> Started | None:
        """Its status file (it ended) or its waiter (it runs), which a start makes before its
        intent is saved: see `PreparedScript.start`. Blocks on a scan of /proc, in a thread."""
        found = await self._without_pid(self._context.status(runnable.index))
        if found is None:
            return None
        if isinstance(found, ExitResult):
            return Started(Finished(found), Handle())
        return Started(found, Handle(pid=found.pid, start_time=found.start_time))

    async def recover(self, runnable: RunnablePlan, handle: Handle) -> Execution | ExitResult:
        status = self._context.status(runnable.index)
        grace = self._context.kill_grace
        found: ScriptExecution | ExitResult | None
        if handle.pid is None or handle.start_time is None:
            found = await self._without_pid(status)  # the pid is saved with the next save
        else:
            found = ScriptExecution.reattach(
                handle.pid, handle.start_time, status, leftover_grace=grace
            )
        if isinstance(found, ScriptExecution):
            return found
        if found is None or found.exit_code == EXIT_CODE_UNKNOWN:
            return ExitResult(EXIT_CODE_UNKNOWN, reason=events.status_lost(runnable.label))
        return Finished(found)

    async def _without_pid(self, status: Path) -> ScriptExecution | ExitResult | None:
        """The run that writes `status`, its pid unknown: its status (it ended), else its waiter
        found by its command line (it runs), else None. Blocks on a scan of /proc, in a
        thread."""
        waiter = await asyncio.to_thread(find_waiter, status)
        found = read_status(status)  # after the scan: a waiter that ended meanwhile wrote it
        if found is None and waiter is not None:
            grace = self._context.kill_grace
            return ScriptExecution.reattach(*waiter, status, leftover_grace=grace)
        return found


@dataclass
class PreparedScript:
    context: TaskContext
    runnable: RunnablePlan
    spec: ScriptSpec
    made: asyncio.Future[Ahead] | None  # what `ScriptDriver.ahead` made ready
    waiting: dict[int, ScriptExecution]  # the driver's waiters forked ahead
    members: Members  # the driver's

    @property
    def handle(self) -> Handle:
        return Handle()

    async def start(self, intent: asyncio.Future[None]) -> Started | ExitResult:
        context, k = self.context, self.runnable.index
        made = await self.made if self.made is not None else None
        if isinstance(made, ScriptExecution):  # its waiter forked ahead: it only needs its go
            self.waiting.pop(k, None)
            await self.members.settled(made)
            made.go()
            return Started(made, Handle(pid=made.pid, start_time=made.start_time))
        if isinstance(made, Path):  # our own script, its files made: only opened, here
            files = _open(context, k, self.spec, made)
        elif self.spec.text is not None:  # all in the agent's own folders
            spec = self.spec
            files = await context.files.run(lambda: _write_and_open(context, k, spec))
        else:  # in a thread of its own: a `path` may lead to a slow mount
            files = await asyncio.to_thread(_write_and_open, context, k, self.spec)
        if isinstance(files, ExitResult):
            return files
        # At once, the intent's save under way: an agent that dies before it lands leaves the
        # run's status file or its waiter, which the next one finds (`ScriptDriver.find`).
        started = await _spawn(context, self.runnable, files, self.members, go=True)
        if isinstance(started, ExitResult):
            return started
        return Started(started, Handle(pid=started.pid, start_time=started.start_time))


class Members:
    """Under systemd, what a task's waiters need to share its scope (scope.py): its newest
    waiters, the first of them alive to join the scope of (those waiting for their go first:
    they cannot end before it), the joins under way beside that waiter and the forks ahead under
    way (which may join beside it when no other waiter waits), which its go waits for
    (`settled`), so that its scope cannot end before they land: a runnable as short as `true`
    would be gone long before. A few waiters are enough: the one running, those forked ahead
    and background ones beside them."""

    KEPT = 4

    def __init__(self, waiting: dict[int, ScriptExecution]) -> None:
        self._newest: deque[ScriptExecution] = deque(maxlen=self.KEPT)
        self._waiting = waiting  # the driver's waiters forked ahead, not started
        self._joins: dict[int, list[asyncio.Future[bool]]] = {}  # by the pid joined beside
        self._forks: set[asyncio.Future[Ahead]] = set()  # the forks ahead under way

    def add(self, waiter: ScriptExecution) -> None:
        self._newest.append(waiter)

    def beside(self) -> Iterator[tuple[int, int]]:
        """The (pid, start time) of the waiters to join beside, in that order: those waiting
        for their go, newest first, then the others. Lazy: nothing is done unless systemd is
        in use (scope.py reads it only then)."""
        waiting = list(self._waiting.values())
        for waiter in reversed(waiting):
            yield waiter.pid, waiter.start_time
        for waiter in reversed(self._newest):
            if waiter not in waiting:
                yield waiter.pid, waiter.start_time

    async def join(self, launch: scope.Launch, pid: int) -> bool:
        """Put `pid` in the scope `launch` joins, in a worker thread (a write to cgroup.procs
        may wait for the kernel's RCU grace period: 6-10 ms measured, where no write came just
        before); False if that scope is gone."""
        joining = asyncio.ensure_future(asyncio.to_thread(scope.join, launch.join, pid))
        anchor = self._joins.setdefault(launch.beside, [])
        anchor.append(joining)
        try:
            return await joining
        finally:
            anchor.remove(joining)

    def forking(self, fork: asyncio.Future[Ahead]) -> None:
        """A waiter is being forked ahead (`ScriptDriver.ahead`): it may join beside one."""
        self._forks.add(fork)
        fork.add_done_callback(self._forks.discard)

    async def settled(self, waiter: ScriptExecution) -> None:
        """Before `waiter`'s go (it has left the waiting ones): the joins beside it have landed
        and, under systemd, if no other waiter waits for its go, the forks ahead under way are
        done: one would join beside a running waiter. A fork joins beside the newest waiter
        waiting when it gets there, and a join is registered in the same step of the loop as
        that choice, so a go that another waiter waits behind need not wait for any fork."""
        pending: list[asyncio.Future[Any]] = [*self._joins.pop(waiter.pid, [])]
        if self._forks and not self._waiting and scope.in_use():
            pending += self._forks
        if pending:
            await asyncio.wait(pending)


async def _spawn(
    context: TaskContext, runnable: RunnablePlan, files: OpenedFiles, members: Members, *, go: bool
) -> ScriptExecution | ExitResult:
    """`runnable`'s waiter forked on `files` (with its go if `go`), on the loop's thread (see
    spawn_opened); under systemd in its task's scope: joining the scope of one of `members`,
    else, or if that scope is gone by then, in a scope of its own."""
    user, beside = context.plan.user, members.beside()
    while True:
        launch = scope.launcher(files.status_path, user, beside)
        joining = launch if launch is not None and launch.join else None
        waiter = spawn_opened(
            files,
            env=_environment(context, runnable),
            cwd=context.work,
            user=user,
            leftover_grace=context.kill_grace,
            go=go and joining is None,
            launch=launch,
        )
        if isinstance(waiter, ExitResult):
            return waiter
        if joining is None or await members.join(joining, waiter.pid):
            break
        await waiter.dismiss()  # it ends having run nothing; the next makes a scope
        spec = runnable.action
        assert isinstance(spec, ScriptSpec)
        reopened = _open(context, runnable.index, spec, files.program)
        if isinstance(reopened, ExitResult):
            return reopened
        files, beside = reopened, iter(())
    if go and joining is not None:
        waiter.go()
    members.add(waiter)
    return waiter


def _write_and_open(context: TaskContext, k: int, spec: ScriptSpec) -> OpenedFiles | ExitResult:
    """Runnable `k`'s program (a `text` written to a new file) and its files, open. Blocks."""
    if spec.text is None:
        program = Path(spec.path or "")
    else:
        try:
            program = write_script(spec.text, context.scripts, owner=context.plan.user)
        except OSError as error:
            return ExitResult.not_started(events.script_not_written(error))
    return _open(context, k, spec, program)


def _open(
    context: TaskContext, k: int, spec: ScriptSpec, program: Path
) -> OpenedFiles | ExitResult:
    return open_files(
        program,
        cwd=context.work,
        stdout_path=context.output(k, "stdout"),
        stderr_path=context.output(k, "stderr"),
        status_path=context.status(k),
        user=context.plan.user,
        shell=spec.text is not None and not spec.text.startswith("#!"),  # sh's default
    )


def _environment(context: TaskContext, runnable: RunnablePlan) -> dict[str, str]:
    user = context.plan.user
    return runnable_environment(
        context.base_env,
        context.secrets.task_variables(context.plan),
        context.secrets.runnable_variables(runnable),
        context.batch_variables(),
        home=_home_of(user[0]) if user is not None else "/root",
    )


def _home_of(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_dir
    except KeyError:
        return "/"
