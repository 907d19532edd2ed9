"""`batch-agent local JOB.json [--vms N] [--json] [--keep] [--min-report-interval D]
[--volume-root DIR] [--secrets FILE]`: argv -> one local run -> exit status.

Exit status: 0 the job succeeded, 1 it failed, 2 usage error or a job config Batch would refuse
(each problem printed as `path: reason`), 130 cancelled by SIGINT/SIGTERM. Fields that cannot
apply on this machine are named once in a warning on stderr. The view is the live table on a
terminal, prefixed lines otherwise, JSON events with --json. Must not import agent code.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from batch_agent.emulator import JobConfigError, load_job
from batch_agent.emulator.secrets import load_secrets
from batch_agent.local.live import LiveView, wants_colour
from batch_agent.local.session import LocalRun, Options, default_vms
from batch_agent.local.view import JsonView, PlainView, View

EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batch-agent local",
        description="Run a Batch job config (as given to `gcloud batch jobs submit --config`) "
        "on this machine: a local control plane and one real agent per VM.",
    )
    parser.add_argument("job", metavar="JOB.json", help="the job config (camelCase or snake_case)")
    parser.add_argument(
        "--vms", type=int, help="emulated VMs (default: as many as the job runs tasks at once)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per event on stdout")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work dir (agents' state, logs) and tasks"
    )
    parser.add_argument(
        "--min-report-interval",
        type=_duration,
        metavar="D",
        help="the minReportInterval of every answer, in seconds (e.g. 1s, 0.05); default: 0s "
        "while a VM has tasks to run or report, so that reports follow the work, 0.1s when idle",
    )
    parser.add_argument(
        "--volume-root",
        metavar="DIR",
        help="folders standing in for the tasks' volumes: bucket B is DIR/gcs/B, NFS S:/P is "
        "DIR/nfs/S/P, disk D is DIR/disks/D (bind-mounted at each mountPath; linked there "
        "when not run as root)",
    )
    parser.add_argument(
        "--secrets",
        metavar="FILE",
        type=Path,
        help="JSON of Secret Manager version path -> value, for secretVariables",
    )
    return parser


def _duration(text: str) -> str:
    """A non-negative number of seconds, `1.5` or `1.5s`, as a google-duration string."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)s?", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds such as 0.05s")
    return f"{match[1]}s"


def main(argv: list[str] | None = None) -> int:
    """Run the job; returns the exit status (does not exit)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # argparse reports usage errors (and --help) by exiting
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    if args.vms is not None and args.vms < 1:
        return _refuse(f"--vms must be at least 1, got {args.vms}")
    try:
        config = json.loads(Path(args.job).read_text(encoding="utf-8"))
    except OSError as e:
        return _refuse(f"cannot read {args.job}: {e.strerror or e}")
    except ValueError as e:
        return _refuse(f"{args.job} is not JSON: {e}")
    try:
        plan = load_job(config, strict=True)
    except JobConfigError as e:
        lines = "".join(f"\n  {problem}" for problem in e.problems)
        return _refuse(f"{args.job} is not a valid Batch job config:{lines}")
    try:
        secrets = load_secrets(args.secrets) if args.secrets is not None else {}
    except OSError as e:
        return _refuse(f"cannot read {args.secrets}: {e.strerror or e}")
    except ValueError as e:
        return _refuse(f"--secrets: {e}")
    view = _view(args.json)
    # Volumes do apply: mounted for real, or from the folders of --volume-root.
    not_applied = [f for f in plan.not_applied if not f.endswith(".taskSpec.volumes")]
    if len(not_applied) < len(plan.not_applied) and args.volume_root is None:
        not_applied.append("volumes are mounted for real (--volume-root DIR maps them to folders)")
    if not_applied:
        warning = "not applied locally: " + ", ".join(not_applied)
        print(f"batch-agent local: warning: {warning}", file=sys.stderr, flush=True)
        view.warn(warning)
    volume_root = Path(args.volume_root).resolve() if args.volume_root else None
    options = Options(
        vms=args.vms or default_vms(plan), keep=args.keep, volume_root=volume_root, secrets=secrets
    )
    if args.min_report_interval is not None:
        interval = args.min_report_interval
        options = replace(options, min_report_interval=interval, busy_min_report_interval=None)
    work_dir = Path(tempfile.mkdtemp(prefix="batch-local-"))
    try:
        return LocalRun(config, plan, view, options, work_dir, job_id(args.job)).run()
    finally:
        if isinstance(view, LiveView):
            view.close()
        if not args.keep:
            shutil.rmtree(work_dir, ignore_errors=True)


def _refuse(message: str) -> int:
    print(f"batch-agent local: {message}", file=sys.stderr)
    return EXIT_USAGE


def _view(as_json: bool) -> View:
    if as_json:
        return JsonView(sys.stdout)
    if sys.stdout.isatty() and os.environ.get("TERM", "") != "dumb":
        return LiveView(sys.stdout, colour=wants_colour())
    return PlainView(sys.stdout)


def job_id(path: str, now: float | None = None) -> str:
    """A Batch-shaped job id from the config's file name and the time: `hello-world-20261126-072347`
    (lowercase letters, digits and hyphens, starting with a letter, at most 63 characters)."""
    stem = re.sub(r"[^a-z0-9]+", "-", Path(path).stem.lower()).strip("-")
    if not stem or not stem[0].isalpha():
        stem = "job-" + stem if stem else "job"
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return f"{stem[: 62 - len(stamp)].rstrip('-')}-{stamp}"
