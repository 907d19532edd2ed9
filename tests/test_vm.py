"""vm.py: metadata reads against the emulator's metadata server, boot time, os-release."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from batch_agent.emulator import Emulator
from batch_agent.osrelease import read_os_release
from batch_agent.vm import (
    IDENTITY_KEYS,
    METADATA_KEYS,
    TOKEN_KEY,
    EarlyAnswers,
    MetadataError,
    MetadataServer,
    VmIdentity,
    read_boot_time,
    read_vm,
    region_of,
    watch_preemption,
)
from tests.helpers import wait_until

OS_RELEASE = {"ID": "debian", "VERSION_ID": "12"}

# --- boot time ---------------------------------------------------------------------------


def test_boot_time_comes_from_the_btime_line(tmp_path: Path) -> None:
    """The btime line is seconds since the epoch, returned as an aware UTC datetime."""
    stat = tmp_path / "stat"
    stat.write_text("cpu  1 2 3\nbtime 1700000000\nprocesses 42\n")
    assert read_boot_time(stat) == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)


def test_boot_time_of_this_machine_is_in_the_past() -> None:
    """The real /proc/stat parses and the kernel booted before now."""
    assert read_boot_time() <= datetime.now(UTC)


def test_boot_time_without_btime_is_an_error(tmp_path: Path) -> None:
    """A stat file without btime raises ValueError naming the file."""
    stat = tmp_path / "stat"
    stat.write_text("cpu  1 2 3\n")
    with pytest.raises(ValueError, match="btime"):
        read_boot_time(stat)


# --- os-release --------------------------------------------------------------------------


def test_os_release_removes_shell_quoting(tmp_path: Path) -> None:
    """Every assignment is kept with its shell quoting removed; comments and junk skipped."""
    path = tmp_path / "os-release"
    path.write_text(
        "# comment\n"
        'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n'
        "VERSION_ID='12'\n"
        "VERSION_CODENAME=bookworm\n"
        'NAME="Say \\"hi\\" \\$HOME"\n'
        "EMPTY=\n"
        'BROKEN="unterminated\n'
        "not an assignment\n"
        "\n"
    )
    assert read_os_release(path) == {
        "PRETTY_NAME": "Debian GNU/Linux 12 (bookworm)",
        "VERSION_ID": "12",
        "VERSION_CODENAME": "bookworm",
        "NAME": 'Say "hi" $HOME',
        "EMPTY": "",
        "BROKEN": '"unterminated',
    }


def test_missing_os_release_is_empty(tmp_path: Path) -> None:
    """No /etc/os-release means an empty map, not an error."""
    assert read_os_release(tmp_path / "absent") == {}


def test_os_release_of_this_machine_has_an_id() -> None:
    """The real /etc/os-release parses and names the distribution."""
    assert read_os_release().get("ID")


# --- identity ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "region"),
    [("us-central1-a", "us-central1"), ("europe-west4-b", "europe-west4"), ("ai-x", "ai")],
)
def test_region_is_the_zone_without_its_last_part(zone: str, region: str) -> None:
    """us-central1-a -> us-central1."""
    assert region_of(zone) == region


@pytest.mark.parametrize("zone", ["", "uscentral1", "us-", "-a"])
def test_a_zone_without_a_suffix_is_rejected(zone: str) -> None:
    """Something that is not `region-x` raises ValueError."""
    with pytest.raises(ValueError, match="is not a zone"):
        region_of(zone)


def test_parent_names_project_number_and_region() -> None:
    """`parent` is projects/{number}/locations/{region}."""
    identity = VmIdentity(
        project_number="123", zone="us-central1-a", instance="vm-1", instance_id="42"
    )
    assert identity.parent == "projects/123/locations/us-central1"


# --- metadata server failures without an emulator ----------------------------------------


@pytest.fixture
def closed_port() -> Iterator[str]:
    """host:port of a loopback port nobody listens on (bound, never listening)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def test_unreachable_metadata_server_raises_metadata_error(closed_port: str) -> None:
    """Connection refused is a MetadataError, not a None."""
    server = MetadataServer(closed_port, timeout=timedelta(seconds=2))
    with pytest.raises(MetadataError, match="instance/zone"):
        server.get("instance/zone")


# --- against the emulator's metadata server ----------------------------------------------


def test_identity_and_parent_from_the_emulator(emu: Emulator) -> None:
    """read_vm names the VM and its parent as the Batch API expects, and the project's id
    (Cloud Logging's log names) in the same round trip."""
    vm = emu.vms[0]
    identity, _ = read_vm(MetadataServer(vm.metadata_host), version="v", os_release={})
    assert identity == VmIdentity(
        project_number="123456789012",
        zone="us-central1-a",
        instance=vm.name,
        instance_id=vm.instance_id,
        project_id="emulated-project",
    )
    assert identity.parent == "projects/123456789012/locations/us-central1"


def test_metadata_from_the_emulator(emu: Emulator) -> None:
    """read_vm gives short zone and machine type, the creator and image as served."""
    server = MetadataServer(emu.metadata_host)
    _, metadata = read_vm(server, version="1.2.3", os_release=OS_RELEASE)
    assert metadata.instance == "vm-0"
    assert metadata.instance_id == int(emu.vms[0].instance_id)
    assert metadata.zone == "us-central1-a"
    assert metadata.machine_type == "e2-standard-4"
    assert metadata.creator == server.get("instance/attributes/created-by")
    assert metadata.creator is not None and "instanceGroupManagers" in metadata.creator
    assert metadata.image_version == server.get("instance/image")
    assert metadata.instance_preemption_notice_received is False
    assert metadata.creation_time is None
    assert metadata.os_release == OS_RELEASE
    assert metadata.version == "1.2.3"
    assert metadata.to_wire()["instanceId"] == emu.vms[0].instance_id  # uint64 as a string


def test_preemption_notice_is_reported(emu: Emulator) -> None:
    """instance/preempted == TRUE sets instancePreemptionNoticeReceived."""
    emu.set_preempted(0)
    _, metadata = read_vm(MetadataServer(emu.metadata_host), version="v", os_release={})
    assert metadata.instance_preemption_notice_received is True


def test_wait_for_change_returns_the_value(emu: Emulator) -> None:
    """wait_for_change on instance/preempted answers with the value (here: already TRUE)."""
    emu.set_preempted(0)
    server = MetadataServer(emu.metadata_host)
    assert server.wait_for_change("instance/preempted", timedelta(seconds=1)) == "TRUE"


def test_the_preemption_watch_sees_a_notice_given_before_it_started(emu: Emulator) -> None:
    """A VM already preempted when the watch starts is noticed at once, not after a long poll."""
    emu.set_preempted(0)
    noticed = threading.Event()
    watch_preemption(MetadataServer(emu.metadata_host), noticed.set)
    assert noticed.wait(5)


def test_the_preemption_watch_sees_a_later_notice(emu: Emulator) -> None:
    """A notice that comes while the watch waits is seen when it comes."""
    noticed = threading.Event()
    watch_preemption(MetadataServer(emu.metadata_host), noticed.set)
    assert not noticed.wait(0.5)
    emu.set_preempted(0)
    assert noticed.wait(5)


def test_unknown_key_is_none(emu: Emulator) -> None:
    """A key the metadata server does not have (404) is None."""
    assert MetadataServer(emu.metadata_host).get("instance/attributes/no-such-key") is None


# --- against a minimal metadata server we control key by key -----------------------------


class _Handler(BaseHTTPRequestHandler):
    server: _SparseMetadata

    def do_GET(self) -> None:
        key = self.path.removeprefix("/computeMetadata/v1/")
        self.server.asked.append(key)
        if self.server.together is not None:
            self.server.together.wait()  # raises (no answer) if the others never come
        status, body = self.server.answers.get(key, (404, "not found"))
        self.send_response(status)
        if self.server.flavor:
            self.send_header("Metadata-Flavor", "Google")
        self.send_header("Content-Length", str(len(body.encode())))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, format: str, *args: object) -> None:
        pass


class _SparseMetadata(ThreadingHTTPServer):
    """A metadata server that has only `answers` (key -> (status, body)), else 404."""

    daemon_threads = True

    def __init__(self, answers: dict[str, tuple[int, str]], *, flavor: bool = True) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answers = answers
        self.flavor = flavor
        self.asked: list[str] = []  # every key asked, in order
        self.together: threading.Barrier | None = None  # answer only once all have asked

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def sparse() -> Iterator[_SparseMetadata]:
    server = _SparseMetadata(
        {
            "instance/name": (200, "vm-x"),
            "instance/id": (200, "42"),
            "instance/zone": (200, "projects/7/zones/europe-west4-b"),
            "project/numeric-project-id": (200, "7"),
        }
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_missing_optional_keys_are_left_out(sparse: _SparseMetadata) -> None:
    """Without machine type, creator, image or preempted, the metadata simply lacks them;
    without a project id, so does the identity (Cloud Logging then names the project number)."""
    identity, metadata = read_vm(MetadataServer(sparse.host), version="v", os_release={})
    assert identity.project_id is None
    assert metadata.to_wire() == {
        "instance": "vm-x",
        "instanceId": "42",
        "zone": "europe-west4-b",
        "osRelease": {},
        "version": "v",
    }


def test_missing_required_key_is_a_metadata_error(sparse: _SparseMetadata) -> None:
    """read_vm without the project number raises MetadataError naming the key."""
    del sparse.answers["project/numeric-project-id"]
    with pytest.raises(MetadataError, match="project/numeric-project-id"):
        read_vm(MetadataServer(sparse.host), version="v", os_release={})


def test_start_up_reads_each_key_once_and_all_at_once(sparse: _SparseMetadata) -> None:
    """read_vm asks every key in one go: each request is held until all of them have come
    (a sequential reader would never get an answer), then each key was asked exactly once."""
    keys = [*IDENTITY_KEYS, *METADATA_KEYS]
    sparse.together = threading.Barrier(len(keys), timeout=10)
    identity, _ = read_vm(MetadataServer(sparse.host), version="v", os_release={})
    assert identity.instance == "vm-x"
    assert sorted(sparse.asked) == sorted(keys)


def test_server_error_is_a_metadata_error(sparse: _SparseMetadata) -> None:
    """A 500 is not "no such key": it raises MetadataError."""
    sparse.answers["instance/zone"] = (500, "oops")
    with pytest.raises(MetadataError, match="500"):
        MetadataServer(sparse.host).get("instance/zone")


def test_answer_without_metadata_flavor_is_refused(sparse: _SparseMetadata) -> None:
    """Something that is not a metadata server (no Metadata-Flavor: Google) is an error."""
    sparse.flavor = False
    with pytest.raises(MetadataError, match="Metadata-Flavor"):
        MetadataServer(sparse.host).get("instance/name")


@pytest.mark.parametrize("instance_id", ["18446744073709551616", "9" * 5000, "\u00b2"])
def test_an_instance_id_that_is_no_uint64_is_left_out(sparse: _SparseMetadata, instance_id):
    """The report's instanceId is a uint64: anything else is left out of the metadata (the
    request models check nothing), never sent and never a crash."""
    sparse.answers["instance/id"] = (200, instance_id)
    _, metadata = read_vm(MetadataServer(sparse.host), version="v", os_release={})
    assert metadata.instance_id is None
    assert "instanceId" not in metadata.to_wire()


# --- early answers -----------------------------------------------------------------------


def test_early_answers_are_asked_at_once_and_read_later_without_asking_again(
    sparse: _SparseMetadata,
) -> None:
    """EarlyAnswers asks every key as it is made (the token beside the others); read_vm then
    takes those answers and asks the server nothing more."""
    keys = [*IDENTITY_KEYS, *METADATA_KEYS, TOKEN_KEY]
    early = EarlyAnswers(MetadataServer(sparse.host), keys, alone=[TOKEN_KEY])
    wait_until(lambda: len(sparse.asked) == len(keys), what="every key asked")
    identity, _ = read_vm(early, version="v", os_release={})
    assert identity.instance == "vm-x"
    assert early.first(TOKEN_KEY)() is None  # no token on this server: 404
    assert sorted(sparse.asked) == sorted(keys)


def test_an_early_failure_is_raised_when_read_and_none_for_first(sparse: _SparseMetadata) -> None:
    """An early answer that failed fails its reader as MetadataServer would; `first` gives
    None instead, so that its caller asks again itself."""
    sparse.answers["instance/zone"] = (500, "oops")
    early = EarlyAnswers(MetadataServer(sparse.host), [*IDENTITY_KEYS, *METADATA_KEYS])
    with pytest.raises(MetadataError, match="500"):
        read_vm(early, version="v", os_release={})
    assert early.first("instance/zone")() is None
    assert early.get("instance/name") == "vm-x"


def test_an_early_answer_read_late_is_passed_over(sparse: _SparseMetadata) -> None:
    """`first` gives None for an answer older than `fresh_for`: a token asked at start-up and
    first used much later may be near its end, so the caller asks afresh."""
    early = EarlyAnswers(MetadataServer(sparse.host), ["instance/name"])
    assert early.first("instance/name")() == "vm-x"
    assert early.first("instance/name", fresh_for=0.0)() is None
