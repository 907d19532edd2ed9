"""One Docker engine: the connection, networks, and containers created, found by labels, stopped
and removed; `ContainerEngine.start` turns a ContainerSpec into a running `ContainerExecution`.

Threads: short SDK calls (inspect, create, start, remove, list) run in the loop's default
executor (`asyncio.to_thread`); calls that last as long as a pull or a stop run in a thread of
their own (`logs.in_thread`), so that they cannot starve the executor other modules share. One
`docker.DockerClient` per engine serves the short calls from several threads at once (a
`requests.Session` over a urllib3 pool, which hands each thread its own connection); each
execution gets its own client from `log_client`, without a read timeout, for its log streams.

This module must not know about Batch tasks, HTTP to Google or the wire format; it must not read
`os.environ` (the Docker host comes as a parameter) and must not block the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import docker.errors

from batch_agent.tasks.docker import networks
from batch_agent.tasks.docker.connection import Connection
from batch_agent.tasks.docker.create import (
    container_name,
    create_kwargs,
    output_labels,
    recorded_outputs,
)
from batch_agent.tasks.docker.errors import DockerError, EngineError, exec_failure_code, explain
from batch_agent.tasks.docker.execution import ContainerExecution
from batch_agent.tasks.docker.images import PULL_ATTEMPTS, PULL_BACKOFF, ensure_image
from batch_agent.tasks.docker.logs import in_thread
from batch_agent.tasks.docker.options import OptionError, isolation_breaches, parse_options
from batch_agent.tasks.execution import ExitResult
from batch_agent.tasks.plan import ContainerSpec

log = logging.getLogger(__name__)

INTERNAL_NETWORK = "batch-agent-internal"
"""The network of blockExternalNetwork containers unless the caller names another one."""


class ContainerEngine:
    """One Docker engine, reached lazily at `docker_host` (default: the local unix socket).

    Construction does not contact the engine; the first call that needs it does, and a failed
    connection is tried again by the next call. `pull_attempts`/`pull_backoff`: see `images`.
    Call `close()` when done.
    """

    def __init__(
        self,
        docker_host: str | None = None,
        *,
        pull_attempts: int = PULL_ATTEMPTS,
        pull_backoff: timedelta = PULL_BACKOFF,
    ) -> None:
        self._connection = Connection(docker_host)
        self.docker_host = self._connection.docker_host
        self._pull_attempts = pull_attempts
        self._pull_backoff = pull_backoff
        self._network_lock = asyncio.Lock()
        self._executions: dict[str, ContainerExecution] = {}  # by container id, while followed

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

        Never raises for a runnable that cannot start: returns `ExitResult.not_started` with the
        reason (unreachable engine, refused or missing image, refused option, bad volume), or
        127/126 when the engine cannot execute the command. Does not block the event loop.
        """
        what = f"container {name_hint}"
        try:
            options = parse_options(spec.options)
            kwargs = create_kwargs(
                spec, options, env=env, labels=labels, user=user, default_volumes=default_volumes
            )
        except OptionError as e:
            return ExitResult.not_started(str(e))
        try:
            client = await self._connection.client()
            breaches = isolation_breaches(options) if spec.block_external_network else []
            if breaches:
                named = ", ".join(f'"{b}"' for b in breaches)
                return ExitResult.not_started(
                    f"options: {named} not allowed with blockExternalNetwork"
                )
            opt_network = kwargs.pop("network", None)
            if spec.block_external_network:
                kwargs["network"] = await self.ensure_internal_network(network or INTERNAL_NETWORK)
            elif opt_network or network:
                kwargs["network"] = opt_network or network
            await ensure_image(
                client,
                spec,
                what=what,
                docker_host=self.docker_host,
                attempts=self._pull_attempts,
                backoff=self._pull_backoff,
            )
        except EngineError as e:
            return ExitResult.not_started(str(e))

        kwargs.setdefault("name", container_name(name_hint))
        paths = {"stdout": stdout_path, "stderr": stderr_path}
        kwargs["labels"].update(output_labels({s: (p, _file_size(p)) for s, p in paths.items()}))
        try:
            created = await asyncio.to_thread(client.containers.create, spec.image_uri, **kwargs)
        except DockerError as e:
            return ExitResult.not_started(explain(self.docker_host, "cannot create", what, e))
        container_id: str = created.id
        try:
            await asyncio.to_thread(client.api.start, container_id)
        except DockerError as e:
            await self.remove_container(container_id)
            reason = explain(self.docker_host, "cannot start", what, e)
            code = exec_failure_code(e)  # docker run's 127/126, else not started at all
            return ExitResult(code, reason=reason) if code else ExitResult.not_started(reason)

        log.info("%s: started %s (%s)", what, kwargs["name"], container_id[:12])
        for path in paths.values():  # as the script runnables do, even if silent
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        outputs: dict[str, tuple[Path | None, int]] = {s: (p, 0) for s, p in paths.items()}
        execution = ContainerExecution(self, container_id, name=kwargs["name"], outputs=outputs)
        return self._track(execution)

    async def ensure_internal_network(self, name: str) -> str:
        """Create the bridge network `name` with no way out, unless it exists; return `name`.

        The network is `internal` (no route out) and its bridge has no IPv4 address on the host
        (`inhibit_ipv4`), so its containers reach each other (by name too) but neither the
        outside nor the host itself; this holds even on an engine started with
        `--iptables=false`. Idempotent and safe to call concurrently. Raises EngineError if the
        engine fails, or if a network of that name exists but is not internal.
        """
        client = await self._connection.client()
        async with self._network_lock:
            await networks.ensure_internal(client, name, docker_host=self.docker_host)
        return name

    async def remove_network(self, name: str) -> None:
        """Remove the network `name`; fine if it does not exist. Raises EngineError otherwise
        (e.g. containers still use it)."""
        client = await self._connection.client()
        await networks.remove(client, name, docker_host=self.docker_host)

    async def find(self, labels: dict[str, str]) -> list[ContainerExecution]:
        """Containers, running or ended, that carry all of `labels` (for reattach after a restart).

        Each is returned as an execution that resumes copying output into the files it was
        started with, from the byte those files reached. Containers not started by `start` are
        returned too, their output dropped. Raises EngineError if the engine cannot be asked.
        """
        executions = []
        for c in await self._list(labels):
            known = self._executions.get(c["Id"])
            if known is not None:  # already followed here: a second copier would repeat output
                executions.append(known)
                continue
            outputs: dict[str, tuple[Path | None, int]] = {}
            for stream, (path, size) in recorded_outputs(c.get("Labels") or {}).items():
                # Skip what the file already holds of this container's output.
                outputs[stream] = (path, 0 if path is None else max(0, _file_size(path) - size))
            name = (c.get("Names") or ["/" + c["Id"][:12]])[0].lstrip("/")
            execution = ContainerExecution(self, c["Id"], name=name, outputs=outputs)
            log.info("container %s: found again (%s)", execution.name, c.get("State"))
            executions.append(self._track(execution))
        return executions

    async def remove_all(self, labels: dict[str, str]) -> None:
        """Force-remove (kill) every container that carries all of `labels`, with its anonymous
        volumes. Idempotent. Raises EngineError if the engine cannot be asked."""
        for c in await self._list(labels):
            execution = self._executions.get(c["Id"])
            if execution is not None:
                execution.detach()
            await self.remove_container(c["Id"])

    def close(self) -> None:
        """Stop copying output for executions still running (they keep running), close clients.

        Idempotent. An execution of a closed engine must not be waited on or stopped again.
        """
        for execution in list(self._executions.values()):
            execution.detach()
        self._executions.clear()
        self._connection.close()

    # --- what a ContainerExecution asks of its engine ---

    def log_client(self) -> Any:
        """A new docker SDK client for long log streams, without read timeout (a quiet container
        is not a fault); the caller closes it. Only once connected (an execution exists)."""
        return self._connection.log_client()

    async def container_state(self, container_id: str) -> dict[str, Any] | None:
        """The container's `State` as `docker inspect` shows it; None if it is gone.

        Raises EngineError if the engine cannot be asked.
        """
        client = await self._connection.client()
        try:
            found = await asyncio.to_thread(client.api.inspect_container, container_id)
        except docker.errors.NotFound:
            return None
        except DockerError as e:
            what = f"container {container_id[:12]}"
            raise EngineError(explain(self.docker_host, "cannot inspect", what, e)) from e
        state: dict[str, Any] = found["State"]
        return state

    async def stop_container(self, container_id: str, grace: timedelta) -> None:
        """`docker stop`: the image's stop signal (SIGTERM), SIGKILL after `grace` (whole seconds,
        rounded up); returns once the container has stopped. A container already stopped or
        gone is fine. Raises EngineError if the engine fails."""
        client = await self._connection.client()
        seconds = max(0, math.ceil(grace.total_seconds()))
        try:
            await in_thread(
                lambda: client.api.stop(container_id, timeout=seconds),
                f"stop {container_id[:12]}",
            )
        except docker.errors.NotFound:
            pass
        except DockerError as e:
            what = f"container {container_id[:12]}"
            raise EngineError(explain(self.docker_host, "cannot stop", what, e)) from e

    async def remove_container(self, container_id: str) -> None:
        """Force-remove a container and its anonymous volumes; one already gone or being
        removed is fine, other failures are logged. Never raises."""
        client = self._connection.current
        if client is None:
            return
        try:
            await asyncio.to_thread(client.api.remove_container, container_id, v=True, force=True)
        except docker.errors.NotFound:
            pass
        except DockerError as e:
            # 409: removal already in progress
            if not isinstance(e, docker.errors.APIError) or e.status_code != 409:
                log.warning("container %s: cannot remove: %s", container_id[:12], e)

    def forget(self, execution: ContainerExecution) -> None:
        """No longer track `execution` (it stopped following its container); idempotent."""
        if self._executions.get(execution.container_id) is execution:
            del self._executions[execution.container_id]

    # --- internals ---

    def _track(self, execution: ContainerExecution) -> ContainerExecution:
        self._executions[execution.container_id] = execution
        execution.follow_output()
        return execution

    async def _list(self, labels: dict[str, str]) -> list[dict[str, Any]]:
        client = await self._connection.client()
        filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
        try:
            found: list[dict[str, Any]] = await asyncio.to_thread(
                client.api.containers, all=True, filters=filters
            )
        except DockerError as e:
            raise EngineError(explain(self.docker_host, "cannot list", "containers", e)) from e
        return found


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
