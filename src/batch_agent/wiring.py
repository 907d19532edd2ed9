"""What the agent is made of: this VM's facts, the task settings, the output sink.

The report loop (reporter.py) builds its parts here at start-up (its Google API clients come
from clients.py): the facts of this VM (the metadata server's reads retried until it
answers), `TaskSettings` (folders, environment, mounts, secrets, masking, where output goes),
control's `SecretsClient` adapted to the tasks' `SecretSource` (so that tasks never see
control), and the masking of the agent's own log. Everything here builds and returns; it must
not report, hold loop state, or decide anything about tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TypeVar

from batch_agent.cloudlog import AgentLog, CloudLogWriter, Site
from batch_agent.config import Config
from batch_agent.control import Backoff, CloudLogging, SecretError, SecretsClient
from batch_agent.journal import JournalOutput
from batch_agent.osrelease import read_os_release
from batch_agent.outputlog import OutputLog
from batch_agent.runtimedir import allows_exec, tasks_root
from batch_agent.tasks.env import base_environment
from batch_agent.tasks.masking import Masker, MaskingFilter
from batch_agent.tasks.mounts import MountSettings
from batch_agent.tasks.record import TaskRecord
from batch_agent.tasks.taskoutput import Sink
from batch_agent.tasks.taskset import TaskSettings
from batch_agent.telemetry import Telemetry
from batch_agent.vm import (
    EarlyAnswers,
    Machine,
    MetadataError,
    MetadataServer,
    VmIdentity,
    read_machine,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


def log_writer(
    config: Config,
    identity: VmIdentity,
    *,
    client: CloudLogging,
    masker: Masker,
    agent_log: AgentLog | None,
    save: Callable[[Sequence[TaskRecord]], Awaitable[None]],
    on_change: Callable[[], None],
) -> CloudLogWriter:
    """The one Cloud Logging writer, for this VM's project (its id from the metadata server,
    else its number, which Cloud Logging takes in a log name too)."""
    site = Site(identity.project_id or identity.project_number, identity.zone, identity.region)
    if agent_log is not None:
        agent_log.configure(site, identity.instance, identity.instance_id)
    return CloudLogWriter(
        client,
        site=site,
        workdir=config.state_dir / "tasks",
        mode=config.cloud_logging,
        masker=masker,
        save=save,
        on_change=on_change,
        agent_log=agent_log,
    )


class MetadataUnanswered(Exception):
    """The metadata server did not answer within the budget, or the agent was told to stop."""


async def wait_for_machine(
    config: Config,
    server: MetadataServer,
    *,
    sleep: Callable[[float], Awaitable[bool]],
    give_up_at: datetime | None,
    early: EarlyAnswers | None = None,
) -> Machine:
    """This VM (`vm.read_machine`; the first try takes the `early` answers when given), tried
    again with backoff until the metadata server answers (in worker threads).

    `sleep(seconds)` waits between tries and returns True once the agent is told to stop.
    Raises MetadataUnanswered past `give_up_at` (None: never) or when told to stop.
    """
    os_release = read_os_release(config.os_release)
    tries = [early] if early is not None else []

    def read() -> Machine:
        answers = tries.pop() if tries else server
        return read_machine(
            answers,
            version=config.reported_version,
            os_release=os_release,
            proc_stat=config.proc_stat,
        )

    return await _retried(read, sleep=sleep, give_up_at=give_up_at)


async def _retried(
    call: Callable[[], T],
    *,
    sleep: Callable[[float], Awaitable[bool]],
    give_up_at: datetime | None,
) -> T:
    """A blocking metadata read, retried with backoff; `wait_for_machine` says when it gives up."""
    backoff = Backoff()
    while True:
        try:
            return await asyncio.to_thread(call)
        except MetadataError as error:
            if give_up_at is not None and datetime.now(UTC) > give_up_at:
                raise MetadataUnanswered(f"metadata server: {error}") from error
            delay = backoff.next_delay()
            log.warning("metadata server: %s; retrying in %.1fs", error, delay.total_seconds())
            if await sleep(delay.total_seconds()):
                raise MetadataUnanswered("stopped while waiting for the metadata server") from error


def task_settings(
    config: Config,
    identity: VmIdentity,
    *,
    secrets: SecretsClient,
    masker: Masker,
    telemetry: Telemetry,
    drain_logs: Callable[[TaskRecord], Awaitable[None]] | None = None,
) -> TaskSettings:
    """What every task of this agent shares, for the VM `identity` names."""
    runtime = tasks_root(config.runtime_dir, config.state_dir / "tasks")  # blocks: start-up
    return TaskSettings(
        workdir=config.state_dir / "tasks",
        runtime=runtime,
        runtime_exec=allows_exec(runtime),
        where=f"zones/{identity.zone}/instances/{identity.instance_id}",
        base_env=base_environment(config.environ),
        # The one place output lines are masked: at the sink, before the agent's log.
        output=masker.sink(telemetry.counted(output_sink(config))),
        docker_host=config.docker_host,
        kill_grace=config.kill_grace,
        mounts=MountSettings(
            gcsfuse=config.gcsfuse,
            device_dir=config.device_dir,
            volume_root=config.volume_root,
        ),
        secrets=ControlSecrets(secrets),
        masker=masker,
        drain_logs=drain_logs,
    )


def output_sink(config: Config) -> Sink:
    """Runnables' output into our log stream, in journald's form when that is where it goes."""
    if config.log_format == "journal":
        return JournalOutput().write
    return OutputLog(config.log_format).write


@contextlib.contextmanager
def masked_log(masker: Masker) -> Iterator[None]:
    """Within the block, every value `masker` learns is masked in the agent's log (the root
    logger's handlers); the filter comes off again on the way out."""
    log_filter = MaskingFilter(masker)
    handlers = logging.getLogger().handlers
    for handler in handlers:
        handler.addFilter(log_filter)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(log_filter)


class ControlSecrets:
    """control's SecretsClient as the tasks' `hooks.SecretSource` (the tasks never see control).

    Blocks (the tasks call it in a worker thread); raises only SecretUnavailable.
    """

    # hooks (SecretUnavailable's home) is the task side, imported once tasks use secrets.

    def __init__(self, client: SecretsClient) -> None:
        self._client = client

    def access(self, version_path: str) -> str:
        try:
            return self._client.access_secret(version_path)
        except SecretError as error:
            from batch_agent.tasks.hooks import SecretUnavailable

            raise SecretUnavailable(str(error)) from None

    def decrypt(self, key_name: str, cipher_text: str) -> bytes:
        try:
            return self._client.decrypt(key_name, cipher_text)
        except SecretError as error:
            from batch_agent.tasks.hooks import SecretUnavailable

            raise SecretUnavailable(str(error)) from None
