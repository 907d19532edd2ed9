"""The emulated Batch API: `state:report`, checked as Google would, answered from `JobState`.

A call is refused unless its body is JSON, its parent is this emulator's project number and
region, it is a valid `ReportAgentStateRequest` by the real discovery document and its VM can be
told (by token, instance name or id). A valid report is kept in `reports`, applied to the job and
answered with its VM's tasks and the report intervals (`busy_minimum`, when set, replaces the
minReportInterval for a VM that has a task to run or report, so that the cadence follows the
work); refusals are kept in `invalid_reports`.
Tests may script the next answers (`fail_next`, `respond_raw_next`). Not thread-safe: the
emulator holds its lock around every call. Must not parse HTTP; its one clock read stamps
`Report.time`.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from batch_agent import discovery
from batch_agent.emulator import metadata
from batch_agent.emulator.backend import Reply, google_error
from batch_agent.emulator.metadata import Site, Vm
from batch_agent.emulator.records import Report
from batch_agent.emulator.state import JobState


class BatchApi:
    """`state:report` for the one job in `state`, on behalf of the VMs given with each call."""

    def __init__(
        self,
        site: Site,
        state: JobState,
        *,
        intervals: tuple[str, str],
        busy_minimum: str | None = None,
        log: Callable[[str], None],
    ) -> None:
        self._site = site
        self._state = state
        self._log = log
        self.intervals = intervals  # (defaultReportInterval, minReportInterval) of each answer
        self.busy_minimum = busy_minimum  # minReportInterval while the VM has unfinished tasks
        self.batch_monitored_resource: bool | None = None  # useBatchMonitoredResource, when set
        self.reports: list[Report] = []
        self.invalid_reports: list[tuple[object, list[str]]] = []
        # Scripted answers, oldest first: (status, body), body None for a Google error.
        self._scripted: deque[tuple[int, bytes | None]] = deque()

    def fail_next(self, n: int, status: int) -> None:
        """Answer the next `n` calls with HTTP `status` and a Google error, recording nothing."""
        self._scripted.extend([(status, None)] * n)

    def respond_raw_next(self, body: bytes, status: int) -> None:
        """Answer the next call with these bytes (a valid report is still recorded)."""
        self._scripted.append((status, body))

    def answer(
        self,
        vms: Sequence[Vm],
        project: str,
        location: str,
        raw: bytes,
        authorization: str | None,
    ) -> Reply:
        """Check, record and answer one call from one of `vms`; never raises for a bad call."""
        scripted = self._scripted.popleft() if self._scripted else None
        if scripted is not None and scripted[1] is None:
            status = scripted[0]
            return google_error(status, f"emulated failure (HTTP {status})")
        try:
            body = json.loads(raw)
        except ValueError as e:
            return self._reject(raw, [f"<root>: body is not JSON: {e}"])
        if not project.isdigit():
            return self._reject(body, [f"parent: project {project!r} is not a project number"])
        if project != self._site.project_number or location != self._site.region:
            return google_error(404, f"projects/{project}/locations/{location} not found")
        errors = discovery.validate("ReportAgentStateRequest", body)
        if errors:
            return self._reject(body, errors)
        vm = _vm_of(vms, body, authorization)
        if vm is None:
            message = "cannot tell which VM reports: no emulator token, unknown instance"
            return google_error(403, message)
        self.reports.append(Report(time.monotonic(), vm, body))
        mentioned = self._state.record(vm, vms[vm].name, body)
        if scripted is not None and scripted[1] is not None:
            return Reply(scripted[0], scripted[1])
        tasks = self._state.response_tasks(vm, mentioned)
        default, minimum = self.intervals
        if self.busy_minimum is not None and self._state.is_busy(vm):
            minimum = self.busy_minimum
        response: dict[str, Any] = {
            "defaultReportInterval": default,
            "minReportInterval": minimum,
            "tasks": tasks,
        }
        if self.batch_monitored_resource is not None:
            response["useBatchMonitoredResource"] = self.batch_monitored_resource
        return Reply(200, json.dumps(response).encode())

    def _reject(self, body: object, errors: list[str]) -> Reply:
        self.invalid_reports.append((body, errors))
        message = "; ".join(errors)
        self._log(f"invalid report: {message}")
        return google_error(400, message)


def _vm_of(vms: Sequence[Vm], body: dict[str, Any], authorization: str | None) -> int | None:
    """The reporting VM: named by its token, else by the report's instance name or id, else the
    only VM there is; None when it cannot be told."""
    vm = metadata.vm_of_token(authorization)
    if vm is not None and vm < len(vms):
        return vm
    meta: dict[str, Any] = body.get("metadata", {})
    for candidate in vms:
        if meta.get("instance") == candidate.name or (
            meta.get("instanceId") == candidate.instance_id
        ):
            return candidate.index
    return 0 if len(vms) == 1 else None
