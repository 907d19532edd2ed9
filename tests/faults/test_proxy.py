"""Proxy variables in the agent's environment: the Batch API is reached through `http_proxy`
unless `no_proxy` names its host, the metadata server never through a proxy, and reporting
never stops because a proxy variable is set."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import timedelta

import pytest

from batch_agent.control import ControlPlane
from batch_agent.emulator import Emulator
from tests.faults.rawserver import TunnelProxy
from tests.test_control import PARENT, REQUEST

PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY")


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The test's process environment, with no proxy variable set to begin with."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def proxy() -> Iterator[TunnelProxy]:
    with TunnelProxy() as tunnel:
        yield tunnel


@pytest.fixture
def control(emu: Emulator) -> Iterator[ControlPlane]:
    plane = ControlPlane(emu.url, timeout=timedelta(seconds=10), metadata_host=emu.metadata_host)
    try:
        yield plane
    finally:
        plane.close()


def test_reports_go_through_the_proxy(
    emu: Emulator, control: ControlPlane, proxy: TunnelProxy, environment: pytest.MonkeyPatch
) -> None:
    """With http_proxy set, the report travels through the proxy and arrives intact; the
    token came from the metadata server directly (one tunnel only, to the API)."""
    environment.setenv("http_proxy", proxy.url)
    control.report(PARENT, REQUEST)
    assert [report.body for report in emu.reports] == [REQUEST]
    assert proxy.targets == [emu.url.removeprefix("http://").rstrip("/")]


def test_no_proxy_is_honoured(
    emu: Emulator, control: ControlPlane, environment: pytest.MonkeyPatch
) -> None:
    """A host named in no_proxy is reached directly, even when http_proxy points nowhere."""
    with socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        environment.setenv("HTTP_PROXY", f"http://127.0.0.1:{dead.getsockname()[1]}")
        environment.setenv("NO_PROXY", "localhost,127.0.0.1")
        control.report(PARENT, REQUEST)
    assert len(emu.reports) == 1
