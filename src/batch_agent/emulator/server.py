"""`Emulator`, the public handle of the local control plane: lifecycle, steering, inspection.

One HTTP listener per emulated VM on loopback (see `handler`); VM 0's also serves the Batch API.
Request threads call back into `Emulator`, which takes one lock around the shared `JobState`.
Reports are checked against the real discovery document. This module must not import any agent
code: the emulator plays Google's side only.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from batch_agent import discovery
from batch_agent.emulator import metadata, service
from batch_agent.emulator.handler import Listener, google_error
from batch_agent.emulator.job import load_job
from batch_agent.emulator.metadata import Site, Vm
from batch_agent.emulator.records import Report, TaskView
from batch_agent.emulator.state import JobState

log = logging.getLogger(__name__)

# How often serve_forever looks for stop(): the bound on how long stop() takes per listener.
_POLL_INTERVAL = 0.05
# How long a `wait_for_change` metadata request may block when it names no timeout_sec.
_WAIT_FOR_CHANGE = 60.0


class Emulator:
    """A local Batch control plane and per-VM metadata servers for one job.

    `start()` binds the listeners and serves in daemon threads; `stop()` closes them and waits for
    in-flight requests (idempotent). All methods are thread-safe. Usable as a context manager.
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
        project_number: str = "123456789012",
        zone: str = "us-central1-a",
        job_id: str = "job-1",
        auto_delete: bool = True,
        log: Callable[[str], None] | None = print,
        files_dir: str | Path | None = None,
    ) -> None:
        """`files_dir` receives the files the service provides to tasks (the hosts file of
        `requireHostsFile`); without it a temporary directory is made, and removed by stop()."""
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
        self._intervals = (default_report_interval, min_report_interval)
        self._overrides: deque[tuple[int, bytes | None]] = deque()
        self._preempted = [False] * vms
        self._stopping = False
        self._listeners: list[Listener] = []
        self._threads: list[threading.Thread] = []
        self.vms: list[Vm] = []
        self.reports: list[Report] = []
        self.invalid_reports: list[tuple[object, list[str]]] = []

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Bind every listener (VM 0's on host:port) and serve in background threads.

        Raises OSError if a port cannot be bound (nothing stays open then)."""
        if self._listeners:
            raise RuntimeError("emulator already started")
        if self._hosts_path is not None:
            self._hosts_path.parent.mkdir(parents=True, exist_ok=True)
            self._hosts_path.write_text(service.hosts_file([self._host] * self._vm_count))
        try:
            for index in range(self._vm_count):
                listener = Listener((self._host, self._port if index == 0 else 0), self, index)
                self._listeners.append(listener)
                port = listener.server_address[1]
                self.vms.append(
                    Vm(index, f"vm-{index}", metadata.instance_id(index), f"{self._host}:{port}")
                )
                thread = threading.Thread(
                    target=listener.serve_forever,
                    args=(_POLL_INTERVAL,),
                    name=f"emulator-vm-{index}",
                    daemon=True,
                )
                self._threads.append(thread)
                thread.start()
        except BaseException:
            self.stop()  # close whatever was bound before the failure
            raise
        log.info("emulator: serving on %s", self.url)

    def stop(self) -> None:
        """Stop serving, release blocked metadata waits and close every socket."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        for listener in self._listeners:
            listener.shutdown()
            listener.server_close()
        for thread in self._threads:
            thread.join()
        self._listeners.clear()
        self._threads.clear()
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

    # -- steering ----------------------------------------------------------------------------

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
            self._overrides.extend([(status, None)] * n)

    def respond_raw_next(self, body: bytes, status: int = 200) -> None:
        """Answer the next report call with these bytes (the report itself is still recorded)."""
        with self._lock:
            self._overrides.append((status, body))

    def set_intervals(self, default: str = "10s", minimum: str = "1s") -> None:
        with self._lock:
            self._intervals = (default, minimum)

    def set_preempted(self, vm: int = 0, value: bool = True) -> None:
        with self._lock:
            self._preempted[vm] = value
            self._lock.notify_all()

    # -- inspection --------------------------------------------------------------------------

    def task_names(self) -> list[str]:
        with self._lock:
            return list(self._state.tasks)

    def task_state(self, name: str) -> str | None:
        with self._lock:
            return self._state.tasks[name].state

    def task_events(self, name: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._state.tasks[name].events)

    def task_runnable(self, name: str) -> int:
        with self._lock:
            return self._state.tasks[name].runnable

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
            return [dict(change) for change in self._state.changes[cursor:]]

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

    # -- request handling (called from handler threads) --------------------------------------

    def _handle_report(
        self, project: str, location: str, raw: bytes, authorization: str | None
    ) -> tuple[int, bytes]:
        with self._lock:
            override = self._overrides.popleft() if self._overrides else None
            if override is not None and override[1] is None:
                status = override[0]
                return status, google_error(status, f"emulated failure (HTTP {status})")
            try:
                body = json.loads(raw)
            except ValueError as e:
                return self._reject(raw, [f"<root>: body is not JSON: {e}"])
            if not project.isdigit():
                return self._reject(body, [f"parent: project {project!r} is not a project number"])
            if project != self.site.project_number or location != self.site.region:
                where = f"projects/{project}/locations/{location}"
                return 404, google_error(404, f"{where} not found")
            errors = discovery.validate("ReportAgentStateRequest", body)
            if errors:
                return self._reject(body, errors)
            vm = self._vm_of(body, authorization)
            if vm is None:
                message = "cannot tell which VM reports: no emulator token, unknown instance"
                return 403, google_error(403, message)
            self.reports.append(Report(time.monotonic(), vm, body))
            mentioned = self._state.record(vm, self.vms[vm].name, body)
            self._lock.notify_all()
            if override is not None and override[1] is not None:
                return override[0], override[1]
            default, minimum = self._intervals
            response = {
                "defaultReportInterval": default,
                "minReportInterval": minimum,
                "tasks": self._state.response_tasks(vm, mentioned),
            }
            return 200, json.dumps(response).encode()

    def _reject(self, body: object, errors: list[str]) -> tuple[int, bytes]:
        self.invalid_reports.append((body, errors))
        message = "; ".join(errors)
        self._log(f"invalid report: {message}")
        return 400, google_error(400, message)

    def _vm_of(self, body: dict[str, Any], authorization: str | None) -> int | None:
        vm = metadata.vm_of_token(authorization)
        if vm is not None and vm < len(self.vms):
            return vm
        meta: dict[str, Any] = body.get("metadata", {})
        for candidate in self.vms:
            if meta.get("instance") == candidate.name or (
                meta.get("instanceId") == candidate.instance_id
            ):
                return candidate.index
        return 0 if len(self.vms) == 1 else None

    def _handle_metadata(
        self, vm: int, key: str, query: dict[str, str]
    ) -> tuple[metadata.Answer, dict[str, str]]:
        """Answer a metadata request; `instance/preempted?wait_for_change=true` blocks until the
        value changes (or `timeout_sec`, or stop())."""
        headers = {"Metadata-Flavor": "Google"}
        with self._lock:
            if key == "instance/preempted":
                if query.get("wait_for_change") == "true":
                    initial = self._preempted[vm]
                    if query.get("last_etag", _etag(initial)) == _etag(initial):
                        self._lock.wait_for(
                            lambda: self._preempted[vm] != initial or self._stopping,
                            _timeout(query.get("timeout_sec")),
                        )
                headers["ETag"] = _etag(self._preempted[vm])
            answer = metadata.answer(
                self.site, self.vms[vm], key, query, preempted=self._preempted[vm]
            )
            return answer, headers


def _timeout(text: str | None) -> float:
    try:
        return min(float(text), _WAIT_FOR_CHANGE) if text else _WAIT_FOR_CHANGE
    except ValueError:
        return _WAIT_FOR_CHANGE


def _etag(preempted: bool) -> str:
    return "7c1e5d3a0b9f2e41" if preempted else "2f6b8a0c4d1e9f37"
