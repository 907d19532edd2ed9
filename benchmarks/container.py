"""Container runnable start-to-exit: `true` in local/busybox through the agent vs `docker run --rm`.

Each agent run is one task: a warm-up container (the agent loads the docker SDK and connects on
its first container, once per agent life), a script `true` named "mark", then the measured
container `true` named "measured". The figure is the span between the two runnables' "finished"
events (the agent's own clock): image check, create, start, wait, output copy and removal of
the measured container. The first container's span (RUNNING -> its end) is printed as "cold".
The reference is `docker run --rm local/busybox true` with the docker CLI on the same engine.
Uses the engine at DOCKER_HOST, or starts a private dockerd as the tests do.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from _common import Agent, Figure, Skipped, docker_engine, event_time, fmt_ms

from batch_agent.emulator import Emulator
from tests import docker_support
from tests.docker_support import BUSYBOX_IMAGE

TARGET_RATIO = 1.1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    with docker_engine() as host:
        docker_support.import_busybox(host)
        through_agent(host)  # warm up the engine's caches
        runs = [through_agent(host) for _ in range(args.repeats)]
        cli = [docker_run(host) for _ in range(args.repeats)]
    agent = [warm for _, warm in runs]
    cold = statistics.median(c for c, _ in runs)
    a, c = statistics.median(agent), statistics.median(cli)
    print(
        f"container via agent: median={fmt_ms(a)} min={fmt_ms(min(agent))} max={fmt_ms(max(agent))}"
    )
    print(f"  first container of an agent (SDK import, connect): median={fmt_ms(cold)}")
    print(f"docker run --rm:     median={fmt_ms(c)} min={fmt_ms(min(cli))} max={fmt_ms(max(cli))}")
    ratio = a / c
    verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
    print(f"  ratio {ratio:.2f}; target <= {TARGET_RATIO}: {verdict}")


def run(repeats: int) -> list[Figure]:
    """The warm container via the agent and `docker run --rm`, interleaved, in ms; the first
    container of each agent as a figure of its own. Skipped without a Docker engine."""
    runs: list[tuple[float, float]] = []
    cli: list[float] = []
    try:
        with docker_engine() as host:
            docker_support.import_busybox(host)
            through_agent(host)  # warm up the engine's caches
            for _ in range(repeats):  # interleaved: both see the same engine and machine load
                runs.append(through_agent(host))
                cli.append(1000 * docker_run(host))
    except docker_support.Unavailable as e:
        raise Skipped(f"no Docker engine: {e}") from None
    warm = [1000 * w for _, w in runs]
    ratio = statistics.median(warm) / statistics.median(cli)
    base = f"`docker run --rm {BUSYBOX_IMAGE} true`"
    return [
        Figure(
            "container `true`: start to exit through the agent",
            "ms",
            warm,
            base,
            cli,
            f"median <= {TARGET_RATIO} x baseline's",
            ratio <= TARGET_RATIO,
        ),
        Figure(
            "container: an agent's first (docker SDK import, connect)",
            "ms",
            [1000 * c for c, _ in runs],
        ),
    ]


def through_agent(host: str) -> tuple[float, float]:
    """(cold, warm) seconds: the first container of an agent, and one after it."""
    true = {"container": {"imageUri": BUSYBOX_IMAGE, "commands": ["true"]}}
    runnables = [
        true,
        {"script": {"text": "true"}, "displayName": "mark"},
        {**true, "displayName": "measured"},
    ]
    emu = Emulator(
        {"taskGroups": [{"taskSpec": {"runnables": runnables}}]},
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
        events = emu.task_events(emu.task_names()[0])
    finally:
        emu.stop()
    at = {e["description"]: event_time(e) for e in events}
    running = event_time(events[0])
    mark = at['Runnable "mark" started.']
    cold = (mark - running).total_seconds()
    warm = at['Runnable "measured" finished with exit code 0.']
    return cold, (warm - at['Runnable "mark" finished with exit code 0.']).total_seconds()


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
