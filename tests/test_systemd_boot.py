"""The agent installed as on a Batch VM (scripts/vm-startup.sh, as the README says) and run by a
real systemd as PID 1, against the emulator: the machine is `systemd_support`'s. Skips, saying
why, only where the machine cannot do this (no debootstrap, not root, no Debian mirror, an
engine that refuses to boot systemd in a container).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from batch_agent.emulator import Emulator
from tests.helpers import exit_code, job, script, wait_until
from tests.systemd_support import (
    UNIT,
    Machine,
    Unavailable,
    booted,
    build_wheelhouse,
    install,
    startup,
)

pytestmark = pytest.mark.timeout(900)  # the first run on a machine bootstraps Debian

TASK0 = "projects/123456789012/locations/us-central1/jobs/job-1/taskGroups/group0/tasks/0"
RUNS, GO = "/var/tmp/runs", "/var/tmp/go"


@pytest.fixture(scope="module")
def machine(docker_engine: str) -> Iterator[Machine]:
    """The bookworm rootfs booted by systemd, on the host network, until the module ends."""
    try:
        with booted(docker_engine) as box:
            yield box
    except Unavailable as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    """A job of one task that counts its runs, waits for GO, then exits 7."""
    text = f"echo run >> {RUNS}; while [ ! -e {GO} ]; do sleep 0.1; done; exit 7"
    emu = Emulator(
        job(script(text)), default_report_interval="1s", min_report_interval="0.2s", log=None
    )
    emu.start()
    yield emu
    emu.stop()


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The agent's wheel and those of its dependencies, built here."""
    return build_wheelhouse(tmp_path_factory.mktemp("wheelhouse"))


@pytest.fixture(scope="module")
def installed(machine: Machine, emulator: Emulator, wheelhouse: Path) -> Machine:
    """The machine once the startup script has installed and started the agent."""
    install(machine, emulator, wheelhouse)
    return machine


def agent_states(emu: Emulator) -> list[str]:
    return [r.body["agentInfo"]["state"] for r in emu.reports]


def settings(box: Machine) -> dict[str, str]:
    text = box.check("cat", "/etc/default/batch-agent")
    pairs = (line.split("=", 1) for line in text.splitlines() if not line.startswith("#"))
    return {key: value.strip('"') for key, value in pairs}


# --- the tests ----------------------------------------------------------------------------------


def test_startup_script_installs_an_enabled_active_unit(installed: Machine, emulator: Emulator):
    """The unit is enabled, active, passes systemd-analyze verify, and the agent reports the
    startup script's start time as scriptStartupTime."""
    assert installed.show("ActiveState") == "active", installed.journal()
    assert installed.show("UnitFileState") == "enabled"
    installed.check("systemd-analyze", "verify", f"/etc/systemd/system/{UNIT}")
    link = installed.check("readlink", "/usr/local/bin/batch-agent").strip()
    assert link == "/opt/batch-agent/bin/batch-agent"
    written = datetime.fromisoformat(settings(installed)["BATCH_AGENT_SCRIPT_STARTUP_TIME"])

    def reported() -> datetime | None:
        for report in reversed(emulator.reports):
            timing = report.body.get("agentTimingInfo") or {}
            if "scriptStartupTime" in timing:
                return datetime.fromisoformat(timing["scriptStartupTime"])
        return None

    assert wait_until(reported, timeout=60, what="scriptStartupTime") == written


def waiter_pid(box: Machine) -> int:
    """The pid `batch-agent status` gives for the task's runnable, once it has one."""

    def found() -> int | None:
        code, out = box.run("batch-agent", "status", "--json")
        tasks = json.loads(out)["tasks"] if code == 0 else []
        pid = tasks[0]["runnables"][0]["pid"] if tasks and tasks[0]["runnables"] else None
        return pid if isinstance(pid, int) else None

    return wait_until(found, timeout=60, what="the runnable's pid in `batch-agent status`")


def test_task_runs_in_a_scope_of_its_own(installed: Machine, emulator: Emulator):
    """A running script runnable's waiter (the pid the agent keeps) is in a transient scope under
    batch-tasks.slice, not in the agent's unit, and `batch-agent status` shows its accounting."""
    wait_until(lambda: emulator.task_state(TASK0) == "RUNNING", timeout=60, what="RUNNING")
    pid = waiter_pid(installed)
    cmdline = installed.check("cat", f"/proc/{pid}/cmdline").split("\0")
    assert cmdline[:2] == ["/bin/sh", "-c"] and "batch-waiter" in cmdline, cmdline
    cgroup = installed.check("cat", f"/proc/{pid}/cgroup")
    assert "/batch-tasks.slice/batch-task-" in cgroup, cgroup
    assert UNIT not in cgroup, cgroup
    (runnable,) = json.loads(installed.check("batch-agent", "status", "--json"))["tasks"][0][
        "runnables"
    ]
    accounting = runnable["accounting"]
    assert accounting is not None and accounting["unit"].startswith("batch-task-"), (
        runnable,
        cgroup,
    )
    assert accounting["memory_bytes"] > 0, accounting
    # CPU time is there on cgroup v2, and on v1 where cpuacct is mounted with cpu (systemd
    # makes no cgroup in a cpuacct hierarchy of its own, as this test's host may have).
    assert "cpu_seconds" in accounting
    unit = accounting["unit"]
    assert installed.check("systemctl", "show", "--value", "-p", "Slice", unit).strip() == (
        "batch-tasks.slice"
    )


def test_a_tasks_runnables_share_one_scope_gone_with_the_task(
    installed: Machine, emulator: Emulator
):
    """Each runnable after a task's first joins the scope its first made (a scope costs a
    runnable more than the rest of its start), a background one too; the scope ends with the
    task's last process."""
    shown = "cat /proc/self/cgroup > /var/tmp/scopes/{}; sleep 0.3"
    runnables = [
        script(shown.format(0)),
        script(shown.format(1)),
        script(shown.format("background"), background=True),
        script(shown.format(2)),
    ]
    installed.check("mkdir", "-p", "/var/tmp/scopes")
    spec = {"runnables": runnables}
    name = emulator.add_task({"agentTaskSpec": spec, "taskSource": "USER"})
    wait_until(lambda: emulator.task_state(name) == "SUCCEEDED", timeout=60, what="SUCCEEDED")
    scopes = {
        k: installed.check("cat", f"/var/tmp/scopes/{k}").splitlines()
        for k in ("0", "1", "background", "2")
    }
    assert any("/batch-tasks.slice/batch-task-" in line for line in scopes["0"]), scopes
    assert all(lines == scopes["0"] for lines in scopes.values()), scopes
    unit = next(line for line in scopes["0"] if "batch-task-" in line).rsplit("/", 1)[-1]
    wait_until(
        lambda: installed.run("systemctl", "is-active", unit)[1].strip() != "active",
        timeout=30,
        what=f"{unit} to end with the task",
    )


def test_a_user_tasks_runnables_join_its_scope_as_that_user(installed: Machine, emulator: Emulator):
    """A runnable of a task with a userAccount that joins the task's scope (setpriv alone before
    its waiter, no systemd-run) runs as that uid, like the one that made the scope."""
    shown = "{{ id -u; cat /proc/self/cgroup; }} > /var/tmp/scopes-user/{}; sleep 0.3"
    installed.check("install", "-d", "-m", "1777", "/var/tmp/scopes-user")
    spec = {
        "runnables": [script(shown.format(0)), script(shown.format(1))],
        "userAccount": {"uid": "65534", "gid": "65534"},
    }
    name = emulator.add_task({"agentTaskSpec": spec, "taskSource": "USER"})
    wait_until(lambda: emulator.task_state(name) == "SUCCEEDED", timeout=60, what="SUCCEEDED")
    first, second = (
        installed.check("cat", f"/var/tmp/scopes-user/{k}").splitlines() for k in (0, 1)
    )
    assert first[0] == second[0] == "65534", (first, second)
    assert any("/batch-tasks.slice/batch-task-" in line for line in first), first
    assert first == second, (first, second)


def test_a_flood_of_output_leaves_the_agents_own_lines_in_the_journal(
    installed: Machine, emulator: Emulator
):
    """journald drops what a unit logs beyond its rate limit at a priority, the agent's own
    lines with a task's: the agent copies only part of a flood into the journal, says so, and
    its lines about the task are all there."""

    def journal() -> list[str]:
        text = installed.check("journalctl", "--no-pager", "-o", "cat", "-u", UNIT)
        return text.splitlines()

    ended = sum("from RUNNING to SUCCEEDED" in line for line in journal())
    spec = {"runnables": [script("seq 1 50000; echo flood-done")]}
    name = emulator.add_task({"agentTaskSpec": spec, "taskSource": "USER"})
    wait_until(lambda: emulator.task_state(name) == "SUCCEEDED", timeout=120, what="SUCCEEDED")
    wait_until(
        lambda: sum("from RUNNING to SUCCEEDED" in line for line in journal()) == ended + 1,
        timeout=10,
        what="the agent's line about the flooding task's end in the journal",
    )
    lines = journal()
    assert any("more than 5000 lines of runnables' output" in line for line in lines)
    copied = [line for line in lines if re.fullmatch(r"\[task \d+ r1 stdout\] \d+", line)]
    # (journald says "Suppressed N messages" only once its 30 s window has passed: not a check
    # this test could wait for; the agent's line about the task's end above is the one)
    assert len(copied) == 5000, copied[-3:]  # the only task of this module printing numbers


def test_watchdog_restarts_a_stopped_agent(installed: Machine, emulator: Emulator):
    """An agent that stops pinging the watchdog (SIGSTOP: a wedged loop) is killed and restarted
    by systemd after WatchdogSec, and the restarted agent reports the task still running."""
    dropin = f"/etc/systemd/system/{UNIT}.d"
    installed.check("mkdir", "-p", dropin)
    installed.check(
        "sh",
        "-c",
        f"printf '[Service]\\nWatchdogSec=10\\nTimeoutAbortSec=5\\n' > {dropin}/watchdog.conf",
    )
    installed.check("systemctl", "daemon-reload")
    installed.check("systemctl", "restart", UNIT)  # the watchdog time is taken at start
    restarts, pid = int(installed.show("NRestarts")), installed.show("MainPID")
    starts = agent_states(emulator).count("AGENT_STARTING")
    installed.check("sh", "-c", f"kill -STOP {pid}")  # a wedged loop pings no watchdog
    wait_until(
        lambda: (
            installed.show("MainPID") not in (pid, "0")
            and installed.show("ActiveState") == "active"
        ),
        timeout=120,
        what="systemd to restart the stopped agent",
    )
    assert int(installed.show("NRestarts")) > restarts
    assert "watchdog timeout" in installed.journal().lower(), installed.journal()
    wait_until(
        lambda: (
            agent_states(emulator).count("AGENT_STARTING") > starts
            and agent_states(emulator)[-1] == "AGENT_RUNNING"
        ),
        timeout=60,
        what="the restarted agent's reports",
    )
    assert emulator.task_state(TASK0) == "RUNNING"
    installed.check("rm", f"{dropin}/watchdog.conf")
    installed.check("systemctl", "daemon-reload")


def test_task_survives_restarts_and_reports_its_exit_code(
    installed: Machine, emulator: Emulator, wheelhouse: Path
):
    """A running task outlives `systemctl restart` and a second run of the startup script, runs
    once, and its real exit code is reported by the restarted agent."""
    wait_until(lambda: emulator.task_state(TASK0) == "RUNNING", timeout=60, what="RUNNING")
    starts = agent_states(emulator).count("AGENT_STARTING")
    for restart in (
        lambda: installed.check("systemctl", "restart", UNIT),
        lambda: startup(installed, emulator, wheelhouse),  # idempotent: the same install
    ):
        pid = installed.show("MainPID")
        restart()
        assert installed.show("ActiveState") == "active", installed.journal()
        assert installed.show("MainPID") not in (pid, "0")
        starts += 1
        # The new agent is the one reporting: it started and reported the task since.
        wait_until(
            lambda n=starts: (
                agent_states(emulator).count("AGENT_STARTING") == n
                and agent_states(emulator)[-1] == "AGENT_RUNNING"
            ),
            timeout=60,
            what=f"agent start {starts}",
        )
        assert emulator.task_state(TASK0) == "RUNNING"
    installed.check("touch", GO)
    wait_until(lambda: emulator.task_state(TASK0) == "FAILED", timeout=60, what="FAILED")
    assert exit_code(emulator, TASK0) == 7
    assert installed.check("cat", RUNS) == "run\n"
    # The task was in a scope of its own: no restart found it in the agent's unit.
    log = installed.check("journalctl", "--no-pager", "-u", UNIT)
    assert "left-over process" not in log, log
    assert emulator.invalid_reports == []


def test_stop_reports_agent_stopped_within_the_stop_timeout(installed: Machine, emulator: Emulator):
    """`systemctl stop` ends the agent cleanly (no kill at TimeoutStopSec) after its last
    report, AGENT_STOPPED."""
    assert installed.show("ActiveState") == "active", installed.journal()
    before = len(emulator.reports)
    installed.check("systemctl", "stop", UNIT)
    assert installed.show("ActiveState") == "inactive"
    # "timeout" here would mean systemd had to SIGKILL it after TimeoutStopSec.
    assert installed.show("Result") == "success", installed.journal()
    assert installed.show("ExecMainStatus") == "0"
    assert agent_states(emulator)[before:][-1:] == ["AGENT_STOPPED"]


USER_RUN = """
import asyncio
from pathlib import Path
from batch_agent.tasks.script import start_script, write_script

folder = Path("/var/tmp/scope-user")
folder.mkdir(mode=0o755, exist_ok=True)
text = "#!/bin/sh\\nid -u; id -G; echo HOME=$HOME; cat /proc/self/cgroup\\n"
program = write_script(text, folder, owner=(65534, 65534))

async def main() -> None:
    started = await start_script(
        program, env={"PATH": "/usr/bin:/bin", "HOME": "/home-as-given"}, cwd=Path("/tmp"),
        stdout_path=folder / "out", stderr_path=folder / "err", status_path=folder / "status",
        user=(65534, 65534),
    )
    print((await started.wait()).exit_code)

asyncio.run(main())
"""


def test_a_user_runnable_runs_in_a_scope_as_that_user(installed: Machine):
    """A runnable with a user runs in a task scope as that uid and gid only (setpriv after
    systemd-run), with the environment it was given, and its exit status is recorded."""
    code = installed.check("/opt/batch-agent/bin/python", "-c", USER_RUN).strip()
    out = installed.check("cat", "/var/tmp/scope-user/out").splitlines()
    assert code == "0", (out, installed.run("cat", "/var/tmp/scope-user/err")[1])
    assert out[:3] == ["65534", "65534", "HOME=/home-as-given"], out
    assert any("/batch-tasks.slice/batch-task-" in line for line in out[3:]), out


NOT_ROOT_RUN = """
import asyncio
import tempfile
from pathlib import Path
from batch_agent.tasks.script import start_script, write_script

folder = Path(tempfile.mkdtemp())
program = write_script("#!/bin/sh\\ncat /proc/self/cgroup\\n", folder)

async def main() -> None:
    started = await start_script(
        program, env={"PATH": "/usr/bin:/bin"}, cwd=folder, stdout_path=folder / "out",
        stderr_path=folder / "err", status_path=folder / "status",
    )
    print((await started.wait()).exit_code, (folder / "out").read_text(), sep="\\n")

asyncio.run(main())
"""


def test_an_agent_not_run_as_root_runs_its_scripts_without_a_scope(installed: Machine):
    """Only root may make a scope in the system's manager: an agent run by a user (as
    `batch-agent local` may be) runs its runnables in plain sessions instead of having every
    one refused."""
    out = installed.check(
        "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
        "/opt/batch-agent/bin/python", "-c", NOT_ROOT_RUN,
    )  # fmt: skip
    code, *cgroup = out.splitlines()
    assert code == "0", out
    assert not any("/batch-tasks.slice/" in line for line in cgroup), out
