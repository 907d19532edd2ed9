"""Facts about this VM for the report: metadata server reads, identity, boot time (its
os-release: osrelease.py).

Metadata reads use only the standard library (http.client: no proxy, as the metadata server
answers only on the VM itself): httplib2 and the Google client libraries belong to control/.
This module does not read the environment (the caller passes the metadata host, as
GCE_METADATA_HOST gives it) and does not retry; every metadata call BLOCKS: from the event
loop, call it in a worker thread."""

from __future__ import annotations

import http.client
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from batch_agent.config import DEFAULT_METADATA_HOST as DEFAULT_METADATA_HOST  # vm's default

if TYPE_CHECKING:  # imported where used: the CLI asks the metadata server before the models
    from batch_agent.wire import AgentMetadata

log = logging.getLogger(__name__)


class MetadataError(Exception):
    """The metadata server could not be asked, gave an unusable answer, or lacks a required key."""


class MetadataServer:
    """A GCE metadata server at `host` (host[:port]); plain HTTP, `Metadata-Flavor: Google`.

    Stateless apart from its settings: safe to use from several threads at once.
    """

    def __init__(
        self, host: str = DEFAULT_METADATA_HOST, timeout: timedelta = timedelta(seconds=5)
    ) -> None:
        # No proxies (http.client knows none): the metadata server is link-local and an
        # http_proxy in the environment (for the user's tasks) must not capture our requests.
        self.host = host
        self.timeout = timeout

    def get(self, key: str) -> str | None:
        """The value of `key` (e.g. "instance/zone"), or None when the server has no such key.

        BLOCKS up to `timeout`. Raises MetadataError when the server cannot be reached or
        answers anything but 200/404.
        """
        return self._get(key, {}, self.timeout)[0]

    def get_many(self, keys: Iterable[str]) -> dict[str, str | None]:
        """Each of `keys` as `get` gives it, all asked at once (a thread each): the agent's
        start-up waits for one round trip, not one per key. BLOCKS like `get`; raises the
        MetadataError of the first key (in order) that failed."""
        keys = list(dict.fromkeys(keys))
        with ThreadPoolExecutor(max_workers=max(len(keys), 1)) as pool:
            return dict(zip(keys, pool.map(self.get, keys), strict=True))

    def read_versioned(
        self, key: str, *, wait: timedelta | None = None, last_etag: str | None = None
    ) -> tuple[str | None, str | None]:
        """(value, ETag) of `key`; with `wait`, once it differs from the value `last_etag`
        names (at once if it already does), or after `wait`. BLOCKS like `wait_for_change`."""
        if wait is None:
            return self._get(key, {}, self.timeout)
        seconds = max(1, round(wait.total_seconds()))
        query = {"wait_for_change": "true", "timeout_sec": str(seconds)}
        if last_etag is not None:
            query["last_etag"] = last_etag
        return self._get(key, query, timedelta(seconds=seconds) + self.timeout)

    def wait_for_change(self, key: str, timeout: timedelta) -> str | None:
        """The value of `key` once it changes, or its current value after `timeout`.

        BLOCKS up to `timeout` plus the usual request timeout; the server rounds `timeout` to
        whole seconds (at least 1). None when the key does not exist; raises MetadataError
        like `get`. Meant for `instance/preempted`.
        """
        seconds = max(1, round(timeout.total_seconds()))
        query = {"wait_for_change": "true", "timeout_sec": str(seconds)}
        return self._get(key, query, timedelta(seconds=seconds) + self.timeout)[0]

    def _get(
        self, key: str, query: dict[str, str], timeout: timedelta
    ) -> tuple[str | None, str | None]:
        path = f"/computeMetadata/v1/{key.lstrip('/')}"
        if query:
            path += "?" + urllib.parse.urlencode(query)
        url = f"http://{self.host}{path}"
        try:
            connection = http.client.HTTPConnection(self.host, timeout=timeout.total_seconds())
            try:
                connection.request("GET", path, headers={"Metadata-Flavor": "Google"})
                response = connection.getresponse()
                status = response.status
                flavor = response.getheader("Metadata-Flavor")
                etag = response.getheader("ETag")
                body = response.read()
            finally:
                connection.close()
        # Timeouts, refused, reset; a bad host or port; garbage in place of HTTP.
        except (OSError, ValueError, http.client.HTTPException) as error:
            raise MetadataError(f"cannot read {key} from the metadata server: {error}") from error
        if status == HTTPStatus.NOT_FOUND:
            return None, None
        if status != HTTPStatus.OK:
            raise MetadataError(f"metadata server answered {status} for {key}")
        # The header proves we reached a metadata server, not a proxy or a captive portal.
        if flavor != "Google":
            raise MetadataError(f"{url} answered without Metadata-Flavor: Google")
        try:
            return body.decode(), etag
        except UnicodeDecodeError as error:
            raise MetadataError(f"metadata value of {key} is not UTF-8: {error}") from None


def _last_segment(path: str) -> str:
    """ "projects/123/zones/us-central1-a" -> "us-central1-a"."""
    return path.rstrip("/").rsplit("/", 1)[-1]


def region_of(zone: str) -> str:
    """ "us-central1-a" -> "us-central1"; raises ValueError for something that is not a zone."""
    region, dash, suffix = zone.rpartition("-")
    if not dash or not region or not suffix:
        raise ValueError(f'"{zone}" is not a zone')
    return region


class VmIdentity(NamedTuple):  # not a dataclass: its generated methods cost ~1 ms at start-up
    """Who this VM is, as the Batch API names it."""

    project_number: str
    zone: str  # short form, "us-central1-a"
    instance: str  # instance name
    instance_id: str  # numeric, as a decimal string (uint64)
    project_id: str | None = None  # the project's id ("my-project"), when the server has one

    @property
    def region(self) -> str:
        return region_of(self.zone)

    @property
    def parent(self) -> str:
        """The `parent` of `state:report`: `projects/{number}/locations/{region}`."""
        return f"projects/{self.project_number}/locations/{self.region}"


IDENTITY_KEYS = ("project/numeric-project-id", "instance/zone", "instance/name", "instance/id")
METADATA_KEYS = (  # with the identity's keys, the report's `metadata` (and the project's id)
    "project/project-id",
    "instance/machine-type",
    "instance/preempted",
    "instance/attributes/created-by",
    "instance/image",
)
TOKEN_KEY = "instance/service-accounts/default/token"  # control's credentials read it


def read_vm(
    server: MetadataServer | EarlyAnswers, *, version: str, os_release: dict[str, str]
) -> tuple[VmIdentity, AgentMetadata]:
    """The VM's identity and the report's `metadata`. BLOCKS (one round trip: every key is
    read once, all at once; none with EarlyAnswers that have come).

    Raises MetadataError when the server cannot be reached, answers an error status, or lacks
    an identity key (or gives a malformed one); any other key it lacks is left out of the
    metadata, never an error.
    """
    values = server.get_many([*IDENTITY_KEYS, *METADATA_KEYS])
    return _identity(values), _metadata(values, version=version, os_release=os_release)


class Machine(NamedTuple):  # not a dataclass: its generated methods cost ~1.5 ms at start-up
    """This VM as the reports describe it."""

    identity: VmIdentity
    metadata: AgentMetadata  # read once at start-up; only a preemption notice changes it
    boot_time: datetime

    def preempted(self) -> Machine:
        """This machine, its metadata saying that a preemption notice came."""
        metadata = self.metadata._replace(instance_preemption_notice_received=True)
        return self._replace(metadata=metadata)


def read_machine(
    server: MetadataServer | EarlyAnswers,
    *,
    version: str,
    os_release: dict[str, str],
    proc_stat: Path = Path("/proc/stat"),
) -> Machine:
    """`read_vm` and the boot time: one try, no retry. BLOCKS as `read_vm` does; raises its
    MetadataError, and `read_boot_time`'s errors."""
    identity, metadata = read_vm(server, version=version, os_release=os_release)
    return Machine(identity, metadata, read_boot_time(proc_stat))


class EarlyAnswers:
    """The metadata server's answers to `keys`, asked as soon as this is made (the agent asks
    before its imports, which last longer than all the round trips): one daemon thread asks
    them in turn, each of `alone` (the token, maybe slow to make) has its own (a thread per
    key doubled their CPU). `get_many` as MetadataServer's, each key waiting for its early
    answer (one not asked early is asked then). Thread-safe; never logs (no logging yet)."""

    def __init__(
        self, server: MetadataServer, keys: Iterable[str], *, alone: Iterable[str] = ()
    ) -> None:
        self._server = server
        self._answers: dict[str, Future[str | None]] = {k: Future() for k in dict.fromkeys(keys)}
        self._arrived: dict[str, float] = {}  # time.monotonic() of each answer
        apart = [key for key in dict.fromkeys(alone) if key in self._answers]
        together = [key for key in self._answers if key not in apart]
        for group in [*([key] for key in apart), together]:
            if group:
                threading.Thread(
                    target=self._ask, args=(group,), name="metadata-early", daemon=True
                ).start()

    def _ask(self, keys: list[str]) -> None:
        for key in keys:  # each asked, whatever became of the one before
            answer = self._answers[key]
            try:
                value = self._server.get(key)
            except BaseException as error:  # kept for the reader
                answer.set_exception(error)
                continue
            self._arrived[key] = time.monotonic()
            answer.set_result(value)

    def get_many(self, keys: Iterable[str]) -> dict[str, str | None]:
        """As `MetadataServer.get_many`. BLOCKS until each key's answer came (the server's
        timeout bounds each)."""
        return {key: self.get(key) for key in dict.fromkeys(keys)}

    def get(self, key: str) -> str | None:
        """As `MetadataServer.get`: the early answer, else the server's now."""
        answer = self._answers.get(key)
        return self._server.get(key) if answer is None else answer.result()

    def first(self, key: str, *, fresh_for: float = 60.0) -> Callable[[], str | None]:
        """For a caller that wants one answer once (a token): a function giving the early
        answer of `key`; None when it failed, or came more than `fresh_for` seconds before
        it is read (a token may then be near its end). The caller then asks the server."""

        def early() -> str | None:
            try:
                value = self.get(key)
            except MetadataError:
                return None
            if time.monotonic() - self._arrived.get(key, float("-inf")) > fresh_for:
                return None
            return value

        return early


def ask_early(host: str, *, token: bool) -> EarlyAnswers:
    """Ask the metadata server at `host` every key `read_vm` reads, and the service account's
    token when `token` (the agent's credentials come from the metadata server), now."""
    keys = [*IDENTITY_KEYS, *METADATA_KEYS, *([TOKEN_KEY] if token else [])]
    return EarlyAnswers(MetadataServer(host), keys, alone=[TOKEN_KEY])


def _identity(values: Mapping[str, str | None]) -> VmIdentity:
    def required(key: str) -> str:
        value = values[key]
        if value is None or not value.strip():
            raise MetadataError(f"metadata server has no {key}")
        return value.strip()

    project_number = required("project/numeric-project-id")
    zone = _last_segment(required("instance/zone"))
    instance = required("instance/name")
    instance_id = required("instance/id")
    if not project_number.isdigit() or not instance_id.isdigit():
        raise MetadataError(
            f"metadata server gave a non-numeric project number {project_number!r} "
            f"or instance id {instance_id!r}"
        )
    try:
        region_of(zone)
    except ValueError as error:
        raise MetadataError(f"instance/zone: {error}") from None
    project_id = values.get("project/project-id")
    return VmIdentity(
        project_number=project_number,
        zone=zone,
        instance=instance,
        instance_id=instance_id,
        project_id=project_id.strip() if project_id and project_id.strip() else None,
    )


def _metadata(
    values: Mapping[str, str | None], *, version: str, os_release: dict[str, str]
) -> AgentMetadata:

    def optional(key: str) -> str | None:
        value = values[key]
        return value.strip() if value is not None and value.strip() else None

    from batch_agent.wire import AgentMetadata

    zone = optional("instance/zone")
    machine_type = optional("instance/machine-type")
    instance_id = optional("instance/id")
    preempted = optional("instance/preempted")
    # uint64 on the wire: the plain request models check nothing, so it is checked here.
    if instance_id is not None and not (
        len(instance_id) <= 20
        and instance_id.isascii()
        and instance_id.isdigit()
        and int(instance_id) < 2**64
    ):
        log.warning("vm: ignoring instance/id %r: not a uint64", instance_id)
        instance_id = None
    return AgentMetadata(
        instance=optional("instance/name"),
        instance_id=int(instance_id) if instance_id is not None else None,
        # Short zone name ("us-central1-a"), as the region in `parent` is short too; the
        # metadata server gives "projects/{number}/zones/{zone}".
        zone=_last_segment(zone) if zone is not None else None,
        machine_type=_last_segment(machine_type) if machine_type is not None else None,
        # The full value: "projects/{number}/zones/{zone}/instanceGroupManagers/{name}".
        creator=optional("instance/attributes/created-by"),
        # The full image path (it names the image, whose name carries the version).
        image_version=optional("instance/image"),
        # creationTime is deprecated in batch.v1.json ("use agent_startup_time instead") and
        # the metadata server has no creation time: left out.
        instance_preemption_notice_received=(
            preempted.upper() == "TRUE" if preempted is not None else None
        ),
        os_release=os_release,
        version=version,
    )


def read_boot_time(proc_stat: Path = Path("/proc/stat")) -> datetime:
    """When the kernel booted (the `btime` line), as an aware UTC datetime.

    Raises OSError if the file cannot be read and ValueError if it has no valid btime line.
    """
    for line in proc_stat.read_text().splitlines():
        name, _, value = line.partition(" ")
        if name == "btime":
            return datetime.fromtimestamp(int(value.strip()), tz=UTC)
    raise ValueError(f"{proc_stat} has no btime line")


def watch_preemption(server: MetadataServer, on_notice: Callable[[], None]) -> None:
    """Watch `instance/preempted` in a daemon thread (it must not delay the agent's exit); call
    `on_notice` (from that thread) once, when it is TRUE: at once if it already is. Each wait
    names the ETag of the value last seen, so a change between two waits is never missed."""

    def watch() -> None:
        etag: str | None = None
        wait: timedelta | None = None  # the first read does not wait: it may be TRUE already
        while True:
            try:
                value, etag = server.read_versioned("instance/preempted", wait=wait, last_etag=etag)
            except MetadataError as error:
                log.warning("preemption watch: %s", error)
                time.sleep(5)
                continue
            if value is not None and value.strip().upper() == "TRUE":
                on_notice()
                return
            wait = timedelta(seconds=60)

    threading.Thread(target=watch, name="preemption-watch", daemon=True).start()
