"""One local run: the emulator in this process, one agent subprocess per VM, the job to its end.

`LocalRun.run` blocks until the job is over and returns the exit status (0 succeeded, 1 failed,
130 cancelled). A single thread (the caller's) watches the emulator's change log, the entries
the agents wrote to its Cloud Logging (the runnables' output, see `taskoutput`) and the agents'
own warnings and errors (their stderr), and feeds the view and the logsPolicy PATH files; signal
handlers only set a flag. On SIGINT/SIGTERM the job is cancelled
through the emulator (agents stop the tasks' processes), then the agents are stopped; a second
signal stops waiting for the cancellation. Every agent is stopped and reaped before `run` returns.
"""

from __future__ import annotations

import contextlib
import functools
import math
import queue
import resource
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from batch_agent.emulator import Emulator, JobPlan, TaskView
from batch_agent.emulator.job import barrier_indices
from batch_agent.local.agents import AgentProcess, Line, agent_env
from batch_agent.local.tasklogs import PathLogs
from batch_agent.local.taskoutput import TASK_LOGS, Output, OutputGate
from batch_agent.local.view import RunInfo, Summary, TaskSummary, View

EXIT_SUCCEEDED, EXIT_FAILED, EXIT_CANCELLED = 0, 1, 130
VM_CAP = 8  # default --vms never exceeds this unless barriers need every task at once


@dataclass(frozen=True)
class Options:
    """How a local run runs. Intervals are short so that a local job takes seconds, not minutes:
    a VM with tasks to run or report may report as soon as one changes (`busy_min_report_interval`,
    one report in flight at a time paces it), an idle VM reports every `default_report_interval`.
    `busy_min_report_interval` None: `min_report_interval` for every answer."""

    vms: int
    keep: bool = False
    volume_root: Path | None = None  # folders standing in for buckets, NFS shares and disks
    default_report_interval: str = "0.5s"
    min_report_interval: str = "0.1s"
    busy_min_report_interval: str | None = "0s"
    kill_grace: str = "3"
    cancel_timeout: float = 20.0  # seconds to wait for cancelled tasks before stopping agents
    agent_stop_timeout: float = 10.0
    secrets: Mapping[str, str] = field(default_factory=dict)  # Secret Manager versions served


def default_vms(plan: JobPlan, cap: int = VM_CAP) -> int:
    """How many VMs the job needs to run its tasks as concurrently as it allows.

    min(taskCount, parallelism) tasks at once, `taskCountPerNode` of them per VM (one per VM when
    unset, our choice), at most `cap` VMs unless the tasks have barriers (then all must run at
    once, as on Batch, or the job would never pass its first barrier).
    """
    concurrent = min(plan.task_count, plan.parallelism)
    needed = math.ceil(concurrent / (plan.task_count_per_node or 1))
    if any(barrier_indices(spec) for spec in plan.specs):
        return max(1, needed)
    return max(1, min(needed, cap))


def runnable_labels(plan: JobPlan) -> tuple[str, ...]:
    """What names each runnable in output prefixes: its displayName, a container's image name
    (`gcr.io/x/busybox:1` -> `busybox`), a barrier's name, else nothing."""
    labels = []
    for runnable in plan.specs[0].get("runnables", []) if plan.specs else []:
        label = runnable.get("displayName", "")
        if not label and "container" in runnable:
            image = str(runnable["container"].get("imageUri", ""))
            label = image.rsplit("/", 1)[-1].split(":", 1)[0].split("@", 1)[0]
        if not label and "barrier" in runnable:
            label = str(runnable["barrier"].get("name", "barrier"))
        labels.append(label)
    return tuple(labels)


class LocalRun:
    """Runs `job` (already checked by `load_job`) with `options` in `work_dir`, showing `view`."""

    def __init__(
        self,
        job: dict[str, Any],
        plan: JobPlan,
        view: View,
        options: Options,
        work_dir: Path,
        job_id: str,
    ) -> None:
        self._job, self._plan, self._view, self._options = job, plan, view, options
        self._work_dir, self._job_id = work_dir, job_id
        self._signals = 0
        self._lines: queue.Queue[Line] = queue.Queue()
        self._agents: list[AgentProcess] = []
        self._cursor = 0
        self._entries = 0  # cursor in the emulator's Cloud Logging entries
        self._gate = OutputGate("")
        self._logs: list[PathLogs] = []

    def run(self) -> int:
        """Run the job to its end; always stops every agent and the emulator before returning."""
        previous = {}
        if threading.current_thread() is threading.main_thread():
            previous = {
                s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)
            }
        begun, cpu = time.time(), _cpu()
        emulator = Emulator(
            self._job,
            vms=self._options.vms,
            job_id=self._job_id,
            default_report_interval=self._options.default_report_interval,
            min_report_interval=self._options.min_report_interval,
            busy_min_report_interval=self._options.busy_min_report_interval,
            auto_delete=not self._options.keep,
            log=None,
            files_dir=self._work_dir,
            secrets=self._options.secrets,
        )
        # The output is read from the entries: PATH files in the work dir, and in logsPath.
        self._gate = OutputGate(emulator.job_uid)
        self._logs = [PathLogs(self._work_dir / "logs", emulator.job_uid)]
        if self._plan.logs_path:
            self._logs.append(PathLogs(Path(self._plan.logs_path), emulator.job_uid))
        try:
            emulator.start()
            labels = runnable_labels(self._plan)
            info = RunInfo(
                self._job_id,
                self._plan.task_count,
                self._options.vms,
                labels,
                self._work_dir,
                emulator.job_uid,
            )
            self._view.start(info)
            self._pump(emulator)  # the job's creation comes first
            self._start_agents(emulator)
            cancelled = self._watch(emulator)
        finally:
            self._stop_agents()  # each agent writes its last output lines before it exits
            self._pump(emulator)
            self._show_output(self._gate.rest())
            emulator.stop()
            for logs in self._logs:
                logs.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        state = emulator.job_state or "FAILED"
        if cancelled:
            status = EXIT_CANCELLED
        else:
            status = EXIT_SUCCEEDED if state == "SUCCEEDED" else EXIT_FAILED
        kept = self._work_dir if self._options.keep else None
        tasks = tuple(_summary(t) for t in emulator.task_views())
        elapsed, reports = time.time() - begun, len(emulator.reports)
        used = [now - then for now, then in zip(_cpu(), cpu, strict=True)]
        summary = Summary(self._job_id, state, status, elapsed, tasks, kept, reports, *used)
        self._view.finish(summary)
        return status

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1

    def _start_agents(self, emulator: Emulator) -> None:
        for vm in emulator.vms:
            directory = self._work_dir / vm.name
            env = agent_env(
                vm.metadata_host, emulator.url, directory / "state", self._options.kill_grace
            )
            # Every task's output, whatever the job's logsPolicy: the view is built from it. Not
            # the agent's own log (`batch_agent_logs`): nothing here reads it, its lines are in
            # agent.log and its warnings shown from stderr, and shipping it (a text form of each
            # report, ~6 lines a task) was ~1 ms of CPU a task, both sides.
            env["BATCH_AGENT_CLOUD_LOGGING"] = "tasks"
            if self._options.volume_root is not None:
                env["BATCH_AGENT_VOLUME_ROOT"] = str(self._options.volume_root)
            agent = AgentProcess(vm.index, directory, env, self._lines)
            self._agents.append(agent)
            self._view.agent(vm.index, agent.pid, "started")

    def _watch(self, emulator: Emulator) -> bool:
        """Feed the view until the job is over; returns whether it was cancelled by a signal."""
        cancel_deadline: float | None = None
        refreshed = 0.0
        while True:
            changed = self._pump(emulator)
            now = time.time()
            # task_views() copies every task under the emulator's lock: only when a view draws.
            every = self._view.refresh_every
            if every is not None and now - refreshed >= every:
                self._view.refresh(emulator.task_views(), now)
                refreshed = now
            if changed and emulator.job_done:
                return cancel_deadline is not None
            if self._signals and cancel_deadline is None:
                emulator.cancel_job()  # RUNNING -> FAILED for every task: the agents stop them
                cancel_deadline = now + self._options.cancel_timeout
            if cancel_deadline is not None and (self._signals > 1 or now > cancel_deadline):
                return True
            if all(agent.proc.poll() is not None for agent in self._agents):
                self._view.warn("every agent exited before the job ended")
                return cancel_deadline is not None
            with contextlib.suppress(queue.Empty):
                self._show(self._lines.get(timeout=0.05))

    def _pump(self, emulator: Emulator) -> bool:
        """Hand every new state change, output line and agent line to the view (and output to
        the PATH files); returns whether there was a state change. A change goes to the view
        before the output it lets through."""
        changes = emulator.changes_since(self._cursor)
        self._cursor += len(changes)
        for change in changes:
            self._view.change(change)
            self._show_output(self._gate.change(change))
        entries, self._entries = emulator.logs.entries_since(self._entries, TASK_LOGS)
        self._show_output(self._gate.entries(entries))
        while True:
            try:
                self._show(self._lines.get_nowait())
            except queue.Empty:
                return bool(changes)

    def _show(self, line: Line) -> None:
        """An agent's stderr line: its warnings and errors are shown; its chatter and its copy of
        the output (shown from Cloud Logging instead) stay in its agent.log."""
        if line.task is None and line.severity in ("WARNING", "ERROR", "CRITICAL"):
            self._view.line(line)

    def _show_output(self, items: list[Output | Line]) -> None:
        """Output lines to the view and the PATH files; a folder that cannot be written is
        named once in a warning and left alone (the run goes on)."""
        for item in items:
            if isinstance(item, Output):
                self._write_logs(functools.partial(PathLogs.write, output=item))
                self._view.line(item.line)
            else:
                self._view.line(item)
        if items:
            self._write_logs(PathLogs.flush)

    def _write_logs(self, action: Callable[[PathLogs], None]) -> None:
        for logs in list(self._logs):
            try:
                action(logs)
            except OSError as e:
                self._logs.remove(logs)
                self._view.warn(f"cannot write the log files in {logs.directory}: {e}")

    def _stop_agents(self) -> None:
        for agent in self._agents:
            agent.terminate()  # all at once; then wait for each
        for agent in self._agents:
            status = agent.stop(self._options.agent_stop_timeout)
            self._view.agent(agent.vm, agent.pid, "stopped", status)


def _cpu() -> tuple[float, float]:
    """User + system seconds so far of this process, and of its children waited for."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def _summary(t: TaskView) -> TaskSummary:
    end = t.ended
    elapsed = None if t.started is None or end is None else end - t.started
    attempts = t.attempt + 1 if t.started is not None or t.attempt else 0
    state = "FAILED" if t.retrying else t.phase
    return TaskSummary(t.index, state, t.exit_code, elapsed, attempts)
