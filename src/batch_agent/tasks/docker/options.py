"""`docker run` options (a ContainerSpec's `options` string) -> docker SDK arguments.

Pure: parses like a shell would (shlex), maps the common flags to `containers.create` keywords
and refuses the rest with an OptionError that names the option. Nothing is passed through a
shell, and nothing here talks to Docker or uses the docker SDK (so it is cheap to table-test).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from typing import Any, Literal


class OptionError(ValueError):
    """A `docker run` option we refuse; the message names it."""


_Kind = Literal[
    "str", "bool", "env", "label", "host", "tmpfs", "ulimit", "bytes", "cpus", "gpus", "list"
]
_OPTIONS: dict[str, tuple[str, _Kind]] = {
    # flag: (containers.create keyword, how the value is read)
    "--network": ("network", "str"),
    "--privileged": ("privileged", "bool"),
    "--shm-size": ("shm_size", "bytes"),
    "--ipc": ("ipc_mode", "str"),
    "--pid": ("pid_mode", "str"),
    "--env": ("environment", "env"),
    "--add-host": ("extra_hosts", "host"),
    "--cap-add": ("cap_add", "list"),
    "--cap-drop": ("cap_drop", "list"),
    "--device": ("devices", "list"),
    "--gpus": ("device_requests", "gpus"),
    "--ulimit": ("ulimits", "ulimit"),
    "--memory": ("mem_limit", "bytes"),
    "--cpus": ("nano_cpus", "cpus"),
    "--workdir": ("working_dir", "str"),
    "--user": ("user", "str"),
    "--init": ("init", "bool"),
    "--tmpfs": ("tmpfs", "tmpfs"),
    "--security-opt": ("security_opt", "list"),
    "--name": ("name", "str"),
    "--hostname": ("hostname", "str"),
    "--entrypoint": ("entrypoint", "str"),
    "--rm": ("", "bool"),  # accepted: we always remove the container once it has ended
    "--label": ("labels", "label"),
}
_SHORT = {
    "-e": "--env",
    "-h": "--hostname",
    "-l": "--label",
    "-m": "--memory",
    "-u": "--user",
    "-w": "--workdir",
    "-v": "--volume",
}
_REFUSED = {
    "--volume": 'is not allowed; use the "volumes" field',
    "--mount": 'is not allowed; use the "volumes" field',
}
# With blockExternalNetwork the task asked for a container cut off from every network but its
# task's own. These would let it step around that: reach the host's namespaces or devices, or
# rebuild its own networking. Without blockExternalNetwork they are the user's to use, as any
# root script on the VM could do the same.
_ESCAPE_CAPABILITIES = {"ALL", "NET_ADMIN", "NET_RAW", "SYS_ADMIN", "SYS_MODULE", "SYS_PTRACE"}


def isolation_breaches(kwargs: dict[str, Any]) -> list[str]:
    """The parsed options (as `parse_options` gives them) that would defeat
    blockExternalNetwork, named as the user wrote them; empty if none. Pure."""
    found = []
    if kwargs.get("network") is not None:
        found.append("--network")
    if kwargs.get("privileged"):
        found.append("--privileged")
    for key, flag in (("pid_mode", "--pid"), ("ipc_mode", "--ipc")):
        if str(kwargs.get(key, "")).lower() == "host":
            found.append(f"{flag}=host")
    capabilities = {str(c).upper().removeprefix("CAP_") for c in kwargs.get("cap_add") or []}
    found += [f"--cap-add={c}" for c in sorted(capabilities & _ESCAPE_CAPABILITIES)]
    if kwargs.get("devices"):
        found.append("--device")
    return found


_BYTES = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?$", re.IGNORECASE)


def parse_options(options: str | None) -> dict[str, Any]:
    """Map a `docker run` option string to `containers.create` keyword arguments.

    Words are split as by a POSIX shell; flags take `--flag value` or `--flag=value` (short
    ones also `-fvalue`); booleans may be bare or `=true`/`=false`; repeated list flags add up.
    Pure. Raises OptionError naming the option for anything unknown, malformed or refused.
    """
    if not options or not options.strip():
        return {}
    try:
        words = shlex.split(options)
    except ValueError as e:
        raise OptionError(f"options: {e}") from None
    kwargs: dict[str, Any] = {}
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        flag, value = _split_flag(word)
        if flag in _REFUSED:
            raise OptionError(f'options: "{word}" {_REFUSED[flag]}')
        if flag not in _OPTIONS:
            raise OptionError(f'options: "{word}" is not supported')
        key, kind = _OPTIONS[flag]
        if kind == "bool":
            if value not in (None, "true", "false", "1", "0"):
                raise OptionError(f'options: "{word}": expected true or false')
            if key:
                kwargs[key] = value in (None, "true", "1")
            continue
        if value is None:
            if i == len(words):
                raise OptionError(f'options: "{flag}" needs a value')
            value = words[i]
            i += 1
        _add_option(kwargs, flag, key, kind, value)
    return kwargs


def _split_flag(word: str) -> tuple[str, str | None]:
    """`--flag=v` -> (`--flag`, `v`); `-e` -> (`--env`, None); `-eA=1` -> (`--env`, `A=1`)."""
    if word.startswith("--"):
        flag, eq, value = word.partition("=")
        return flag, value if eq else None
    if word.startswith("-") and len(word) >= 2:
        flag = _SHORT.get(word[:2], word)
        rest = word[2:]
        if not rest:
            return flag, None
        if word[:2] in _SHORT:
            return flag, rest.removeprefix("=")
        return word, None
    raise OptionError(f'options: "{word}" is not an option (the image and command have fields)')


def _add_option(kwargs: dict[str, Any], flag: str, key: str, kind: _Kind, value: str) -> None:
    def bad(why: str) -> OptionError:
        return OptionError(f'options: "{flag}" value "{value}" {why}')

    if kind == "str":
        kwargs[key] = [value] if key == "entrypoint" else value  # the SDK would shlex-split a str
    elif kind == "list":
        kwargs.setdefault(key, []).append(value)
    elif kind == "env":
        name, eq, val = value.partition("=")
        if not eq or not name:
            raise bad("needs the form NAME=VALUE (nothing is taken from the host)")
        kwargs.setdefault(key, {})[name] = val
    elif kind == "label":
        name, _, val = value.partition("=")
        if not name:
            raise bad("needs the form KEY=VALUE")
        kwargs.setdefault(key, {})[name] = val
    elif kind == "host":
        host, sep, ip = value.partition(":")
        if not sep or not host or not ip:
            raise bad("needs the form HOST:IP")
        kwargs.setdefault(key, {})[host] = ip
    elif kind == "tmpfs":
        path, _, mount_options = value.partition(":")
        if not path.startswith("/"):
            raise bad("needs an absolute path")
        kwargs.setdefault(key, {})[path] = mount_options
    elif kind == "bytes":
        kwargs[key] = _parse_bytes(value, bad)
    elif kind == "cpus":
        try:
            cpus = float(value)
        except ValueError:
            raise bad("is not a number") from None
        if not 0 < cpus < 1e6:
            raise bad("is out of range")
        kwargs[key] = round(cpus * 1e9)
    elif kind == "ulimit":
        kwargs.setdefault(key, []).append(_parse_ulimit(value, bad))
    elif kind == "gpus":
        kwargs.setdefault(key, []).append(_parse_gpus(value, bad))


def _parse_bytes(value: str, bad: Callable[[str], OptionError]) -> int:
    """`512m`, `1g`, `1GiB`, `100000` (bytes): binary units, as `docker run` reads them."""
    match = _BYTES.match(value.strip())
    if match is None:
        raise bad("is not a size (such as 512m or 2g)")
    power = " kmgtp".index(match.group(2).lower() or " ")
    return int(float(match.group(1)) * 1024**power)


def _parse_ulimit(value: str, bad: Callable[[str], OptionError]) -> dict[str, Any]:
    """`nofile=1024:2048` or `nofile=1024` -> a docker `Ulimit` as a dict."""
    name, eq, limits = value.partition("=")
    soft, _, hard = limits.partition(":")
    try:
        soft_n = int(soft)
        hard_n = int(hard) if hard else soft_n
    except ValueError:
        raise bad("needs the form NAME=SOFT[:HARD] with numbers") from None
    if not eq or not name:
        raise bad("needs the form NAME=SOFT[:HARD]")
    return {"name": name, "soft": soft_n, "hard": hard_n}


def _parse_gpus(value: str, bad: Callable[[str], OptionError]) -> dict[str, Any]:
    """`all`, `2`, `device=0,1`, `count=2`, `"device=GPU-uuid"` -> a docker `DeviceRequest` dict."""
    request: dict[str, Any] = {"capabilities": [["gpu"]]}
    value = value.strip('"')
    if value == "all":
        request["count"] = -1
    elif value.isdigit():
        request["count"] = int(value)
    elif value.startswith("device="):
        ids = [d for d in value.removeprefix("device=").split(",") if d]
        if not ids:
            raise bad("names no device")
        request["device_ids"] = ids
    elif value.startswith("count="):
        count = value.removeprefix("count=")
        if count != "all" and not count.isdigit():
            raise bad("needs a number or all")
        request["count"] = -1 if count == "all" else int(count)
    else:
        raise bad("is not supported (use all, a count, device=IDS or count=N)")
    return request
