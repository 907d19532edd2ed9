"""Command line: argv -> Config, logging, signals, exit codes (a contract: README "Command line").

Holds the agent's single catch-all: an unexpected error is logged loudly and exits non-zero,
and systemd restarts us.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import warnings
from pathlib import Path

from batch_agent import REPORTED_VERSION, __version__

EXIT_OK, EXIT_TASK_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_REJECTED = 0, 1, 2, 3, 4

log = logging.getLogger("batch_agent")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="batch-agent", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the agent (a daemon, or one cycle with --once)")
    run.add_argument("--once", action="store_true", help="run the tasks received to their end")
    run.add_argument("--endpoint", help="Batch API root (env BATCH_AGENT_ENDPOINT)")
    run.add_argument(
        "--secretmanager-endpoint",
        help="Secret Manager API root (env BATCH_AGENT_SECRETMANAGER_ENDPOINT)",
    )
    run.add_argument("--kms-endpoint", help="Cloud KMS API root (env BATCH_AGENT_KMS_ENDPOINT)")
    run.add_argument("--state-dir", type=Path, help="durable state (env BATCH_AGENT_STATE_DIR)")
    run.add_argument("--config", type=Path, help="a JSON file of settings")
    run.add_argument("--log-format", choices=["text", "json"])
    run.add_argument(
        "--reported-version",
        help="the agent version told to the server (env BATCH_AGENT_REPORTED_VERSION)",
    )
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
    try:
        args = _parser().parse_args(args_list)
    except SystemExit as exit_:
        return EXIT_OK if exit_.code in (0, None) else EXIT_USAGE
    if args.command == "version":
        print(f"batch-agent {__version__}")
        print(f"reported as {_reported_version()}")
        return EXIT_OK
    return _run(args)


def _reported_version() -> str:
    """What `run` would report as its version here (the environment may set it)."""
    from batch_agent.config import ConfigError, load_config

    try:
        return load_config().reported_version
    except ConfigError:
        return REPORTED_VERSION


def _run(args: argparse.Namespace) -> int:
    import asyncio  # here: `version` and `--help` need no event loop

    from batch_agent.config import ConfigError, load_config
    from batch_agent.reporter import Rejected, Reporter, Unreachable
    from batch_agent.statedir import StateDirBusy

    try:
        config = load_config(
            args.config,
            endpoint=args.endpoint,
            secretmanager_endpoint=args.secretmanager_endpoint,
            kms_endpoint=args.kms_endpoint,
            state_dir=args.state_dir,
            log_format=args.log_format,
            reported_version=args.reported_version,
        )
    except ConfigError as error:
        print(f"batch-agent: configuration: {error}", file=sys.stderr)
        return EXIT_USAGE
    _setup_logging(config.log_format)
    _watch_children_by_pidfd()

    async def go() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signo in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signo, stop.set)
        # A hangup (a closed terminal, a careless `kill -HUP`) must not end the agent.
        loop.add_signal_handler(signal.SIGHUP, lambda: log.info("SIGHUP ignored"))
        try:
            outcome = await Reporter(config, stop=stop).run(once=args.once)
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


def _watch_children_by_pidfd() -> None:
    """Python 3.11's asyncio waits for each child process in a thread of its own (64 tasks, 64
    threads); a pidfd watcher waits on the loop instead. 3.12 and later do so by themselves;
    where the kernel has no pidfd_open the default stays."""
    import asyncio

    if sys.version_info >= (3, 12):
        return
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return
    asyncio.set_child_watcher(asyncio.PidfdChildWatcher())
    # Tasks outlive the agent: their waiters are still being watched when the loop closes.
    warnings.filterwarnings("ignore", "A loop is being detached from a child watcher")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "severity": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


# Control characters a message may carry from the server or a runnable (a task name with a
# newline, a terminal escape), shown escaped: one log call is one line, and none is forged.
_ESCAPES = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7F, 0xA0)] if c != 0x09}
_ESCAPES |= {0x0A: "\\n", 0x0D: "\\r", 0x2028: "\\u2028", 0x2029: "\\u2029"}


class _TextFormatter(logging.Formatter):
    """One line per message, its control characters escaped (a traceback follows as is)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = record.message.translate(_ESCAPES)
        return super().formatMessage(record)


def _setup_logging(log_format: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for noisy in ("googleapiclient", "google", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
