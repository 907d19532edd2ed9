"""Container runnable start-to-exit: `true` in local/busybox through the agent vs `docker run --rm`.

The agent's figure is one task's RUNNING -> SUCCEEDED span (eventTime of the two status events,
the agent's own clock): pull check, create, start, wait, output copy and removal of a container
running `true`. The reference is `docker run --rm local/busybox true` with the docker CLI on the
same engine. Uses the engine at DOCKER_HOST, or starts a private dockerd as the tests do.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from _common import Agent, event_time, fmt_ms

from batch_agent.emulator import Emulator
from tests import docker_support
from tests.docker_support import BUSYBOX_IMAGE

TARGET_RATIO = 1.1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    daemon = None
    host = os.environ.get("DOCKER_HOST") or docker_support.engine_host()
    if host is None:
        daemon = docker_support.DockerDaemon()
        daemon.start()
        host = daemon.host
    try:
        docker_support.import_busybox(host)
        through_agent(host)  # warm up: image present, engine caches hot
        agent = [through_agent(host) for _ in range(args.repeats)]
        cli = [docker_run(host) for _ in range(args.repeats)]
    finally:
        if daemon is not None:
            daemon.stop()
    a, c = statistics.median(agent), statistics.median(cli)
    print(
        f"container via agent: median={fmt_ms(a)} min={fmt_ms(min(agent))} max={fmt_ms(max(agent))}"
    )
    print(f"docker run --rm:     median={fmt_ms(c)} min={fmt_ms(min(cli))} max={fmt_ms(max(cli))}")
    ratio = a / c
    verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
    print(f"  ratio {ratio:.2f}; target <= {TARGET_RATIO}: {verdict}")


def through_agent(host: str) -> float:
    runnable = {"container": {"imageUri": BUSYBOX_IMAGE, "commands": ["true"]}}
    emu = Emulator(
        {"taskGroups": [{"taskSpec": {"runnables": [runnable]}}]},
        default_report_interval="1s",
        min_report_interval="0.2s",
        log=None,
    )
    emu.start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-container-") as tmp:
            agent = Agent(emu, Path(tmp) / "state", "--once", DOCKER_HOST=host)
            try:
                status = agent.wait(120)
                if status != 0:
                    raise SystemExit(f"agent exited {status}:\n{agent.log()[-3000:]}")
            finally:
                agent.close()
        name = emu.task_names()[0]
        events = emu.task_events(name)
        return (event_time(events[-1]) - event_time(events[0])).total_seconds()
    finally:
        emu.stop()


def docker_run(host: str) -> float:
    began = time.perf_counter()
    subprocess.run(
        ["docker", "-H", host, "run", "--rm", BUSYBOX_IMAGE, "true"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - began


if __name__ == "__main__":
    main()
