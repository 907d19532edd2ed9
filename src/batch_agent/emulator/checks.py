"""What Batch would refuse in a job config beyond its schema, and what cannot apply locally.

Works on a camelCase Job JSON that already passed the discovery schema. `problems` names each
refusal by JSON path and reason (`taskGroups[0].taskSpec.runnables[2].script: needs "text" or
"path"`); `not_applied` names the fields a local run accepts but cannot honour (machine types,
notifications, ...), so that a caller can say so once. Pure; must not know about HTTP or agents.
"""

from __future__ import annotations

from typing import Any

# Job fields a local run accepts and ignores: they shape VMs, billing or Google-side services.
_JOB_NOT_APPLIED = ("allocationPolicy", "notifications", "priority")
# "Label names that start with "goog-" or "google-" are reserved for predefined labels" (Job.labels)
_RESERVED_LABELS = ("goog-", "google-")
# Output-only fields of a Job resource (present when a user feeds back `gcloud ... describe`).
_OUTPUT_ONLY = ("name", "uid", "status", "createTime", "updateTime")
_GROUP_NOT_APPLIED = ("permissiveSsh", "runAsNonRoot")
_SPEC_NOT_APPLIED = ("computeResource", "volumes")
_MAX_RETRIES = 10


def problems(job: dict[str, Any]) -> list[str]:
    """Every reason Batch would refuse this (schema-valid, camelCase) job; empty when none."""
    out: list[str] = []
    groups: list[dict[str, Any]] = job.get("taskGroups", [])
    if len(groups) != 1:
        out.append(f"taskGroups: needs exactly one task group, got {len(groups)}")
    for g, group in enumerate(groups):
        _check_group(group, f"taskGroups[{g}]", out)
    logs = job.get("logsPolicy", {})
    if logs.get("destination") == "PATH" and not logs.get("logsPath"):
        out.append('logsPolicy.logsPath: needs a path when destination is "PATH"')
    for label in job.get("labels", {}):
        if label.startswith(_RESERVED_LABELS):
            out.append(f"labels.{label}: names starting with goog- or google- are Batch's own")
    return out


def _check_group(group: dict[str, Any], where: str, out: list[str]) -> None:
    for field in ("taskCount", "parallelism", "taskCountPerNode"):
        if field in group and int(group[field]) < 1:
            out.append(f"{where}.{field}: {group[field]} is not at least 1")
    if group.get("schedulingPolicy") == "IN_ORDER" and int(group.get("parallelism", "1")) != 1:
        out.append(f"{where}.parallelism: must be 1 when schedulingPolicy is IN_ORDER")
    environments = group.get("taskEnvironments", [])
    if environments and "taskCount" in group and int(group["taskCount"]) != len(environments):
        out.append(
            f"{where}.taskCount: {group['taskCount']} does not match the"
            f" {len(environments)} taskEnvironments"
        )
    if "taskSpec" not in group:
        out.append(f"{where}.taskSpec: is required")
        return
    spec: dict[str, Any] = group["taskSpec"]
    where = f"{where}.taskSpec"
    runnables: list[dict[str, Any]] = spec.get("runnables", [])
    if not runnables:
        out.append(f"{where}.runnables: a task needs at least one runnable")
    for r, runnable in enumerate(runnables):
        _check_runnable(runnable, f"{where}.runnables[{r}]", out)
    for field in ("maxRunDuration",):
        if field in spec and float(spec[field].rstrip("s")) <= 0:
            out.append(f"{where}.{field}: {spec[field]} is not positive")
    retries = spec.get("maxRetryCount", 0)
    if not 0 <= retries <= _MAX_RETRIES:
        out.append(f"{where}.maxRetryCount: {retries} is not between 0 and {_MAX_RETRIES}")
    policies: list[dict[str, Any]] = spec.get("lifecyclePolicies", [])
    if len(policies) > 1:
        out.append(f"{where}.lifecyclePolicies: Batch supports one policy, got {len(policies)}")
    for p, policy in enumerate(policies):
        if policy.get("action") not in ("RETRY_TASK", "FAIL_TASK"):
            out.append(f'{where}.lifecyclePolicies[{p}].action: needs "RETRY_TASK" or "FAIL_TASK"')
        if not policy.get("actionCondition", {}).get("exitCodes"):
            out.append(f"{where}.lifecyclePolicies[{p}].actionCondition.exitCodes: needs a code")


def _check_runnable(runnable: dict[str, Any], where: str, out: list[str]) -> None:
    kinds = [k for k in ("script", "container", "barrier") if k in runnable]
    if not kinds:
        out.append(f"{where}: needs one of script, container or barrier")
    elif len(kinds) > 1:
        out.append(f"{where}: has both {kinds[0]} and {kinds[1]}; give only one")
    script = runnable.get("script")
    if script is not None:
        text, path = script.get("text"), script.get("path")
        if not text and not path:
            out.append(f'{where}.script: needs "text" or "path"')
        elif text and path:
            out.append(f'{where}.script: has both "text" and "path"; give only one')
    container = runnable.get("container")
    if container is not None and not container.get("imageUri"):
        out.append(f'{where}.container: needs "imageUri"')
    timeout = runnable.get("timeout")
    if timeout is not None and float(timeout.rstrip("s")) <= 0:
        out.append(f"{where}.timeout: {timeout} is not positive")


def not_applied(job: dict[str, Any]) -> list[str]:
    """Paths of the fields present in `job` that a local run accepts but does not honour."""
    out = [f for f in (*_JOB_NOT_APPLIED, *_OUTPUT_ONLY) if f in job]
    for g, group in enumerate(job.get("taskGroups", [])):
        where = f"taskGroups[{g}]"
        out += [f"{where}.{f}" for f in _GROUP_NOT_APPLIED if f in group]
        spec = group.get("taskSpec", {})
        out += [f"{where}.taskSpec.{f}" for f in _SPEC_NOT_APPLIED if f in spec]
    return out
