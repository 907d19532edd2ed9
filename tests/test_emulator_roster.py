"""The emulator's roster: the tasks on each VM and whether all finished, without full scans."""

from __future__ import annotations

from batch_agent.emulator.records import ServerTask
from batch_agent.emulator.roster import Roster


def _tasks(n: int) -> tuple[dict[str, ServerTask], Roster]:
    tasks: dict[str, ServerTask] = {}
    roster = Roster(tasks)
    for i in range(n):
        task = ServerTask(name=f"t{i}", resource=f"r{i}", sent={}, in_plan=True, index=i)
        tasks[task.resource] = task
        roster.added(task)
    return tasks, roster


def test_all_finished_follows_tasks_that_finish_and_come_back() -> None:
    tasks, roster = _tasks(4)
    assert not roster.all_finished()
    for task in tasks.values():
        task.state = "SUCCEEDED"
    assert roster.all_finished()
    tasks["r0"].retrying = True  # FAILED, to be retried: unfinished again, before the hint
    assert not roster.all_finished()
    tasks["r0"].retrying = False
    tasks["r2"].state = "RUNNING"  # after the hint
    assert not roster.all_finished()
    tasks["r2"].state = "FAILED"
    assert roster.all_finished()
    assert not Roster({}).all_finished()  # no task: not done


def test_on_vm_keeps_the_order_of_the_tasks_and_forgets_those_that_left() -> None:
    tasks, roster = _tasks(5)
    for key, vm in (("r3", 0), ("r1", 0), ("r2", 1), ("r0", 0)):
        tasks[key].vm = vm
        roster.placed(tasks[key])
    assert [t.resource for t in roster.on_vm(0)] == ["r0", "r1", "r3"]
    tasks["r1"].dropped = True
    tasks["r0"].vm = None  # requeued for a retry
    assert [t.resource for t in roster.on_vm(0)] == ["r3"]
    assert [t.resource for t in roster.on_vms()] == ["r2", "r3"]
    replaced = ServerTask(name="t3b", resource="r3", sent={}, in_plan=False, index=3, vm=1)
    tasks["r3"] = replaced  # added again under the same name: the new one counts
    roster.added(replaced)
    assert roster.on_vm(0) == [] and roster.on_vm(1) == [tasks["r2"], replaced]
