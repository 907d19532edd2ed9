"""One `entries.write` request's worth of task output: what to read (`pick`), and the entries
(`build`), within `REQUEST_BYTES` of output, `MAX_ENTRIES` entries and about `WRITE_JSON` of
JSON.

`pick` runs on the event loop (a stat per output file, nothing opened): a task whose last
write did not land (`pending` segments: it failed, or a crash cut it short) sends exactly
those again; one whose write is in flight offers what follows it; the others offer what their
files hold past their offsets. `build` reads, masks and turns that into entries in a worker
thread; it changes no record (but a truncated stream's offset, reset to 0). Knows nothing of
HTTP.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from batch_agent.cloudlog.body import bodies
from batch_agent.cloudlog.entries import (
    Destination,
    Group,
    Segment,
    entries_for,
    json_room,
    segment_lines,
)
from batch_agent.cloudlog.reader import TRUNCATED, file_size, read_again, read_new
from batch_agent.cloudlog.tasklogs import STREAMS, TaskLog
from batch_agent.tasks.folders import task_dir
from batch_agent.tasks.masking import Masker
from batch_agent.tasks.taskoutput import output_path

REQUEST_BYTES = 2 * 1024 * 1024  # output bytes per write (see `body` for its JSON size)
MAX_ENTRIES = 10_000  # entries per write
# About the most JSON a write's entries make (1000-byte lines of plain text: 1.12 times their
# output, each entry adding 120 bytes; control characters, invalid UTF-8 and non-ASCII text up
# to 6 times): what bounds the writer's memory. Random bytes took the agent 47 MB above idle
# by output bytes alone, 21-29 MB with this bound (and a write sent while the next is made).
WRITE_JSON = 4 * 1024 * 1024

Pick = tuple[TaskLog, Segment, bool]  # (task, segment, sent before: send it as it is)


class Write:  # a plain class: a dataclass's generated methods cost ~1 ms of start-up
    """One request: the segments of each task, their entries, and the agent's own entries."""

    def __init__(self) -> None:
        self.segments: dict[TaskLog, list[Segment]] = {}
        self.bodies: list[bytes] = []  # the entries' calls, encoded
        self.full = False  # a budget ran out: there is more to send at once


def pick(
    followed: list[TaskLog], workdir: Path, flying: Mapping[TaskLog, list[Segment]]
) -> tuple[list[Pick], bool]:
    """What to read, and whether the budget ran out. A new segment's `end` is the most it
    may take (`read_new` decides where it really ends). `flying`: the segments of the write
    being sent meanwhile; what follows them is offered (a shorter file waits for its answer)."""
    picks: list[Pick] = []
    budget = REQUEST_BYTES
    for task_log in followed:
        ahead = flying.get(task_log)
        pending = task_log.pending() if ahead is None else []
        if pending:
            picks += [(task_log, s, True) for s in pending]
            budget -= sum(s.end - s.start for s in pending)
        else:
            ends: dict[tuple[int, str], int] = {}
            for s in ahead or ():
                ends[s.k, s.stream] = max(ends.get((s.k, s.stream), 0), s.end)
            for k, stream, start, size, final in streams(task_log, workdir):
                start = ends.get((k, stream), start)
                if size != start and not (ahead and size < start):  # grown, or truncated
                    end = start + max(min(budget, size - start), 0)
                    picks.append((task_log, Segment(k, stream, start, end, 0, final), False))
                    budget -= max(size - start, 0)
        if budget <= 0:
            return picks, True
    return picks, False


def streams(task_log: TaskLog, workdir: Path) -> list[tuple[int, str, int, int, bool]]:
    """(k, stream, offset, size, final) of each output file of the task's runnables."""
    record = task_log.record
    folder = task_dir(workdir, record.task_id)
    out = []
    for k, runnable in record.runnables.items():
        final = runnable.exit_code is not None or record.state.is_terminal
        for stream in STREAMS:
            size = file_size(output_path(folder, k, stream))
            if size is not None:
                out.append((k, stream, task_log.offset(k, stream), size, final))
    return out


def build(
    picks: list[Pick],
    workdir: Path,
    destinations: dict[TaskLog, Destination],
    masker: Masker | None,
    now_ns: int,
) -> Write:
    """Read, mask and turn the picks into entries, encoded as the calls that write them (the
    entries themselves are not kept); new segments are stamped `now_ns`. Blocks on local
    reads and encodes: call it from a worker thread."""
    write = Write()
    groups: list[Group] = []
    count = 0  # entries in `groups`
    json_left = WRITE_JSON
    for task_log, chosen, again in picks:
        if count >= MAX_ENTRIES or json_left <= 0:
            write.full = True
            break
        path = output_path(task_dir(workdir, task_log.record.task_id), chosen.k, chosen.stream)
        if again:
            segment, data = chosen, read_again(path, chosen)
        else:
            budget = chosen.end - chosen.start
            data, end = read_new(path, chosen.start, budget, final=chosen.final)
            if end == TRUNCATED:
                task_log.restart_stream(chosen.k, chosen.stream)
                continue
            if end == chosen.start:
                continue
            final, keep = chosen.final, json_room(data, json_left)
            if keep < len(data):  # output whose JSON is much larger: the rest goes next
                data, end, final, write.full = data[:keep], chosen.start + keep, False, True
            segment = Segment(chosen.k, chosen.stream, chosen.start, end, now_ns, final)
        room = MAX_ENTRIES - count
        lines = segment_lines(data, segment, None if again else room)
        if not again and len(lines) > room:  # cut the new segment at a line boundary
            write.full = True
            cut = lines[room][0]  # where the first line left out starts
            lines = lines[:room]
            segment = Segment(segment.k, segment.stream, segment.start, cut, now_ns)
        if masker is not None:
            lines = [(offset, masker.mask_bytes(raw)) for offset, raw in lines]
        destination = destinations[task_log]
        groups.append(Group(destination.members(), entries_for(lines, segment, destination)))
        count += len(groups[-1].entries)
        json_left -= sum(map(len, groups[-1].entries))
        write.segments.setdefault(task_log, []).append(segment)
    write.bodies = bodies(groups)
    return write
