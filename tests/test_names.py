"""Task names: both forms Batch sends give their parts; anything else is opaque."""

from __future__ import annotations

import pytest

from batch_agent.names import TaskName, parse_task_name


@pytest.mark.parametrize(
    ("name", "parts"),
    [
        (
            "projects/1/locations/us-central1/jobs/job-1/taskGroups/group0/tasks/7",
            TaskName(job="job-1", group="group0", index=7),
        ),
        (
            "task/j-3f2a9c1e-7b4d-4e55-9a10-0123456789ab-group0-2/1/0",
            TaskName(
                job="j-3f2a9c1e-7b4d-4e55-9a10-0123456789ab", group="group0", index=2, attempt=1
            ),
        ),
        ("task/j-1-group0-12/0/0", TaskName(job="j-1", group="group0", index=12, attempt=0)),
        ("some-opaque-name", TaskName()),
        ("task/j-1-group0-x/0/0", TaskName()),
        ("projects/1/locations/r/jobs/j/taskGroups/g/tasks/" + "9" * 40, TaskName()),
        ("task/" + "a-" * 100_000 + "g-1/0/0", TaskName()),
        ("", TaskName()),
    ],
)
def test_parse_task_name(name, parts):
    """Each known form yields job, group, index (and attempt); others yield nothing."""
    assert parse_task_name(name) == parts
