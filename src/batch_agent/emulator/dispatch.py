"""What each `state:report` answer tells a VM about its tasks, and the DELETED handshake.

Each of the VM's tasks is sent as its AgentTask JSON, with `intendedState` overridden once the
server decided CANCELLED or DELETED, and `reachedBarrier` computed over the task's group unless
the task carries its own. A DELETED task is sent until its agent stops reporting it (or for at
most `_DELETED_SENDS` answers), then dropped. Pure functions over `ServerTask`s that touch only
this bookkeeping (`deleted_sends`, `dropped`); must not schedule, retry or change a task's state.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

from batch_agent.emulator import job as jobs
from batch_agent.emulator.records import ServerTask

# A DELETED task is dropped once the agent stops reporting it, or after this many responses.
_DELETED_SENDS = 5
# Stands for "past every barrier" for finished tasks.
_PAST_ALL = 2**62


def drop_forgotten(
    tasks: Iterable[ServerTask], vm: int, mentioned: Collection[str]
) -> list[ServerTask]:
    """Drop VM `vm`'s DELETED tasks that its agent forgot (no longer in `mentioned`, the task
    names of its report) or that were sent often enough; returns those dropped that are
    `retrying`, whose next attempt may now start."""
    retried = []
    for task in tasks:
        if task.vm != vm or task.dropped or task.intended != "DELETED":
            continue
        gone = task.deleted_sends >= 1 and task.name not in mentioned
        if gone or task.deleted_sends >= _DELETED_SENDS:
            task.dropped = True
            if task.retrying:
                retried.append(task)
    return retried


def agent_tasks(
    tasks: Iterable[ServerTask], vm: int, *, every: Collection[ServerTask]
) -> list[dict[str, Any]]:
    """The AgentTask JSONs for VM `vm`'s answer, in the order of `tasks` (those of `every`, all
    of the job's tasks, needed for barriers, that may be on the VM); counts each DELETED send."""
    out = []
    for task in tasks:
        if task.vm != vm or task.dropped:
            continue
        if task.intended == "DELETED":
            task.deleted_sends += 1
        sent = dict(task.sent)  # only top-level keys change; the answer is serialised at once
        if task.intended is not None:
            sent["intendedState"] = task.intended
        if "reachedBarrier" not in task.sent:
            sent["reachedBarrier"] = str(_reached_barrier(task, every))
        out.append(sent)
    return out


def _reached_barrier(task: ServerTask, tasks: Iterable[ServerTask]) -> int:
    barriers = jobs.barrier_indices(task.sent.get("spec"))
    if not barriers:
        return 0
    group = [t for t in tasks if t.group == task.group]
    return jobs.reached_barrier(
        barriers, (_PAST_ALL if t.is_finished else t.runnable for t in group)
    )
