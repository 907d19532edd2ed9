"""Wire models against the real discovery document shipped with google-api-python-client."""

from __future__ import annotations

import dataclasses
import json
import typing
from datetime import UTC, datetime, timedelta
from types import UnionType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batch_agent import discovery, wire

ROOTS: list[type] = [wire.ReportAgentStateRequest, wire.ReportAgentStateResponse, wire.AgentTask]


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _names(model: type) -> tuple[str, ...]:
    """A model's field names: a dataclass's (the task side) or a named tuple's (the report)."""
    if dataclasses.is_dataclass(model):
        return tuple(f.name for f in dataclasses.fields(model))
    fields: tuple[str, ...] = getattr(model, "_fields", ())
    return fields


def _fields(model: type) -> dict[str, object]:
    """A model's wire names and annotations: its fields' names in camelCase."""
    assert _is_model(model), model
    hints = typing.get_type_hints(model)
    return {_camel(name): hints[name] for name in _names(model)}


def _is_model(annotation: object) -> bool:
    if not isinstance(annotation, type):
        return False
    return dataclasses.is_dataclass(annotation) or (
        issubclass(annotation, tuple) and bool(getattr(annotation, "_fields", ()))
    )


def _models(annotation: object) -> list[type]:
    """The model classes inside a field annotation (through Optional, list, dict, Sequence)."""
    if _is_model(annotation):
        return [typing.cast(type, annotation)]
    if isinstance(annotation, UnionType) or typing.get_origin(annotation) is not None:
        return [m for arg in typing.get_args(annotation) for m in _models(arg)]
    return []


def _walk() -> dict[str, type]:
    seen: dict[str, type] = {}
    todo: list[type] = list(ROOTS)
    while todo:
        model = todo.pop()
        if model.__name__ in seen:
            continue
        seen[model.__name__] = model
        for annotation in _fields(model).values():
            todo.extend(_models(annotation))
    return seen


def test_every_modelled_field_exists_in_the_discovery_document():
    """Each model is named after a schema and each of its fields is a property of it."""
    schemas = discovery.document()["schemas"]
    unmodelled: list[str] = []
    for name, model in _walk().items():
        assert name in schemas, f"{name} is not a schema of batch.v1.json"
        properties = schemas[name]["properties"]
        aliases = set(_fields(model))
        for alias in aliases:
            assert alias in properties, f"{name}.{alias} is not in batch.v1.json"
        unmodelled += [f"{name}.{p}" for p in properties if p not in aliases]
    # What we do not model yet, kept visible (and deliberate): see the message.
    assert sorted(unmodelled) == ["AgentTask.status"], unmodelled


def test_a_full_request_validates_against_the_schema():
    """A request with every field we send set is valid by the discovery document."""
    now = datetime(2026, 11, 26, 7, 6, 23, 123456, tzinfo=UTC)
    event = wire.StatusEvent(
        type="STATUS_CHANGED",
        description="x",
        event_time=now,
        task_state=wire.TaskState.FAILED,
        task_execution=wire.TaskExecution(exit_code=50005),
    )
    request = wire.ReportAgentStateRequest(
        agent_info=wire.AgentInfo(
            state=wire.AgentState.AGENT_RUNNING,
            report_time=now,
            job_id="j",
            task_group_id="g",
            tasks=[
                wire.AgentTaskInfo(
                    task_id="t",
                    runnable=2,
                    task_status=wire.TaskStatus(state=wire.TaskState.FAILED, status_events=[event]),
                )
            ],
        ),
        agent_timing_info=wire.AgentTimingInfo(
            boot_time=now, script_startup_time=now, agent_startup_time=now
        ),
        metadata=wire.AgentMetadata(
            instance="vm",
            instance_id=18446744073709551615,
            zone="us-central1-a",
            machine_type="e2-standard-4",
            creator="c",
            image_version="i",
            instance_preemption_notice_received=False,
            os_release={"ID": "debian"},
            version="0.1.0",
        ),
    )
    body = request.to_wire()
    assert discovery.validate("ReportAgentStateRequest", body) == []
    assert body["agentInfo"]["tasks"][0]["runnable"] == "2"
    assert body["metadata"]["instanceId"] == "18446744073709551615"
    assert body["agentInfo"]["reportTime"] == "2026-11-26T07:06:23.123456Z"


def test_unknown_response_fields_are_ignored():
    """The server evolves: fields we do not know never break parsing."""
    response = wire.ReportAgentStateResponse.from_wire(
        {"defaultReportInterval": "10s", "brandNew": {"x": 1}, "tasks": [{"task": "a"}]}
    )
    assert response.default_report_interval == timedelta(seconds=10)
    task = wire.parse_agent_task({"task": "a", "intendedState": "ASSIGNED", "future": 1})
    assert isinstance(task, wire.AgentTask)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (
            {"spec": {"runnables": [{"timeout": "soon"}]}},
            'runnables[0].timeout: "soon" is not a duration',
        ),
        ({"spec": {"maxRunDuration": 5}}, "maxRunDuration: 5 is not a duration"),
        ({"reachedBarrier": "two"}, 'reachedBarrier: "two" is not an integer'),
        (
            {"agentTaskSpec": {"userAccount": {"uid": "x"}}},
            'userAccount.uid: "x" is not an integer',
        ),
    ],
)
def test_a_bad_task_names_the_field(raw, problem):
    """A malformed task parses to BadAgentTask whose problems name the JSON path."""
    task = wire.parse_agent_task({"task": "t", "intendedState": "ASSIGNED", **raw})
    assert isinstance(task, wire.BadAgentTask)
    assert task.task == "t"
    assert task.intended_state is wire.IntendedState.ASSIGNED
    assert problem in task.problems


@given(st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=3650)))
def test_duration_round_trip(value):
    """format_duration and parse_duration are inverse, and the text matches the schema."""
    text = wire.format_duration(value)
    assert wire.parse_duration(text) == value
    assert discovery.validate("ReportAgentStateResponse", {"minReportInterval": text}) == []


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_int64_travels_as_a_string(value):
    """Int64 fields serialise as decimal strings and parse back (as a response's do)."""
    info = wire.AgentTaskInfo(
        task_id="t", runnable=value, task_status=wire.TaskStatus(state=wire.TaskState.RUNNING)
    )
    body = info.to_wire()
    assert body["runnable"] == str(value)
    task = wire.parse_agent_task({"task": "t", "reachedBarrier": body["runnable"]})
    assert isinstance(task, wire.AgentTask)
    assert task.reached_barrier == value


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ({"reachedBarrier": "Infinity"}, 'reachedBarrier: "Infinity" is not an integer'),
        ({"reachedBarrier": "1e600000"}, 'reachedBarrier: "1e600000" is not an integer'),
        ({"reachedBarrier": "1e1000000"}, 'reachedBarrier: "1e1000000" is not an integer'),
        ({"reachedBarrier": "9" * 100_000}, "reachedBarrier: "),
        ({"reachedBarrier": str(2**63)}, f'reachedBarrier: "{2**63}" is out of range for int64'),
        ({"reachedBarrier": 2**63}, f"reachedBarrier: {2**63} is out of range for int64"),
        ({"reachedBarrier": 10**4000}, "reachedBarrier: a 13288-bit number is out of range"),
        ({"reachedBarrier": 1.0}, "reachedBarrier: 1.0 is not an integer"),
        (
            {"spec": {"runnables": [{"timeout": "99999999999999999s"}]}},
            'runnables[0].timeout: "99999999999999999s" is out of range (longer than 100 years)',
        ),
        (
            {"spec": {"maxRunDuration": "-3155760001s"}},
            'maxRunDuration: "-3155760001s" is out of range (longer than 100 years)',
        ),
        ({"spec": {"maxRunDuration": "1e9s"}}, 'maxRunDuration: "1e9s" is not a duration'),
        ({"spec": {"maxRetryCount": 2**31}}, f"maxRetryCount: {2**31} is out of range for int32"),
        (
            {"spec": {"lifecyclePolicies": [{"actionCondition": {"exitCodes": ["x"]}}]}},
            'lifecyclePolicies[0].actionCondition.exitCodes[0]: "x" is not an integer',
        ),
        ({"agentTaskSpec": {"userAccount": {"gid": "-1e3"}}}, "userAccount.gid: "),
    ],
)
def test_out_of_range_numbers_fail_the_task(raw, problem):
    """Huge, infinite or exponent-form numbers make a BadAgentTask naming the path, never an
    OverflowError, and cost microseconds whatever their size."""
    task = wire.parse_agent_task({"task": "t", "intendedState": "ASSIGNED", **raw})
    assert isinstance(task, wire.BadAgentTask)
    assert task.task == "t"
    assert any(p.startswith(problem) for p in task.problems), task.problems
    assert all(len(p) < 200 for p in task.problems)  # a huge value is not copied into events


def test_longest_durations_still_add_to_now():
    """The longest accepted duration, either way, can be added to now without overflow."""
    for text in ("3155760000s", "-3155760000s"):
        task = wire.parse_agent_task({"task": "t", "spec": {"maxRunDuration": text}})
        assert isinstance(task, wire.AgentTask)
        assert task.spec is not None and task.spec.max_run_duration is not None
        assert datetime.now(UTC) + task.spec.max_run_duration > datetime(1900, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    "raw",
    [
        {"task": "t", "intendedState": ["ASSIGNED"]},
        {"task": "t", "intendedState": {"a": 1}},
        {"task": ["t"], "spec": 5},
        {"task": "t", "spec": {"runnables": [[[[[]]]]]}},
    ],
)
def test_unhashable_or_misplaced_values_fail_the_task(raw):
    """Lists and objects where strings belong make a BadAgentTask, never a TypeError."""
    task = wire.parse_agent_task(raw)
    assert isinstance(task, wire.BadAgentTask)
    assert task.intended_state is None
    assert task.problems


@pytest.mark.parametrize("raw", [None, 5, "task", ["t"]])
def test_a_task_that_is_not_an_object_is_nameless(raw):
    """A tasks[] entry that is not an object is a BadAgentTask without a name."""
    task = wire.parse_agent_task(raw)
    assert isinstance(task, wire.BadAgentTask)
    assert (task.task, task.problems) == ("", ["task: not an object"])


def test_problems_are_capped():
    """A task with thousands of bad fields fails with a readable number of problems."""
    runnables = [{"timeout": "soon"}] * 1000
    task = wire.parse_agent_task({"task": "t", "spec": {"runnables": runnables}})
    assert isinstance(task, wire.BadAgentTask)
    assert len(task.problems) == 21
    assert task.problems[-1] == "... and 980 more problems"


@pytest.mark.parametrize(
    ("interval", "expected", "logged"),
    [
        ("999999999999999s", timedelta(hours=1), True),
        ("9" * 60 + "s", timedelta(hours=1), True),
        ("3600.000001s", timedelta(hours=1), True),
        ("-5s", timedelta(0), True),
        ("59.5s", timedelta(seconds=59.5), False),
        ("3600s", timedelta(hours=1), False),
        ("Infinity", None, True),
        ("1e600000s", None, True),
        ("9" * 100 + "s", None, True),
        (5, None, True),
        (["10s"], None, True),
        (None, None, False),
    ],
)
def test_response_intervals_are_clamped_or_ignored(interval, expected, logged, caplog):
    """Report intervals out of [0, 1 h] are clamped, garbled ones ignored; both logged."""
    body = {"defaultReportInterval": interval, "minReportInterval": interval, "tasks": []}
    response = wire.parse_response(json.dumps(body).encode())
    assert response.default_report_interval == expected
    assert response.min_report_interval == expected
    assert ("defaultReportInterval" in caplog.text) is logged
    assert ("minReportInterval" in caplog.text) is logged


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"\xff\xfe\x00",
        b"[]",
        b"null",
        b'{"tasks": 5}',
        b'{"tasks": {"task": "t"}}',
        b'{"tasks": [Infinity]}',
        b"[" * 100_000,
        b'{"a": ' + b"9" * 5000 + b"}",
    ],
)
def test_unusable_responses_are_malformed(body):
    """A body that is not JSON, not an object, or whose tasks is not a list: MalformedResponse."""
    with pytest.raises(wire.MalformedResponse):
        wire.parse_response(body)


def test_everything_else_in_a_response_is_kept():
    """Null tasks mean none; a bad useBatchMonitoredResource is ignored; odd tasks are kept
    raw for parse_agent_task to judge one by one."""
    body = b'{"tasks": null, "useBatchMonitoredResource": "yes"}'
    assert wire.parse_response(body).tasks == []
    odd = wire.parse_response(b'{"tasks": [1, {"task": "t"}], "useBatchMonitoredResource": true}')
    assert odd.tasks == [1, {"task": "t"}]
    assert odd.use_batch_monitored_resource is True


def test_a_response_may_use_the_proto_field_names():
    """proto3 JSON parsers accept a field's proto name too; its JSON name wins over it."""
    body = b'{"default_report_interval": "5s", "use_batch_monitored_resource": true}'
    response = wire.parse_response(body)
    assert response.default_report_interval == timedelta(seconds=5)
    assert response.use_batch_monitored_resource is True
    both = b'{"minReportInterval": "1s", "min_report_interval": "9s"}'
    assert wire.parse_response(both).min_report_interval == timedelta(seconds=1)


def test_snake_case_names_and_nulls_parse_as_proto3_json_does():
    """A field under its proto name is read too; JSON null is the field's default."""
    task = wire.parse_agent_task(
        {
            "task": "t",
            "intended_state": "CANCELLED",
            "reachedBarrier": None,
            "agent_task_spec": {"runnables": [{"script": {"text": "x"}, "ignoreExitStatus": None}]},
        }
    )
    assert isinstance(task, wire.AgentTask)
    assert task.intended_state is wire.IntendedState.CANCELLED
    assert task.reached_barrier == 0
    assert task.agent_task_spec is not None
    assert task.agent_task_spec.runnables[0].ignore_exit_status is False


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ({"spec": {"runnables": [{"script": {"text": 5}}]}}, "runnables[0].script.text: 5 is not"),
        ({"spec": {"runnables": {"a": 1}}}, "runnables: {'a': 1} is not a list"),
        ({"spec": {"environment": {"variables": {"A": 1}}}}, "environment.variables.A: 1 is not"),
        ({"spec": {"runnables": [{"background": "maybe"}]}}, 'runnables[0].background: "maybe"'),
        ({"intendedState": "SOON"}, 'intendedState: "SOON" is not one of'),
        ({"spec": 5}, "task: 5 is not an object"),
    ],
)
def test_a_value_of_the_wrong_type_names_its_path(raw, problem):
    task = wire.parse_agent_task({"task": "t", **raw})
    assert isinstance(task, wire.BadAgentTask)
    assert any(p.startswith(problem) for p in task.problems), task.problems


def test_a_task_without_a_name_is_nameless():
    task = wire.parse_agent_task({"intendedState": "ASSIGNED"})
    assert isinstance(task, wire.BadAgentTask)
    assert (task.task, task.intended_state, task.problems) == (
        "",
        wire.IntendedState.ASSIGNED,
        ["task: required"],
    )
