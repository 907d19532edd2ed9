"""A task's environment for its plan: variables and secret references, checked and merged.

Pure, like `plan`, which calls it: each problem is appended to the caller's list with the JSON
path of the field. Secrets are kept as references (Secret Manager version paths, KMS
ciphertexts), never resolved here: the prestart hook does that, and values never enter a plan.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from batch_agent.wire import AgentEnvironment, AgentTaskSpec, Environment, TaskSpec

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECRET_PATH = re.compile(r"^projects/[^/]+/secrets/[^/]+/versions/[^/]+$")
_KMS_KEY = re.compile(r"^projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+$")


def is_secret_path(value: str | None) -> bool:
    """Whether `value` names a Secret Manager version (`projects/P/secrets/S/versions/V`)."""
    return bool(value) and _SECRET_PATH.match(value or "") is not None


@dataclass(frozen=True)
class Encrypted:
    """An `encryptedVariables`: a KMS ciphertext of a JSON object of variable names to values."""

    key_name: str
    cipher_text: str


@dataclass(frozen=True)
class SecretRefs:
    """Where a level's secret variables come from; paths only, never values. Later wins:
    `secret` (name -> Secret Manager version path), then each of `encrypted` in order."""

    secret: dict[str, str] = field(default_factory=dict)
    encrypted: tuple[Encrypted, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.secret or self.encrypted)

    def __or__(self, later: SecretRefs) -> SecretRefs:
        return SecretRefs(self.secret | later.secret, self.encrypted + later.encrypted)


def task_environment(
    spec: TaskSpec | None, agent_spec: AgentTaskSpec | None, problems: list[str]
) -> tuple[dict[str, str], SecretRefs]:
    """The task level's variables and secrets. Both specs count, later wins (README):
    `agentTaskSpec.environment`, then `spec.environments`, then `spec.environment`."""
    merged: dict[str, str] = {}
    secrets = SecretRefs()
    if agent_spec is not None and agent_spec.environment is not None:
        where = "agentTaskSpec.environment"
        merged |= check_variables(agent_spec.environment.variables, where, problems)
        secrets |= check_secrets(agent_spec.environment, where, problems)
    if spec is not None:
        merged |= check_variables(spec.environments, "environments", problems)
        if spec.environment is not None:
            merged |= check_variables(spec.environment.variables, "environment", problems)
            secrets |= check_secrets(spec.environment, "environment", problems)
    return merged, secrets


def check_variables(values: dict[str, str], where: str, problems: list[str]) -> dict[str, str]:
    """A copy of `values`; a name that is not a shell variable name, or a NUL in a value, is a
    problem at `<where>.variables`."""
    for name, value in values.items():
        if not _ENV_NAME.match(name):
            problems.append(f'{where}.variables: "{name}" is not a valid variable name')
        elif "\0" in value:
            problems.append(f"{where}.variables.{name}: contains a NUL byte")
    return dict(values)


def check_secrets(
    environment: Environment | AgentEnvironment | None, where: str, problems: list[str]
) -> SecretRefs:
    """The secretVariables and encryptedVariables of one environment, checked (paths only)."""
    if environment is None:
        return SecretRefs()
    for name, path in environment.secret_variables.items():
        if not _ENV_NAME.match(name):
            problems.append(f'{where}.secretVariables: "{name}" is not a valid variable name')
        elif not is_secret_path(path):
            problems.append(
                f"{where}.secretVariables.{name}: {path!r} is not a Secret Manager version "
                "(projects/P/secrets/S/versions/V)"
            )
    encrypted: tuple[Encrypted, ...] = ()
    kms = environment.encrypted_variables
    if kms is not None and (kms.key_name or kms.cipher_text):
        if not kms.key_name or not _KMS_KEY.match(kms.key_name):
            problems.append(
                f"{where}.encryptedVariables.keyName: {kms.key_name!r} is not a Cloud KMS key "
                "(projects/P/locations/L/keyRings/R/cryptoKeys/K)"
            )
        elif not kms.cipher_text:
            problems.append(f"{where}.encryptedVariables.cipherText: empty")
        else:
            encrypted = (Encrypted(kms.key_name, kms.cipher_text),)
    return SecretRefs(dict(environment.secret_variables), encrypted)
