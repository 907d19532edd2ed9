"""Property tests: ReportAgentStateResponse bodies generated from the discovery document,
then mutated (wrong types, huge numbers, deep nesting, long strings), fed to the response
parser and, task by task, to parse_agent_task and make_plan. The only failures allowed are
the documented ones: MalformedResponse for a body that is not a response at all, and a
per-task BadAgentTask or PlanError; every example is bounded in time."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from batch_agent import discovery, wire
from batch_agent.tasks.plan import PlanError, make_plan

SCHEMAS = discovery.document()["schemas"]
EXAMPLES = settings(
    max_examples=200,
    deadline=timedelta(seconds=5),  # each example is milliseconds of work; 5 s for a busy host
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_DURATIONS = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=3650))
_STRINGS = {
    "int64": st.integers(-(2**63), 2**63 - 1).map(str),
    "uint64": st.integers(0, 2**64 - 1).map(str),
    "google-duration": _DURATIONS.map(wire.format_duration),
    "google-datetime": st.datetimes(timezones=st.just(__import__("datetime").UTC)).map(
        wire.format_time
    ),
}


def from_schema(node: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    """Values the discovery document accepts for `node` (depth-limited, lists short)."""
    if "$ref" in node:
        if depth > 8:
            return st.just({})
        node = SCHEMAS[node["$ref"]]
    kind = node.get("type")
    if kind == "object":
        properties = node.get("properties", {})
        extra = node.get("additionalProperties")
        if extra is not None:
            return st.dictionaries(st.text(max_size=8), from_schema(extra, depth + 1), max_size=3)
        optional = {k: from_schema(v, depth + 1) for k, v in properties.items()}
        return st.fixed_dictionaries({}, optional=optional)
    if kind == "array":
        return st.lists(from_schema(node["items"], depth + 1), max_size=2)
    if kind == "string":
        if "enum" in node:
            return st.sampled_from(node["enum"])
        return _STRINGS.get(node.get("format", ""), st.text(max_size=12))
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(-(2**31), 2**31 - 1)
    return st.none() | st.integers() | st.text(max_size=8)


def _nested(depth: int, as_dict: bool) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = {"a": value} if as_dict else [value]
    return value


# Garbage that has broken parsers of this wire format: numbers that overflow or cost
# seconds to convert, types where others belong, nesting and strings of unusual size.
GARBAGE = st.one_of(
    st.sampled_from(
        [
            "Infinity",
            "-Infinity",
            "NaN",
            "1e600000",
            "1e1000000",
            "99999999999999999s",
            "999999999999999s",
            "-99999999999999999999.5s",
            "9" * 40,
            "9" * 5000,
            "",
            "ASSIGNED",
            "0s",
            "-1s",
            "1.5s",
            "2026-01-01T00:00:00Z",
        ]
    ),
    st.integers(-(2**80), 2**80),
    st.just(10**4000),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.text(max_size=30),
    st.integers(10_000, 200_000).map(lambda n: "x" * n),
    st.lists(st.integers() | st.text(max_size=4), max_size=3),
    st.dictionaries(st.text(max_size=6), st.integers() | st.text(max_size=4), max_size=3),
    st.tuples(st.integers(1, 400), st.booleans()).map(lambda args: _nested(*args)),
)


@st.composite
def mutated(draw: st.DrawFn, value: Any, rate: float = 0.15) -> Any:
    """`value` with some of its subtrees (possibly itself) replaced by GARBAGE."""
    if draw(st.sampled_from(range(100))) < rate * 100:  # about uniform, unlike floats()
        return draw(GARBAGE)
    if isinstance(value, dict):
        return {k: draw(mutated(v, rate)) for k, v in value.items()}
    if isinstance(value, list):
        return [draw(mutated(v, rate)) for v in value]
    return value


def named(task: dict[str, Any]) -> dict[str, Any]:
    return {"task": "projects/p/locations/l/jobs/j/taskGroups/g/tasks/0", **task}


def plannable(task: dict[str, Any]) -> dict[str, Any]:
    """Tweak a schema-valid task so that make_plan accepts it: one script per runnable,
    positive durations, no environments (names the schema allows but a shell does not)."""
    for key in ("spec", "agentTaskSpec"):
        spec = task.get(key)
        if spec is None:
            continue
        spec["runnables"] = spec.get("runnables") or [{}]
        for runnable in spec["runnables"]:
            for field in ("container", "barrier", "environment"):
                runnable.pop(field, None)
            runnable["script"] = {"text": "true"}
            if runnable.get("timeout") == "0s":
                del runnable["timeout"]
        for field in ("environment", "environments"):
            spec.pop(field, None)
        if spec.get("maxRunDuration") == "0s":
            del spec["maxRunDuration"]
        if "userAccount" in spec:
            spec["userAccount"] = {"uid": "1000", "gid": "1000"}
    return task


RESPONSES = from_schema({"$ref": "ReportAgentStateResponse"})
TASKS = from_schema({"$ref": "AgentTask"}).map(named)
PLANNABLE = TASKS.map(plannable)


def plan_each(response: wire.ReportAgentStateResponse) -> None:
    """Parse and plan every task; only per-task failures may come out."""
    for raw in response.tasks:
        task = wire.parse_agent_task(raw)
        event(type(task).__name__)
        if isinstance(task, wire.AgentTask):
            try:
                make_plan(task)
            except PlanError as error:
                assert error.problems
                event("PlanError")
            else:
                event("planned")


@EXAMPLES
@given(st.lists(TASKS | PLANNABLE, max_size=3))
def test_every_task_the_schema_accepts_parses(tasks: list[dict[str, Any]]) -> None:
    """A body valid by the discovery document parses, and each named task is an AgentTask."""
    assert all(discovery.validate("AgentTask", task) == [] for task in tasks)
    body = json.dumps({"tasks": tasks, "minReportInterval": "1s"}).encode()
    response = wire.parse_response(body)
    assert [wire.parse_agent_task(raw) for raw in response.tasks] == [
        wire.AgentTask.from_wire(raw) for raw in tasks
    ]
    plan_each(response)


@EXAMPLES
@given(st.data())
def test_a_mutated_task_fails_alone(data: st.DataObject) -> None:
    """Garbage anywhere inside tasks never makes the response malformed; each task parses
    to an AgentTask or a BadAgentTask, and planning raises nothing but PlanError."""
    response = data.draw(RESPONSES)
    rate = data.draw(st.sampled_from([0.02, 0.05, 0.2]))  # how much garbage
    tasks = data.draw(
        st.lists(PLANNABLE.flatmap(lambda t: mutated(t, rate)), min_size=1, max_size=3)
    )
    body = json.dumps({**response, "tasks": tasks}).encode()
    plan_each(wire.parse_response(body))


@EXAMPLES
@given(RESPONSES.flatmap(lambda body: mutated(body, rate=0.1)))
def test_a_mutated_response_is_parsed_or_malformed(body: Any) -> None:
    """Garbage anywhere in a response: parsed (then per-task failures only), or
    MalformedResponse exactly when the body is not an object or its tasks not a list."""
    usable = isinstance(body, dict) and isinstance(body.get("tasks", []), list | None)
    try:
        response = wire.parse_response(json.dumps(body).encode())
    except wire.MalformedResponse:
        assert not usable
        return
    assert usable
    plan_each(response)
