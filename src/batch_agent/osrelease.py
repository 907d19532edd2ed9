"""/etc/os-release, read for the report's `metadata.osRelease` ("parsed contents of
/etc/os-release"): every assignment, its shell quoting undone (os-release(5))."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def read_os_release(path: Path = Path("/etc/os-release")) -> dict[str, str]:
    """`/etc/os-release` as a map (`ID`, `VERSION_ID`, `VERSION_CODENAME`, ...), quotes removed.

    Every assignment is kept: the server decides what it wants. A missing or unreadable file
    gives {}; a line that is not `KEY=value` is skipped. Never raises.
    """
    try:
        text = path.read_text(errors="replace")
    except OSError as error:
        log.info("vm: no os-release at %s: %s", path, error)
        return {}
    release: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, equals, raw = line.partition("=")
        if not equals or not key.isidentifier():
            continue
        release[key] = _unquote(raw)
    return release


def _unquote(raw: str) -> str:
    """Undo os-release's shell quoting: '...' literal, "..." with backslash escapes of
    $ " \\ ` (os-release(5)), bare words with backslash escapes. The raw text if unbalanced.
    """
    out: list[str] = []
    quote = ""  # "", "'" or '"': the quote we are inside
    chars = iter(raw)
    for char in chars:
        if quote == "'":
            if char == "'":
                quote = ""
            else:
                out.append(char)
        elif char == "\\":
            following = next(chars, "")
            if quote == '"' and following not in '$"\\`':
                out.append(char)  # inside "...", other backslashes are literal
            out.append(following)
        elif char in "'\"" and (not quote or char == quote):
            quote = "" if quote else char
        else:
            out.append(char)
    return raw if quote else "".join(out)
