"""The environment a runnable starts with.

Layers, later wins (docs/choices.md): a clean base taken from the agent's own environment ->
the task's variables -> the runnable's variables -> the Batch variables (`BATCH_TASK_INDEX`,
...), which the agent always sets and user variables cannot override. `HOME` defaults to the
caller's choice when no layer sets it.

This module only merges mappings: it does not read `os.environ` (the caller passes it in),
resolve secrets, or log values (they may be secret).
"""

from __future__ import annotations

from collections.abc import Mapping

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_HOME = "/root"

BASE_KEYS: tuple[str, ...] = (
    "PATH",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "LC_COLLATE",
    "LC_MESSAGES",
    "LC_MONETARY",
    "LC_NUMERIC",
    "LC_TIME",
    "TZ",
    "TERM",
)
"""The variables of the agent's environment that runnables inherit; no other one leaks."""


def base_environment(source: Mapping[str, str]) -> dict[str, str]:
    """The clean base: the BASE_KEYS present in `source`, with PATH defaulting to DEFAULT_PATH."""
    base = {key: source[key] for key in BASE_KEYS if key in source}
    if not base.get("PATH"):
        base["PATH"] = DEFAULT_PATH
    return base


def runnable_environment(
    base: Mapping[str, str],
    task_vars: Mapping[str, str],
    runnable_vars: Mapping[str, str],
    batch_vars: Mapping[str, str],
    *,
    home: str = DEFAULT_HOME,
) -> dict[str, str]:
    """Merge the layers, later wins: base -> task -> runnable -> batch; HOME=`home` if unset.

    Pure; does not validate names or values (a NUL byte makes the start fail, as a reason).
    """
    env = {**base, **task_vars, **runnable_vars, **batch_vars}
    env.setdefault("HOME", home)
    return env
