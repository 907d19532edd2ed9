"""batch_agent.control: the Batch API client against the emulator over real HTTP, and Backoff."""

from __future__ import annotations

import random
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import google_auth_httplib2
import httplib2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from batch_agent.control import (
    MAX_RETRY_AFTER,
    Backoff,
    ControlPlane,
    ControlPlaneError,
    MetadataServerCredentials,
    is_retryable_status,
    parse_retry_after,
)
from batch_agent.emulator import Emulator
from batch_agent.wire import (
    AgentInfo,
    AgentMetadata,
    AgentState,
    AgentTimingInfo,
    ReportAgentStateRequest,
)

PARENT = "projects/123456789012/locations/us-central1"  # the emulator's defaults
REQUEST = ReportAgentStateRequest(  # as the agent hands it to the client: its wire form
    agent_info=AgentInfo(
        state=AgentState.AGENT_STARTING, report_time=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    ),
    agent_timing_info=AgentTimingInfo(boot_time=datetime(2025, 1, 2, tzinfo=UTC)),
    metadata=AgentMetadata(instance="vm-0", zone="us-central1-a", version="test"),
).to_wire()


@pytest.fixture
def control(emu: Emulator) -> Iterator[ControlPlane]:
    """A client of the emulator, with the VM's token from the emulator's metadata server."""
    plane = ControlPlane(emu.url, timeout=timedelta(seconds=10), metadata_host=emu.metadata_host)
    try:
        yield plane
    finally:
        plane.close()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections (bound, never listening)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections (into the backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


def report_error(control: ControlPlane, parent: str = PARENT) -> ControlPlaneError:
    with pytest.raises(ControlPlaneError) as caught:
        control.report(parent, REQUEST)
    return caught.value


# --- report ------------------------------------------------------------------------------


def test_report_round_trip(emu: Emulator, control: ControlPlane) -> None:
    """A report reaches the emulator intact through googleapiclient with the VM's token."""
    emu.set_intervals(default="7s", minimum="2.5s")
    response = control.report(PARENT, REQUEST)
    assert response.default_report_interval == timedelta(seconds=7)
    assert response.min_report_interval == timedelta(seconds=2.5)
    assert response.tasks == []
    assert emu.invalid_reports == []
    [report] = emu.reports
    assert report.vm == 0  # identified by the bearer token from the metadata server
    assert report.body == REQUEST


def test_client_is_kept_across_reports(emu: Emulator, control: ControlPlane) -> None:
    """Several reports, failed or not, go through the same client; each is one attempt."""
    control.report(PARENT, REQUEST)
    emu.fail_next(1, status=503)
    report_error(control)
    control.report(PARENT, REQUEST)
    assert len(emu.reports) == 2


def test_unavailable_is_retryable(emu: Emulator, control: ControlPlane) -> None:
    """503 is retryable and carries its status; googleapiclient did not retry on its own."""
    emu.fail_next(1, status=503)
    error = report_error(control)
    assert (error.retryable, error.status) == (True, 503)
    assert "503" in str(error)
    assert emu.reports == []
    control.report(PARENT, REQUEST)  # the override was consumed by exactly one attempt


def test_transient_statuses_are_retryable(emu: Emulator, control: ControlPlane) -> None:
    """Throttling, server errors and IAM/token lag may heal: retryable, with their status."""
    for status in (401, 403, 408, 429, 500, 502, 504):
        # A 401 makes AuthorizedHttp refresh the token and resend (twice at most) first.
        emu.fail_next(3 if status == 401 else 1, status=status)
        error = report_error(control)
        assert (error.retryable, error.status) == (True, status)
    assert emu.reports == []


def test_one_unauthorized_is_healed_by_a_token_refresh(
    emu: Emulator, control: ControlPlane
) -> None:
    """A single 401 (expired token) is answered by a refresh and one resend inside the call."""
    emu.fail_next(1, status=401)
    control.report(PARENT, REQUEST)
    assert len(emu.reports) == 1


def test_invalid_request_is_not_retryable(emu: Emulator, control: ControlPlane) -> None:
    """A 400 (here: a parent without a project number) is our bug and is not retried."""
    error = report_error(control, parent="projects/my-project/locations/us-central1")
    assert (error.retryable, error.status) == (False, 400)
    assert "project number" in str(error)  # the server's message is kept
    assert len(emu.invalid_reports) == 1


def test_unknown_parent_is_not_retryable(control: ControlPlane) -> None:
    """A 404 for a parent the server does not know is configuration, not weather."""
    error = report_error(control, parent="projects/123456789012/locations/europe-west4")
    assert (error.retryable, error.status) == (False, 404)


def test_each_parent_is_reported_to_its_own_uri(emu: Emulator, control: ControlPlane) -> None:
    """The request built once per parent (and kept) is not reused for another parent."""
    control.report(PARENT, REQUEST)
    error = report_error(control, parent="projects/123456789012/locations/europe-west4")
    assert error.status == 404  # the emulator knows one region only: refused, not recorded
    control.report(PARENT, REQUEST)
    assert [r.body for r in emu.reports] == [REQUEST, REQUEST]


def test_connection_refused_is_retryable(emu: Emulator, closed_port: int) -> None:
    """A control plane that refuses connections is retryable, without a status."""
    control = ControlPlane(f"http://127.0.0.1:{closed_port}/", metadata_host=emu.metadata_host)
    try:
        error = report_error(control)
    finally:
        control.close()
    assert (error.retryable, error.status) == (True, None)
    assert "cannot reach" in str(error)


def test_timeout_is_retryable(emu: Emulator, silent_port: int) -> None:
    """A control plane that never answers times out after `timeout`: retryable."""
    control = ControlPlane(
        f"http://127.0.0.1:{silent_port}/",
        timeout=timedelta(seconds=0.2),
        metadata_host=emu.metadata_host,
    )
    try:
        error = report_error(control)
    finally:
        control.close()
    assert (error.retryable, error.status) == (True, None)


def test_non_json_answer_is_retryable(emu: Emulator, control: ControlPlane) -> None:
    """A 200 whose body is not JSON is retryable (and the report itself did arrive)."""
    emu.respond_raw_next(b"not json")
    error = report_error(control)
    assert (error.retryable, error.status) == (True, None)
    assert "malformed" in str(error)


def test_binary_answer_is_retryable(emu: Emulator, control: ControlPlane) -> None:
    """A 200 whose body is not UTF-8 is retryable."""
    emu.respond_raw_next(b"\xff\xfe\x00garbage")
    error = report_error(control)
    assert (error.retryable, error.status) == (True, None)
    assert "malformed" in str(error)


def test_wrongly_shaped_answer_is_retryable(emu: Emulator, control: ControlPlane) -> None:
    """A 200 with JSON that is not a ReportAgentStateResponse (tasks not a list) is retryable."""
    emu.respond_raw_next(b'{"tasks": "many"}')
    error = report_error(control)
    assert (error.retryable, error.status) == (True, None)
    assert "malformed" in str(error)


def test_bad_intervals_are_clamped_or_ignored_not_fatal(
    emu: Emulator, control: ControlPlane, caplog: pytest.LogCaptureFixture
) -> None:
    """A huge interval is clamped to 1 h, a garbled one ignored; both logged, the answer used."""
    emu.respond_raw_next(b'{"defaultReportInterval": "999999999999999s", "minReportInterval": "x"}')
    response = control.report(PARENT, REQUEST)
    assert response.default_report_interval == timedelta(hours=1)
    assert response.min_report_interval is None
    assert "defaultReportInterval" in caplog.text
    assert "minReportInterval" in caplog.text


def test_unexpected_failure_is_logged_and_retryable(
    control: ControlPlane, caplog: pytest.LogCaptureFixture
) -> None:
    """Even a bug (a parent googleapiclient refuses) is a retryable ControlPlaneError, with
    its traceback in the log."""
    error = report_error(control, parent="not-a-parent")
    assert (error.retryable, error.status) == (True, None)
    assert "TypeError" in str(error)
    [record] = [r for r in caplog.records if r.exc_info is not None]
    assert "unexpected" in record.getMessage()


def test_unknown_response_fields_are_ignored(emu: Emulator, control: ControlPlane) -> None:
    """The server evolves: fields we do not know do not break a report."""
    emu.respond_raw_next(b'{"minReportInterval": "1s", "somethingNew": {"a": 1}}')
    assert control.report(PARENT, REQUEST).min_report_interval == timedelta(seconds=1)


def test_unreachable_metadata_server_is_retryable(emu: Emulator, closed_port: int) -> None:
    """No access token (metadata server down) is retryable, and nothing reached the server."""
    control = ControlPlane(emu.url, metadata_host=f"127.0.0.1:{closed_port}")
    try:
        error = report_error(control)
    finally:
        control.close()
    assert (error.retryable, error.status) == (True, None)
    assert "access token" in str(error)
    assert emu.reports == []


def test_given_credentials_are_used(emu: Emulator) -> None:
    """Explicit google-auth credentials replace the metadata server's token."""
    import google.oauth2.credentials

    token = google.oauth2.credentials.Credentials(token="emu-token-vm-0")  # type: ignore[no-untyped-call]
    control = ControlPlane(emu.url, credentials=token, metadata_host="127.0.0.1:1")
    try:
        control.report(PARENT, REQUEST)
    finally:
        control.close()
    assert [report.vm for report in emu.reports] == [0]


def test_missing_credentials_file_is_not_retryable(
    emu: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GOOGLE_APPLICATION_CREDENTIALS file that does not exist is configuration: no retry."""
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "absent.json"))
    control = ControlPlane(emu.url, application_default=True)
    try:
        error = report_error(control)
    finally:
        control.close()
    assert (error.retryable, error.status) == (False, None)
    assert "credentials" in str(error)


def test_an_early_token_answer_serves_the_first_refresh(emu: Emulator) -> None:
    """The token answer asked early (before the agent's imports) is the first token: no
    second request; the next refresh asks the metadata server again."""
    http = httplib2.Http(timeout=10)
    early = '{"access_token": "early-token", "expires_in": 3599, "token_type": "Bearer"}'
    credentials = MetadataServerCredentials(emu.metadata_host, http=http, early=lambda: early)
    request = google_auth_httplib2.Request(http)
    credentials.refresh(request)
    assert credentials.token == "early-token"
    credentials.refresh(request)
    assert credentials.token == "emu-token-vm-0"  # the emulator's, for its VM 0


@pytest.mark.parametrize("early", [None, "not json", '{"expires_in": 3599}'])
def test_without_a_usable_early_token_the_metadata_server_is_asked(
    emu: Emulator, early: str | None
) -> None:
    """An early answer that failed (None) or holds no token is passed over: the first
    refresh asks the metadata server, as without one."""
    http = httplib2.Http(timeout=10)
    credentials = MetadataServerCredentials(emu.metadata_host, http=http, early=lambda: early)
    credentials.refresh(google_auth_httplib2.Request(http))
    assert credentials.token == "emu-token-vm-0"


def test_google_api_core_runs_its_init_only_when_used() -> None:
    """The discovery client loads google.api_core's submodules without the package's own
    __init__ (version checks through importlib.metadata); reading another attribute of the
    package runs it, in the same module, its submodules kept (a fresh interpreter)."""
    program = (
        "import sys\n"
        "import batch_agent.control\n"
        "from googleapiclient import discovery\n"
        "assert 'importlib.metadata' not in sys.modules\n"
        "import google.api_core\n"
        "package = sys.modules['google.api_core']\n"
        "assert google.api_core.__version__\n"
        "assert 'importlib.metadata' in sys.modules\n"
        "assert sys.modules['google.api_core'] is package\n"
        "assert google.api_core.client_options.ClientOptions\n"
    )
    subprocess.run([sys.executable, "-c", program], check=True, timeout=60)


def test_constructing_does_no_io() -> None:
    """Construction and close of an unused client never touch the network."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        address = f"127.0.0.1:{server.getsockname()[1]}"
        ControlPlane(f"http://{address}/", metadata_host=address).close()
        with pytest.raises(BlockingIOError):  # nobody connected, to either role
            server.accept()


# --- Backoff -----------------------------------------------------------------------------

_seconds = st.floats(min_value=0.001, max_value=3600, allow_nan=False)


@given(
    initial=_seconds,
    extra=st.floats(min_value=0, max_value=3600),
    multiplier=st.floats(min_value=1, max_value=10),
    seed=st.integers(),
    count=st.integers(min_value=1, max_value=200),
)
def test_delays_stay_within_zero_and_maximum_under_a_growing_ceiling(
    initial: float, extra: float, multiplier: float, seed: int, count: int
) -> None:
    """Every delay is in [0, ceiling], the ceiling never shrinks and never passes maximum."""
    maximum = timedelta(seconds=initial + extra)
    backoff = Backoff(
        timedelta(seconds=initial), maximum, multiplier=multiplier, rng=random.Random(seed)
    )
    previous = timedelta(0)
    for _ in range(count):
        ceiling = backoff.ceiling
        assert previous <= ceiling <= maximum
        delay = backoff.next_delay()
        assert timedelta(0) <= delay <= ceiling
        previous = ceiling


def test_ceiling_doubles_up_to_the_maximum_and_reset_starts_over() -> None:
    """1, 2, 4, 8, 10, 10 seconds with a cap of 10; reset goes back to 1."""
    backoff = Backoff(timedelta(seconds=1), timedelta(seconds=10), rng=random.Random(1))
    ceilings = []
    for _ in range(6):
        ceilings.append(backoff.ceiling.total_seconds())
        backoff.next_delay()
    assert ceilings == [1, 2, 4, 8, 10, 10]
    backoff.reset()
    assert backoff.ceiling == timedelta(seconds=1)


def test_jitter_spreads_delays() -> None:
    """Full jitter: delays under the same ceiling differ (VMs that failed together spread)."""
    backoff = Backoff(timedelta(seconds=60), timedelta(seconds=60), rng=random.Random(7))
    assert len({backoff.next_delay() for _ in range(20)}) > 10


@pytest.mark.parametrize(
    ("initial", "maximum", "multiplier"),
    [(0, 1, 2.0), (2, 1, 2.0), (1, 2, 0.5)],
)
def test_nonsense_settings_are_rejected(initial: float, maximum: float, multiplier: float) -> None:
    """initial must be positive and at most maximum; multiplier at least 1."""
    with pytest.raises(ValueError, match="backoff"):
        Backoff(timedelta(seconds=initial), timedelta(seconds=maximum), multiplier)


# --- classification ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (301, True),
        (400, False),
        (401, True),
        (403, True),
        (404, False),
        (408, True),
        (409, False),
        (413, False),
        (429, True),
        (451, False),
        (500, True),
        (501, True),
        (502, True),
        (503, True),
        (504, True),
        (599, True),
        (999, True),
    ],
)
def test_status_classification(status: int, retryable: bool) -> None:
    """Throttling, server errors, timeouts and auth lag are retried; our bad requests are not."""
    assert is_retryable_status(status) is retryable


NOW = datetime(2026, 12, 2, 10, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("7", timedelta(seconds=7)),
        (" 0 ", timedelta(0)),
        ("99999999999999999999999", MAX_RETRY_AFTER),
        ("Wed, 02 Dec 2026 10:02:00 GMT", timedelta(minutes=2)),
        ("Wednesday, 02-Dec-26 10:00:30 GMT", timedelta(seconds=30)),  # RFC 850, obsolete
        ("Wed Dec  2 10:00:05 2026", timedelta(seconds=5)),  # asctime, zone-less: GMT
        ("Wed, 02 Dec 2026 09:00:00 GMT", timedelta(0)),  # in the past
        ("Fri, 31 Dec 9999 23:59:59 GMT", MAX_RETRY_AFTER),
        (None, None),
        ("", None),
        ("-5", None),
        ("1.5", None),
        ("soon", None),
        ("Wed, 32 Dec 2026 10:02:00 GMT", None),
        ("٣", None),  # a digit, but not an ASCII one
        ("1" * 100_000, None),
    ],
)
def test_retry_after_header(header: str | None, expected: timedelta | None) -> None:
    """Delay-seconds and HTTP-dates (RFC 9110) give a delay in [0, 1 h]; anything else None."""
    assert parse_retry_after(header, NOW) == expected
