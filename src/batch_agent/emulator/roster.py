"""Where the job's tasks are, kept so that a report costs the emulator its VM's few tasks, not a
scan of every task of the job (several scans per report made a job of many short tasks
quadratic).

`Roster` reads the `JobState.tasks` dict it is given and is told of two events: a task was
added to it (`added`) and a task was given a VM (`placed`). It keeps a superset of the tasks
that sit on a VM and are not dropped, pruned as it is read, so a task leaving a VM (a retry's
requeue, a drop) needs no call; and a hint of the first unfinished task, so that `all_finished`
is checked from there, its True confirmed by a full pass. Not thread-safe (the emulator's lock);
plain bookkeeping: it must not change a task.
"""

from __future__ import annotations

from batch_agent.emulator.records import ServerTask


class Roster:
    def __init__(self, tasks: dict[str, ServerTask]) -> None:
        self._tasks = tasks  # by resource name, in the order they were added
        self._order: list[str] = []  # the same keys, as a list
        self._position: dict[str, int] = {}
        self._placed: dict[str, ServerTask] = {}  # every task on a VM and not dropped, maybe more
        self._unfinished = 0  # no unfinished task before this position, last time it was looked

    def added(self, task: ServerTask) -> None:
        """`task` was just stored in the tasks dict (under `task.resource`)."""
        if task.resource not in self._position:
            self._position[task.resource] = len(self._order)
            self._order.append(task.resource)
        self._placed.pop(task.resource, None)
        if task.vm is not None:
            self.placed(task)

    def placed(self, task: ServerTask) -> None:
        """`task` was just given a VM."""
        self._placed[task.resource] = task

    def on_vms(self) -> list[ServerTask]:
        """Every task on a VM that is not dropped, in the order of the tasks dict."""
        gone = [k for k, t in self._placed.items() if t.vm is None or t.dropped]
        for key in gone:
            del self._placed[key]
        return sorted(self._placed.values(), key=lambda t: self._position[t.resource])

    def on_vm(self, vm: int) -> list[ServerTask]:
        return [t for t in self.on_vms() if t.vm == vm]

    def all_finished(self) -> bool:
        """Whether there are tasks and every one `is_finished`."""
        order, tasks = self._order, self._tasks
        i = self._unfinished
        while i < len(order) and tasks[order[i]].is_finished:
            i += 1
        if i < len(order):
            self._unfinished = i  # a witness: not finished
            return False
        for i, key in enumerate(order):  # all after the hint are: confirm those before it
            if not tasks[key].is_finished:
                self._unfinished = i
                return False
        return bool(order)
