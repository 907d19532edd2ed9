"""Run every benchmark of the suite and write one Markdown table: `python benchmarks/all.py`.

A benchmark joins the suite by defining `run(repeats: int) -> list[Figure]` in
`benchmarks/NAME.py` (see `_common.py`); modules without it are listed as not in the suite. Each
figure is one row: ours and its baseline (min / median / max of the interleaved samples), the
target and whether it is met. A benchmark that raises is reported in its row and the others
still run. The table opens with the date and the machine (`nproc`, memory, load average), and is
printed (and written to `--output FILE`). Asserts nothing; exit status 0 unless a benchmark crashed.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

from _common import Figure, Skipped, spread, verdict

HERE = Path(__file__).resolve().parent


def modules() -> list[str]:
    """The benchmark modules next to this file, by name (helpers start with "_")."""
    return sorted(
        p.stem for p in HERE.glob("*.py") if not p.stem.startswith("_") and p.stem != "all"
    )


def machine() -> str:
    """`N CPUs (nproc), M GiB memory, load average L`, read from this machine."""
    memory = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory = int(line.split()[1]) * 1024
    load = os.getloadavg()[0]
    return (
        f"{platform.system()} {platform.machine()}, {len(os.sched_getaffinity(0))} CPUs (nproc), "
        f"{memory / 2**30:.1f} GiB memory, load average {load:.1f} at the start"
    )


def table(rows: Sequence[tuple[str, Figure | str]], header: str) -> str:
    """The Markdown report: `header`, then one row per figure (or per benchmark's note)."""
    lines = [
        header,
        "",
        "| benchmark | figure | ours (min / median / max) | baseline | baseline (min / median"
        " / max) | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for module, item in rows:
        if isinstance(item, str):
            lines.append(f"| {module} | {_cell(item)} | | | | | |")
            continue
        f = item
        cells = (
            module,
            f.name,
            spread(f.ours, f.unit),
            f.baseline or "-",
            spread(f.baseline_samples, f.unit),
            f.target or "-",
            verdict(f.met),
        )
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    """`text` safe inside a Markdown table cell: a pipe would end the cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="samples of ours and baseline")
    parser.add_argument("--only", nargs="*", metavar="NAME", help="run these benchmarks only")
    parser.add_argument("--output", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    started = datetime.now(UTC)
    header = (
        f"{started:%Y-%m-%d %H:%M} UTC, `python benchmarks/all.py --repeats {args.repeats}`"
        f" on {machine()}."
    )
    rows: list[tuple[str, Figure | str]] = []
    crashed = False
    for name in modules():
        if args.only and name not in args.only:
            continue
        print(f"== {name}", flush=True)
        began = time.monotonic()
        try:
            run = getattr(importlib.import_module(name), "run", None)
            if run is None:
                rows.append((name, "not in the suite: no `run(repeats)`"))
                continue
            figures = cast(Callable[[int], list[Figure]], run)(args.repeats)
        except Skipped as e:
            rows.append((name, f"skipped: {e}"))
            continue
        except (Exception, SystemExit) as e:  # one broken benchmark must not hide the others
            traceback.print_exc()
            rows.append((name, f"crashed: {e!r}"[:200]))
            crashed = True
            continue
        rows += [(name, f) for f in figures]
        print(f"== {name}: {time.monotonic() - began:.0f}s", flush=True)
    report = table(rows, header)
    print(report)
    if args.output is not None:
        args.output.write_text(report)
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
