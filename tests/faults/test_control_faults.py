"""ControlPlane.report against raw-socket servers that answer garbage: every outcome is a
classified ControlPlaneError, never another exception, and never a call without an end."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from batch_agent.control import ControlPlane, ControlPlaneError
from batch_agent.emulator import Emulator
from tests.faults.rawserver import Answer, RawServer, reset
from tests.helpers import wait_until
from tests.test_control import PARENT, REQUEST

Start = Callable[..., tuple[RawServer, ControlPlane]]


@pytest.fixture
def start(emu: Emulator) -> Iterator[Start]:
    """start(answer, **ControlPlane kwargs): a RawServer playing `answer` and a ControlPlane
    pointed at it, with the VM's token from the emulator's metadata server."""
    started: list[tuple[RawServer, ControlPlane]] = []

    def make(answer: Answer, **kwargs: object) -> tuple[RawServer, ControlPlane]:
        server = RawServer(answer)
        server.start()
        kwargs.setdefault("timeout", timedelta(seconds=10))
        control = ControlPlane(server.url, metadata_host=emu.metadata_host, **kwargs)  # type: ignore[arg-type]
        started.append((server, control))
        return server, control

    yield make
    for server, control in started:
        control.close()
        server.stop()


def respond(status: str, body: bytes = b"", **headers: str) -> Answer:
    """An answer that sends this status line, headers and body, then closes."""
    lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def answer(conn: socket.socket, stopping: threading.Event) -> None:
        conn.sendall(raw)

    return answer


def send(raw: bytes) -> Answer:
    def answer(conn: socket.socket, stopping: threading.Event) -> None:
        conn.sendall(raw)

    return answer


def report_error(control: ControlPlane) -> ControlPlaneError:
    with pytest.raises(ControlPlaneError) as caught:
        control.report(PARENT, REQUEST)
    return caught.value


def test_short_body_is_retryable(start: Start) -> None:
    """A body shorter than its Content-Length (IncompleteRead) is a retryable transport error."""
    _, control = start(send(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"tasks": ['))
    error = report_error(control)
    assert (error.retryable, error.status) == (True, None)
    assert "IncompleteRead" in str(error)


def test_bad_status_line_is_retryable(start: Start) -> None:
    """A status line that is not HTTP (BadStatusLine) is a retryable transport error."""
    _, control = start(send(b"HTTP/1.1 two hundred OK\r\n\r\n"))
    error = report_error(control)
    assert (error.retryable, error.status) == (True, None)
    assert "BadStatusLine" in str(error)


def test_connection_reset_is_retryable(start: Start) -> None:
    """A server that resets the connection after reading the request is retryable."""
    _, control = start(lambda conn, stopping: reset(conn))
    error = report_error(control)
    assert (error.retryable, error.status) == (True, None)


def test_nonsense_status_is_retryable(start: Start) -> None:
    """A well-formed but meaningless status (999) is a path problem, not a verdict: retryable."""
    _, control = start(respond("999 Whatever", b"{}"))
    error = report_error(control)
    assert (error.retryable, error.status) == (True, 999)


def trickle(conn: socket.socket, stopping: threading.Event) -> None:
    """A 400-byte answer, one byte every 0.25 s: 100 s in all."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 400\r\n\r\n")
    for _ in range(400):
        if stopping.wait(0.25):
            return
        conn.sendall(b" ")


@pytest.mark.timeout(60)
def test_trickling_answer_is_cut_at_the_deadline(start: Start) -> None:
    """One byte every 0.25 s never trips the socket timeout, but the call's deadline ends it
    and drops the connection (the server sees its peer gone long before its 100 s answer)."""
    server, control = start(trickle, timeout=timedelta(seconds=5), deadline=timedelta(seconds=1))
    error = report_error(control)
    assert (error.retryable, error.status) == (True, None)
    assert "deadline" in str(error)
    wait_until(server.cut_off.is_set, timeout=30, what="the server to see the client gone")


@pytest.mark.timeout(60)
def test_a_call_may_shorten_the_deadline(start: Start) -> None:
    """report(deadline=...) overrides the constructor's deadline for that call only."""
    server, control = start(trickle, timeout=timedelta(seconds=5))  # default deadline: 60 s
    with pytest.raises(ControlPlaneError, match="deadline"):
        control.report(PARENT, REQUEST, deadline=timedelta(seconds=0.5))
    wait_until(server.cut_off.is_set, timeout=30, what="the server to see the client gone")


def test_a_deadline_must_be_positive() -> None:
    """A zero deadline is refused when the client is made, not discovered at the first call."""
    with pytest.raises(ValueError, match="deadline"):
        ControlPlane("http://127.0.0.1:1/", deadline=timedelta(0))


def test_too_many_requests_carries_retry_after_seconds(start: Start) -> None:
    """429 with `Retry-After: 7` is retryable and asks for 7 s."""
    body = b'{"error": {"code": 429, "message": "slow down"}}'
    _, control = start(respond("429 Too Many Requests", body, Retry_After="7"))
    error = report_error(control)
    assert (error.retryable, error.status) == (True, 429)
    assert error.retry_after == timedelta(seconds=7)
    assert "slow down" in str(error)


def test_unavailable_carries_retry_after_date(start: Start) -> None:
    """503 with an HTTP-date two minutes ahead asks for (about) two minutes."""
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    _, control = start(respond("503 Service Unavailable", b"", Retry_After=when))
    error = report_error(control)
    assert (error.retryable, error.status) == (True, 503)
    assert error.retry_after is not None
    assert timedelta(seconds=60) <= error.retry_after <= timedelta(seconds=120)


def test_error_without_retry_after_says_none(start: Start) -> None:
    """A 503 that does not say when to come back has no retry_after."""
    _, control = start(respond("503 Service Unavailable"))
    assert report_error(control).retry_after is None


def test_deeply_nested_error_body_keeps_its_status(start: Start) -> None:
    """A 503 whose body nests 100000 arrays is still a retryable 503 (no RecursionError)."""
    _, control = start(respond("503 Service Unavailable", b"[" * 100_000))
    error = report_error(control)
    assert (error.retryable, error.status) == (True, 503)


@pytest.mark.parametrize(
    "body",
    [b"[" * 100_000, b"1" * 5000, b'{"tasks": [NaN]}', b"[]", b'{"tasks": {}}', b""],
    ids=["deep", "huge-int", "nan", "array", "tasks-object", "empty"],
)
def test_garbage_answer_is_malformed_and_retryable(start: Start, body: bytes) -> None:
    """A 200 whose body is not a ReportAgentStateResponse is retryable, whatever it holds."""
    _, control = start(respond("200 OK", body))
    error = report_error(control)
    assert (error.retryable, error.status) == (True, None)
    assert "malformed" in str(error)
