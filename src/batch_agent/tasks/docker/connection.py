"""The connection to one Docker engine: a docker SDK client made on first use, tried again after
a failed connect, and extra clients without read timeout for long log streams.

One `docker.DockerClient` serves the short calls of a whole engine from several threads at once
(a `requests.Session` over a urllib3 pool, which hands each thread its own connection).

This module must not read `os.environ` (the host comes as a parameter) and must not block the
event loop.
"""

from __future__ import annotations

import asyncio
import socket
from datetime import timedelta
from typing import Any

import docker
import docker.errors

from batch_agent.tasks.docker.errors import DockerError, EngineError

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"

_CONNECT_TIMEOUT = timedelta(seconds=60)  # each short API call; the SDK's default


class Connection:
    """A lazily made docker SDK client of the engine at `docker_host`."""

    def __init__(self, docker_host: str | None = None) -> None:
        self.docker_host = docker_host or DEFAULT_DOCKER_HOST
        self._client: Any = None  # docker.DockerClient, once connected
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def current(self) -> Any:
        """The client if connected, else None; never connects."""
        return self._client

    async def client(self) -> Any:
        """The engine-wide client, connecting (and negotiating the API version) on first use.

        Raises EngineError("Docker engine unreachable at ...") if that fails, or if closed.
        """
        if self._closed:
            raise EngineError(f"Docker engine at {self.docker_host} is closed")
        async with self._lock:
            if self._client is None:
                try:
                    self._client = await asyncio.to_thread(self._new_client)
                except DockerError as e:
                    raise EngineError(
                        f"Docker engine unreachable at {self.docker_host}: {e}"
                    ) from e
            return self._client

    def log_client(self) -> Any:
        """A new client for long log streams, without read timeout (a quiet container is not a
        fault); the caller closes it. Only once connected. Does not block."""
        assert self._client is not None, "log_client before the engine connected"
        return self._new_client(version=self._client.api.api_version, timeout=None)

    def close(self) -> None:
        """Close the client; later calls of `client()` raise EngineError. Idempotent."""
        self._closed = True
        if self._client is not None:
            self._client.close()
            self._client = None

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
