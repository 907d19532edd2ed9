"""What to ask the engine for when creating a container: a ContainerSpec and the caller's
environment, labels and user -> `containers.create` keyword arguments, the container's name, and
the labels that let a restarted agent resume copying its output.

Pure (no engine, no files): cheap to table-test. Must not know what the labels mean to callers.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any

from batch_agent.tasks.docker.options import OptionError
from batch_agent.tasks.plan import ContainerSpec

LABEL_PREFIX = "batch-agent."
OUTPUT_LABELS = {  # stream -> (label of its file's path, label of the file's size at start)
    "stdout": (LABEL_PREFIX + "stdout", LABEL_PREFIX + "stdout-offset"),
    "stderr": (LABEL_PREFIX + "stderr", LABEL_PREFIX + "stderr-offset"),
}
_NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9_.-]+")


def create_kwargs(
    spec: ContainerSpec,
    options: dict[str, Any],
    *,
    env: dict[str, str],
    labels: dict[str, str],
    user: tuple[int, int] | None,
    default_volumes: list[str],
) -> dict[str, Any]:
    """`containers.create` keyword arguments (`options`: from `parse_options(spec.options)`).

    Raises OptionError when an option conflicts with a field of the spec or with `user`.
    """
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
    # The execution follows this log (`docker logs`) into the output files.
    kwargs["log_config"] = {"type": "json-file", "config": {}}
    return kwargs


def output_labels(outputs: dict[str, tuple[Path, int]]) -> dict[str, str]:
    """The labels recording each stream's file and its size when the container was created."""
    labels = {}
    for stream, (path, size) in outputs.items():
        path_label, offset_label = OUTPUT_LABELS[stream]
        labels[path_label] = str(path)
        labels[offset_label] = str(size)
    return labels


def recorded_outputs(labels: dict[str, str]) -> dict[str, tuple[Path | None, int]]:
    """Each stream's file (None: not recorded, drop the output) and its size at creation, read
    back from a container's labels."""
    outputs: dict[str, tuple[Path | None, int]] = {}
    for stream, (path_label, offset_label) in OUTPUT_LABELS.items():
        path = labels.get(path_label)
        try:
            offset = int(labels.get(offset_label, "0"))
        except ValueError:
            offset = 0
        outputs[stream] = (None, 0) if path is None else (Path(path), offset)
    return outputs


def container_name(hint: str) -> str:
    """A valid, unique container name that starts with (a cleaned) `hint`."""
    cleaned = _NAME_UNSAFE.sub("-", hint).strip("-_.")[:100] or "runnable"
    return f"{cleaned}-{secrets.token_hex(3)}"
