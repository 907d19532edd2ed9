"""Images: make sure the engine has a container's image, pulling it (with the spec's registry
credentials) when it is missing, and trying again after transient failures.

Retry budget: at most `PULL_ATTEMPTS` (3) pulls per start, with a pause of `PULL_BACKOFF` (2 s)
after the first failure, doubled after each further one (2 s, then 4 s: 6 s of pauses on top of
the pulls themselves). Only transient failures are tried again (see `_is_transient`).

This module must not create or start containers, nor block the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta
from typing import Any

import docker.errors
import docker.utils

from batch_agent.tasks.docker.errors import DockerError, EngineError, engine_message, explain
from batch_agent.tasks.docker.logs import in_thread
from batch_agent.tasks.plan import ContainerSpec

log = logging.getLogger(__name__)

PULL_ATTEMPTS = 3
PULL_BACKOFF = timedelta(seconds=2)  # doubled after each failed attempt

# How a registry's refusal reads when the engine passes it on as a 500, or inside the pull's
# progress stream (after it answered 200): the error codes of the OCI distribution spec
# (`unauthorized`, `denied`, `manifest unknown`, `name unknown`), and the engine's own words for
# a missing login. Docker engines up to at least 26 answer a wrong password with 500.
_REFUSALS = (
    "unauthorized",
    "denied",
    "forbidden",
    "authentication required",
    "no basic auth credentials",
    "manifest unknown",
    "name unknown",
    "not found",
)


class PullStreamError(docker.errors.DockerException):  # type: ignore[misc]
    """An error the engine reported inside a pull's progress stream, with no HTTP status."""


async def ensure_image(
    client: Any,
    spec: ContainerSpec,
    *,
    what: str,
    docker_host: str,
    attempts: int = PULL_ATTEMPTS,
    backoff: timedelta = PULL_BACKOFF,
) -> None:
    """Pull `spec.image_uri` unless the engine has it (`client`: a docker SDK client).

    `what` names the runnable in log lines. Raises EngineError with the reason (the engine's or
    the registry's words) if the image cannot be had. Does not block the event loop.
    """
    image = spec.image_uri
    try:
        await asyncio.to_thread(client.api.inspect_image, image)
        return
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as e:
        if e.status_code != 400:  # 400: a malformed reference; let the pull explain it
            raise EngineError(explain(docker_host, "cannot pull", image, e)) from e
    except DockerError as e:
        raise EngineError(explain(docker_host, "cannot pull", image, e)) from e
    if spec.enable_image_streaming:
        log.info("%s: image streaming is not available here; pulling %s", what, image)
    auth = None
    if spec.username or spec.password:
        auth = {"username": spec.username or "", "password": spec.password or ""}
    pause = backoff.total_seconds()
    for attempt in range(1, attempts + 1):
        log.info("%s: pulling %s (attempt %d)", what, image, attempt)
        started = time.monotonic()
        try:
            await in_thread(lambda: _pull(client, image, auth), f"pull {image}")
            log.info("%s: pulled %s in %.1fs", what, image, time.monotonic() - started)
            return
        except DockerError as e:
            reason = explain(docker_host, "cannot pull image", image, e)
            if not _is_transient(e) or attempt == attempts:
                raise EngineError(reason) from e
            log.warning("%s: %s; trying again in %.1fs", what, reason, pause)
        await asyncio.sleep(pause)
        pause *= 2


def _pull(client: Any, image: str, auth: dict[str, str] | None) -> None:
    """Pull `image` (tag `latest` if it names none); blocks. Raises PullStreamError for an
    error inside the progress stream, the SDK's errors for the rest."""
    repository, tag = docker.utils.parse_repository_tag(image)
    stream = client.api.pull(
        repository, tag=tag or "latest", auth_config=auth, stream=True, decode=True
    )
    for event in stream:
        if "error" in event:
            raise PullStreamError(str(event["error"]))


def _is_transient(e: Exception) -> bool:
    """Whether a failed pull is worth trying again (network trouble, registry overload, an
    engine restarting)."""
    if isinstance(e, docker.errors.APIError):  # (an APIError is a RequestException too)
        # 4xx: a malformed reference (400), a refused login (401, 403), no such image (404); but
        # a timeout (408) or too many requests (429) may pass.
        if e.is_client_error() and e.status_code not in (408, 429):
            return False
    elif not isinstance(e, PullStreamError):
        return True  # no answer from the engine at all: it may be restarting
    # A 5xx or an in-stream error: the engine gives no status for a registry's refusal, only
    # the registry's words (see _REFUSALS).
    message = engine_message(e).lower()
    return not any(refusal in message for refusal in _REFUSALS)
