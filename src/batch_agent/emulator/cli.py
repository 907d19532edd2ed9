"""`batch-agent emulator`: run the local control plane in the foreground.

Prints `endpoint: URL` and one `metadata: HOST:PORT` line per VM (in VM order), then task state
changes; the endpoint also serves Secret Manager (`--secrets FILE`: JSON of version path ->
value) and Cloud KMS. `batch-agent emulator encrypt --key KEY PLAINTEXT` prints a ciphertext
its KMS decrypts with KEY (for a task's `encryptedVariables`). Exit status: with
--exit-when-done 0 when every task succeeded and 1 when one failed; otherwise runs until
SIGINT/SIGTERM and exits 0; 2 for usage errors or an unreadable job.
Signal handlers only set a flag. Must not import agent code.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from batch_agent.emulator.emulator import Emulator
from batch_agent.emulator.secrets import encrypt, load_secrets


def _say(line: str) -> None:
    print(line, flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batch-agent emulator", description="Local Batch control plane and GCE metadata."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--vms", type=int, default=1, help="emulated VMs (default 1)")
    parser.add_argument("--default-report-interval", default="10s")
    parser.add_argument("--min-report-interval", default="1s")
    parser.add_argument("--exit-when-done", action="store_true")
    parser.add_argument("--secrets", metavar="FILE", help="JSON: secret version path -> value")
    parser.add_argument("job", nargs="?", metavar="JOB.json", help="Batch job config")
    return parser


def _encrypt(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="batch-agent emulator encrypt",
        description="Print a ciphertext the emulator's Cloud KMS decrypts with KEY "
        "(not encryption: for local runs only).",
    )
    parser.add_argument(
        "--key", required=True, help="projects/P/locations/L/keyRings/R/cryptoKeys/K"
    )
    parser.add_argument("plaintext", help='e.g. \'{"DB_PASSWORD": "..."}\'')
    try:
        args = parser.parse_args(argv)
        print(encrypt(args.key, args.plaintext.encode()))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    except ValueError as e:
        print(f"batch-agent emulator encrypt: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the emulator until done or signalled; returns the exit status (does not exit)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["encrypt"]:
        return _encrypt(argv[1:])
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # argparse reports usage errors by exiting
        return e.code if isinstance(e.code, int) else 2
    job: dict[str, Any] | None = None
    try:
        if args.job is not None:
            with open(args.job, encoding="utf-8") as f:
                job = json.load(f)
        emulator = Emulator(
            job,
            host=args.host,
            port=args.port,
            vms=args.vms,
            default_report_interval=args.default_report_interval,
            min_report_interval=args.min_report_interval,
            log=_say,
            secrets=load_secrets(Path(args.secrets)) if args.secrets else None,
        )
        emulator.start()
    except (OSError, ValueError) as e:
        print(f"batch-agent emulator: {e}", file=sys.stderr)
        return 2

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        _say(f"endpoint: {emulator.url}")
        for vm in emulator.vms:
            _say(f"metadata: {vm.metadata_host}")
        # Short waits keep the main thread responsive to signals.
        while not stop.wait(0.2):
            if args.exit_when_done and emulator.wait_until_done(0.2):
                return 1 if emulator.job_failed else 0
        return 0
    finally:
        emulator.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
