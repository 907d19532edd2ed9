"""Answers of the emulated GCE metadata server (`/computeMetadata/v1/...`) for one VM.

Pure: `answer` maps a key and query to a response; `http` checks `Metadata-Flavor`, the
`Emulator` adds headers and `preemption` implements `wait_for_change` for `instance/preempted`.
Answers follow what google-auth and the agent read; anything else is a 404 as on GCE. Must not
touch Batch state.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

PREFIX = "/computeMetadata/v1/"
IMAGE = "projects/debian-cloud/global/images/debian-12-bookworm-v20261101"
PROJECT_ID = "emulated-project"
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
TOKEN_PREFIX = "emu-token-vm-"


@dataclass(frozen=True)
class Vm:
    """An emulated VM: its identity and where its metadata server listens ("host:port")."""

    index: int
    name: str
    instance_id: str
    metadata_host: str


@dataclass(frozen=True)
class Site:
    """What all VMs share: project, zone and the job they serve."""

    project_number: str
    zone: str
    job_id: str

    @property
    def region(self) -> str:
        return self.zone.rsplit("-", 1)[0]

    @property
    def email(self) -> str:
        return f"{self.project_number}-compute@developer.gserviceaccount.com"


@dataclass(frozen=True)
class Answer:
    """A metadata server's answer: HTTP status and body, JSON or plain text."""

    status: int
    body: str
    is_json: bool = False

    @property
    def content_type(self) -> str:
        return "application/json" if self.is_json else "text/plain"


def instance_id(index: int) -> str:
    """A numeric instance id, distinct per VM, shaped like GCE's 19-digit ids."""
    return str(4_600_000_000_000_000_000 + 1_000_003 * (index + 1))


def token(vm: int) -> str:
    """The access token handed to VM `vm`; reports bearing it come from that VM."""
    return f"{TOKEN_PREFIX}{vm}"


def vm_of_token(authorization: str | None) -> int | None:
    """The VM index named by an `Authorization: Bearer emu-token-vm-N` header, else None."""
    if not authorization or not authorization.startswith("Bearer " + TOKEN_PREFIX):
        return None
    number = authorization.removeprefix("Bearer " + TOKEN_PREFIX).strip()
    return int(number) if number.isdigit() else None


def answer(site: Site, vm: Vm, key: str, query: Mapping[str, str], *, preempted: bool) -> Answer:
    """The answer for metadata `key` (the path after `/computeMetadata/v1/`, query removed).

    Directory keys such as `instance/service-accounts/default/` answer JSON (as with
    `?recursive=true`); `?alt=json` turns a text answer into a JSON string.
    """
    result = _lookup(site, vm, key, preempted=preempted)
    if result is None:
        return Answer(404, f"metadata key {key!r} not found\n")
    if not isinstance(result, str):
        return Answer(200, json.dumps(result), is_json=True)
    if query.get("alt") == "json":
        return Answer(200, json.dumps(result), is_json=True)
    return Answer(200, result)


def _lookup(site: Site, vm: Vm, key: str, *, preempted: bool) -> object:
    account = {"aliases": ["default"], "email": site.email, "scopes": SCOPES}
    for alias in ("default", site.email):
        base = f"instance/service-accounts/{alias}"
        if key in (base, base + "/"):
            return account
        if key == base + "/token":
            return {"access_token": token(vm.index), "expires_in": 3599, "token_type": "Bearer"}
        if key == base + "/email":
            return site.email
        if key == base + "/scopes":
            return "".join(s + "\n" for s in SCOPES)
    created_by = (
        f"projects/{site.project_number}/regions/{site.region}"
        f"/instanceGroupManagers/{site.job_id}-group0-mig"
    )
    values: dict[str, object] = {
        "": "instance/\nproject/\nuniverse/\n",
        "instance/name": vm.name,
        "instance/id": vm.instance_id,
        "instance/zone": f"projects/{site.project_number}/zones/{site.zone}",
        "instance/machine-type": f"projects/{site.project_number}/machineTypes/e2-standard-4",
        "instance/image": IMAGE,
        "instance/hostname": f"{vm.name}.{site.zone}.c.{PROJECT_ID}.internal",
        "instance/attributes/": {"created-by": created_by},
        "instance/attributes/created-by": created_by,
        "instance/preempted": "TRUE" if preempted else "FALSE",
        "instance/maintenance-event": "NONE",
        "instance/service-accounts/": {"default": account, site.email: account},
        "project/numeric-project-id": site.project_number,
        "project/project-id": PROJECT_ID,
        "universe/universe-domain": "googleapis.com",
    }
    return values.get(key)
