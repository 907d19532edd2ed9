"""The systemd scope helper: unit names, which cgroup a process is in, what a cgroup accounts."""

from __future__ import annotations

import re
from pathlib import Path

from batch_agent.tasks.scope import (
    cgroup_of,
    join,
    procs_files,
    systemd_booted,
    unit_name,
    usage,
)

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


HYBRID_MOUNTS = """\
93 85 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec - tmpfs tmpfs ro,size=4096k,mode=755
94 93 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
97 93 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
102 93 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
103 93 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
"""


def test_procs_files_are_the_scopes_cgroup_in_every_hierarchy(tmp_path: Path) -> None:
    """A waiter's scope is joined through the cgroup.procs of its cgroup in each hierarchy it
    is in: one on cgroup v2 (under the mount's own root cgroup, as in a cgroup namespace), one
    a v1 controller (`cpu,cpuacct` mounted together, `name=systemd` by its name, the cgroup v2
    beside them) on a hybrid one, its path in full there as a container without a namespace
    sees it."""
    v2 = tmp_path / "v2-mounts"
    v2.write_text("30 23 0:26 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n")
    write_cgroup(tmp_path, 1, f"0::/docker/abc{SCOPE}\n")
    assert procs_files(1, tmp_path, v2) == (Path(f"/sys/fs/cgroup{SCOPE}/cgroup.procs"),)

    hybrid = tmp_path / "hybrid-mounts"
    hybrid.write_text(HYBRID_MOUNTS)
    write_cgroup(
        tmp_path,
        2,
        f"9:name=systemd:/docker/abc{SCOPE}\n4:memory:/docker/abc{SCOPE}\n"
        f"2:cpu,cpuacct:/docker/abc\n0::/docker/abc{SCOPE}\n",
    )
    assert procs_files(2, tmp_path, hybrid) == (
        Path(f"/sys/fs/cgroup/systemd/docker/abc{SCOPE}/cgroup.procs"),
        Path(f"/sys/fs/cgroup/memory/docker/abc{SCOPE}/cgroup.procs"),
        Path("/sys/fs/cgroup/cpu,cpuacct/docker/abc/cgroup.procs"),
        Path(f"/sys/fs/cgroup/unified/docker/abc{SCOPE}/cgroup.procs"),
    )


def test_procs_files_are_none_where_a_scope_cannot_be_joined(tmp_path: Path) -> None:
    """No join for a process in no task scope, one gone, one in a hierarchy mounted nowhere
    here, or one whose cgroup is outside what the mount shows."""
    mounts = tmp_path / "mounts"
    mounts.write_text(HYBRID_MOUNTS)
    write_cgroup(tmp_path, 1, "0::/system.slice/batch-agent.service\n")
    write_cgroup(tmp_path, 2, f"0::{SCOPE}\n5:pids:{SCOPE}\n")
    assert procs_files(1, tmp_path, mounts) is None
    assert procs_files(3, tmp_path, mounts) is None
    assert procs_files(2, tmp_path, mounts) is None
    inside = tmp_path / "inside-mounts"
    inside.write_text("30 23 0:26 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n")
    assert procs_files(2, tmp_path, inside) is None


def test_join_writes_the_pid_to_each_file_and_fails_when_one_is_gone(tmp_path: Path) -> None:
    """Joining writes the pid into every cgroup.procs given; a scope gone meanwhile (its
    cgroup removed) makes it False rather than raise."""
    files = [tmp_path / "a", tmp_path / "b"]
    for path in files:
        path.write_text("")
    assert join(files, 4242)
    assert [path.read_text() for path in files] == ["4242", "4242"]
    assert not join([tmp_path / "a", tmp_path / "gone" / "cgroup.procs"], 4243)
