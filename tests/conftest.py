"""Fixtures: an emulator on 127.0.0.1:0 in a thread, temp state dirs, agent subprocesses."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from batch_agent.emulator import Emulator
from tests.helpers import AgentProcess


@pytest.fixture
def make_emulator() -> Iterator[Callable[..., Emulator]]:
    started: list[Emulator] = []

    def make(job: dict[str, Any] | None = None, **kwargs: Any) -> Emulator:
        kwargs.setdefault("default_report_interval", "1s")
        kwargs.setdefault("min_report_interval", "0.2s")
        kwargs.setdefault("log", None)
        emu = Emulator(job, **kwargs)
        emu.start()
        started.append(emu)
        return emu

    yield make
    for emu in started:
        emu.stop()


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    agents: list[AgentProcess] = []

    def start(
        emu: Emulator, *args: str, state: str = "state", vm: int = 0, **env: str
    ) -> AgentProcess:
        agent = AgentProcess(emu, tmp_path / state, *args, vm=vm, **env)
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        agent.close()
