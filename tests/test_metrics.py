"""Metrics and /healthz on loopback, scraped from the real agent over real HTTP."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import job, script, wait_until


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read().decode()
    except OSError:
        return 0, ""


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, keyed by name and sorted labels (empty when not serving)."""
    status, text = get(port, "/metrics")
    if status != 200:
        return {}
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_counters_move_during_a_job(make_emulator, start_agent, tmp_path):
    """Reports, tasks by state, runnables started and failed, output bytes, RSS all show."""
    gate = tmp_path / "gate"
    emu = make_emulator(
        job(
            script("printf 'a\\nbb\\n'"),
            script(f"while [ ! -e {gate} ]; do sleep 0.1; done; exit 5"),
        )
    )
    port = free_port()
    agent = start_agent(emu, BATCH_AGENT_METRICS_PORT=str(port))
    running = ("batch_agent_tasks", (("state", "RUNNING"),))
    started = ("batch_agent_runnables_started_total", ())
    during = wait_until(
        lambda: (m := scrape(port)).get(running) == 1 and m.get(started) == 2 and m,
        what="the task running its second runnable",
    )
    assert during[("batch_agent_output_bytes_total", (("stream", "stdout"),))] == 5
    assert during[("batch_agent_runnables_failed_total", ())] == 0
    assert during[("process_resident_memory_bytes", ())] > 0
    ok = ("batch_agent_reports_total", (("code", "200"), ("outcome", "ok")))
    assert during[ok] >= 1
    assert during[("batch_agent_report_seconds_count", ())] >= during[ok]
    wait_until(lambda: scrape(port)[ok] > during[ok], what="more reports")
    assert get(port, "/healthz")[0] == 200
    gate.touch()
    failed = ("batch_agent_runnables_failed_total", ())
    after = wait_until(lambda: (m := scrape(port)).get(failed) == 1 and m, what="the failure")
    assert after[started] == 2
    assert after[running] == 0
    assert agent.terminate() == 0


def test_healthz_fails_once_reports_stop_succeeding(make_emulator, start_agent):
    """/healthz turns 503 when no report succeeded for 3 intervals; errors are counted."""
    emu = make_emulator(job(script("sleep 60")))
    port = free_port()
    agent = start_agent(emu, BATCH_AGENT_METRICS_PORT=str(port))
    wait_until(lambda: get(port, "/healthz")[0] == 200, what="healthy")
    emu.stop()
    wait_until(lambda: get(port, "/healthz")[0] == 503, timeout=60, what="unhealthy")
    errors = [
        v
        for (name, labels), v in scrape(port).items()
        if name == "batch_agent_reports_total" and ("outcome", "error") in labels
    ]
    assert errors and sum(errors) >= 1
    assert get(port, "/nothing")[0] == 404
    assert agent.terminate() == 0


def test_a_taken_port_leaves_metrics_off_and_tasks_running(make_emulator, start_agent):
    """A metrics port in use is logged as an error; the agent runs its tasks all the same."""
    emu = make_emulator(job(script("true")))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        agent = start_agent(emu, "--once", BATCH_AGENT_METRICS_PORT=str(port))
        assert agent.wait() == 0, agent.log()
    assert f"metrics off: cannot listen on 127.0.0.1:{port}" in agent.log()


def test_metrics_off_never_imports_prometheus_client():
    """With metrics off (the default) the agent's modules do not import prometheus_client."""
    program = (
        "import sys, batch_agent.cli, batch_agent.reporter, batch_agent.metrics\n"
        "from batch_agent.metrics import start_metrics\n"
        "start_metrics(0, lambda: True).close()\n"
        "assert 'prometheus_client' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", program], check=True, timeout=60)
