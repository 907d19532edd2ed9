"""What the docker SDK raises, read once: the engine's own words, an unreachable engine, and the
exit codes `docker run` gives when the engine cannot execute the command.

Nothing here talks to the engine or knows of tasks; callers turn these into `EngineError`s or
`ExitResult`s.
"""

from __future__ import annotations

import docker.errors
import requests.exceptions

DockerError = (docker.errors.DockerException, requests.exceptions.RequestException)
"""What the SDK raises for an engine that refuses, fails or cannot be reached."""


class EngineError(Exception):
    """The Docker engine refused or failed an operation; the message says what and why."""


def engine_message(e: Exception) -> str:
    """The engine's (or registry's) own words for an error, without the SDK's decoration."""
    explanation = getattr(e, "explanation", None)
    if isinstance(explanation, bytes):
        explanation = explanation.decode(errors="replace")
    return str(explanation or e).strip()


def explain(docker_host: str, verb: str, what: str, e: Exception) -> str:
    """A reason for a failed engine call (`cannot pull x: ...`), telling an unreachable engine
    apart (`Docker engine unreachable at HOST: ...`)."""
    if isinstance(e, requests.exceptions.ConnectionError):
        return f"Docker engine unreachable at {docker_host}: {e}"
    return f"{verb} {what}: {engine_message(e)}"


def exec_failure_code(e: Exception) -> int | None:
    """127 or 126 when a failed container start means the command could not be executed, as
    `docker run` exits then; None for other failures.

    The engine answers these with a bare 400/500 whose only distinction is the OCI runtime's
    words, so the words are what we read.
    """
    message = engine_message(e).lower()
    if "executable file not found" in message or "no such file or directory" in message:
        return 127
    if "permission denied" in message:
        return 126
    return None
