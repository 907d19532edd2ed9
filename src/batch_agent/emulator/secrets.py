"""Secret Manager and Cloud KMS as the emulator plays them, for tasks' secret variables.

`SecretStore` answers `projects.secrets.versions.access` from a map of version paths to values
(`latest` is the highest numbered version of the secret when not given itself) and
`projects.locations.keyRings.cryptoKeys.decrypt` for ciphertexts made by `encrypt`: the
emulator's one KMS scheme, bound to the key's name and NOT encryption (base64 of a marker, the
key name and the plaintext). Requests are validated like the Batch API's: a bearer token,
well-formed names, a JSON body; errors are Google's error bodies. Plain values only: must not
import agent code or parse HTTP.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
from collections.abc import Mapping
from pathlib import Path

from batch_agent.emulator.backend import Reply, google_error

_MARKER = b"batch-emulator-kms/v1\n"
_VERSION = re.compile(r"^projects/[^/]+/secrets/[^/]+/versions/([^/]+)$")
_KEY = re.compile(r"^projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+$")


def encrypt(key_name: str, plaintext: bytes) -> str:
    """A base64 ciphertext that the emulator's KMS decrypts with `key_name` only."""
    if not _KEY.match(key_name):
        raise ValueError(
            f"{key_name!r} is not a KMS key (projects/P/locations/L/keyRings/R/cryptoKeys/K)"
        )
    return base64.b64encode(_MARKER + key_name.encode() + b"\n" + plaintext).decode()


def load_secrets(path: Path) -> dict[str, str]:
    """A `--secrets` file: a JSON object of version paths to string values; raises ValueError
    (OSError when it cannot be read)."""
    secrets = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(secrets, dict) or not all(isinstance(v, str) for v in secrets.values()):
        raise ValueError(f"{path}: expected a JSON object of version paths to strings")
    SecretStore(secrets)  # every path checked
    return secrets


class SecretStore:
    """Secret versions by path; thread-safe (`add` from tests, answers from request threads)."""

    def __init__(self, versions: Mapping[str, str] | None = None) -> None:
        self._lock = threading.Lock()
        self._versions: dict[str, str] = {}
        self.accessed: list[str] = []  # every version name asked for, in order (for tests)
        self._failures: list[int | None] = []  # the next calls' statuses (None: hang)
        self._released = threading.Event()  # set by release(): no call hangs any more
        self.hanging = 0  # calls left unanswered now (for tests)
        for path, value in (versions or {}).items():
            self.add(path, value)

    def add(self, path: str, value: str) -> None:
        """Serve `value` at `projects/P/secrets/S/versions/V`; raises ValueError for a bad path."""
        if not _VERSION.match(path) or not isinstance(value, str):
            raise ValueError(f"{path!r}: not a version path (projects/P/secrets/S/versions/V)")
        with self._lock:
            self._versions[path] = value

    def fail_next(self, n: int, status: int = 503) -> None:
        """Answer the next `n` Secret Manager or KMS calls with HTTP `status`."""
        with self._lock:
            self._failures.extend([status] * n)

    def hang_next(self, n: int) -> None:
        """Leave the next `n` Secret Manager or KMS calls unanswered until `release()` (then
        503), as a server that accepted the connection and went silent."""
        with self._lock:
            self._failures.extend([None] * n)

    def release(self) -> None:
        """End every hanging call and hang no more (the emulator is stopping)."""
        self._released.set()

    def access(self, name: str, authorization: str | None) -> Reply:
        """`GET v1/{name}:access`: the payload, base64 as the API sends it."""
        if (denied := self._injected() or _unauthenticated(authorization)) is not None:
            return denied
        if not (match := _VERSION.match(name)):
            return google_error(400, f"Invalid resource name: {name}")
        with self._lock:
            self.accessed.append(name)
            value = self._versions.get(name)
            if value is None and match[1] == "latest":
                value = self._latest(name.rsplit("/", 1)[0] + "/")
        if value is None:
            secret = name.rsplit("/versions/", 1)[0]
            return google_error(404, f"Secret [{secret}] not found or has no versions.")
        data = base64.b64encode(value.encode()).decode()
        return Reply(200, json.dumps({"name": name, "payload": {"data": data}}).encode())

    def decrypt(self, name: str, body: bytes, authorization: str | None) -> Reply:
        """`POST v1/{name}:decrypt` with `{"ciphertext": base64}`."""
        if (denied := self._injected() or _unauthenticated(authorization)) is not None:
            return denied
        if not _KEY.match(name):
            return google_error(400, f"Invalid resource name: {name}")
        try:
            request = json.loads(body)
            ciphertext = base64.b64decode(request["ciphertext"], validate=True)
        except (ValueError, KeyError, TypeError, binascii.Error, RecursionError):
            return google_error(400, "Invalid request: needs a base64 `ciphertext`")
        head = _MARKER + name.encode() + b"\n"
        if not ciphertext.startswith(head):
            return google_error(400, "Decryption failed: the ciphertext is invalid.")
        plaintext = base64.b64encode(ciphertext[len(head) :]).decode()
        return Reply(200, json.dumps({"plaintext": plaintext}).encode())

    def _injected(self) -> Reply | None:
        with self._lock:
            if not self._failures:
                return None
            status = self._failures.pop(0)
        if status is None:
            with self._lock:
                self.hanging += 1
            self._released.wait()
            with self._lock:
                self.hanging -= 1
            status = 503
        return google_error(status, "injected failure")

    def _latest(self, prefix: str) -> str | None:
        numbered = [
            (int(version), value)
            for path, value in self._versions.items()
            if path.startswith(prefix) and (version := path[len(prefix) :]).isdigit()
        ]
        return max(numbered)[1] if numbered else None


def _unauthenticated(authorization: str | None) -> Reply | None:
    if not authorization or not authorization.startswith("Bearer ") or len(authorization) < 8:
        return google_error(401, "Request is missing required authentication credential.")
    return None
