"""The runtime dir: tasks' scripts and exit statuses on tmpfs, output in the state dir; a
runtime dir that is missing, on a disk or not the agent's is not used; a kill -9 of the agent
loses nothing of a task whose files are there."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from batch_agent.config import RUNTIME_DIR, load_config
from batch_agent.runtimedir import allows_exec, filesystem_type, tasks_root
from batch_agent.tasks.folders import task_dir
from tests.helpers import exit_code, job, script, wait_until


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_a_runtime_dir_on_tmpfs_is_made_the_agents_and_0711(tmpfs: Path, tmp_path: Path) -> None:
    runtime = tmpfs / "run" / "batch-agent"
    assert tasks_root(runtime, tmp_path / "tasks") == runtime / "tasks"
    for folder in (runtime, runtime / "tasks"):
        assert mode(folder) == 0o711 and os.lstat(folder).st_uid == os.geteuid()
    runtime.chmod(0o777)  # one made looser by someone is tightened at the next start
    assert tasks_root(runtime, tmp_path / "tasks") == runtime / "tasks"
    assert mode(runtime) == 0o711


def test_no_runtime_dir_on_a_disk_and_nothing_made_there(tmp_path: Path) -> None:
    state_tasks = tmp_path / "state" / "tasks"
    assert tasks_root(None, state_tasks) == state_tasks
    assert tasks_root(tmp_path / "run", state_tasks) == state_tasks  # ext4 or the like
    assert not (tmp_path / "run").exists()


def test_a_symlink_or_someone_elses_runtime_dir_is_not_used(tmpfs: Path, tmp_path: Path) -> None:
    state_tasks = tmp_path / "tasks"
    elsewhere = tmpfs / "elsewhere"
    elsewhere.mkdir()
    (tmpfs / "link").symlink_to(elsewhere)
    assert tasks_root(tmpfs / "link", state_tasks) == state_tasks
    assert list(elsewhere.iterdir()) == []
    if os.geteuid() != 0:
        return
    theirs = tmpfs / "theirs"
    theirs.mkdir()
    theirs.chmod(0o777)
    os.chown(theirs, 65534, 65534)
    assert tasks_root(theirs, state_tasks) == state_tasks
    assert list(theirs.iterdir()) == [] and mode(theirs) == 0o777


def test_filesystem_type_is_the_deepest_mount_above_the_path(tmp_path: Path) -> None:
    table = tmp_path / "mountinfo"
    table.write_text(
        "1 0 8:1 / / rw - ext4 /dev/vda rw\n"
        "2 1 0:5 / /run rw,nosuid - tmpfs tmpfs rw\n"
        "3 2 0:6 / /run/my\\040disk rw - ext4 /dev/vdb rw\n"
    )
    assert filesystem_type(Path("/run/batch-agent"), table) == "tmpfs"
    assert filesystem_type(Path("/run/my disk/x"), table) == "ext4"
    assert filesystem_type(Path("/running"), table) == "ext4"  # not under /run
    assert allows_exec(Path("/run/batch-agent"), table)
    table.write_text(table.read_text().replace("rw,nosuid - tmpfs", "rw,nosuid,noexec - tmpfs"))
    assert not allows_exec(Path("/run/batch-agent"), table)
    assert allows_exec(Path("/run/my disk"), table)  # its own mount's options


def test_the_default_runtime_dir_comes_only_with_the_default_state_dir(tmp_path: Path) -> None:
    assert load_config(environ={}).runtime_dir == Path(RUNTIME_DIR)
    assert load_config(environ={"BATCH_AGENT_STATE_DIR": str(tmp_path)}).runtime_dir is None
    given = {"BATCH_AGENT_STATE_DIR": str(tmp_path), "BATCH_AGENT_RUNTIME_DIR": str(tmp_path)}
    assert load_config(environ=given).runtime_dir == tmp_path


def test_scripts_and_statuses_on_tmpfs_survive_kill_9_output_stays_on_disk(
    make_emulator, start_agent, tmp_path, tmpfs
):
    """A task's script and exit statuses go to the runtime dir, its output to the state dir;
    after kill -9 the restarted agent finds the running script (its pid never saved: by its
    command line), does not start it again and reports its real exit code; the deleted task
    leaves neither folder behind."""
    runs, go = tmp_path / "runs", tmp_path / "go"
    text = f"echo run >> {runs}; echo $0; while [ ! -e {go} ]; do sleep 0.05; done; exit 5"
    emu = make_emulator(job(script("echo first"), script(text)))
    env = {"BATCH_AGENT_RUNTIME_DIR": str(tmpfs)}
    first = start_agent(emu, **env)
    wait_until(runs.exists, what="runnable 2 started")
    (name,) = emu.task_names()
    runtime = task_dir(tmpfs / "tasks", name)
    folder = task_dir(tmp_path / "state" / "tasks", name)
    wait_until(lambda: (folder / "runnable-2.stdout").stat().st_size > 0, what="its output")
    program = (folder / "runnable-2.stdout").read_text().strip()
    assert Path(program).parent == runtime  # the script, as $0
    assert (runtime / "runnable-1.status").read_text() == "0\n"
    assert sorted(p.name for p in folder.iterdir()) == [
        "runnable-1.stderr",
        "runnable-1.stdout",
        "runnable-2.stderr",
        "runnable-2.stdout",
        "work",
    ]
    assert mode(runtime) == 0o711
    first.kill()
    second = start_agent(emu, **env)
    wait_until(lambda: "reattach" in second.log(), what="reattach")
    go.touch()
    wait_until(lambda: emu.is_deleted(name), what="FAILED, then DELETED")
    assert exit_code(emu, name) == 5
    assert runs.read_text() == "run\n"
    wait_until(lambda: "deleted" in second.log(), what="the deletion")
    assert not runtime.exists() and not folder.exists()
    assert second.terminate() == 0
