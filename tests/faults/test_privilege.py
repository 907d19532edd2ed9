"""What a task's user or a task's name could do to root's files, and does not: symlinks planted
for the agent to open, names that climb out of `tasks/`, newlines that forge log lines."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from batch_agent.tasks.folders import make_task_folder, remove_task_dir, task_dir, work_dir
from batch_agent.tasks.output import OutputShipper
from tests.helpers import script, wait_until

SECRET = "root:$6$not-for-the-task-user:19000:0:99999:7:::\n"
WEIRD_NAMES = [".", "..", "../x", "a/b", "a_b"]


def victim(path: Path) -> Path:
    """A root-owned 0600 file standing in for /etc/shadow."""
    path.write_text(SECRET)
    path.chmod(0o600)
    return path


def assert_untouched(path: Path) -> None:
    found = path.stat()
    assert path.read_text() == SECRET
    assert (found.st_uid, stat.S_IMODE(found.st_mode)) == (0, 0o600)


def let_the_user_through(tmp_path: Path) -> None:
    """pytest's temp dirs are 0700 (root's); the VM's state dir is 0755."""
    for folder in (tmp_path, *tmp_path.parents[:2]):
        folder.chmod(folder.stat().st_mode | 0o711)


def task(name: str, *runnables: dict[str, object], **spec: object) -> dict[str, object]:
    return {
        "task": name,
        "intendedState": "ASSIGNED",
        "agentTaskSpec": {"runnables": list(runnables), **spec},
    }


# -- the folder's name and removal ------------------------------------------------------------


def test_task_folders_are_distinct_single_components_under_tasks(tmp_path: Path) -> None:
    """Every name, however odd, gets its own folder directly under tasks/, of a sane length."""
    workdir = tmp_path / "tasks"
    names = [*WEIRD_NAMES, "", "/", "//", "a/../..", "x" * 5000, "\ud800", "tab\there", "a\nb"]
    folders = [task_dir(workdir, name) for name in names]
    assert len(set(folders)) == len(names)
    for folder in folders:
        assert folder.parent == workdir
        assert folder.name not in ("", ".", "..") and "/" not in folder.name
        assert not folder.name.startswith(".") and len(folder.name) < 100
        assert os.path.normpath(folder) == str(folder)
    resource = "projects/1/locations/us-central1/jobs/job-1/taskGroups/group0/tasks/7"
    assert "_jobs_job-1_taskGroups_group0_tasks_7-" in task_dir(workdir, resource).name


def test_removing_a_task_folder_never_leaves_tasks_or_follows_a_symlink(tmp_path: Path) -> None:
    """Removal unlinks a symlink in place of a folder and refuses anything but a direct child."""
    workdir = tmp_path / "tasks"
    workdir.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("kept")
    link = task_dir(workdir, "linked")
    link.symlink_to(elsewhere)
    remove_task_dir(workdir, link)
    assert not os.path.lexists(link) and (elsewhere / "keep").read_text() == "kept"
    for outside in (workdir / "..", workdir / ".", tmp_path, workdir / "a" / "b"):
        with pytest.raises(ValueError):
            remove_task_dir(workdir, outside)
    remove_task_dir(workdir, task_dir(workdir, "never made"))  # missing: nothing to do


@pytest.mark.skipif(os.geteuid() != 0, reason="giving work/ to a user needs root")
def test_the_folder_is_the_agents_and_only_work_is_the_users(tmp_path: Path) -> None:
    """The task folder is root's (0711); the user owns work/ and nothing else in it."""
    folder = task_dir(tmp_path / "tasks", "t")
    make_task_folder(folder, (54321, 54321))
    make_task_folder(folder, (54321, 54321))  # a resumed task: idempotent
    mine, theirs = folder.stat(), work_dir(folder).stat()
    assert (mine.st_uid, stat.S_IMODE(mine.st_mode)) == (0, 0o711)
    assert (theirs.st_uid, theirs.st_gid, stat.S_IMODE(theirs.st_mode)) == (54321, 54321, 0o700)


def test_output_shipping_never_follows_a_symlink(tmp_path: Path) -> None:
    """An output file that is a symlink to a secret ships nothing of it."""
    secret = victim(tmp_path / "shadow")
    link = tmp_path / "runnable-2.stdout"
    link.symlink_to(secret)
    delivered: list[object] = []
    assert OutputShipper(link).ship(delivered.append, final=True) == 0
    assert delivered == []


# -- end to end: the real agent, a real user ----------------------------------------------------

PLANT = """
for d in "$PWD" "$PWD/.."; do
  if [ -e "$d/runnable-1.stdout" ]; then  # the folder the agent keeps runnable files in
    for s in status stdout stderr; do ln -s "{victims}/shadow-$s" "$d/runnable-2.$s"; done
  fi
done
echo planted
"""


@pytest.mark.parametrize("on_tmpfs", [False, True], ids=["state-dir", "runtime-dir"])
def test_a_user_task_cannot_point_the_agent_at_root_files(
    make_emulator, start_agent, tmp_path, batch_user, on_tmpfs, request
):
    """Runnable 1 plants runnable 2's status/stdout/stderr as symlinks to root's files: the
    files stay root's and unchanged, nothing of them is shipped, and the task succeeds. With
    the exit statuses in a runtime dir on tmpfs, the user's waiter writes its own there."""
    let_the_user_through(tmp_path)
    env = {}
    if on_tmpfs:
        env["BATCH_AGENT_RUNTIME_DIR"] = str(request.getfixturevalue("tmpfs"))
    victims = tmp_path / "victims"
    victims.mkdir()
    shadows = [victim(victims / f"shadow-{s}") for s in ("status", "stdout", "stderr")]
    user = {"uid": str(batch_user.pw_uid), "gid": str(batch_user.pw_gid)}
    emu = make_emulator(None, auto_delete=False)  # its folder is inspected after
    name = emu.add_task(
        task(
            "victim", script(PLANT.format(victims=victims)), script("echo second"), userAccount=user
        )
    )
    agent = start_agent(emu, "--once", **env)
    assert agent.wait(60) == 0, agent.log()
    assert emu.task_state(name) == "SUCCEEDED"
    for shadow in shadows:
        assert_untouched(shadow)
    log = agent.log()
    assert "not-for-the-task-user" not in log
    assert "r1 stdout] planted" in log and "r2 stdout] second" in log
    folder = task_dir(tmp_path / "state" / "tasks", name)
    runtime = task_dir(Path(env["BATCH_AGENT_RUNTIME_DIR"]) / "tasks", name) if env else folder
    for found in (
        os.lstat(runtime / "runnable-2.status"),
        os.lstat(folder / "runnable-2.stdout"),
        os.lstat(folder / "runnable-2.stderr"),
    ):
        assert stat.S_ISREG(found.st_mode) and found.st_uid == batch_user.pw_uid
    assert (runtime / "runnable-2.status").read_text() == "0\n"


def test_odd_task_names_stay_in_their_folders_and_deleting_dotdot_keeps_the_state(
    make_emulator, start_agent, tmp_path
):
    """Tasks named `.`, `..`, `../x`, `a/b`, `a_b` get distinct folders under tasks/; deleting
    `..` and `.` removes only their own folders, never state.db or another task's folder."""
    emu = make_emulator(None, auto_delete=False)
    for name in WEIRD_NAMES:
        emu.add_task(task(name, script("pwd > marker")))
    agent = start_agent(emu)
    wait_until(
        lambda: all(emu.task_state(n) == "SUCCEEDED" for n in WEIRD_NAMES), timeout=60, what="done"
    )
    state = tmp_path / "state"
    folders = {name: task_dir(state / "tasks", name) for name in WEIRD_NAMES}
    for folder in folders.values():
        assert (work_dir(folder) / "marker").read_text() == f"{work_dir(folder)}\n"
    emu.delete_task("..")
    emu.delete_task(".")
    wait_until(
        lambda: "task ..: deleted" in agent.log() and "task .: deleted" in agent.log(),
        timeout=60,
        what="deleted",
    )
    assert agent.terminate() == 0, agent.log()
    assert (state / "state.db").is_file()
    assert not folders["."].exists() and not folders[".."].exists()
    for name in ("../x", "a/b", "a_b"):
        assert (work_dir(folders[name]) / "marker").is_file(), name


def test_a_newline_in_a_task_name_forges_no_log_line(make_emulator, start_agent):
    """A task name with a newline and a fake log line after it is logged escaped, on one line."""
    forged = "2026-01-01 00:00:00,000 ERROR batch_agent: FORGED"
    emu = make_emulator(None)
    emu.add_task(task(f"t1\n{forged}", script("true")))
    agent = start_agent(emu, "--once")
    assert agent.wait(60) == 0, agent.log()
    log = agent.log()
    assert f"t1\\n{forged}" in log
    assert not any(line.startswith(forged) for line in log.splitlines())
