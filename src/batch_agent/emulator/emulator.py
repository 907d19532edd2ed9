"""`Emulator`, the public handle of the local control plane: lifecycle, steering, inspection.

It owns the pieces and the lock: `JobState` (the job's memory) and `BatchApi` (`state:report`)
are used under one condition, which also tells `wait_until_done` that a report arrived;
`Preemption` guards its own flags. It implements `backend.Backend` for `http.Listeners`, one per
VM on loopback (VM 0's also serves the Batch API). Must not parse HTTP itself, and must not import
any agent code: the emulator plays Google's side only.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from batch_agent.emulator import metadata, preemption, service
from batch_agent.emulator.backend import Reply
from batch_agent.emulator.batch_api import BatchApi
from batch_agent.emulator.http import Listeners
from batch_agent.emulator.job import load_job
from batch_agent.emulator.logging import LogStore
from batch_agent.emulator.metadata import Site, Vm
from batch_agent.emulator.preemption import Preemption
from batch_agent.emulator.records import Report, TaskView
from batch_agent.emulator.secrets import SecretStore
from batch_agent.emulator.state import JobState

log = logging.getLogger(__name__)


class Emulator:
    """A local Batch control plane and per-VM metadata servers for one job.

    `start()` binds the listeners and serves in daemon threads; `stop()` closes them and waits for
    in-flight requests (idempotent). All methods are thread-safe. Usable as a context manager.
    `answer_metadata` and `answer_report` are for the HTTP layer (see `backend.Backend`).
    """

    def __init__(
        self,
        job: dict[str, Any] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        vms: int = 1,
        default_report_interval: str = "10s",
        min_report_interval: str = "1s",
        busy_min_report_interval: str | None = None,
        project_number: str = "123456789012",
        zone: str = "us-central1-a",
        job_id: str = "job-1",
        auto_delete: bool = True,
        log: Callable[[str], None] | None = print,
        files_dir: str | Path | None = None,
        secrets: Mapping[str, str] | None = None,
    ) -> None:
        """`files_dir` receives the files the service provides to tasks (the hosts file of
        `requireHostsFile`); without it a temporary directory is made, and removed by stop().
        `busy_min_report_interval`, when given, is the minReportInterval answered to a VM that
        has a task to run or report (the other answers carry `min_report_interval`).
        `secrets`: Secret Manager versions served (path -> value; see `secrets.SecretStore`)."""
        if vms < 1:
            raise ValueError(f"vms must be at least 1, got {vms}")
        self._host, self._port, self._vm_count = host, port, vms
        self.site = Site(project_number=project_number, zone=zone, job_id=job_id)
        self._log: Callable[[str], None] = log or (lambda _line: None)
        self._lock = threading.Condition()
        plan = load_job(job) if job is not None else None
        self._own_dir: Path | None = None
        self._hosts_path: Path | None = None
        if plan is not None and plan.require_hosts_file:
            if files_dir is None:
                files_dir = self._own_dir = Path(tempfile.mkdtemp(prefix="batch-emulator-"))
            self._hosts_path = Path(files_dir, "hosts").absolute()
        self._state = JobState(
            plan,
            self.site,
            vms,
            auto_delete=auto_delete,
            log=self._log,
            hosts_path=str(self._hosts_path) if self._hosts_path else None,
        )
        self._api = BatchApi(
            self.site,
            self._state,
            intervals=(default_report_interval, min_report_interval),
            busy_minimum=busy_min_report_interval,
            log=self._log,
        )
        if plan is not None:  # the job's logsPolicy.cloudLoggingOption
            self._api.batch_monitored_resource = plan.batch_monitored_resource
        self._preemption = Preemption(vms)
        self.secrets = SecretStore(secrets)  # Secret Manager and KMS (thread-safe on its own)
        self.logs = LogStore(project_number)  # Cloud Logging (thread-safe on its own)
        self._listeners: Listeners | None = None
        self.vms: list[Vm] = []
        self.reports: list[Report] = self._api.reports
        self.invalid_reports: list[tuple[object, list[str]]] = self._api.invalid_reports

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Bind every listener (VM 0's on host:port) and serve in background threads.

        Raises OSError if a port cannot be bound (nothing stays open then)."""
        if self._listeners is not None:
            raise RuntimeError("emulator already started")
        try:
            if self._hosts_path is not None:
                self._hosts_path.parent.mkdir(parents=True, exist_ok=True)
                self._hosts_path.write_text(service.hosts_file([self._host] * self._vm_count))
            self._listeners = Listeners(self, self._host, self._port, self._vm_count)
            self.vms[:] = [
                Vm(i, f"vm-{i}", metadata.instance_id(i), f"{self._host}:{port}")
                for i, port in enumerate(self._listeners.ports)
            ]
            self._listeners.serve()
        except BaseException:
            self.stop()  # close whatever was bound before the failure
            raise
        log.info("emulator: serving on %s", self.url)

    def stop(self) -> None:
        """Stop serving, release blocked metadata waits and hanging secret calls, and close
        every socket."""
        self._preemption.release()
        self.secrets.release()
        if self._listeners is not None:
            self._listeners.close()
            self._listeners = None
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)

    def __enter__(self) -> Emulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The Batch API root, e.g. "http://127.0.0.1:8080/" (the agent's --endpoint)."""
        if not self.vms:
            raise RuntimeError("emulator not started")
        return f"http://{self.vms[0].metadata_host}/"

    @property
    def metadata_host(self) -> str:
        """VM 0's metadata server as host:port (for GCE_METADATA_HOST)."""
        if not self.vms:
            raise RuntimeError("emulator not started")
        return self.vms[0].metadata_host

    # -- steering ------------------------------------------------------------------------------

    def add_task(self, raw_agent_task: dict[str, Any], vm: int = 0) -> str:
        """Assign an AgentTask JSON, unvalidated, to VM `vm`; returns its (possibly new) name."""
        with self._lock:
            return self._state.add(raw_agent_task, vm)

    def cancel_task(self, name: str) -> None:
        with self._lock:
            self._state.cancel(name)

    def cancel_job(self) -> None:
        """Cancel the job: pending tasks never start, assigned ones are sent CANCELLED, no
        retries; the job goes CANCELLATION_IN_PROGRESS, then CANCELLED once every task ended."""
        with self._lock:
            self._state.cancel_job()
            self._lock.notify_all()

    def delete_task(self, name: str) -> None:
        with self._lock:
            self._state.delete(name)

    def fail_next(self, n: int, status: int = 503) -> None:
        """Answer the next `n` report calls with HTTP `status` and a Google error body."""
        with self._lock:
            self._api.fail_next(n, status)

    def respond_raw_next(self, body: bytes, status: int = 200) -> None:
        """Answer the next report call with these bytes (the report itself is still recorded)."""
        with self._lock:
            self._api.respond_raw_next(body, status)

    def set_intervals(self, default: str = "10s", minimum: str = "1s") -> None:
        with self._lock:
            self._api.intervals = (default, minimum)

    def use_batch_monitored_resource(self, value: bool | None = True) -> None:
        """Answer reports with `useBatchMonitoredResource` (None: leave it out). By default a job
        config's `logsPolicy.cloudLoggingOption` decides; without a job it is left out."""
        with self._lock:
            self._api.batch_monitored_resource = value

    def set_preempted(self, vm: int = 0, value: bool = True) -> None:
        self._preemption.set(vm, value)

    # -- inspection ----------------------------------------------------------------------------

    def task_names(self) -> list[str]:
        """The name each task's current attempt is sent under (`AgentTask.task`). The methods
        below that take a `name` also accept an earlier attempt's or the Task's resource name
        (`projects/P/locations/L/jobs/JOB/taskGroups/group0/tasks/INDEX`)."""
        with self._lock:
            return [task.name for task in self._state.tasks.values()]

    @property
    def job_uid(self) -> str:
        """The job's uid (`j-<uuid4>`), the JOB_UID of its task names."""
        return self._state.job_uid

    def task_state(self, name: str) -> str | None:
        with self._lock:
            return self._state.task(name).state

    def task_events(self, name: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._state.task(name).events)

    def task_runnable(self, name: str) -> int:
        with self._lock:
            return self._state.task(name).runnable

    @property
    def job_state(self) -> str | None:
        """The job's JobStatus.state (QUEUED ... SUCCEEDED), None without a job config."""
        with self._lock:
            return self._state.job_state

    @property
    def hosts_path(self) -> Path | None:
        """Where the hosts file is (with requireHostsFile), else None."""
        return self._hosts_path

    def changes_since(self, cursor: int) -> list[dict[str, Any]]:
        """State changes of the job and its tasks from position `cursor` on, oldest first; the
        next cursor is `cursor + len(result)`. Each is a JSON-ready dict with "event": "job" or
        "task", "time", "from" and "state" (tasks add "task", "attempt", "vm", "exitCode"...)."""
        with self._lock:
            return [dict(change) for change in self._state.changes.entries[cursor:]]

    def task_views(self) -> list[TaskView]:
        """Every task as it is now, in the order the emulator knows them."""
        with self._lock:
            return [task.view() for task in self._state.tasks.values()]

    def is_deleted(self, name: str) -> bool:
        with self._lock:
            return self._state.is_deleted(name)

    @property
    def job_done(self) -> bool:
        """Every task reported SUCCEEDED or FAILED (or was withdrawn before it was assigned)."""
        with self._lock:
            return self._state.done

    @property
    def job_failed(self) -> bool:
        """Some task reported FAILED (or was cancelled before it was assigned)."""
        with self._lock:
            return self._state.failed

    def wait_until_done(self, timeout: float) -> bool:
        """Block until `job_done` or `timeout` seconds pass; returns `job_done`."""
        with self._lock:
            return self._lock.wait_for(lambda: self._state.done, timeout)

    # -- backend.Backend (called from request threads) -----------------------------------------

    def answer_metadata(self, vm: int, key: str, query: Mapping[str, str]) -> Reply:
        """VM `vm`'s metadata; `instance/preempted?wait_for_change=true` blocks until the value
        changes (or `timeout_sec`, or stop())."""
        headers = {"Metadata-Flavor": "Google"}
        preempted = self._preemption.get(vm)
        if key == "instance/preempted":
            if query.get("wait_for_change") == "true":
                last_etag, timeout_sec = query.get("last_etag"), query.get("timeout_sec")
                preempted = self._preemption.wait_for_change(vm, last_etag, timeout_sec)
            headers["ETag"] = preemption.etag(preempted)
        answer = metadata.answer(self.site, self.vms[vm], key, query, preempted=preempted)
        return Reply(answer.status, answer.body.encode(), answer.content_type, headers)

    def answer_report(
        self, project: str, location: str, body: bytes, authorization: str | None
    ) -> Reply:
        """A `state:report` call (see `BatchApi.answer`); wakes `wait_until_done`."""
        with self._lock:
            reply = self._api.answer(self.vms, project, location, body, authorization)
            self._lock.notify_all()
            return reply

    def answer_secret_access(self, name: str, authorization: str | None) -> Reply:
        """Secret Manager's `versions.access` (see `secrets.SecretStore.access`)."""
        return self.secrets.access(name, authorization)

    def answer_kms_decrypt(self, name: str, body: bytes, authorization: str | None) -> Reply:
        """Cloud KMS's `cryptoKeys.decrypt` (see `secrets.SecretStore.decrypt`)."""
        return self.secrets.decrypt(name, body, authorization)

    def answer_log_write(self, body: bytes, authorization: str | None) -> Reply:
        """Cloud Logging's `entries.write` (see `logging.LogStore.write`)."""
        return self.logs.write(body, authorization)
