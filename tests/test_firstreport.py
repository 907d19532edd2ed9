"""Which path a first report takes (firstreport.py): a new agent sends it from the thread its
start-up starts, before the report loop exists; an agent whose state dir existed sends it from
the loop, with what its store holds. Seen in real agent processes by an audit hook (Python's
`http.client.send` event) that notes the thread each `state:report` request goes from."""

from __future__ import annotations

from pathlib import Path

from batch_agent.wire import parse_time
from tests.faults.rawserver import LateServer
from tests.helpers import final_event, job, script, wait_until
from tests.test_cloud_logging import logged_task

PROBE = """\
import os, sys, threading

def _note_report_thread(event, args):
    if event == "http.client.send" and b"state:report" in bytes(args[1][:400]):
        with open(os.environ["REPORT_THREADS"], "a") as notes:
            notes.write(threading.current_thread().name + "\\n")

sys.addaudithook(_note_report_thread)
"""


def report_threads(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """The environment that loads the probe into an agent, and the file it writes to."""
    probe = tmp_path / "probe"
    probe.mkdir(exist_ok=True)
    (probe / "sitecustomize.py").write_text(PROBE)
    notes = tmp_path / "report-threads"
    return {"PYTHONPATH": str(probe), "REPORT_THREADS": str(notes)}, notes


def test_a_new_agent_reports_from_its_start_up_a_restarted_one_from_its_loop(
    make_emulator, start_agent, tmp_path
):
    emu = make_emulator(job(script("true")))
    env, notes = report_threads(tmp_path)
    assert start_agent(emu, "--once", **env).wait() == 0
    threads = notes.read_text().splitlines()
    assert threads[0] == "first-report", threads
    assert "first-report" not in threads[1:]  # the loop's own reports after it
    # Its answer was the loop's first: the task it brought ran and was reported.
    assert final_event(emu, emu.task_names()[0])["taskState"] == "SUCCEEDED"
    first = emu.reports[0].body
    assert first["agentInfo"]["state"] == "AGENT_STARTING"
    # One start, one agentStartupTime: the thread's report and the loop's say the same.
    started = {r.body["agentTimingInfo"]["agentStartupTime"] for r in emu.reports}
    assert started == {first["agentTimingInfo"]["agentStartupTime"]}, started
    assert parse_time(started.pop()) <= parse_time(first["agentInfo"]["reportTime"])

    notes.unlink()
    assert start_agent(emu, "--once", **env).wait() == 0  # the same state dir, now not new
    threads = notes.read_text().splitlines()
    assert threads and "first-report" not in threads, threads


def test_a_new_agent_whose_metadata_server_is_not_up_yet_reports_from_its_loop(
    make_emulator, start_agent, tmp_path
):
    """The first report's thread finds no usable answer (503s): it sends nothing, and the
    loop reads the metadata server again, with backoff, and reports once it answers."""
    emu = make_emulator(job(script("true")))
    env, notes = report_threads(tmp_path)
    with LateServer(emu.vms[0].metadata_host) as metadata:
        agent = start_agent(emu, "--once", GCE_METADATA_HOST=f"127.0.0.1:{metadata.port}", **env)
        wait_until(lambda: "metadata server" in agent.log(), what="the loop's retry")
        assert not emu.reports
        metadata.up.set()
        assert agent.wait() == 0, agent.log()
    threads = notes.read_text().splitlines()
    assert threads and "first-report" not in threads, threads
    assert final_event(emu, emu.task_names()[0])["taskState"] == "SUCCEEDED"


def test_what_the_first_reports_thread_logs_reaches_cloud_logging(make_emulator, start_agent):
    """Records logged before the agent's Cloud Logging handler exists (here the thread's note
    of a missing os-release) are held and handed over to it: batch_agent_logs has them, sent
    by the exit's flush: the task, which asks for Cloud Logging (and so for the agent's log),
    is over before the writer's first round."""
    emu = make_emulator(None)
    emu.add_task(logged_task("true"))
    agent = start_agent(
        emu,
        "--once",
        BATCH_AGENT_LOGGING_ENDPOINT=emu.url,
        BATCH_AGENT_OS_RELEASE="/nonexistent/os-release",
    )
    assert agent.wait() == 0, agent.log()
    assert "no os-release at /nonexistent/os-release" in agent.log()
    texts = [e.get("textPayload", "") for e in emu.logs.entries("batch_agent_logs")]
    assert any("no os-release at /nonexistent/os-release" in t for t in texts), texts
