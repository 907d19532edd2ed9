"""The emulator's Cloud Logging `entries:write`, over HTTP through google-api-python-client's
Logging v2 discovery client (as the agent calls it): validation by the discovery schema and
Cloud Logging's documented limits, request defaults, partialSuccess, faults, and the dedup rule
of what a query returns."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import google_auth_httplib2
import httplib2
import pytest
from googleapiclient import discovery
from googleapiclient.errors import HttpError

from batch_agent.control import MetadataServerCredentials
from batch_agent.emulator import Emulator
from batch_agent.emulator.logging import MAX_ENTRY_BYTES, MAX_REQUEST_BYTES, LogStore

LOG = "projects/emulated-project/logs/batch_task_logs"
RESOURCE = {"type": "generic_task", "labels": {"project_id": "emulated-project"}}
STAMP = "2026-12-02T10:00:00.123456Z"


@pytest.fixture
def logging_api(emu: Emulator) -> Iterator[Any]:
    """The Logging v2 `entries` resource of a discovery client pointed at `emu`, with the
    emulated VM's token from its metadata server."""
    credentials = MetadataServerCredentials(emu.metadata_host, http=httplib2.Http(timeout=10))
    http = google_auth_httplib2.AuthorizedHttp(credentials, http=httplib2.Http(timeout=10))
    service = discovery.build(
        "logging", "v2", http=http, static_discovery=True, client_options={"api_endpoint": emu.url}
    )
    yield service.entries()
    service.close()


def entry(text: str, **fields: Any) -> dict[str, Any]:
    return {"textPayload": text, "timestamp": STAMP, **fields}


def write(api: Any, entries: list[dict[str, Any]], **request: Any) -> dict[str, Any]:
    result: dict[str, Any] = api.write(body={"entries": entries, **request}).execute()
    return result


def error_of(api: Any, entries: list[dict[str, Any]], **request: Any) -> dict[str, Any]:
    with pytest.raises(HttpError) as raised:
        write(api, entries, **request)
    body: dict[str, Any] = json.loads(raised.value.content)["error"]
    assert body["code"] == raised.value.resp.status
    return body


def test_request_defaults_fill_entries_and_entry_values_win(emu: Emulator, logging_api) -> None:
    """The request's logName, resource and labels go into entries that lack them; an entry's
    own label of the same key is kept."""
    other = "projects/emulated-project/logs/batch_agent_logs"
    write(
        logging_api,
        [entry("a", labels={"k": "mine"}), entry("b", logName=other, insertId="b")],
        logName=LOG,
        resource=RESOURCE,
        labels={"k": "default", "job_uid": "j-1"},
    )
    (first,) = emu.logs.entries("batch_task_logs")
    assert first["logName"] == LOG and first["resource"] == RESOURCE
    assert first["labels"] == {"k": "mine", "job_uid": "j-1"}
    assert first["insertId"]  # supplied by the API
    (second,) = emu.logs.entries("batch_agent_logs")
    assert second["textPayload"] == "b" and second["labels"] == {"k": "default", "job_uid": "j-1"}
    assert [e["textPayload"] for e in emu.logs.entries()] == ["a", "b"]


def test_duplicates_by_timestamp_and_insert_id_are_removed(emu: Emulator, logging_api) -> None:
    """A re-sent entry (same project, same instant, same insertId) appears once; the same
    insertId at another time, or another insertId, is a different entry; `received` counts
    every entry written."""
    first = [entry("x", insertId="i1"), entry("y", insertId="i2")]
    write(logging_api, first, logName=LOG, resource=RESOURCE)
    same_instant = entry("x again", insertId="i1", timestamp="2026-12-02T10:00:00.123456000Z")
    later = entry("x later", insertId="i1", timestamp="2026-12-02T10:00:01Z")
    write(logging_api, [same_instant, later], logName=LOG, resource=RESOURCE)
    assert [e["textPayload"] for e in emu.logs.entries()] == ["x", "y", "x later"]
    assert emu.logs.received() == 4 and emu.logs.received("batch_task_logs") == 4
    assert emu.logs.received("batch_agent_logs") == 0


def test_entries_since_follows_new_entries_without_duplicates(emu: Emulator, logging_api) -> None:
    """A watcher reading from its cursor sees each entry once, as `entries()` lists them, and
    may pick one log; the cursor counts every log's entries."""
    other = "projects/emulated-project/logs/batch_agent_logs"
    write(
        logging_api,
        [entry("a", insertId="a"), entry("b", insertId="b")],
        logName=LOG,
        resource=RESOURCE,
    )
    got, cursor = emu.logs.entries_since(0)
    assert [e["textPayload"] for e in got] == ["a", "b"] and cursor == 2
    again = [entry("a", insertId="a"), entry("c", insertId="c"), entry("z", logName=other)]
    write(logging_api, again, logName=LOG, resource=RESOURCE)
    got, after = emu.logs.entries_since(cursor, "batch_task_logs")
    assert [e["textPayload"] for e in got] == ["c"] and after == 4
    assert emu.logs.entries_since(after) == ([], 4)
    everything = [e["textPayload"] for e in emu.logs.entries_since(0)[0]]
    assert everything == [e["textPayload"] for e in emu.logs.entries()] == ["a", "b", "c", "z"]


def test_supplied_timestamps_keep_write_order(emu: Emulator, logging_api) -> None:
    """Entries without timestamp or insertId get both, the earlier entry sorting first."""
    write(logging_api, [{"textPayload": str(i)} for i in range(50)], logName=LOG, resource=RESOURCE)
    stored = emu.logs.entries()
    assert len(stored) == 50 and len({e["insertId"] for e in stored}) == 50
    stamps = [e["timestamp"] for e in stored]
    assert stamps == sorted(stamps) and len(set(stamps)) == 50


@pytest.mark.parametrize(
    ("entries", "request_fields", "named"),
    [
        ([entry("x")], {"resource": RESOURCE}, "entries[0]: logName is required"),
        ([entry("x")], {"logName": LOG}, "entries[0]: resource.type is required"),
        ([entry("x")], {"logName": "logs/x", "resource": RESOURCE}, "is not projects/"),
        ([entry("x", jsonPayload={"a": 1})], {"logName": LOG, "resource": RESOURCE}, "at most one"),
        (
            [entry("x", timestamp="2099-01-01T00:00:00Z")],
            {"logName": LOG, "resource": RESOURCE},
            "more than 1 day in the future",
        ),
        (
            [entry("x", labels={f"k{i}": "v" for i in range(65)})],
            {"logName": LOG, "resource": RESOURCE},
            "65 labels; a log entry has at most 64",
        ),
        (
            [entry("ok"), entry("x" * MAX_ENTRY_BYTES)],
            {"logName": LOG, "resource": RESOURCE},
            "entries[1]: Log entry with size 256.",
        ),
        ([entry("x", severity="LOUD")], {"logName": LOG, "resource": RESOURCE}, "severity"),
        ([entry("x", color="red")], {"logName": LOG, "resource": RESOURCE}, "color: unknown"),
        ([], {"logName": LOG, "resource": RESOURCE}, "at least one log entry"),
    ],
)
def test_invalid_requests_are_refused_naming_the_problem(
    emu: Emulator, logging_api, entries, request_fields, named
) -> None:
    """A request the API would refuse is a 400 INVALID_ARGUMENT naming what is wrong, and
    stores nothing (one bad entry fails the whole request without partialSuccess)."""
    error = error_of(logging_api, entries, **request_fields)
    assert error["status"] == "INVALID_ARGUMENT" and named in error["message"], error
    assert emu.logs.received() == 0


def test_an_entry_just_under_the_size_limit_is_written(emu: Emulator, logging_api) -> None:
    """The 256 KiB limit is on the whole entry: a payload that leaves room for the rest fits."""
    write(logging_api, [entry("x" * (MAX_ENTRY_BYTES - 1024))], logName=LOG, resource=RESOURCE)
    assert emu.logs.received() == 1


def test_a_request_over_10_mb_is_refused(emu: Emulator, logging_api) -> None:
    """entries:write takes at most 10 MB per request."""
    big = [entry("x" * (200 * 1024), insertId=str(i)) for i in range(MAX_REQUEST_BYTES // 200_000)]
    error = error_of(logging_api, big, logName=LOG, resource=RESOURCE)
    assert error["message"] == "Request payload size exceeds the limit: 10485760 bytes."
    assert emu.logs.received() == 0


def test_partial_success_writes_the_valid_entries(emu: Emulator, logging_api) -> None:
    """With partialSuccess the good entries are stored and the bad ones named by index in
    WriteLogEntriesPartialErrors."""
    entries = [entry("a", insertId="a"), entry("b", jsonPayload={}), entry("c", insertId="c")]
    error = error_of(logging_api, entries, logName=LOG, resource=RESOURCE, partialSuccess=True)
    (details,) = error["details"]
    assert details["@type"] == "type.googleapis.com/google.logging.v2.WriteLogEntriesPartialErrors"
    assert list(details["logEntryErrors"]) == ["1"]
    assert details["logEntryErrors"]["1"]["code"] == 3
    assert [e["textPayload"] for e in emu.logs.entries()] == ["a", "c"]


def test_dry_run_stores_nothing(emu: Emulator, logging_api) -> None:
    """dryRun answers as a real write would and keeps nothing."""
    assert write(logging_api, [entry("x")], logName=LOG, resource=RESOURCE, dryRun=True) == {}
    assert emu.logs.received() == 0


def test_injected_failures_then_success(emu: Emulator, logging_api) -> None:
    """fail_next answers the next calls with the status, storing nothing; then calls succeed."""
    emu.logs.fail_next(2, status=503)
    for _ in range(2):
        assert error_of(logging_api, [entry("x")], logName=LOG, resource=RESOURCE)["code"] == 503
    write(logging_api, [entry("x")], logName=LOG, resource=RESOURCE)
    assert emu.logs.received() == 1 and emu.logs.requests == 3


@pytest.mark.parametrize(
    ("reason", "wording", "error_reason"),
    [
        ("permission", "Permission 'logging.logEntries.create' denied", "IAM_PERMISSION_DENIED"),
        (
            "disabled",
            "Cloud Logging API has not been used in project 123456789012",
            "SERVICE_DISABLED",
        ),
    ],
)
def test_denied_writes_are_permission_denied(
    emu: Emulator, logging_api, reason, wording, error_reason
) -> None:
    """deny() answers 403 PERMISSION_DENIED with Google's message and ErrorInfo reason, until
    deny(None)."""
    emu.logs.deny(reason)
    error = error_of(logging_api, [entry("x")], logName=LOG, resource=RESOURCE)
    assert error["status"] == "PERMISSION_DENIED" and error["message"].startswith(wording)
    assert error["details"][0]["reason"] == error_reason
    emu.logs.deny(None)
    write(logging_api, [entry("x")], logName=LOG, resource=RESOURCE)
    assert emu.logs.received() == 1


def test_a_call_without_a_token_is_unauthenticated() -> None:
    """No bearer token, no write."""
    reply = LogStore().write(b'{"entries": []}', None)
    assert reply.status == 401 and b"UNAUTHENTICATED" in reply.body


def test_concurrent_writers_lose_nothing() -> None:
    """Writes from many threads are all stored (the store is thread-safe)."""
    store = LogStore()

    def writer(k: int) -> None:
        for i in range(50):
            body = {"entries": [entry(f"{k}-{i}", insertId=f"{k}-{i}")], "logName": LOG}
            body["resource"] = RESOURCE
            assert store.write(json.dumps(body).encode(), "Bearer t").status == 200

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(store.entries()) == 400 == store.received()
