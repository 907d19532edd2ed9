"""Container runnables on a Docker engine, through the docker SDK (the only importer of `docker`).

`ContainerEngine.start` pulls the image when it is missing, creates and starts a container and
returns a `ContainerExecution` (the `execution.Execution` contract), or an `ExitResult` saying
why the runnable could not start (50000 for agent-side failures such as a refused pull).

Output: each container runs with the `json-file` log driver; two worker threads per container
follow `docker logs` (one for stdout, one for stderr, so the streams stay apart) and append what
arrives to the runnable's files as it arrives, one log entry (at most 16 KiB) at a time, so the
agent's memory does not grow with the output. The end of both streams is also how we learn that
the container stopped (then `inspect` gives the exit code, and a last read without `follow`
picks up what the engine logged after the followers stopped), so no `docker wait` call has to
be kept open. The output paths and the files' sizes at start are kept as container labels, so
an execution found again after an agent restart (`find`) resumes the copy at the right byte,
by replaying the container's log and skipping what the files already hold; within one agent,
a broken stream resumes after the timestamp of the last entry copied.

Threads: short SDK calls (inspect, create, start, remove, list) run in the loop's default
executor (`asyncio.to_thread`); calls that last as long as a pull, a stop or a container run
in a thread of their own, so that they cannot starve the executor other modules share. One
`docker.DockerClient` per engine serves the short calls from several threads at once (a
`requests.Session` over a urllib3 pool, which hands each thread its own connection); each
execution has its own client, without a read timeout, for its two log streams, and closes it
when it ends.

This module must not know about Batch tasks, HTTP to Google or the wire format; it must not read
`os.environ` (the Docker host comes as a parameter) and must not block the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
import requests.exceptions

from batch_agent.tasks.execution import EXIT_CODE_UNKNOWN, ExitResult
from batch_agent.tasks.options import OptionError, parse_options
from batch_agent.tasks.plan import ContainerSpec

log = logging.getLogger(__name__)

T = TypeVar("T")

EXIT_AGENT_FAILURE = 50000
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
INTERNAL_NETWORK = "batch-agent-internal"
"""The network of blockExternalNetwork containers unless the caller names another one."""

LABEL_PREFIX = "batch-agent."
_OUTPUT_LABELS = {
    "stdout": (LABEL_PREFIX + "stdout", LABEL_PREFIX + "stdout-offset"),
    "stderr": (LABEL_PREFIX + "stderr", LABEL_PREFIX + "stderr-offset"),
}
_SECRET_PATH = re.compile(r"^projects/[^/]+/secrets/[^/]+/versions/[^/]+$")
_NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9_.-]+")

_CONNECT_TIMEOUT = timedelta(seconds=60)  # each short API call; the SDK's default
_PULL_ATTEMPTS = 3
_PULL_BACKOFF = timedelta(seconds=2)  # doubled after each failed attempt
_ENGINE_LOST = timedelta(minutes=5)  # how long a running container's engine may stay away
_RESUME_PAUSE = timedelta(seconds=1)  # before following again a log stream that broke

DockerError = (docker.errors.DockerException, requests.exceptions.RequestException)
"""What the SDK raises for an engine that refuses, fails or cannot be reached."""


class EngineError(Exception):
    """The Docker engine refused or failed an operation; the message says what and why."""


# --- the engine ----------------------------------------------------------------------------


class ContainerEngine:
    """One Docker engine, reached lazily at `docker_host` (default: the local unix socket).

    Construction does not contact the engine; the first call that needs it does, and a failed
    connection is tried again by the next call. Call `close()` when done.
    """

    def __init__(
        self,
        docker_host: str | None = None,
        *,
        pull_attempts: int = _PULL_ATTEMPTS,
        pull_backoff: timedelta = _PULL_BACKOFF,
    ) -> None:
        self.docker_host = docker_host or DEFAULT_DOCKER_HOST
        self._pull_attempts = pull_attempts
        self._pull_backoff = pull_backoff
        self._client: Any = None  # docker.DockerClient, once connected
        self._connect_lock = asyncio.Lock()
        self._network_lock = asyncio.Lock()
        self._executions: set[ContainerExecution] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"ContainerEngine({self.docker_host!r})"

    async def start(
        self,
        spec: ContainerSpec,
        *,
        env: dict[str, str],
        labels: dict[str, str],
        user: tuple[int, int] | None,
        default_volumes: list[str],
        network: str | None,
        stdout_path: Path,
        stderr_path: Path,
        name_hint: str,
    ) -> ContainerExecution | ExitResult:
        """Pull `spec.image_uri` if missing, then create and start the container.

        `env` is the container's whole environment (nothing of the agent's leaks in; the image's
        own ENV still applies). `labels` mark the container for `find`/`remove_all`. `user` runs
        it as "uid:gid". `default_volumes` apply only when `spec.volumes` is empty. `network` is
        the network to join (for blockExternalNetwork: the internal network to create or reuse,
        default INTERNAL_NETWORK); `--network` in options overrides it, except with
        blockExternalNetwork, where it is refused. Output is appended to the two paths (files
        created 0600 if missing) while the container runs.

        Never raises for a runnable that cannot start: returns ExitResult(50000) with the reason
        (unreachable engine, refused or missing image, refused option, bad volume), or 127/126
        when the engine cannot execute the command. Does not block the event loop.
        """
        what = f"container {name_hint}"
        refused = _refused_credentials(spec)
        if refused is not None:
            return refused
        try:
            options = parse_options(spec.options)
            kwargs = self._create_kwargs(
                spec, options, env=env, labels=labels, user=user, default_volumes=default_volumes
            )
        except OptionError as e:
            return ExitResult(EXIT_AGENT_FAILURE, reason=str(e))
        try:
            client = await self._connected()
        except EngineError as e:
            return ExitResult(EXIT_AGENT_FAILURE, reason=str(e))

        opt_network = kwargs.pop("network", None)
        if spec.block_external_network:
            if opt_network is not None:
                return ExitResult(
                    EXIT_AGENT_FAILURE,
                    reason='options: "--network" is not allowed with blockExternalNetwork',
                )
            try:
                kwargs["network"] = await self.ensure_internal_network(network or INTERNAL_NETWORK)
            except EngineError as e:
                return ExitResult(EXIT_AGENT_FAILURE, reason=str(e))
        elif opt_network or network:
            kwargs["network"] = opt_network or network

        pulled = await self._ensure_image(client, spec, what)
        if pulled is not None:
            return pulled

        kwargs.setdefault("name", _container_name(name_hint))
        positions: dict[str, int] = {}
        for stream, path in (("stdout", stdout_path), ("stderr", stderr_path)):
            positions[stream] = _file_size(path)
            path_label, offset_label = _OUTPUT_LABELS[stream]
            kwargs["labels"][path_label] = str(path)
            kwargs["labels"][offset_label] = str(positions[stream])
        try:
            container_id = await asyncio.to_thread(_create, client, spec.image_uri, kwargs)
        except DockerError as e:
            return ExitResult(EXIT_AGENT_FAILURE, reason=self._explain("cannot create", what, e))
        try:
            await asyncio.to_thread(client.api.start, container_id)
        except DockerError as e:
            await self._remove_quietly(container_id)
            return _start_failure(self._explain("cannot start", what, e), e)

        log.info("%s: started %s (%s)", what, kwargs["name"], container_id[:12])
        for path in (stdout_path, stderr_path):  # as the script runnables do, even if silent
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        return self._track(
            ContainerExecution(
                self,
                container_id,
                name=kwargs["name"],
                outputs={"stdout": (stdout_path, 0), "stderr": (stderr_path, 0)},
            )
        )

    async def ensure_internal_network(self, name: str) -> str:
        """Create the bridge network `name` with no way out, unless it exists; return `name`.

        The network is `internal` (no route out) and its bridge has no IPv4 address on the host
        (`inhibit_ipv4`), so its containers reach each other (by name too) but neither the
        outside nor the host itself; this holds even on an engine started with
        `--iptables=false`. Idempotent and safe to call concurrently. Raises EngineError if the
        engine fails, or if a network of that name exists but is not internal.
        """
        client = await self._connected()
        async with self._network_lock:
            try:
                found = await asyncio.to_thread(client.api.inspect_network, name)
            except docker.errors.NotFound:
                found = None
            except DockerError as e:
                raise EngineError(self._explain("cannot inspect", f"network {name}", e)) from e
            if found is None:
                try:
                    await asyncio.to_thread(
                        client.api.create_network,
                        name,
                        driver="bridge",
                        internal=True,
                        check_duplicate=True,
                        options={"com.docker.network.bridge.inhibit_ipv4": "true"},
                        labels={LABEL_PREFIX + "network": "internal"},
                    )
                except docker.errors.APIError as e:
                    if e.status_code != 409:  # 409: created meanwhile by another process
                        reason = self._explain("cannot create", f"network {name}", e)
                        raise EngineError(reason) from e
                except DockerError as e:
                    raise EngineError(self._explain("cannot create", f"network {name}", e)) from e
                log.info("network %s: created (internal)", name)
            elif not found.get("Internal"):
                raise EngineError(f"network {name} exists and is not internal")
        return name

    async def remove_network(self, name: str) -> None:
        """Remove the network `name`; fine if it does not exist. Raises EngineError otherwise
        (e.g. containers still use it)."""
        client = await self._connected()
        try:
            await asyncio.to_thread(client.api.remove_network, name)
        except docker.errors.NotFound:
            return
        except DockerError as e:
            raise EngineError(self._explain("cannot remove", f"network {name}", e)) from e

    async def find(self, labels: dict[str, str]) -> list[ContainerExecution]:
        """Containers, running or ended, that carry all of `labels` (for reattach after a restart).

        Each is returned as an execution that resumes copying output into the files it was
        started with, from the byte those files reached. Containers not started by `start` are
        returned too, their output dropped. Raises EngineError if the engine cannot be asked.
        """
        client = await self._connected()
        found = await self._list(client, labels)
        executions = []
        for c in found:
            known = [e for e in self._executions if e.container_id == c["Id"]]
            if known:  # already followed by this engine: a second copier would repeat output
                executions.append(known[0])
                continue
            container_labels: dict[str, str] = c.get("Labels") or {}
            outputs: dict[str, tuple[Path | None, int]] = {}
            for stream, (path_label, offset_label) in _OUTPUT_LABELS.items():
                path = container_labels.get(path_label)
                if path is None:
                    outputs[stream] = (None, 0)
                    continue
                try:
                    offset = int(container_labels.get(offset_label, "0"))
                except ValueError:
                    offset = 0
                outputs[stream] = (Path(path), max(0, _file_size(Path(path)) - offset))
            names = c.get("Names") or ["/" + c["Id"][:12]]
            execution = ContainerExecution(
                self, c["Id"], name=names[0].lstrip("/"), outputs=outputs
            )
            log.info("container %s: found again (%s)", execution.name, c.get("State"))
            executions.append(self._track(execution))
        return executions

    async def remove_all(self, labels: dict[str, str]) -> None:
        """Force-remove (kill) every container that carries all of `labels`, with its anonymous
        volumes. Idempotent. Raises EngineError if the engine cannot be asked."""
        client = await self._connected()
        for c in await self._list(client, labels):
            for execution in [e for e in self._executions if e.container_id == c["Id"]]:
                execution.detach()
            await self._remove_quietly(c["Id"])

    def close(self) -> None:
        """Stop copying output for executions still running (they keep running), close clients.

        Idempotent. An execution of a closed engine must not be waited on or stopped again.
        """
        self._closed = True
        for execution in list(self._executions):
            execution.detach()
        self._executions.clear()
        if self._client is not None:
            self._client.close()
            self._client = None

    # --- internals, shared with ContainerExecution ---

    def _track(self, execution: ContainerExecution) -> ContainerExecution:
        self._executions.add(execution)
        execution.follow_output()
        return execution

    def _forget(self, execution: ContainerExecution) -> None:
        self._executions.discard(execution)

    async def _connected(self) -> Any:
        """The engine-wide client, connecting (and negotiating the API version) on first use.

        Raises EngineError("Docker engine unreachable at ...") if that fails.
        """
        if self._closed:
            raise EngineError(f"{self!r} is closed")
        async with self._connect_lock:
            if self._client is None:
                try:
                    self._client = await asyncio.to_thread(self._new_client)
                except DockerError as e:
                    raise EngineError(
                        f"Docker engine unreachable at {self.docker_host}: {e}"
                    ) from e
            return self._client

    def _new_client(self, version: str | None = None, timeout: float | None = None) -> Any:
        """A client of our engine (blocks: without `version`, asks the engine for its own)."""
        if version is None and self.docker_host.startswith("unix://"):
            # The SDK leaks its socket when a unix socket refuses the connection; ask first.
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.settimeout(_CONNECT_TIMEOUT.total_seconds())
                try:
                    probe.connect(self.docker_host.removeprefix("unix://"))
                except OSError as e:
                    raise docker.errors.DockerException(f"{e.strerror or e}") from e
        return docker.from_env(
            environment={"DOCKER_HOST": self.docker_host},  # `from_env` rules, not os.environ
            version=version,
            timeout=timeout if version else _CONNECT_TIMEOUT.total_seconds(),
            max_pool_size=32,
        )

    def _stream_client(self) -> Any:
        """A client for long log streams: no read timeout (a quiet container is not a fault)."""
        assert self._client is not None
        return self._new_client(version=self._client.api.api_version, timeout=None)

    def _explain(self, verb: str, what: str, e: Exception) -> str:
        """A reason for a failed engine call, telling an unreachable engine apart."""
        if isinstance(e, requests.exceptions.ConnectionError):
            return f"Docker engine unreachable at {self.docker_host}: {e}"
        return f"{verb} {what}: {_engine_message(e)}"

    def _create_kwargs(
        self,
        spec: ContainerSpec,
        options: dict[str, Any],
        *,
        env: dict[str, str],
        labels: dict[str, str],
        user: tuple[int, int] | None,
        default_volumes: list[str],
    ) -> dict[str, Any]:
        """`containers.create` keyword arguments; raises OptionError for conflicting fields."""
        kwargs = dict(options)
        if spec.entrypoint:
            if "entrypoint" in kwargs:
                raise OptionError('options: "--entrypoint" conflicts with the "entrypoint" field')
            kwargs["entrypoint"] = [spec.entrypoint]
        if user is not None:
            if "user" in kwargs:
                raise OptionError('options: "--user" conflicts with the task\'s user account')
            kwargs["user"] = f"{user[0]}:{user[1]}"
        # Later wins, as on a `docker run` command line that puts the options last; our own
        # labels win over everything since `find` depends on them.
        kwargs["environment"] = {**env, **kwargs.get("environment", {})}
        kwargs["labels"] = {**kwargs.get("labels", {}), **labels}
        volumes = list(spec.volumes) or list(default_volumes)
        if volumes:
            kwargs["volumes"] = volumes
        kwargs["command"] = list(spec.commands) or None
        kwargs["log_config"] = {"type": "json-file", "config": {}}  # we follow it: see above
        return kwargs

    async def _ensure_image(self, client: Any, spec: ContainerSpec, what: str) -> ExitResult | None:
        """Pull `spec.image_uri` unless the engine has it; an ExitResult if that fails."""
        image = spec.image_uri
        try:
            await asyncio.to_thread(client.api.inspect_image, image)
            return None
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            if e.status_code != 400:  # 400: a malformed reference; let the pull explain it
                return ExitResult(EXIT_AGENT_FAILURE, reason=self._explain("cannot pull", image, e))
        except DockerError as e:
            return ExitResult(EXIT_AGENT_FAILURE, reason=self._explain("cannot pull", image, e))
        if spec.enable_image_streaming:
            log.info("%s: image streaming is not available here; pulling %s", what, image)
        auth = None
        if spec.username or spec.password:
            auth = {"username": spec.username or "", "password": spec.password or ""}
        pause = self._pull_backoff.total_seconds()
        for attempt in range(1, self._pull_attempts + 1):
            log.info("%s: pulling %s (attempt %d)", what, image, attempt)
            started = time.monotonic()
            try:
                await _in_thread(lambda: _pull(client, image, auth), f"pull {image}")
                log.info("%s: pulled %s in %.1fs", what, image, time.monotonic() - started)
                return None
            except DockerError as e:
                reason = self._explain("cannot pull image", image, e)
                if not _is_transient(e) or attempt == self._pull_attempts:
                    return ExitResult(EXIT_AGENT_FAILURE, reason=reason)
                log.warning("%s: %s; trying again in %.1fs", what, reason, pause)
            await asyncio.sleep(pause)
            pause *= 2
        raise AssertionError("unreachable")  # the loop returns

    async def _list(self, client: Any, labels: dict[str, str]) -> list[dict[str, Any]]:
        filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
        try:
            found: list[dict[str, Any]] = await asyncio.to_thread(
                client.api.containers, all=True, filters=filters
            )
        except DockerError as e:
            raise EngineError(self._explain("cannot list", "containers", e)) from e
        return found

    async def _remove_quietly(self, container_id: str) -> None:
        """Force-remove a container; a container already gone or being removed is fine."""
        if self._client is None:
            return
        try:
            await asyncio.to_thread(
                self._client.api.remove_container, container_id, v=True, force=True
            )
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            if e.status_code != 409:  # 409: removal already in progress
                log.warning("container %s: cannot remove: %s", container_id[:12], e)
        except DockerError as e:
            log.warning("container %s: cannot remove: %s", container_id[:12], e)


class ContainerExecution:
    """A container started by `ContainerEngine.start` or found again by `ContainerEngine.find`.

    Implements `execution.Execution`; `pid` is None (the process is the engine's child).
    """

    def __init__(
        self,
        engine: ContainerEngine,
        container_id: str,
        *,
        name: str,
        outputs: dict[str, tuple[Path | None, int]],
    ) -> None:
        self._engine = engine
        self.container_id = container_id
        self.name = name
        self._outputs = outputs  # stream -> (file or None to drop, bytes already in the file)
        self._copiers: list[_OutputCopier] = []
        self._stream_client: Any = None
        self._waiting: asyncio.Future[ExitResult] | None = None
        self._stop_lock = asyncio.Lock()
        self._detached = False

    def __repr__(self) -> str:
        return f"ContainerExecution({self.name!r}, {self.container_id[:12]})"

    @property
    def pid(self) -> None:
        return None

    async def wait(self) -> ExitResult:
        """Wait for the container to end, finish copying its output, remove it; its result.

        Never raises for the container's failure. Safe to call several times and concurrently;
        cancelling one caller cancels nobody else. A container killed by a signal gives
        128+signo (as the engine reports it); one that vanished, or whose engine stays
        unreachable for 5 minutes, gives EXIT_CODE_UNKNOWN with a reason (and is not removed).
        """
        if self._waiting is None:
            self._waiting = asyncio.ensure_future(self._wait())
        return await asyncio.shield(self._waiting)

    async def stop(self, grace: timedelta) -> bool:
        """`docker stop`: the image's stop signal (SIGTERM), SIGKILL after `grace` (whole
        seconds, rounded up), then `wait()`. Idempotent; an ended container is fine. An engine
        that cannot be reached is logged, and `wait()` then decides."""
        async with self._stop_lock:
            if self._waiting is None or not self._waiting.done():
                client = self._engine._client
                seconds = max(0, math.ceil(grace.total_seconds()))
                try:
                    await _in_thread(
                        lambda: client.api.stop(self.container_id, timeout=seconds),
                        f"stop {self.name}",
                    )
                except docker.errors.NotFound:
                    pass
                except DockerError as e:
                    log.warning("container %s: cannot stop: %s", self.name, e)
            await self.wait()
            return True

    def follow_output(self) -> None:
        """Start copying output (again, after a broken stream); call on the event loop."""
        if self._stream_client is None:
            self._stream_client = self._engine._stream_client()
        if not self._copiers:
            self._copiers = [
                _OutputCopier(self._stream_client, self.container_id, stream, path, position)
                for stream, (path, position) in self._outputs.items()
            ]
        for copier in self._copiers:
            copier.start(follow=True)

    def detach(self) -> None:
        """Stop copying output and close our client; the container is left alone. Idempotent."""
        self._detached = True
        for copier in self._copiers:
            copier.cancel()
        if self._stream_client is not None:
            self._stream_client.close()
            self._stream_client = None
        self._engine._forget(self)

    async def _wait(self) -> ExitResult:
        client = self._engine._client
        lost_since: float | None = None
        while True:
            for copier in self._copiers:
                await copier.finished()
            if self._detached:
                return ExitResult(EXIT_CODE_UNKNOWN, reason=f"container {self.name}: detached")
            try:
                state: dict[str, Any] = (
                    await asyncio.to_thread(client.api.inspect_container, self.container_id)
                )["State"]
            except docker.errors.NotFound:
                self.detach()
                return ExitResult(EXIT_CODE_UNKNOWN, reason=f"container {self.name} vanished")
            except DockerError as e:
                now = time.monotonic()
                lost_since = lost_since or now
                if now - lost_since > _ENGINE_LOST.total_seconds():
                    self.detach()
                    reason = self._engine._explain("cannot inspect", f"container {self.name}", e)
                    return ExitResult(EXIT_CODE_UNKNOWN, reason=reason)
                state = {"Running": True}
            else:
                lost_since = None
            if not state.get("Running") and not state.get("Restarting"):
                break
            # The log streams ended while the container runs: connection lost, engine
            # restarted. Follow again from where the copiers stopped.
            await asyncio.sleep(_RESUME_PAUSE.total_seconds())
            if not self._detached:
                self.follow_output()
        # A follower may stop before the engine has logged the last output (seen with 20.10:
        # the final partial line): read what came after, now that the log is closed.
        for copier in self._copiers:
            copier.start(follow=False)
        for copier in self._copiers:
            await copier.finished()
        result = _result_from_state(self.name, state)
        log.info("container %s: exited %d", self.name, result.exit_code)
        self.detach()
        await self._engine._remove_quietly(self.container_id)
        return result


class _OutputCopier:
    """Appends one output stream of a container to a file, from a thread of its own.

    Each run reads the container's log with timestamps and resumes after the last entry it
    copied: entries older than that timestamp are skipped, and of those with that very
    timestamp the bytes already copied. With no timestamp yet (a new copier), it replays the
    log from the start and skips `position` bytes: what the file already holds of this
    container, after an agent restart. So output is neither repeated nor lost.
    """

    def __init__(
        self,
        client: Any,
        container_id: str,
        stream: str,
        path: Path | None,
        position: int,
    ) -> None:
        self._client = client
        self._container_id = container_id
        self.stream = stream
        self.path = path
        self.position = position  # bytes of this stream now in the file
        self._last_ts: bytes | None = None  # timestamp of the last entry copied
        self._at_last_ts = 0  # bytes copied from entries with that timestamp
        self._lock = threading.Lock()
        self._response: Any = None
        self._stopped = False
        self._done: asyncio.Future[None] | None = None

    def start(self, *, follow: bool) -> None:
        """Start a run in a new thread (the previous one must have finished); on the loop.

        `follow`: until the container stops; else only what the log holds now.
        """
        name = f"logs {self._container_id[:12]} {self.stream}"
        self._done = _in_thread_future(lambda: self._copy(follow), name)

    async def finished(self) -> None:
        """Return once the run has ended (container stopped, connection lost, cancelled)."""
        if self._done is not None:
            await asyncio.shield(self._done)

    def cancel(self) -> None:
        """End the copy for good, soon, from any thread; idempotent."""
        with self._lock:
            self._stopped = True
        self._close_response()

    def _close_response(self) -> None:
        with self._lock:
            response, self._response = self._response, None
        if response is not None:
            with contextlib.suppress(OSError, docker.errors.DockerException):
                response.close()

    def _copy(self, follow: bool) -> None:
        """The thread: copy the stream to its end; never raises."""
        resume_ts, resume_skip = self._last_ts, self._at_last_ts
        replay_skip = self.position if resume_ts is None else 0
        fd = None
        try:
            response = self._client.api.logs(
                self._container_id,
                stdout=self.stream == "stdout",
                stderr=self.stream == "stderr",
                stream=True,
                follow=follow,
                timestamps=True,
                since=_whole_seconds(resume_ts) if resume_ts else None,
            )
            with self._lock:
                self._response = response
                if self._stopped:
                    return
            if self.path is not None:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            for frame in response:
                ts, _, chunk = frame.partition(b" ")
                if resume_ts is not None:
                    if ts < resume_ts:
                        continue
                    if ts == resume_ts and resume_skip:
                        dropped = min(resume_skip, len(chunk))
                        chunk, resume_skip = chunk[dropped:], resume_skip - dropped
                if replay_skip:
                    dropped = min(replay_skip, len(chunk))
                    chunk, replay_skip = chunk[dropped:], replay_skip - dropped
                    self._note(ts, dropped)
                if fd is not None and chunk:
                    _write_all(fd, chunk)
                self.position += len(chunk)
                self._note(ts, len(chunk))
        except DockerError as e:
            if not self._stopped:
                cid = self._container_id[:12]
                log.debug("container %s: %s stream ended: %s", cid, self.stream, e)
        except OSError as e:
            log.warning("container %s: cannot write %s: %s", self._container_id[:12], self.path, e)
        finally:
            if fd is not None:
                os.close(fd)
            self._close_response()

    def _note(self, ts: bytes, copied: int) -> None:
        if ts == self._last_ts:
            self._at_last_ts += copied
        elif copied:
            self._last_ts, self._at_last_ts = ts, copied


def _whole_seconds(ts: bytes) -> int:
    """The whole seconds since the epoch of a log timestamp (`2024-05-01T12:00:00.123456789Z`)."""
    moment = datetime.strptime(ts[:19].decode("ascii"), "%Y-%m-%dT%H:%M:%S")
    return max(1, int(moment.replace(tzinfo=UTC).timestamp()))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _in_thread_future(fn: Callable[[], T], name: str) -> asyncio.Future[T]:
    """Run blocking `fn` in a new daemon thread; a future of its outcome (call on the loop).

    Not the loop's default executor: these calls last as long as a pull or a container, and
    would starve it.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result, error = fn(), None
        except BaseException as e:
            result, error = None, e
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


async def _in_thread(fn: Callable[[], T], name: str) -> T:
    return await _in_thread_future(fn, name)


def _create(client: Any, image: str, kwargs: dict[str, Any]) -> str:
    container = client.containers.create(image, **kwargs)
    container_id: str = container.id
    return container_id


def _pull(client: Any, image: str, auth: dict[str, str] | None) -> None:
    """Pull `image` (tag `latest` if it names none), raising APIError for an error in the stream."""
    repository, tag = docker.utils.parse_repository_tag(image)
    stream = client.api.pull(
        repository, tag=tag or "latest", auth_config=auth, stream=True, decode=True
    )
    for event in stream:
        if "error" in event:
            raise docker.errors.APIError(str(event["error"]))


def _is_transient(e: Exception) -> bool:
    """Whether a failed pull is worth trying again (network trouble, registry overload)."""
    if not isinstance(e, docker.errors.APIError):  # (an APIError is a RequestException too)
        return True  # the engine itself is unreachable; it may be restarting
    message = _engine_message(e).lower()
    permanent = (
        "not found",
        "manifest unknown",
        "unauthorized",
        "denied",
        "forbidden",
        "authentication required",
        "no basic auth credentials",
        "invalid reference",
        "repository name must",
        "invalid",
    )
    status = getattr(e, "status_code", None)
    return status not in (400, 401, 403, 404) and not any(p in message for p in permanent)


def _engine_message(e: Exception) -> str:
    """The engine's (or registry's) own words for an error, without the SDK's decoration."""
    explanation = getattr(e, "explanation", None)
    if isinstance(explanation, bytes):
        explanation = explanation.decode(errors="replace")
    return str(explanation or e).strip()


def _refused_credentials(spec: ContainerSpec) -> ExitResult | None:
    for field, value in (("username", spec.username), ("password", spec.password)):
        if value and _SECRET_PATH.match(value):
            return ExitResult(
                EXIT_AGENT_FAILURE,
                reason=f"container {field} from Secret Manager ({value}): not supported yet",
            )
    return None


def _start_failure(reason: str, e: Exception) -> ExitResult:
    """What `docker run` would exit with when the engine cannot run the command."""
    message = _engine_message(e).lower()
    if "executable file not found" in message or "no such file or directory" in message:
        return ExitResult(127, reason=reason)
    if "permission denied" in message:
        return ExitResult(126, reason=reason)
    return ExitResult(EXIT_AGENT_FAILURE, reason=reason)


def _result_from_state(name: str, state: dict[str, Any]) -> ExitResult:
    if state.get("Status") == "created":
        return ExitResult(EXIT_CODE_UNKNOWN, reason=f"container {name} was never started")
    code = state.get("ExitCode")
    if not isinstance(code, int) or not 0 <= code <= 255:
        return ExitResult(EXIT_CODE_UNKNOWN, reason=f"container {name}: exit code {code!r}")
    result = ExitResult.from_shell_status(code)
    extra = "out of memory (OOMKilled)" if state.get("OOMKilled") else state.get("Error")
    if extra:
        reason = f"{result.reason}: {extra}" if result.reason else str(extra)
        result = ExitResult(result.exit_code, signal=result.signal, reason=reason)
    return result


def _container_name(hint: str) -> str:
    """A valid, unique container name that starts with (a cleaned) `hint`."""
    cleaned = _NAME_UNSAFE.sub("-", hint).strip("-_.")[:100] or "runnable"
    return f"{cleaned}-{secrets.token_hex(3)}"


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
