"""Script runnables: real processes under the /bin/sh waiter, no mocks."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Coroutine
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

from batch_agent.tasks.execution import EXIT_CODE_UNKNOWN, ExitResult
from batch_agent.tasks.procfs import read_stat
from batch_agent.tasks.scope import scope_argv
from batch_agent.tasks.script import (
    WAITER_SCRIPT,
    OpenedFiles,
    ScriptExecution,
    find_waiter,
    open_files,
    read_status,
    spawn_opened,
    start_script,
    waiter_argv,
    write_script,
)

T = TypeVar("T")
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/root"}
PY = sys.executable


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


async def async_wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def is_dead(pid: int) -> bool:
    """True if `pid` is gone or a zombie (pid 1 here may not reap orphans)."""
    found = read_stat(pid)
    return found is None or not found.alive


async def start(
    tmp: Path, program: Path, env: dict[str, str] | None = None, **kw: Any
) -> ScriptExecution | ExitResult:
    return await start_script(
        program,
        env=ENV if env is None else env,
        cwd=tmp,
        stdout_path=tmp / "out",
        stderr_path=tmp / "err",
        status_path=tmp / "status",
        **kw,
    )


async def run_script(tmp: Path, text: str, **kw: Any) -> ExitResult:
    execution = await start(tmp, write_script(text, tmp), **kw)
    assert isinstance(execution, ScriptExecution), execution
    return await execution.wait()


def test_exit_codes_are_recorded(tmp_path: Path) -> None:
    """Exit 0 is ok, exit 3 is not, and the waiter writes the status file."""
    assert run(run_script(tmp_path, "#!/bin/sh\nexit 0\n")) == ExitResult(0)
    result = run(run_script(tmp_path, "#!/bin/sh\nexit 3\n"))
    assert result == ExitResult(3) and not result.ok
    assert (tmp_path / "status").read_text() == "3\n"


def test_shebang_picks_the_interpreter(tmp_path: Path) -> None:
    """A Python and a bash shebang run their interpreters, with stdout/stderr in the files."""
    text = f"#!{PY}\nimport sys\nprint('from python')\nprint('err', file=sys.stderr)\nsys.exit(7)\n"
    assert run(run_script(tmp_path, text)) == ExitResult(7)
    bash = '#!/bin/bash\nif [[ -n "${BASH_VERSION}" ]]; then echo bash; fi\n'
    assert run(run_script(tmp_path, bash)).ok
    assert (tmp_path / "out").read_text() == "from python\nbash\n"  # appended
    assert (tmp_path / "err").read_text() == "err\n"


def test_file_without_shebang_runs_with_sh(tmp_path: Path) -> None:
    """A script with no shebang (ENOEXEC) is run by /bin/sh."""
    result = run(run_script(tmp_path, 'echo "plain $((1 + 2))"\nexit 4\n'))
    assert result == ExitResult(4)
    assert (tmp_path / "out").read_text() == "plain 3\n"


def test_environment_is_exactly_the_given_one(tmp_path: Path) -> None:
    """The program sees the env it was given (plus the shell's PWD), no waiter variables."""
    env = {"PATH": "/usr/bin:/bin", "ONLY": "me"}
    assert run(run_program(tmp_path, Path("/usr/bin/env"), env=env)).ok
    seen = dict(line.split("=", 1) for line in (tmp_path / "out").read_text().splitlines())
    assert seen == {**env, "PWD": str(tmp_path)}


def test_a_script_gets_only_its_three_streams_and_default_signals(tmp_path: Path) -> None:
    """No file of the agent's reaches a runnable, not even one the agent inherited without
    close-on-exec (`os.posix_spawn` would pass those on: a pytest run from this machine's
    shell held two), it runs in its working directory, and SIGPIPE and SIGXFSZ, which Python
    ignores, are at their defaults again (as Popen's restore_signals leaves them): `yes | head`
    ends quietly."""
    text = (
        "#!/bin/sh\nls /proc/self/fd | sort -n | tr '\\n' ' '; echo; pwd\n"
        "grep SigIgn /proc/$$/status\nyes | head -n 1\n"
    )
    assert run(run_script(tmp_path, text)) == ExitResult(0)
    fds, cwd, ignored, first = (tmp_path / "out").read_text().splitlines()
    assert fds.split() == ["0", "1", "2", "3"]  # 3: the folder `ls` reads
    assert cwd == str(tmp_path)
    mask = int(ignored.split()[1], 16)
    assert not mask & (1 << (signal.SIGPIPE - 1)) and not mask & (1 << (signal.SIGXFSZ - 1))
    assert first == "y" and (tmp_path / "err").read_text() == ""


def test_missing_non_executable_and_bad_interpreter_are_results(tmp_path: Path) -> None:
    """What cannot be executed is an ExitResult with a reason, not an exception."""
    missing = run(start(tmp_path, tmp_path / "nope"))
    assert missing == ExitResult(
        127, reason=f"cannot execute {tmp_path / 'nope'}: No such file or directory"
    )
    plain = tmp_path / "plain"
    plain.write_text("#!/bin/sh\n")
    assert run(start(tmp_path, plain)) == ExitResult(
        126, reason=f"cannot execute {plain}: Permission denied"
    )
    directory = run(start(tmp_path, tmp_path))
    assert isinstance(directory, ExitResult) and directory.exit_code == 126
    bad = write_script("#!/no/such/interp\n", tmp_path)
    result = run(start(tmp_path, bad))
    assert isinstance(result, ExitResult) and result.exit_code == 127
    assert result.reason is not None and "/no/such/interp" in result.reason
    gone_cwd = run(
        start_script(
            write_script("#!/bin/sh\n", tmp_path),
            env=ENV,
            cwd=tmp_path / "no-such-dir",
            stdout_path=tmp_path / "out",
            stderr_path=tmp_path / "err",
            status_path=tmp_path / "status",
        )
    )
    assert isinstance(gone_cwd, ExitResult) and gone_cwd.exit_code == 127
    assert gone_cwd.reason is not None and "no-such-dir" in gone_cwd.reason


def test_relative_program_is_taken_from_cwd(tmp_path: Path) -> None:
    """A relative path is resolved against cwd, not searched in PATH."""
    program = write_script("#!/bin/sh\nexit 9\n", tmp_path)
    assert run(run_program(tmp_path, Path(program.name))) == ExitResult(9)


async def run_program(tmp: Path, program: Path, **kw: Any) -> ExitResult:
    execution = await start(tmp, program, **kw)
    assert isinstance(execution, ScriptExecution), execution
    return await execution.wait()


def test_signal_death_is_128_plus_signo(tmp_path: Path) -> None:
    """A program killed by a signal ends 128+signo, with the signal named."""
    result = run(run_script(tmp_path, "#!/bin/sh\nkill -USR1 $$\n"))
    assert (result.exit_code, result.signal) == (128 + signal.SIGUSR1, signal.SIGUSR1)


def test_write_script_is_private(tmp_path: Path) -> None:
    """The script file is mode 0700 and holds exactly the text."""
    path = write_script("#!/bin/sh\necho é\n", tmp_path)
    assert path.parent == tmp_path
    assert path.stat().st_mode & 0o777 == 0o700
    assert path.read_text() == "#!/bin/sh\necho é\n"


def test_stop_kills_children_and_grandchildren(tmp_path: Path) -> None:
    """stop() reaches the whole process group: a background grandchild dies too."""
    text = f"#!/bin/sh\n{PY} -c 'import time; time.sleep(60)' &\necho $! > gc.pid\nwait\n"

    async def scenario() -> tuple[ExitResult, float]:
        execution = await start(tmp_path, write_script(text, tmp_path))
        assert isinstance(execution, ScriptExecution)
        await async_wait_until(
            lambda: (
                (tmp_path / "gc.pid").exists() and (tmp_path / "gc.pid").read_text().endswith("\n")
            )
        )
        began = time.monotonic()
        await execution.stop(timedelta(seconds=5))
        await execution.stop(timedelta(seconds=5))  # idempotent
        return await execution.wait(), time.monotonic() - began

    result, took = run(scenario())
    assert (result.exit_code, result.signal) == (143, signal.SIGTERM)
    assert took < 2
    assert is_dead(int((tmp_path / "gc.pid").read_text()))


IGNORE_TERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
    " print('ready', flush=True); time.sleep(60)"
)


def test_stop_escalates_to_sigkill_after_grace(tmp_path: Path) -> None:
    """A program ignoring SIGTERM is SIGKILLed once the grace period is over."""

    async def scenario() -> tuple[ExitResult, float]:
        execution = await start(tmp_path, write_script(f"#!{PY}\n{IGNORE_TERM}\n", tmp_path))
        assert isinstance(execution, ScriptExecution)
        await async_wait_until(lambda: (tmp_path / "out").read_text() == "ready\n")
        began = time.monotonic()
        await execution.stop(timedelta(seconds=0.3))
        return await execution.wait(), time.monotonic() - began

    result, took = run(scenario())
    assert (result.exit_code, result.signal) == (137, signal.SIGKILL)
    assert 0.3 <= took < 3


def test_stop_waits_for_a_grandchild_ignoring_sigterm(tmp_path: Path) -> None:
    """When the program dies but a grandchild ignores SIGTERM, stop() still kills it after grace."""
    text = f'#!/bin/sh\n{PY} -c "{IGNORE_TERM}" &\necho $! > gc.pid\nwait\n'

    async def scenario() -> float:
        execution = await start(tmp_path, write_script(text, tmp_path))
        assert isinstance(execution, ScriptExecution)
        await async_wait_until(lambda: (tmp_path / "out").read_text() == "ready\n")
        began = time.monotonic()
        await execution.stop(timedelta(seconds=0.3))
        took = time.monotonic() - began
        assert (await execution.wait()).exit_code == 143  # the sh itself died of SIGTERM
        return took

    took = run(scenario())
    assert 0.3 <= took < 3
    assert is_dead(int((tmp_path / "gc.pid").read_text()))


def test_stop_after_exit_is_harmless(tmp_path: Path) -> None:
    """stop() on a runnable that has already ended returns at once; wait() may be repeated."""

    async def scenario() -> None:
        execution = await start(tmp_path, write_script("#!/bin/sh\nexit 2\n", tmp_path))
        assert isinstance(execution, ScriptExecution)
        first, second = await asyncio.gather(execution.wait(), execution.wait())
        await execution.stop(timedelta(seconds=5))
        assert first == second == ExitResult(2) == await execution.wait()

    run(scenario())


def read_pid(path: Path) -> int | None:
    """The pid a script wrote to `path` with `echo $!`, once the line is complete."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return int(text) if text.endswith("\n") else None


def test_background_child_is_stopped_when_the_script_exits(tmp_path: Path) -> None:
    """A `cmd &` left running by a script that exits 0 is dead once wait() returns 0."""
    text = "#!/bin/sh\nsleep 1000 &\necho $! > child.pid\nexit 0\n"
    assert run(run_script(tmp_path, text)) == ExitResult(0)
    child = read_pid(tmp_path / "child.pid")
    assert child is not None and is_dead(child)


TERM_NOTED = (
    "import signal, time, pathlib;"
    " signal.signal(signal.SIGTERM, lambda *_: pathlib.Path('term').touch());"
    " print('ready', flush=True); time.sleep(60)"
)


def test_background_child_ignoring_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    """A left child that survives SIGTERM gets it, then SIGKILL; the waiter's 3 is reported."""
    text = (
        f'#!/bin/sh\n{PY} -c "{TERM_NOTED}" &\necho $! > child.pid\n'
        "until grep -q ready out; do sleep 0.01; done\nexit 3\n"
    )
    result = run(run_script(tmp_path, text, leftover_grace=timedelta(seconds=0.2)))
    assert result == ExitResult(3)
    child = read_pid(tmp_path / "child.pid")
    assert child is not None and is_dead(child)
    assert (tmp_path / "term").exists()  # it had its SIGTERM first


def test_children_in_other_process_groups_of_the_session_are_stopped(tmp_path: Path) -> None:
    """A child that moved to a process group of its own (still in the session) is stopped too."""
    own_group = "import os, time; os.setpgid(0, 0); print('ready', flush=True); time.sleep(60)"
    text = (
        f'#!/bin/sh\n{PY} -c "{own_group}" &\necho $! > child.pid\n'
        "until grep -q ready out; do sleep 0.01; done\nexit 0\n"
    )
    assert run(run_script(tmp_path, text)) == ExitResult(0)
    child = read_pid(tmp_path / "child.pid")
    assert child is not None and is_dead(child)


ORPHAN = textwrap.dedent(
    """
    import asyncio, json, os, sys
    from pathlib import Path
    from batch_agent.tasks.script import start_script

    async def main():
        d = Path(sys.argv[1])
        e = await start_script(
            d / sys.argv[2], env={"PATH": "/usr/bin:/bin"}, cwd=d, stdout_path=d / "out",
            stderr_path=d / "err", status_path=d / "status")
        print(json.dumps([e.pid, e.start_time]), flush=True)
        os._exit(0)  # an agent crash: nobody waits for the waiter

    asyncio.run(main())
    """
)


def start_orphan(tmp: Path, text: str) -> tuple[int, int]:
    """Start a script from another Python process that then dies; return (pid, start_time)."""
    program = write_script(text, tmp)
    done = subprocess.run(
        [PY, "-c", ORPHAN, str(tmp), program.name], capture_output=True, text=True, check=True
    )
    pid, start_time = json.loads(done.stdout)
    return int(pid), int(start_time)


def test_reattach_to_a_running_orphan_and_learn_its_exit(tmp_path: Path) -> None:
    """After the starting process died, reattach() waits for the orphan and reads its status."""
    pid, start_time = start_orphan(
        tmp_path, "#!/bin/sh\nwhile [ ! -e go ]; do sleep 0.01; done\nexit 5\n"
    )
    execution = ScriptExecution.reattach(pid, start_time, tmp_path / "status")
    assert isinstance(execution, ScriptExecution) and execution.pid == pid

    async def scenario() -> ExitResult:
        waiting = asyncio.ensure_future(execution.wait())
        await asyncio.sleep(0)
        assert not waiting.done()
        (tmp_path / "go").touch()
        return await waiting

    assert run(scenario()) == ExitResult(5)
    # Later restarts find the recorded status (the waiter may linger as a zombie).
    assert run(outcome(ScriptExecution.reattach(pid, start_time, tmp_path / "status"))) == (
        ExitResult(5)
    )


async def outcome(found: ScriptExecution | ExitResult) -> ExitResult:
    """What reattach() found: its result, or what the execution it returned ends with."""
    return found if isinstance(found, ExitResult) else await found.wait()


def test_reattach_to_a_finished_orphan(tmp_path: Path) -> None:
    """An orphan that ended while nobody watched left its exit code on disk."""
    pid, start_time = start_orphan(tmp_path, "#!/bin/sh\nexit 6\n")
    wait_until(lambda: read_status(tmp_path / "status") is not None)
    found = ScriptExecution.reattach(pid, start_time, tmp_path / "status")
    assert run(outcome(found)) == ExitResult(6)


def test_reattach_to_a_finished_and_reaped_waiter_is_its_result(tmp_path: Path) -> None:
    """With the status recorded and nothing of the waiter's group left, reattach() returns the
    result itself, without any execution to wait on."""

    async def first_run() -> ScriptExecution:
        execution = await start(tmp_path, write_script("#!/bin/sh\nexit 8\n", tmp_path))
        assert isinstance(execution, ScriptExecution)
        assert await execution.wait() == ExitResult(8)  # reaps the waiter
        return execution

    execution = run(first_run())
    found = ScriptExecution.reattach(execution.pid, execution.start_time, tmp_path / "status")
    assert found == ExitResult(8)


def test_reattached_script_leaves_no_background_child(tmp_path: Path) -> None:
    """A reattached script that exits leaves its `cmd &` dead once wait() returns its 0."""
    pid, start_time = start_orphan(
        tmp_path,
        "#!/bin/sh\nsleep 1000 &\necho $! > child.pid\n"
        "while [ ! -e go ]; do sleep 0.01; done\nexit 0\n",
    )
    execution = ScriptExecution.reattach(pid, start_time, tmp_path / "status")
    assert isinstance(execution, ScriptExecution)
    wait_until(lambda: read_pid(tmp_path / "child.pid") is not None)
    (tmp_path / "go").touch()
    assert run(execution.wait()) == ExitResult(0)
    child = read_pid(tmp_path / "child.pid")
    assert child is not None and is_dead(child)


def test_reattach_after_the_script_ended_stops_its_background_child(tmp_path: Path) -> None:
    """A script that ended while no agent ran: reattach() returns an execution whose wait()
    stops the child it left (ignoring SIGTERM) and returns the recorded 0."""
    pid, start_time = start_orphan(
        tmp_path,
        f'#!/bin/sh\n{PY} -c "{TERM_NOTED}" &\necho $! > child.pid\n'
        "until grep -q ready out; do sleep 0.01; done\nexit 0\n",
    )
    wait_until(lambda: read_status(tmp_path / "status") is not None)
    child = read_pid(tmp_path / "child.pid")
    assert child is not None and not is_dead(child)
    found = ScriptExecution.reattach(
        pid, start_time, tmp_path / "status", leftover_grace=timedelta(seconds=0.2)
    )
    assert isinstance(found, ScriptExecution)
    assert run(found.wait()) == ExitResult(0)
    assert is_dead(child) and (tmp_path / "term").exists()


def test_reattach_with_a_recycled_pid_reports_the_status_lost(tmp_path: Path) -> None:
    """A live pid with another start time is not our runnable: the status is lost."""
    result = ScriptExecution.reattach(os.getpid(), 1, tmp_path / "status")
    assert isinstance(result, ExitResult)
    assert result.exit_code == EXIT_CODE_UNKNOWN and result.reason and "lost" in result.reason


def test_stop_a_reattached_orphan_that_ignores_sigterm(tmp_path: Path) -> None:
    """A reattached runnable can be stopped; SIGKILL kills the waiter, so 137 is inferred."""
    pid, start_time = start_orphan(tmp_path, f"#!{PY}\n{IGNORE_TERM}\n")
    wait_until(lambda: (tmp_path / "out").read_text() == "ready\n")
    execution = ScriptExecution.reattach(pid, start_time, tmp_path / "status")
    assert isinstance(execution, ScriptExecution)

    async def scenario() -> ExitResult:
        await execution.stop(timedelta(seconds=0.2))
        return await execution.wait()

    result = run(scenario())
    assert (result.exit_code, result.signal) == (137, signal.SIGKILL)
    assert is_dead(pid)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching user needs root")
def test_runs_as_the_given_user() -> None:
    """user=(uid, gid) runs the program with that uid/gid and no supplementary groups."""
    uid = gid = 54321  # needs no passwd entry
    with tempfile.TemporaryDirectory(dir="/tmp") as name:  # pytest's tmp dirs are 0700
        tmp = Path(name)
        tmp.chmod(0o755)
        program = write_script("#!/bin/sh\nid -u; id -g; id -G\n", tmp, owner=(uid, gid))
        assert run(run_program(tmp, program, user=(uid, gid))).ok
        assert (tmp / "out").read_text().split() == [str(uid), str(gid), str(gid)]
        assert (tmp / "status").stat().st_uid == uid


@pytest.mark.parametrize("planted", ["out", "err", "status"])
@pytest.mark.skipif(os.geteuid() != 0, reason="switching user needs root")
def test_output_and_status_are_never_opened_through_a_symlink(tmp_path: Path, planted: str) -> None:
    """A symlink in place of stdout, stderr or (with a user) the status file is not followed:
    the start fails with 126 and the file it points at stays as it was, and whose it was."""
    victim = tmp_path / "shadow"
    victim.write_text("root:secret\n")
    victim.chmod(0o600)
    (tmp_path / planted).symlink_to(victim)
    program = write_script("#!/bin/sh\necho x\n", tmp_path, owner=(1, 1))
    result = run(start(tmp_path, program, user=(1, 1)))
    assert isinstance(result, ExitResult) and result.exit_code == 126, result
    assert result.reason is not None and "symbolic links" in result.reason
    assert victim.read_text() == "root:secret\n"
    assert (victim.stat().st_uid, victim.stat().st_mode & 0o777) == (0, 0o600)


def test_a_fifo_in_place_of_an_output_file_cannot_hang_the_start(tmp_path: Path) -> None:
    """A FIFO where stdout should go is refused (126) instead of blocking the open forever."""
    os.mkfifo(tmp_path / "out")
    result = run(start(tmp_path, write_script("#!/bin/sh\n", tmp_path)))
    assert isinstance(result, ExitResult) and result.exit_code == 126, result


def test_a_status_symlink_is_not_read(tmp_path: Path) -> None:
    """read_status does not follow a symlink: a file elsewhere saying 0 is no success."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("0\n")
    (tmp_path / "status").symlink_to(elsewhere)
    found = read_status(tmp_path / "status")
    assert found is not None and found.exit_code == EXIT_CODE_UNKNOWN, found


def test_find_waiter_by_its_command_line(tmp_path: Path) -> None:
    """An agent that never saved the pid finds the waiter (not its forked child) again."""
    script = tmp_path / "s.sh"
    script.write_text("sleep 30\n")  # no shebang: dash forks a child with the same cmdline
    script.chmod(0o700)

    async def go() -> tuple[int, int | None]:
        started = await start(tmp_path, script)
        assert isinstance(started, ScriptExecution)
        try:
            found = find_waiter(tmp_path / "status")
            return started.pid, found[0] if found else None
        finally:
            await started.stop(timedelta(seconds=1))

    waiter, found = asyncio.run(go())
    assert found == waiter
    assert find_waiter(tmp_path / "status") is None


def test_scope_command_execs_the_waiter_in_a_transient_scope() -> None:
    """Under systemd the waiter's command follows systemd-run --scope in batch-tasks.slice,
    with accounting on, and setpriv drops to a runnable's user just before the waiter."""
    prefix = scope_argv("batch-task-ab-r2-c0ffee.scope", systemd_run="/usr/bin/systemd-run")
    argv = waiter_argv(Path("/t/script-1"), Path("/t/runnable-2.status"), prefix)
    waiter = ["/bin/sh", "-c", WAITER_SCRIPT, "batch-waiter", "/t/runnable-2.status", "/t/script-1"]
    assert argv == [
        "/usr/bin/systemd-run",
        "--scope",
        "--unit=batch-task-ab-r2-c0ffee.scope",
        "--slice=batch-tasks.slice",
        "--collect",
        "--quiet",
        "--property=CPUAccounting=yes",
        "--property=MemoryAccounting=yes",
        "--",
        *waiter,
    ]
    as_user = scope_argv(
        "u.scope", systemd_run="/usr/bin/systemd-run", user=(1000, 100), setpriv="/usr/bin/setpriv"
    )
    assert as_user[as_user.index("--") + 1 :] == [
        "/usr/bin/setpriv",
        "--reuid=1000",
        "--regid=100",
        "--clear-groups",
        "--",
    ]
    assert waiter_argv(Path("/p"), Path("/s"), [])[:2] == ["/bin/sh", "-c"]


def test_a_script_known_to_have_no_shebang_runs_under_sh_as_its_exec_would(tmp_path: Path) -> None:
    """`shell=True` runs `/bin/sh PROGRAM` at once: the same program, `$0` and result as the
    exec that fails with ENOEXEC and falls back to sh, and the waiter stays findable."""
    program = write_script('echo "$0"; exit 4', tmp_path)
    argv = waiter_argv(program, tmp_path / "status", [], shell=True)
    assert argv[-2:] == ["/bin/sh", str(program)]
    results = []
    for shell in (False, True):
        files = open_files(
            program,
            cwd=tmp_path,
            stdout_path=tmp_path / f"out-{shell}",
            stderr_path=tmp_path / f"err-{shell}",
            status_path=tmp_path / f"status-{shell}",
            shell=shell,
        )
        assert isinstance(files, OpenedFiles)
        execution = spawn_opened(files, env=ENV, cwd=tmp_path)
        assert isinstance(execution, ScriptExecution)
        results.append((run(execution.wait()), (tmp_path / f"out-{shell}").read_text()))
    assert results[0] == results[1] == (ExitResult(4), f"{program}\n")


def test_a_prefix_that_execs_in_place_keeps_the_waiter_findable(tmp_path: Path) -> None:
    """A command put before the waiter that execs it in place (as systemd-run --scope does)
    leaves the started pid the waiter's: found by its command line, and it records the status."""
    script = tmp_path / "s.sh"
    script.write_text("#!/bin/sh\nwhile [ ! -e go ]; do sleep 0.05; done\nexit 5\n")
    script.chmod(0o700)
    status = tmp_path / "status"
    argv = waiter_argv(script, status, ["/usr/bin/env", "--"])
    process = subprocess.Popen(
        argv, cwd=tmp_path, start_new_session=True, env=ENV, stdin=subprocess.PIPE
    )
    assert process.stdin is not None
    process.stdin.write(b"go\n")  # its go
    process.stdin.close()
    try:
        stat = read_stat(process.pid)
        assert stat is not None
        wait_until(lambda: find_waiter(status) == (process.pid, stat.start_time))
        (tmp_path / "go").touch()
        assert process.wait(timeout=10) == 5
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    found = read_status(status)
    assert found is not None and found.exit_code == 5


def test_scripts_written_and_started_side_by_side_never_find_their_file_busy(
    tmp_path: Path,
) -> None:
    """Many scripts written in worker threads while others start from the event loop (as the
    driver does) all run: none is exec'd while a child forked meanwhile still holds it open for
    writing (ETXTBSY, "Text file busy", exit 126)."""

    def write_and_open(i: int) -> OpenedFiles | ExitResult:
        folder = tmp_path / f"t{i}"
        folder.mkdir()
        program = write_script("#!/bin/sh\nexit 0\n", folder)
        return open_files(
            program,
            cwd=folder,
            stdout_path=folder / "out",
            stderr_path=folder / "err",
            status_path=folder / "status",
        )

    async def start(i: int) -> ScriptExecution | ExitResult:
        files = await asyncio.to_thread(write_and_open, i)
        if isinstance(files, ExitResult):
            return files
        return spawn_opened(files, env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path / f"t{i}")

    async def scenario() -> list[ExitResult]:
        started = await asyncio.gather(*(start(i) for i in range(96)))
        return [s if isinstance(s, ExitResult) else await s.wait() for s in started]

    results = asyncio.run(scenario())
    busy = [i for i, r in enumerate(results) if r != ExitResult(0)]
    assert not busy, [(tmp_path / f"t{i}" / "err").read_text() for i in busy[:3]]


def _files(tmp_path: Path, program: Path) -> OpenedFiles:
    files = open_files(
        program,
        cwd=tmp_path,
        stdout_path=tmp_path / "out",
        stderr_path=tmp_path / "err",
        status_path=tmp_path / "status",
    )
    assert isinstance(files, OpenedFiles)
    return files


_READ = {"x86_64": 0, "aarch64": 63}  # read(2)'s number in /proc/PID/syscall


def _reading_stdin(pid: int) -> bool:
    """Whether `pid` is blocked in a read of its fd 0."""
    try:
        number, fd = Path(f"/proc/{pid}/syscall").read_text().split()[:2]
    except (OSError, ValueError):
        return False
    return number == str(_READ[os.uname().machine]) and fd == "0x0"


def test_a_waiter_forked_ahead_runs_nothing_before_its_go(tmp_path: Path) -> None:
    """`go=False`: the waiter waits in a read of its stdin, with no child and no status;
    `go()` runs the program, whose stdin is /dev/null, not the waiter's pipe."""
    program = write_script("#!/bin/sh\nreadlink /proc/self/fd/0\nexit 6\n", tmp_path)

    async def scenario() -> tuple[list[int], ExitResult]:
        execution = spawn_opened(_files(tmp_path, program), env=ENV, cwd=tmp_path, go=False)
        assert isinstance(execution, ScriptExecution)
        await async_wait_until(lambda: _reading_stdin(execution.pid))
        children = Path(f"/proc/{execution.pid}/task/{execution.pid}/children").read_text()
        assert not (tmp_path / "status").exists()
        execution.go()
        return [int(pid) for pid in children.split()], await execution.wait()

    children, result = run(scenario())
    assert children == [] and result == ExitResult(6)
    assert (tmp_path / "out").read_text() == "/dev/null\n"


def test_a_dismissed_waiter_ends_having_run_and_recorded_nothing(tmp_path: Path) -> None:
    """`dismiss()` lets a waiter that waits for its go end at once (and reaps it): the program
    never ran and no status says it did, so a restarted agent would start it."""
    program = write_script(f"#!/bin/sh\ntouch {tmp_path}/ran\n", tmp_path)

    async def scenario() -> int:
        execution = spawn_opened(_files(tmp_path, program), env=ENV, cwd=tmp_path, go=False)
        assert isinstance(execution, ScriptExecution)
        await execution.dismiss()
        return execution.pid

    pid = run(scenario())
    assert read_stat(pid) is None  # ended and reaped
    assert not (tmp_path / "ran").exists() and read_status(tmp_path / "status") is None


def test_a_waiter_waiting_for_its_go_ends_with_the_agent_running_nothing(tmp_path: Path) -> None:
    """An agent killed while a waiter waits for its go: the pipe's end closes with it, and the
    waiter ends without running the program or recording a status."""
    program = write_script(f"#!/bin/sh\ntouch {tmp_path}/ran\n", tmp_path)
    agent = textwrap.dedent(
        f"""
        import asyncio, sys, time
        from pathlib import Path
        from batch_agent.tasks.script import open_files, spawn_opened
        tmp = Path({str(tmp_path)!r})
        files = open_files(Path({str(program)!r}), cwd=tmp, stdout_path=tmp / "out",
                           stderr_path=tmp / "err", status_path=tmp / "status")
        waiter = spawn_opened(files, env={ENV!r}, cwd=tmp, go=False)
        print(waiter.pid, flush=True)
        time.sleep(60)
        """
    )
    process = subprocess.Popen([PY, "-c", agent], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    waiter = int(process.stdout.readline())
    wait_until(lambda: _reading_stdin(waiter))
    process.kill()
    process.wait()
    process.stdout.close()
    wait_until(lambda: is_dead(waiter))
    assert not (tmp_path / "ran").exists() and read_status(tmp_path / "status") is None
