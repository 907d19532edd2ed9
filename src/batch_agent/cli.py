"""Command line: argv -> Config, logging, signals, exit codes (a contract: README "Command line").

Holds the agent's single catch-all: an unexpected error is logged loudly and exits non-zero,
and systemd restarts us.
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

from batch_agent import REPORTED_VERSION, __version__

if TYPE_CHECKING:
    import argparse

    from batch_agent.statedir import StateDirLock
    from batch_agent.store import TaskStore

# What each command imports is imported where it is used: `version` loads next to nothing.

EXIT_OK, EXIT_TASK_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_REJECTED = 0, 1, 2, 3, 4


# `run`'s options, in one place: `_parser` gives them to argparse, and `_run_args` reads the
# usual command lines without it (argparse's import and the parser's build: ~10 ms of each
# agent's start-up CPU). Each: flag, value (None: a switch; str; Path; or the choices), help.
_RUN_OPTIONS: tuple[tuple[str, type | tuple[str, ...] | None, str | None], ...] = (
    ("--once", None, "run the tasks received to their end"),
    ("--endpoint", str, "Batch API root (env BATCH_AGENT_ENDPOINT)"),
    (
        "--secretmanager-endpoint",
        str,
        "Secret Manager API root (env BATCH_AGENT_SECRETMANAGER_ENDPOINT)",
    ),
    ("--kms-endpoint", str, "Cloud KMS API root (env BATCH_AGENT_KMS_ENDPOINT)"),
    ("--logging-endpoint", str, "Cloud Logging API root (env BATCH_AGENT_LOGGING_ENDPOINT)"),
    (
        "--cloud-logging",
        ("auto", "always", "tasks", "never"),
        "ship task output to Cloud Logging (env BATCH_AGENT_CLOUD_LOGGING; default auto;"
        " tasks: every task's, not the agent's own log)",
    ),
    ("--state-dir", Path, "durable state (env BATCH_AGENT_STATE_DIR)"),
    ("--config", Path, "a JSON file of settings"),
    ("--log-format", ("auto", "text", "json", "journal"), None),
    (
        "--reported-version",
        str,
        "the agent version told to the server (env BATCH_AGENT_REPORTED_VERSION)",
    ),
    (
        "--exit-with-parent",
        None,
        "when the process that started this agent ends, cancel every task and stop"
        " (`batch-agent local` uses it; never on a VM)",
    ),
)


def _parser() -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(prog="batch-agent", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the agent (a daemon, or one cycle with --once)")
    for flag, value, text in _RUN_OPTIONS:
        if value is None:
            run.add_argument(flag, action="store_true", help=text)
        elif isinstance(value, tuple):
            run.add_argument(flag, choices=list(value), help=text)
        else:
            run.add_argument(flag, type=value, help=text)
    status = commands.add_parser("status", help="what the agent on this VM is doing (read-only)")
    status.add_argument("--state-dir", type=Path, help="default: env BATCH_AGENT_STATE_DIR")
    status.add_argument("--json", action="store_true", help="one JSON object")
    logs = commands.add_parser("logs", help="a task's runnable output, from its files")
    logs.add_argument("task", metavar="TASK", help="the task's name as reported, or its index")
    logs.add_argument("--state-dir", type=Path, help="default: env BATCH_AGENT_STATE_DIR")
    logs.add_argument("--runnable", type=int, metavar="N", help="only runnable N (1-based)")
    logs.add_argument("-f", "--follow", action="store_true", help="until the task has ended")
    logs.add_argument("--json", action="store_true", help="one JSON object per line")
    commands.add_parser("emulator", help="the local control plane", add_help=False)
    commands.add_parser("local", help="run a Batch job config on this machine", add_help=False)
    commands.add_parser("version", help="print our version and the one reported to the server")
    return parser


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["emulator"]:
        from batch_agent.emulator.cli import main as emulator_main

        return emulator_main(args_list[1:])
    if args_list[:1] == ["local"]:
        from batch_agent.local.cli import main as local_main

        return local_main(args_list[1:])
    if args_list == ["version"]:  # as argparse would do it, without loading argparse
        return _version()
    run = _run_args(args_list)
    if run is not None:
        return _run(run)
    try:
        args = _parser().parse_args(args_list)
    except SystemExit as exit_:
        return EXIT_OK if exit_.code in (0, None) else EXIT_USAGE
    if args.command == "version":
        return _version()
    if args.command == "status":
        return _status(args)
    if args.command == "logs":
        return _logs(args)
    return _run(args)


def _run_args(argv: list[str]) -> SimpleNamespace | None:
    """`run` and its options as argparse reads them, for the usual command lines: each option
    named in full, with its value. None for anything else (an abbreviation, `-h`, a mistake):
    argparse then reads it, with its own messages."""
    if argv[:1] != ["run"]:
        return None
    options = {flag: value for flag, value, _ in _RUN_OPTIONS}
    read: dict[str, object] = {
        flag[2:].replace("-", "_"): False if value is None else None
        for flag, value in options.items()
    }
    words = iter(argv[1:])
    for word in words:
        flag, equals, given = word.partition("=")
        if flag not in options:
            return None
        value = options[flag]
        if value is None:
            if equals:
                return None
            read[flag[2:].replace("-", "_")] = True
            continue
        if not equals:
            given = next(words, "-")
            if given.startswith("-"):  # missing, or what argparse would take for an option
                return None
        if isinstance(value, tuple) and given not in value:
            return None
        read[flag[2:].replace("-", "_")] = given if isinstance(value, tuple) else value(given)
    return SimpleNamespace(command="run", **read)


def _version() -> int:
    print(f"batch-agent {__version__}")
    print(f"reported as {_reported_version()}")
    return EXIT_OK


def _reported_version() -> str:
    """What `run` would report as its version here (the environment may set it)."""
    from batch_agent.config import ConfigError, load_config

    try:  # a log format given: `auto` would look for the journal, which `version` never logs to
        return load_config(log_format="text").reported_version
    except ConfigError:
        return REPORTED_VERSION


def _run(args: argparse.Namespace | SimpleNamespace) -> int:
    import signal
    from datetime import UTC, datetime

    started = datetime.now(UTC)  # the report's agent_startup_time
    # A SIGTERM or SIGINT before the event loop takes them over (the first report may be on
    # its way already) is kept, and the loop stops at once: a clean exit, not death by signal.
    stop_asked: list[int] = []
    for signo in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signo, lambda signo, _: stop_asked.append(signo))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # Importing the agent allocates much and frees next to nothing: the cycle collector's passes
    # over it are wasted start-up time (about 8 % of its CPU, measured). What the imports built
    # is then frozen, so that no later collection scans it again.
    gc.disable()
    try:
        from batch_agent.config import ConfigError, load_config

        try:
            config = load_config(
                args.config,
                endpoint=args.endpoint,
                secretmanager_endpoint=args.secretmanager_endpoint,
                kms_endpoint=args.kms_endpoint,
                logging_endpoint=args.logging_endpoint,
                cloud_logging=args.cloud_logging,
                state_dir=args.state_dir,
                log_format=args.log_format,
                reported_version=args.reported_version,
            )
        except ConfigError as error:
            print(f"batch-agent: configuration: {error}", file=sys.stderr)
            return EXIT_USAGE
        # What the first report needs from the metadata server is asked now, in threads: the
        # answers come while the rest of the agent is imported (most of its start-up).
        from batch_agent.vm import ask_early

        early = ask_early(config.metadata_host, token=config.credentials_file is None)
        from batch_agent.logformat import HeldRecords, setup_logging

        setup_logging(config.log_format)
        held = HeldRecords()  # until the agent's Cloud Logging handler takes them over
        # The state dir's lock taken. If its database is new, it holds no task: the first
        # report goes as soon as the Google client stack is imported, in a thread, while the
        # rest is imported (firstreport.py).
        lock = _lock_state_dir(config.state_dir)
        database = config.state_dir / "state.db"
        first = None
        fresh = not isinstance(lock, Exception) and not database.exists()
        if fresh and config.credentials_file is None:
            from batch_agent.firstreport import FirstReport

            first = FirstReport(config, early, started=started, once=args.once)
        # And its database opened in the store's thread: the disk's waits (a new database's
        # fsyncs: 6-22 ms) pass while the rest is imported.
        state = _open_store(lock, database)

        import asyncio
        import logging

        from batch_agent.reporter import Rejected, Reporter, Unreachable
        from batch_agent.statedir import StateDirBusy
    finally:
        gc.freeze()
        gc.enable()

    from batch_agent.pidwatch import watch_children_by_pidfd, watch_parent

    watch_children_by_pidfd()
    log = logging.getLogger("batch_agent")

    async def go() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signo in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signo, stop.set)
        # A hangup (a closed terminal, a careless `kill -HUP`) must not end the agent.
        loop.add_signal_handler(signal.SIGHUP, lambda: log.info("SIGHUP ignored"))
        if stop_asked:
            stop.set()
        try:
            if isinstance(state, Exception):  # raised here, as the reporter would have
                raise state
            reporter = Reporter(
                config,
                stop=stop,
                started=started,
                early=early,
                state=state,
                first=first,
                held=held,
            )
            if args.exit_with_parent:
                watch_parent(reporter.abandon)
            outcome = await reporter.run(once=args.once)
        except Unreachable as error:
            if stop.is_set():  # told to stop while still looking for the servers
                return EXIT_OK
            log.error("control plane unreachable: %s", error)
            return EXIT_UNREACHABLE
        except Rejected as error:
            log.error("control plane rejected the report, not retrying: %s", error)
            return EXIT_REJECTED
        except StateDirBusy as error:  # two agents on one state dir: a configuration error
            log.error("%s; exiting", error)
            return EXIT_USAGE
        if args.once and outcome.failed:
            return EXIT_TASK_FAILED
        return EXIT_OK

    try:
        status = asyncio.run(go())
    except Exception:
        log.critical("the agent crashed", exc_info=True)
        return 70  # EX_SOFTWARE: systemd restarts us
    # The loop is gone and with it our handlers: a late SIGTERM must not turn a clean exit into
    # a death by signal.
    for signo in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signo, signal.SIG_IGN)
    return status


def _lock_state_dir(state_dir: Path) -> StateDirLock | Exception:
    """The state dir's lock, or what went wrong (StateDirBusy: another agent has it), for
    `_run` to raise once it can log. Nothing is touched but the lock file."""
    from batch_agent.statedir import claim_state_dir

    try:
        return claim_state_dir(state_dir)
    except Exception as error:
        return error


def _open_store(
    lock: StateDirLock | Exception, database: Path
) -> tuple[StateDirLock, TaskStore] | Exception:
    """The lock and the store of the `database` it guards (opening, not waited for); or what
    went wrong, the lock's first."""
    if isinstance(lock, Exception):
        return lock
    from batch_agent.store import TaskStore

    try:
        return lock, TaskStore(database, wait=False)
    except Exception as error:
        lock.release()
        return error


def _state_dir(args: argparse.Namespace) -> Path:
    from batch_agent.config import load_config

    return load_config(state_dir=args.state_dir).state_dir


def _status(args: argparse.Namespace) -> int:
    """`batch-agent status`: read-only; exit 1 when there is no agent state to read."""
    import json

    from batch_agent.status import NoState, read_status, render

    try:
        found = read_status(_state_dir(args))
    except NoState as error:
        print(f"batch-agent: {error}", file=sys.stderr)
        return EXIT_TASK_FAILED
    print(json.dumps(found, indent=2) if args.json else render(found))
    return EXIT_OK


def _logs(args: argparse.Namespace) -> int:
    """`batch-agent logs TASK`: exit 1 when there is no such task; Ctrl-C ends -f quietly."""
    from batch_agent.logs import TaskNotFound, task_output
    from batch_agent.status import NoState

    try:
        lines = task_output(_state_dir(args), args.task, runnable=args.runnable, follow=args.follow)
        for line in lines:
            print(line.json() if args.json else line.plain(), flush=args.follow)
    except (NoState, TaskNotFound) as error:
        print(f"batch-agent: {error}", file=sys.stderr)
        return EXIT_TASK_FAILED
    except KeyboardInterrupt:
        return 130
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
