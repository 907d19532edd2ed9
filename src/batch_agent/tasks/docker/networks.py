"""Networks: the internal bridge network of blockExternalNetwork containers, made and removed.

This module must not touch containers, and must not block the event loop (SDK calls run in
the loop's default executor).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import docker.errors

from batch_agent.tasks.docker.create import LABEL_PREFIX
from batch_agent.tasks.docker.errors import DockerError, EngineError, explain

log = logging.getLogger(__name__)


async def ensure_internal(client: Any, name: str, *, docker_host: str) -> None:
    """Create the bridge network `name` with no way out, unless it exists (see
    `ContainerEngine.ensure_internal_network`). Idempotent, also against another process
    creating it at the same time. Raises EngineError if the engine fails, or if a network of
    that name exists but is not internal."""
    what = f"network {name}"
    try:
        found = await asyncio.to_thread(client.api.inspect_network, name)
    except docker.errors.NotFound:
        found = None
    except DockerError as e:
        raise EngineError(explain(docker_host, "cannot inspect", what, e)) from e
    if found is not None:
        if not found.get("Internal"):
            raise EngineError(f"network {name} exists and is not internal")
        return
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
            raise EngineError(explain(docker_host, "cannot create", what, e)) from e
    except DockerError as e:
        raise EngineError(explain(docker_host, "cannot create", what, e)) from e
    log.info("network %s: created (internal)", name)


async def remove(client: Any, name: str, *, docker_host: str) -> None:
    """Remove the network `name`; fine if it does not exist. Raises EngineError otherwise
    (e.g. containers still use it)."""
    try:
        await asyncio.to_thread(client.api.remove_network, name)
    except docker.errors.NotFound:
        return
    except DockerError as e:
        raise EngineError(explain(docker_host, "cannot remove", f"network {name}", e)) from e
