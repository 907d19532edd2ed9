"""The systemd scope helper: unit names, which cgroup a process is in, what a cgroup accounts."""

from __future__ import annotations

import re
from pathlib import Path

from batch_agent.tasks.scope import cgroup_of, systemd_booted, unit_name, usage

SCOPE = "/batch.slice/batch-tasks.slice/batch-task-0123456789ab-r1-c0ffee.scope"


def test_unit_name_names_the_task_folder_and_runnable_and_is_new_each_time() -> None:
    """A scope's name carries a hash of the task folder and the runnable, and never repeats."""
    status = Path("/var/lib/batch-agent/tasks/t-0/runnable-3.status")
    first, second = unit_name(status), unit_name(status)
    assert re.fullmatch(r"batch-task-[0-9a-f]{12}-r3-[0-9a-f]{6}\.scope", first), first
    assert first != second and first[:27] == second[:27]
    assert unit_name(Path("/elsewhere/runnable-3.status"))[:27] != first[:27]


def test_systemd_booted_is_whether_the_marker_directory_exists(tmp_path: Path) -> None:
    """systemd counts as PID 1 exactly when /run/systemd/system is a directory."""
    assert not systemd_booted(tmp_path / "system")
    (tmp_path / "system").mkdir()
    assert systemd_booted(tmp_path / "system")


def write_cgroup(proc: Path, pid: int, text: str) -> None:
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "cgroup").write_text(text)


def test_cgroup_of_finds_a_task_scope_on_either_hierarchy(tmp_path: Path) -> None:
    """A task scope is found on cgroup v2, on v1 through systemd's hierarchy (under a
    container's cgroup too), and a process outside one, or gone, has none."""
    write_cgroup(tmp_path, 1, f"0::{SCOPE}\n")
    write_cgroup(tmp_path, 2, f"4:memory:/docker/abc{SCOPE}\n1:name=systemd:/docker/abc{SCOPE}\n")
    write_cgroup(tmp_path, 3, "0::/system.slice/batch-agent.service\n")
    assert cgroup_of(1, tmp_path) == SCOPE
    assert cgroup_of(2, tmp_path) == f"/docker/abc{SCOPE}"
    assert cgroup_of(3, tmp_path) is None
    assert cgroup_of(4, tmp_path) is None


def test_usage_reads_cgroup_v2_then_v1_figures(tmp_path: Path) -> None:
    """Memory and CPU come from memory.current and cpu.stat, else from the v1 memory and
    cpuacct hierarchies; what neither gives is None."""
    v2 = tmp_path / "v2" / SCOPE.lstrip("/")
    v2.mkdir(parents=True)
    (v2 / "memory.current").write_text("4096\n")
    (v2 / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\n")
    assert usage(SCOPE, tmp_path / "v2") == {
        "unit": "batch-task-0123456789ab-r1-c0ffee.scope",
        "memory_bytes": 4096,
        "cpu_seconds": 2.5,
    }
    v1 = tmp_path / "v1"
    (v1 / "memory" / SCOPE.lstrip("/")).mkdir(parents=True)
    (v1 / "memory" / SCOPE.lstrip("/") / "memory.usage_in_bytes").write_text("8192\n")
    (v1 / "cpuacct" / SCOPE.lstrip("/")).mkdir(parents=True)
    (v1 / "cpuacct" / SCOPE.lstrip("/") / "cpuacct.usage").write_text("1500000000\n")
    figures = usage(SCOPE, v1)
    assert (figures["memory_bytes"], figures["cpu_seconds"]) == (8192, 1.5)
    gone = usage(SCOPE, tmp_path / "none")
    assert (gone["memory_bytes"], gone["cpu_seconds"]) == (None, None)
