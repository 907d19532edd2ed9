"""Container runnables against a real Docker engine (see tests/docker_support.py); no mocks."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

from batch_agent.tasks.docker import ContainerEngine, ContainerExecution, EngineError
from batch_agent.tasks.execution import ExitResult
from batch_agent.tasks.plan import ContainerSpec
from tests import docker_support
from tests.docker_support import BUSYBOX_IMAGE, Registry
from tests.helpers import wait_until

T = TypeVar("T")


# --- fixtures ------------------------------------------------------------------------------


@dataclass
class Ctx:
    """What a test needs to start containers: engine host, its own label, a temp dir."""

    host: str
    labels: dict[str, str]
    tmp: Path

    def out(self, name: str = "out") -> Path:
        return self.tmp / f"{name}.stdout"

    def err(self, name: str = "out") -> Path:
        return self.tmp / f"{name}.stderr"

    def run(self, body: Callable[[ContainerEngine], Awaitable[T]], **engine_kw: Any) -> T:
        """Run `body(engine)` in a fresh event loop with an engine closed afterwards."""

        async def main() -> T:
            engine = ContainerEngine(engine_kw.pop("docker_host", self.host), **engine_kw)
            try:
                return await body(engine)
            finally:
                engine.close()

        return asyncio.run(main())

    async def start(
        self,
        engine: ContainerEngine,
        spec: ContainerSpec,
        *,
        name: str = "out",
        env: dict[str, str] | None = None,
        user: tuple[int, int] | None = None,
        default_volumes: list[str] | None = None,
        network: str | None = None,
    ) -> ContainerExecution | ExitResult:
        return await engine.start(
            spec,
            env=env or {"PATH": "/bin:/usr/bin"},
            labels=self.labels,
            user=user,
            default_volumes=default_volumes or [],
            network=network,
            stdout_path=self.out(name),
            stderr_path=self.err(name),
            name_hint=f"test-{name}",
        )

    async def run_to_end(self, engine: ContainerEngine, spec: ContainerSpec, **kw: Any) -> Ran:
        started = await self.start(engine, spec, **kw)
        if isinstance(started, ExitResult):
            return Ran(started, "", "")
        result = await started.wait()
        name = kw.get("name", "out")
        return Ran(result, self.out(name).read_text(), self.err(name).read_text())


@dataclass
class Ran:
    result: ExitResult
    stdout: str
    stderr: str


@pytest.fixture
def ctx(docker_engine: str, tmp_path: Path) -> Iterator[Ctx]:
    labels = {"batch-agent-test": secrets.token_hex(4)}
    yield Ctx(docker_engine, labels, tmp_path)
    c = docker_support.client(docker_engine)
    try:
        for container in c.api.containers(
            all=True, filters={"label": f"batch-agent-test={labels['batch-agent-test']}"}
        ):
            c.api.remove_container(container["Id"], force=True, v=True)
    finally:
        c.close()


def sh(script: str, **fields: Any) -> ContainerSpec:
    """busybox `sh -c script`."""
    return ContainerSpec(BUSYBOX_IMAGE, commands=("sh", "-c", script), **fields)


async def until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll `predicate` on the event loop until true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


# --- running containers --------------------------------------------------------------------


def test_exit_codes_and_separate_output(ctx: Ctx) -> None:
    """The container's exit code is the result; stdout and stderr land in their own files."""

    async def body(engine: ContainerEngine) -> tuple[Ran, Ran]:
        ok = await ctx.run_to_end(engine, sh("echo out; echo err >&2"), name="ok")
        bad = await ctx.run_to_end(engine, sh("exit 3"), name="bad")
        return ok, bad

    ok, bad = ctx.run(body)
    assert ok.result == ExitResult(0)
    assert (ok.stdout, ok.stderr) == ("out\n", "err\n")
    assert bad.result.exit_code == 3


def test_output_is_complete_up_to_a_last_line_without_newline(ctx: Ctx) -> None:
    """Everything the container wrote is in the files, a last line without newline included."""
    spec = sh("i=0; while [ $i -lt 3000 ]; do echo line $i; i=$((i+1)); done; printf tail")
    ran = ctx.run(lambda engine: ctx.run_to_end(engine, spec))
    assert ran.result.ok
    assert ran.stdout == "".join(f"line {i}\n" for i in range(3000)) + "tail"


def test_entrypoint_overrides_and_commands_are_arguments(ctx: Ctx) -> None:
    """`entrypoint` is one executable (never split); `commands` are its arguments, as given."""
    spec = ContainerSpec(BUSYBOX_IMAGE, entrypoint="/bin/echo", commands=("a  b", "c"))
    ran = ctx.run(lambda engine: ctx.run_to_end(engine, spec))
    assert ran.result.ok, ran.result
    assert ran.stdout == "a  b c\n"


def test_environment_is_exactly_what_is_passed(ctx: Ctx, monkeypatch: pytest.MonkeyPatch) -> None:
    """The container sees the env given, plus what options add, and nothing of the agent's."""
    monkeypatch.setenv("AGENT_ONLY_SECRET", "leak")
    spec = sh("env | sort", options="-e FROM_OPTIONS=1")
    env = {"PATH": "/bin", "BATCH_TASK_INDEX": "4", "SPACED": "a b"}
    ran = ctx.run(lambda engine: ctx.run_to_end(engine, spec, env=env))
    assert ran.result.ok
    assert "BATCH_TASK_INDEX=4\n" in ran.stdout
    assert "SPACED=a b\n" in ran.stdout
    assert "FROM_OPTIONS=1\n" in ran.stdout
    assert "AGENT_ONLY_SECRET" not in ran.stdout


def test_volumes_explicit_read_only_and_default(ctx: Ctx) -> None:
    """`volumes` bind host paths (`:ro` honoured); `default_volumes` apply only without them."""
    data = ctx.tmp / "data"
    data.mkdir()
    (data / "in.txt").write_text("from host\n")
    other = ctx.tmp / "other"
    other.mkdir()

    async def body(engine: ContainerEngine) -> list[Ran]:
        return [
            await ctx.run_to_end(
                engine,
                sh("cat /data/in.txt; echo made > /data/out.txt", volumes=(f"{data}:/data",)),
                name="rw",
            ),
            await ctx.run_to_end(
                engine, sh("echo x > /data/nope", volumes=(f"{data}:/data:ro",)), name="ro"
            ),
            await ctx.run_to_end(
                engine,
                sh("cat /d/in.txt"),
                name="default",
                default_volumes=[f"{data}:/d:ro"],
            ),
            await ctx.run_to_end(
                engine,
                sh("ls /d 2>&1; ls /o", volumes=(f"{other}:/o",)),
                name="override",
                default_volumes=[f"{data}:/d"],
            ),
        ]

    rw, ro, default, override = ctx.run(body)
    assert rw.result.ok and rw.stdout == "from host\n"
    assert (data / "out.txt").read_text() == "made\n"
    assert ro.result.exit_code != 0 and "Read-only file system" in ro.stderr
    assert default.result.ok and default.stdout == "from host\n"
    assert override.result.ok and "No such file" in override.stdout


def test_user_runs_as_uid_gid(ctx: Ctx) -> None:
    """`user=(uid, gid)` runs the container as uid:gid."""
    ran = ctx.run(lambda engine: ctx.run_to_end(engine, sh("id -u; id -g"), user=(1234, 5678)))
    assert ran.result.ok
    assert ran.stdout.split() == ["1234", "5678"]


def test_options_are_applied(ctx: Ctx, docker_engine: str) -> None:
    """--workdir, --hostname, -e, --label, --tmpfs and --shm-size reach the container."""
    spec = sh(
        "pwd; hostname; echo $GREETING; grep -E ' /scratch | /dev/shm ' /proc/mounts; sleep 30",
        options="--workdir /tmp --hostname box1 -e GREETING=hi --label color=blue "
        "--tmpfs /scratch:size=8m --shm-size 16m",
    )

    async def body(engine: ContainerEngine) -> tuple[dict[str, str], str]:
        execution = await ctx.start(engine, spec)
        assert isinstance(execution, ContainerExecution), execution
        await until(lambda: "/dev/shm" in ctx.out().read_text())
        c = docker_support.client(docker_engine)
        try:
            labels = c.api.inspect_container(execution.container_id)["Config"]["Labels"]
        finally:
            c.close()
        await execution.stop(timedelta(seconds=0))
        return labels, ctx.out().read_text()

    labels, out = ctx.run(body)
    lines = out.splitlines()
    assert lines[:3] == ["/tmp", "box1", "hi"]
    mounts = {line.split()[1]: line for line in lines[3:]}
    assert "size=8192k" in mounts["/scratch"] and mounts["/scratch"].startswith("tmpfs")
    assert "size=16384k" in mounts["/dev/shm"]
    assert labels["color"] == "blue"
    assert labels["batch-agent-test"] == ctx.labels["batch-agent-test"]


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ("--volume /etc:/host-etc", 'options: "--volume" is not allowed; use the "volumes" field'),
        ("--no-such-flag", 'options: "--no-such-flag" is not supported'),
    ],
)
def test_refused_option_does_not_start(ctx: Ctx, options: str, reason: str) -> None:
    """A refused option: the runnable is not started, with a reason naming the option."""
    ran = ctx.run(lambda engine: ctx.run_to_end(engine, sh("true", options=options)))
    assert ran.result == ExitResult.not_started(reason)


def test_output_appears_while_the_container_runs(ctx: Ctx) -> None:
    """Output reaches the file while the container still runs (the agent ships it live)."""

    async def body(engine: ContainerEngine) -> ExitResult:
        execution = await ctx.start(engine, sh("echo ready; echo warn >&2; sleep 30"))
        assert isinstance(execution, ContainerExecution)
        await until(lambda: ctx.out().read_text() == "ready\n")
        await until(lambda: ctx.err().read_text() == "warn\n")
        await execution.stop(timedelta(seconds=0))
        return await execution.wait()

    result = ctx.run(body)
    assert result.exit_code == 137 and result.signal == 9


def test_stop_escalates_to_sigkill_after_grace(ctx: Ctx) -> None:
    """stop() on a container that ignores SIGTERM kills it once the grace has passed."""
    spec = sh('trap "" TERM; echo armed; while :; do sleep 1; done')

    async def body(engine: ContainerEngine) -> tuple[float, ExitResult, ExitResult]:
        execution = await ctx.start(engine, spec)
        assert isinstance(execution, ContainerExecution)
        await until(lambda: ctx.out().read_text() == "armed\n")
        began = time.monotonic()
        await execution.stop(timedelta(seconds=1))
        took = time.monotonic() - began
        await execution.stop(timedelta(seconds=1))  # idempotent
        return took, await execution.wait(), await execution.wait()

    took, result, again = ctx.run(body)
    assert took >= 0.9  # the grace was given (no upper bound: the machine may be slow)
    assert result.exit_code == 137 and result.signal == 9
    assert again == result


def test_stop_with_sigterm_handler_exits_on_its_own(ctx: Ctx) -> None:
    """A container that exits on SIGTERM ends before the grace with its own status."""
    spec = sh('trap "echo bye; exit 7" TERM; echo armed; while :; do sleep 0.1; done')

    async def body(engine: ContainerEngine) -> ExitResult:
        execution = await ctx.start(engine, spec)
        assert isinstance(execution, ContainerExecution)
        await until(lambda: ctx.out().read_text() == "armed\n")
        await execution.stop(timedelta(seconds=60))
        return await execution.wait()

    result = ctx.run(body)
    assert result.exit_code == 7  # its own status: a SIGKILL after the grace would give 137
    assert ctx.out().read_text() == "armed\nbye\n"


def test_find_after_forgetting_resumes_output_and_result(ctx: Ctx) -> None:
    """An engine started after "an agent restart" finds the container by labels, copies only
    the output not yet copied, and gets its exit code; the container is then removed."""
    spec = sh("echo one; while [ ! -e /tmp/go ]; do sleep 0.05; done; echo two; exit 5")

    async def first(engine: ContainerEngine) -> str:
        execution = await ctx.start(engine, spec)
        assert isinstance(execution, ContainerExecution)
        await until(lambda: ctx.out().read_text() == "one\n")
        return execution.container_id  # engine.close() below forgets it; it keeps running

    container_id = ctx.run(first)

    async def second(engine: ContainerEngine) -> tuple[list[str], ExitResult, list[Any]]:
        found = await engine.find(ctx.labels)
        ids = [e.container_id for e in found]
        c = docker_support.client(ctx.host)
        try:
            exec_id = c.api.exec_create(container_id, ["touch", "/tmp/go"])["Id"]
            c.api.exec_start(exec_id)
        finally:
            c.close()
        result = await found[0].wait()
        return ids, result, await engine.find(ctx.labels)

    ids, result, after = ctx.run(second)
    assert ids == [container_id]
    assert result.exit_code == 5
    assert ctx.out().read_text() == "one\ntwo\n"
    assert after == []


def test_find_gives_the_result_of_a_container_that_ended_meanwhile(ctx: Ctx) -> None:
    """A container that exited while nobody watched is found with its exit code and output."""

    async def first(engine: ContainerEngine) -> None:
        execution = await ctx.start(engine, sh("echo early; sleep 0.3; echo late; exit 4"))
        assert isinstance(execution, ContainerExecution)
        await until(lambda: ctx.out().read_text() == "early\n")

    ctx.run(first)
    wait_until(lambda: _states(ctx.host, ctx.labels) == ["exited"], timeout=30, what="exited")

    async def second(engine: ContainerEngine) -> ExitResult:
        (found,) = await engine.find(ctx.labels)
        return await found.wait()

    assert ctx.run(second).exit_code == 4
    assert ctx.out().read_text() == "early\nlate\n"


def test_remove_all_removes_running_and_ended_containers(ctx: Ctx) -> None:
    """remove_all kills and removes every container carrying the labels; idempotent."""

    async def body(engine: ContainerEngine) -> tuple[int, int]:
        for name, script in (("a", "sleep 60"), ("b", "exit 0")):
            started = await ctx.start(engine, sh(script), name=name)
            assert isinstance(started, ContainerExecution)
        before = len(await engine.find(ctx.labels))
        await engine.remove_all(ctx.labels)
        await engine.remove_all(ctx.labels)
        return before, len(await engine.find(ctx.labels))

    assert ctx.run(body) == (2, 0)


def test_missing_executable_is_127(ctx: Ctx) -> None:
    """A command the image does not have fails like `docker run`: 127 with the engine's words."""
    spec = ContainerSpec(BUSYBOX_IMAGE, commands=("/no/such/program",))
    ran = ctx.run(lambda engine: ctx.run_to_end(engine, spec))
    assert ran.result.exit_code == 127
    assert "no such file or directory" in (ran.result.reason or "")


def _states(host: str, labels: dict[str, str]) -> list[str]:
    """The state (running, exited, ...) of each container that carries `labels`."""
    c = docker_support.client(host)
    try:
        found = c.api.containers(
            all=True, filters={"label": [f"{k}={v}" for k, v in labels.items()]}
        )
    finally:
        c.close()
    return [container["State"] for container in found]


# --- networks ------------------------------------------------------------------------------


def _host_addresses(docker_engine: str) -> list[str]:
    """Addresses of this host a container on the default network can reach."""
    c = docker_support.client(docker_engine)
    try:
        bridge = c.api.inspect_network("bridge")
    finally:
        c.close()
    return [cfg["Gateway"] for cfg in bridge["IPAM"]["Config"] if "Gateway" in cfg]


def test_block_external_network(ctx: Ctx, docker_engine: str) -> None:
    """blockExternalNetwork: no way to a server on the host, but containers on the internal
    network reach each other by name; `--network` in options is refused."""
    net = f"test-internal-{secrets.token_hex(3)}"

    async def body(engine: ContainerEngine, port: int, gateways: list[str]) -> list[Ran]:
        probe = "; ".join(f"echo | nc -w 1 {ip} {port}" for ip in gateways)
        server = await ctx.start(
            engine,
            sh(
                "echo from-peer | nc -l -p 8080",
                options=f"--name peer-{net}",
                block_external_network=True,
            ),
            name="server",
            network=net,
        )
        assert isinstance(server, ContainerExecution), server
        try:
            return [
                await ctx.run_to_end(engine, sh(probe), name="open"),
                await ctx.run_to_end(
                    engine, sh(probe, block_external_network=True), name="blocked", network=net
                ),
                await ctx.run_to_end(
                    engine,
                    sh(f"nc -w 5 peer-{net} 8080", block_external_network=True),
                    name="peer",
                    network=net,
                ),
                await ctx.run_to_end(
                    engine,
                    sh("true", block_external_network=True, options="--network host"),
                    network=net,
                ),
            ]
        finally:
            await server.stop(timedelta(seconds=0))
            await engine.remove_network(net)
            await engine.remove_network(net)  # idempotent

    gateways = _host_addresses(docker_engine)
    assert gateways
    with docker_support.tcp_server() as port:
        opened, blocked, peer, refused = ctx.run(lambda engine: body(engine, port, gateways))
    assert opened.stdout.count("hello") == len(gateways), opened
    assert "hello" not in blocked.stdout, blocked
    assert "from-peer" in peer.stdout, peer
    assert refused.result == ExitResult.not_started(
        'options: "--network" not allowed with blockExternalNetwork'
    )


def test_ensure_internal_network_is_idempotent_and_checks_an_existing_one(ctx: Ctx) -> None:
    """ensure_internal_network creates once, then reuses; a non-internal namesake is refused."""
    name = f"test-net-{secrets.token_hex(3)}"

    async def body(engine: ContainerEngine) -> str:
        results = await asyncio.gather(*(engine.ensure_internal_network(name) for _ in range(3)))
        assert results == [name] * 3
        await engine.remove_network(name)
        c = docker_support.client(ctx.host)
        try:
            c.api.create_network(name, driver="bridge")
        finally:
            c.close()
        try:
            with pytest.raises(EngineError) as raised:
                await engine.ensure_internal_network(name)
            return str(raised.value)
        finally:
            await engine.remove_network(name)

    assert ctx.run(body) == f"network {name} exists and is not internal"


# --- images and engines --------------------------------------------------------------------

PULLS = "batch_agent.tasks.docker.images"


def _pull_attempts(caplog: pytest.LogCaptureFixture, image: str) -> int:
    """How many pulls of `image` were logged."""
    pulls = [r for r in caplog.records if r.name == PULLS]
    return sum(f"pulling {image} (attempt " in r.getMessage() for r in pulls)


def test_private_registry_pull_with_credentials(
    ctx: Ctx, registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    """An image of a private registry is pulled with username/password; bad ones are refused
    with the registry's message, without trying again; a missing image is not started, quoting
    the registry."""
    caplog.set_level(logging.INFO, logger=PULLS)
    image = registry.image
    good = ContainerSpec(image, commands=("echo", "pulled"), **registry.auth)
    wrong = replace(good, password="wrong")
    missing = replace(good, image_uri=f"{registry.address}/nothing-here:latest")

    async def body(engine: ContainerEngine) -> list[Ran]:
        bad = await ctx.run_to_end(engine, wrong, name="bad")
        anonymous = await ctx.run_to_end(
            engine, replace(good, username=None, password=None), name="anon"
        )
        absent = await ctx.run_to_end(engine, missing, name="missing")
        return [bad, anonymous, absent]

    async def pulled(engine: ContainerEngine) -> Ran:
        return await ctx.run_to_end(engine, good, name="good")

    try:
        bad, anonymous, absent = ctx.run(body, pull_backoff=timedelta(seconds=0.1))
        refusals = _pull_attempts(caplog, image) + _pull_attempts(caplog, missing.image_uri)
        ok = ctx.run(pulled)
    finally:
        c = docker_support.client(ctx.host)
        try:
            c.api.remove_image(image, force=True)
        finally:
            c.close()
    for refused, words in ((bad, "unauthorized"), (anonymous, "no basic auth credentials")):
        assert not refused.result.started
        assert (refused.result.reason or "").startswith(f"cannot pull image {image}: ")
        assert words in (refused.result.reason or ""), refused
    assert not absent.result.started
    assert "manifest unknown" in (absent.result.reason or "")
    assert refusals == 3  # one attempt each: a refusal is not tried again
    assert ok.result.ok and ok.stdout == "pulled\n"


def test_unreachable_registry_is_retried_then_fails(
    ctx: Ctx, caplog: pytest.LogCaptureFixture
) -> None:
    """A registry that does not answer is tried `pull_attempts` times; then not started."""
    caplog.set_level(logging.INFO, logger=PULLS)
    image = f"127.0.0.1:{docker_support.free_port()}/nothing:1"
    spec = ContainerSpec(image, commands=("true",))
    ran = ctx.run(
        lambda engine: ctx.run_to_end(engine, spec),
        pull_attempts=3,
        pull_backoff=timedelta(seconds=0.1),
    )
    assert _pull_attempts(caplog, image) == 3
    assert not ran.result.started
    assert "connection refused" in (ran.result.reason or "")


def test_bad_image_reference_is_not_started(ctx: Ctx, caplog: pytest.LogCaptureFixture) -> None:
    """A malformed image reference is not started, with the engine's words, and not retried."""
    caplog.set_level(logging.INFO, logger=PULLS)
    spec = ContainerSpec("Not A/Valid::Ref")
    ran = ctx.run(lambda engine: ctx.run_to_end(engine, spec), pull_backoff=timedelta(seconds=0.1))
    assert not ran.result.started
    assert "invalid reference format" in (ran.result.reason or "")
    assert _pull_attempts(caplog, spec.image_uri) == 1


def test_engine_down_is_not_started(ctx: Ctx) -> None:
    """An engine that cannot be reached: not started, with a reason naming where we looked."""
    dead = f"unix://{ctx.tmp}/dead.sock"
    ran = ctx.run(lambda engine: ctx.run_to_end(engine, sh("true")), docker_host=dead)
    assert not ran.result.started
    assert (ran.result.reason or "").startswith(f"Docker engine unreachable at {dead}: ")
