"""The import graph, read with `ast`: the layers the design draws, and one home per library.

`cli -> reporter -> tasks -> (drivers | store) -> wire`: a module may import what is below it,
never what is above. Lazy and TYPE_CHECKING imports count too. Last, what real processes load:
the imports kept lazy for start-up time and memory stay lazy.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import batch_agent
from batch_agent.tasks.assembly import TASK_SIDE
from tests.helpers import agent_env, job, script

ROOT = Path(batch_agent.__file__).parent
MODULES = {
    "batch_agent."
    + ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
    for p in ROOT.rglob("*.py")
}

# The process layer runs programs and containers; it knows nothing of tasks, Batch or HTTP.
PROCESS = [
    "batch_agent.tasks.execution",
    "batch_agent.tasks.procfs",
    "batch_agent.tasks.session",
    "batch_agent.tasks.waiter",
    "batch_agent.tasks.script",
    "batch_agent.tasks.docker",
]
DRIVERS = ["batch_agent.tasks.driver", "batch_agent.tasks.script_driver"]
DRIVERS += ["batch_agent.tasks.container_driver"]
ABOVE_TASKS = ["batch_agent.cli", "batch_agent.reporter", "batch_agent.local"]
ABOVE_TASKS += ["batch_agent.emulator", "batch_agent.control", "batch_agent.config"]
ABOVE_TASKS += ["batch_agent.wiring"]  # the reporter's start-up: builds what the tasks get
ABOVE_TASKS += ["batch_agent.clients", "batch_agent.firstreport"]  # the start-up's too
ABOVE_TASKS += ["batch_agent.cloudlog"]  # ships the tasks' output: reads and saves their records

# (modules, what they must not import)
RULES = [
    (["batch_agent.wire", "batch_agent.names", "batch_agent.discovery"], ["batch_agent"]),
    (["batch_agent.dbfile"], ["batch_agent"]),
    (["batch_agent.tasks"], [*ABOVE_TASKS, "batch_agent.vm"]),
    (
        ["batch_agent.store"],
        [*ABOVE_TASKS, "batch_agent.tasks.taskset", "batch_agent.tasks.runner"],
    ),
    (
        DRIVERS,
        [
            "batch_agent.tasks.taskset",
            "batch_agent.tasks.runner",
            "batch_agent.tasks.hooks",
            "batch_agent.tasks.lifecycle",
            "batch_agent.store",
        ],
    ),
    (
        PROCESS,
        [*DRIVERS, "batch_agent.tasks.events", "batch_agent.tasks.record", "batch_agent.wire"],
    ),
    (["batch_agent.control", "batch_agent.vm"], ["batch_agent.tasks", "batch_agent.store"]),
    (["batch_agent.local"], ["batch_agent.tasks", "batch_agent.reporter", "batch_agent.store"]),
    ([m for m in MODULES if m != "batch_agent.__main__"], ["batch_agent.cli"]),
]

# Third-party libraries, each in one place.
HOMES = {
    "docker": ["batch_agent.tasks.docker"],
    "googleapiclient": ["batch_agent.control"],
    "httplib2": ["batch_agent.control"],
    "google": ["batch_agent.control"],
    "google_auth_httplib2": ["batch_agent.control"],
    "prometheus_client": ["batch_agent.metrics"],
}


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(
                f"{node.module}.{a.name}"
                for a in node.names
                if f"{node.module}.{a.name}" in MODULES
            )
    return names


def under(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize(("modules", "forbidden"), RULES)
def test_layers(modules, forbidden):
    """No module imports a layer above its own."""
    for module, path in MODULES.items():
        if not under(module, modules):
            continue
        for name in imports_of(path):
            if under(name, forbidden) and not under(name, modules):
                pytest.fail(f"{module} imports {name}")


def test_each_library_has_one_home():
    """docker only in tasks/docker; the Google API stack only in control."""
    for module, path in MODULES.items():
        for name in imports_of(path):
            top = name.split(".")[0]
            if top in HOMES and not under(module, HOMES[top]):
                pytest.fail(f"{module} imports {name}; only {HOMES[top]} may")


def test_the_rules_name_real_modules():
    """Every module a rule names exists, so a rename cannot quietly disable a rule."""
    for modules, forbidden in RULES:
        for name in [*modules, *forbidden]:
            assert any(under(m, [name]) for m in MODULES), name


def loaded_modules(
    argv: list[str], env: dict[str, str] | None = None, *, stop_at: str | None = None
) -> set[str]:
    """The modules a fresh `batch-agent ARGV` process has loaded when it exits; one that does
    not exit on its own gets SIGTERM once its log says `stop_at`."""
    program = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('MODULES', *sys.modules, file=sys.stderr))\n"
        "from batch_agent.cli import main\n"
        f"sys.exit(main({argv!r}))\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", program], env=env, stderr=subprocess.PIPE, text=True
    ) as agent:
        assert agent.stderr is not None
        lines = []
        if stop_at is not None:
            for line in agent.stderr:
                lines.append(line)
                if stop_at in line:
                    agent.terminate()
                    break
        _, rest = agent.communicate(timeout=120)
    stderr = "".join(lines) + rest
    assert agent.returncode == 0, stderr[-3000:]
    return set(stderr.rpartition("MODULES ")[2].split())


# Never loaded by `batch-agent version`: it prints two strings.
NOT_FOR_VERSION = ["asyncio", "pydantic", "googleapiclient", "httplib2", "batch_agent.wire"]
NOT_FOR_VERSION += ["logging", "argparse"]
# Never loaded by an agent that gets its token from the metadata server, metrics off, no
# container: google.oauth2.service_account (cryptography) and httplib2.auth (pyparsing) are
# deferred by control/deferred.py, and so is google.api_core's __init__ (its version checks
# read installed packages' metadata); the rest are imported where used.
NOT_FOR_RUN = ["cryptography", "pyparsing", "http.server", "prometheus_client", "docker"]
NOT_FOR_RUN += ["google.api_core._python_package_support", "importlib.metadata"]
NOT_FOR_RUN += ["argparse"]  # `run`'s usual command lines are read without it (cli.py)
NOT_FOR_RUN += ["pydantic"]  # the task models are plain dataclasses (wire/task.py)


def test_version_loads_no_event_loop_no_google_stack_no_pydantic():
    loaded = loaded_modules(["version"])
    assert "batch_agent.config" in loaded  # it does read the reported version's setting
    assert not [m for m in loaded if under(m, NOT_FOR_VERSION)]


def test_an_agent_running_a_task_loads_none_of_what_it_does_not_use(make_emulator, tmp_path):
    emu = make_emulator(job(script("true")))
    env = agent_env(emu, tmp_path / "state")
    loaded = loaded_modules(["run", "--once"], env)
    assert "googleapiclient.discovery" in loaded  # it did report
    assert "batch_agent.tasks.runner" in loaded  # and ran the task
    assert not [m for m in loaded if under(m, NOT_FOR_RUN)]
    assert emu.task_events(emu.task_names()[0])[-1]["taskState"] == "SUCCEEDED"


# Never loaded before an agent has a task: its first report (the VM's start-up) does not wait
# for the task side. The task models, plans, runs, drivers, hooks and the process layer come
# with the first task (tasks/taskset.py, tasks/assembly.py, cloudlog/tasklogs.py); so does
# the task models (a report is plain code: wire/report.py). pydantic is never loaded.
NOT_BEFORE_A_TASK = ["pydantic", "pydantic_core"]
NOT_BEFORE_A_TASK += ["batch_agent.wire.task", "batch_agent.wire.convert", "batch_agent.tasks.plan"]
NOT_BEFORE_A_TASK += ["batch_agent.tasks.runner"]
NOT_BEFORE_A_TASK += ["batch_agent.tasks.hooks", "batch_agent.tasks.volumes", *DRIVERS]
NOT_BEFORE_A_TASK += [
    "batch_agent.tasks.script",
    "batch_agent.tasks.session",
    "batch_agent.tasks.docker",
]


def test_an_agent_that_stays_loads_the_task_side_after_its_first_report(make_emulator, tmp_path):
    """Without `--once`, the first task need not wait for the task side's import: it is
    loaded once the first report's call is over, before any task."""
    emu = make_emulator()
    env = agent_env(emu, tmp_path / "state")
    loaded = loaded_modules(["run"], env, stop_at="task side loaded")
    assert emu.reports  # it reported first
    assert all(name in loaded for name in TASK_SIDE)


def test_an_agent_without_a_task_reports_without_the_task_side(make_emulator, tmp_path):
    emu = make_emulator()
    env = agent_env(emu, tmp_path / "state")
    loaded = loaded_modules(["run", "--once"], env)
    assert "googleapiclient.discovery" in loaded  # it did report
    assert emu.reports  # and the server heard it
    assert "batch_agent.tasks.taskset" in loaded  # with its (empty) task set
    assert not [m for m in loaded if under(m, NOT_BEFORE_A_TASK)]
