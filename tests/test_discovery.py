"""Tests of batch_agent.discovery: the shipped Batch v1 document and the strict validator."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batch_agent import discovery

TASK = "projects/123/locations/us-central1/jobs/j/taskGroups/group0/tasks/0"


def full_request() -> dict[str, Any]:
    return {
        "agentInfo": {
            "state": "AGENT_RUNNING",
            "reportTime": "2026-11-26T07:06:23.123456Z",
            "jobId": "j",
            "taskGroupId": "group0",
            "tasks": [
                {
                    "taskId": TASK,
                    "runnable": "2",
                    "taskStatus": {
                        "state": "FAILED",
                        "statusEvents": [
                            {
                                "type": "STATUS_CHANGED",
                                "eventTime": "2026-11-26T07:06:23+00:00",
                                "taskState": "FAILED",
                                "description": "Task state is updated from RUNNING to FAILED",
                                "taskExecution": {"exitCode": 3},
                            }
                        ],
                    },
                }
            ],
        },
        "agentTimingInfo": {
            "bootTime": "2026-11-26T07:00:00Z",
            "agentStartupTime": "2026-11-26T07:00:05.5Z",
        },
        "metadata": {
            "instance": "vm-0",
            "instanceId": "4600000000001000003",
            "zone": "us-central1-a",
            "osRelease": {"ID": "debian", "VERSION_ID": "12"},
            "instancePreemptionNoticeReceived": False,
            "version": "0.1.0",
        },
    }


def runnable_errors(value: object) -> list[str]:
    body = {"agentInfo": {"tasks": [{"taskId": TASK, "runnable": value}]}}
    return discovery.validate("ReportAgentStateRequest", body)


def interval_errors(value: object) -> list[str]:
    return discovery.validate("ReportAgentStateResponse", {"defaultReportInterval": value})


def test_document_is_the_batch_v1_discovery_document() -> None:
    """The shipped document is Batch v1 and is loaded once."""
    doc = discovery.document()
    assert doc["name"] == "batch" and doc["version"] == "v1"
    assert "ReportAgentStateRequest" in doc["schemas"]
    assert discovery.document() is doc


def test_a_complete_report_is_valid() -> None:
    """A report using every kind of field the agent sends has no errors."""
    assert discovery.validate("ReportAgentStateRequest", full_request()) == []


def test_errors_name_the_path_and_the_problem() -> None:
    """Each error starts with the JSON path of the bad value and says what is wrong with it."""
    body = full_request()
    info = body["agentInfo"]
    info["state"] = "RUNING"
    info["foo"] = 1
    info["tasks"][0]["runnable"] = 5
    event = info["tasks"][0]["taskStatus"]["statusEvents"][0]
    event["eventTime"] = "yesterday"
    event["taskExecution"]["exitCode"] = "3"
    body["metadata"]["osRelease"]["ID"] = 12
    body["metadata"]["instancePreemptionNoticeReceived"] = "false"
    body["agentTimingInfo"]["bootTime"] = None
    assert sorted(discovery.validate("ReportAgentStateRequest", body)) == sorted(
        [
            'agentInfo.state: "RUNING" is not one of AGENT_STATE_UNSPECIFIED, AGENT_STARTING, '
            "AGENT_RUNNING, AGENT_STOPPED",
            "agentInfo.foo: unknown field",
            "agentInfo.tasks[0].runnable: 5 is not an int64 string",
            'agentInfo.tasks[0].taskStatus.statusEvents[0].eventTime: "yesterday" is not an '
            "RFC 3339 timestamp",
            'agentInfo.tasks[0].taskStatus.statusEvents[0].taskExecution.exitCode: "3" is not '
            "an integer",
            'metadata.osRelease["ID"]: 12 is not a string',
            'metadata.instancePreemptionNoticeReceived: "false" is not a boolean',
            "agentTimingInfo.bootTime: null is not allowed (omit the field instead)",
        ]
    )


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ([], "<root>: [] is not an object"),
        ({"agentInfo": []}, "agentInfo: [] is not an object"),
        ({"agentInfo": {"tasks": {}}}, "agentInfo.tasks: {} is not an array"),
        ({"bogus": 1}, "bogus: unknown field"),
    ],
)
def test_structural_errors(value: object, error: str) -> None:
    """Objects, arrays and unknown top-level fields are checked."""
    assert discovery.validate("ReportAgentStateRequest", value) == [error]


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("2026-11-26T07:06:23.123456Z", True),
        ("2026-11-26T07:06:23Z", True),
        ("2026-11-26T07:06:23.123456789+00:00", True),
        ("2026-11-26T07:06:23-05:30", True),
        ("2026-11-26 07:06:23Z", False),
        ("2026-11-26T07:06:23", False),
        ("2026-02-30T07:06:23Z", False),
        ("2026-11-26T25:06:23Z", False),
        ("2026-11-26T07:06:23.1234567890Z", False),
        ("1764140783", False),
    ],
)
def test_timestamps_must_be_rfc3339(value: str, valid: bool) -> None:
    """google-datetime fields take RFC 3339 with a zone, naming a real date and time."""
    errors = discovery.validate("AgentInfo", {"reportTime": value})
    assert (errors == []) is valid, errors


def test_int32_range_and_uint64() -> None:
    """int32 is a JSON integer in range; uint64 is a string of digits without a sign."""
    assert discovery.validate("TaskExecution", {"exitCode": 2**31 - 1}) == []
    assert discovery.validate("TaskExecution", {"exitCode": 2**31}) == [
        "exitCode: 2147483648 is out of range for int32"
    ]
    assert discovery.validate("TaskExecution", {"exitCode": True}) == [
        "exitCode: true is not an integer"
    ]
    assert discovery.validate("AgentMetadata", {"instanceId": "-1"}) == [
        'instanceId: "-1" is not an uint64 string'
    ]


def test_unknown_schema_is_a_key_error() -> None:
    """Asking for a schema the document lacks is a programming error."""
    with pytest.raises(KeyError):
        discovery.validate("NoSuchSchema", {})


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_int64_accepts_decimal_strings_only(number: int) -> None:
    """Every int64 is valid as a decimal string and invalid as a JSON number."""
    assert runnable_errors(str(number)) == []
    assert runnable_errors(number) == [
        f"agentInfo.tasks[0].runnable: {number} is not an int64 string"
    ]


@given(st.one_of(st.integers(max_value=-(2**63) - 1), st.integers(min_value=2**63)))
def test_int64_rejects_out_of_range(number: int) -> None:
    """Decimal strings beyond the int64 range are rejected."""
    assert len(runnable_errors(str(number))) == 1


@given(st.text(max_size=12))
def test_int64_string_grammar(text: str) -> None:
    """A string is a valid int64 exactly when it is an optional '-' and ASCII digits in range."""
    grammar = re.fullmatch(r"-?[0-9]+", text) is not None
    expected = grammar and -(2**63) <= int(text) < 2**63
    assert (runnable_errors(text) == []) is expected


@given(
    st.booleans(),
    st.integers(min_value=0, max_value=10**12),
    st.one_of(st.none(), st.text("0123456789", min_size=1, max_size=9)),
)
def test_durations_in_google_form_are_valid(negative: bool, seconds: int, frac: str | None) -> None:
    """ "<seconds>[.<1-9 digits>]s", optionally negative, is a valid google-duration."""
    text = ("-" if negative else "") + str(seconds) + ("" if frac is None else "." + frac) + "s"
    assert interval_errors(text) == []


@given(st.text(max_size=14))
def test_duration_grammar(text: str) -> None:
    """Any other string, and any non-string, is not a google-duration."""
    expected = re.fullmatch(r"-?[0-9]+(\.[0-9]{1,9})?s", text) is not None
    assert (interval_errors(text) == []) is expected
    assert interval_errors(1.5) == ["defaultReportInterval: 1.5 is not a string"]


def test_only_methods_keeps_the_methods_named_and_their_paths() -> None:
    """The cut document has the methods named, the resources on their paths (with their own
    keys) and a bare schema for each schema they name; the document itself is unchanged."""
    doc = discovery.document()
    before = len(doc["resources"]["projects"]["resources"]["locations"]["resources"])
    cut = discovery.only_methods(doc, ["projects.locations.state.report"])
    locations = cut["resources"]["projects"]["resources"]["locations"]
    assert "methods" not in locations  # get and list are left out
    assert list(locations["resources"]) == ["state"]
    report = locations["resources"]["state"]["methods"]["report"]
    assert (
        report
        is doc["resources"]["projects"]["resources"]["locations"]["resources"]["state"]["methods"][
            "report"
        ]
    )
    assert cut["schemas"] == {
        name: {"id": name, "type": "object"}
        for name in ("ReportAgentStateRequest", "ReportAgentStateResponse")
    }
    assert cut["rootUrl"] == doc["rootUrl"]
    assert len(doc["resources"]["projects"]["resources"]["locations"]["resources"]) == before


def test_only_methods_refuses_a_method_the_document_lacks() -> None:
    """A method name that is not in the document is a KeyError, not an empty client."""
    with pytest.raises(KeyError):
        discovery.only_methods(discovery.document(), ["projects.locations.state.nosuch"])
