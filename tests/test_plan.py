"""spec -> plan: normalisation, validation with JSON paths, and what runs next (no processes)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from batch_agent.tasks.plan import (
    BarrierSpec,
    ContainerSpec,
    Encrypted,
    PlanError,
    RunnablePlan,
    ScriptSpec,
    SecretRefs,
    make_plan,
)
from batch_agent.tasks.sequence import next_runnable
from batch_agent.wire import AgentTask

NAME = "projects/1/locations/r/jobs/j/taskGroups/group0/tasks/7"


def plan_of(**task):
    return make_plan(AgentTask.from_wire({"task": NAME, **task}))


def test_spec_runnables_win_and_agent_spec_gives_the_user():
    """`spec` carries barriers and names; `agentTaskSpec` the user account."""
    plan = plan_of(
        spec={
            "runnables": [
                {"script": {"text": "a"}, "displayName": "first", "timeout": "2s"},
                {"barrier": {"name": "b"}},
            ],
            "environment": {"variables": {"A": "1"}},
            "maxRunDuration": "60s",
        },
        agentTaskSpec={
            "runnables": [{"script": {"text": "ignored"}}],
            "userAccount": {"uid": "1000", "gid": "1000"},
        },
    )
    assert [r.label for r in plan.runnables] == ["first", "runnables[1]"]
    assert plan.runnables[0].timeout == timedelta(seconds=2)
    assert plan.runnables[1].action == BarrierSpec("b")
    assert plan.variables == {"A": "1"}
    assert plan.max_run_duration == timedelta(seconds=60)
    assert plan.user == (1000, 1000)
    assert plan.task_index == 7


def test_agent_task_spec_alone_is_enough():
    """A task described only by agentTaskSpec runs from it."""
    plan = plan_of(
        agentTaskSpec={
            "runnables": [{"script": {"path": "/bin/true"}, "alwaysRun": True}],
            "environment": {"variables": {"B": "2"}},
            "maxRunDuration": "5s",
        }
    )
    assert plan.runnables[0].action == ScriptSpec(path="/bin/true")
    assert plan.runnables[0].always_run
    assert plan.variables == {"B": "2"}


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({}, "runnables: a task needs at least one runnable"),
        ({"runnables": [{}]}, "runnables[0]: needs one of script, container or barrier"),
        (
            {"runnables": [{"script": {"text": "a"}, "barrier": {}}]},
            "runnables[0]: has both script and barrier; give only one",
        ),
        ({"runnables": [{"script": {}}]}, 'runnables[0].script: needs "text" or "path"'),
        ({"runnables": [{"container": {}}]}, 'runnables[0].container: needs "imageUri"'),
        (
            {"runnables": [{"script": {"text": "a"}, "timeout": "0s"}]},
            "runnables[0].timeout: 0s is not positive",
        ),
        (
            {"runnables": [{"script": {"text": "a"}, "environment": {"variables": {"A-B": "1"}}}]},
            'runnables[0].variables: "A-B" is not a valid variable name',
        ),
        (
            {
                "runnables": [{"script": {"text": "a"}}],
                "environment": {"secretVariables": {"S": "p"}},
            },
            "environment.secretVariables.S: 'p' is not a Secret Manager version "
            "(projects/P/secrets/S/versions/V)",
        ),
        (
            {
                "runnables": [{"script": {"text": "a"}}],
                "environment": {"encryptedVariables": {"keyName": "k", "cipherText": "c"}},
            },
            "environment.encryptedVariables.keyName: 'k' is not a Cloud KMS key "
            "(projects/P/locations/L/keyRings/R/cryptoKeys/K)",
        ),
    ],
)
def test_bad_specs_name_the_field(spec, problem):
    """Every problem carries the JSON path of the field that is wrong."""
    with pytest.raises(PlanError) as caught:
        plan_of(spec=spec)
    assert problem in caught.value.problems


def test_all_problems_are_reported_at_once():
    """A spec with two problems lists both, so the user fixes them in one go."""
    with pytest.raises(PlanError) as caught:
        plan_of(spec={"runnables": [{"script": {}}, {}]})
    assert len(caught.value.problems) == 2


def test_index_and_attempt_come_from_the_name():
    """The documented agent form gives BATCH_TASK_INDEX and BATCH_TASK_RETRY_ATTEMPT."""
    plan = make_plan(
        AgentTask.from_wire(
            {"task": "task/j-1-2-group0-4/3/0", "spec": {"runnables": [{"script": {"text": "x"}}]}}
        )
    )
    assert (plan.task_index, plan.retry_attempt) == (4, 3)


def test_a_secret_manager_registry_password_is_kept_as_a_path():
    """Container credentials given as Secret Manager paths plan fine; the prestart resolves them."""
    secret = "projects/p/secrets/s/versions/1"
    plan = plan_of(spec={"runnables": [{"container": {"imageUri": "i", "password": secret}}]})
    assert plan.runnables[0].action == ContainerSpec(image_uri="i", password=secret)


KEY = "projects/p/locations/global/keyRings/r/cryptoKeys/k"


def test_both_specs_environments_merge_with_spec_winning():
    """agentTaskSpec.environment is no longer dropped when spec.environment has variables."""
    plan = plan_of(
        spec={
            "runnables": [{"script": {"text": "a"}}],
            "environment": {
                "variables": {"A": "spec", "B": "spec"},
                "secretVariables": {"S": "projects/p/secrets/s/versions/1"},
            },
        },
        agentTaskSpec={
            "runnables": [{"script": {"text": "a"}}],
            "environment": {
                "variables": {"B": "agent", "C": "agent"},
                "secretVariables": {"T": "projects/p/secrets/t/versions/2"},
                "encryptedVariables": {"keyName": KEY, "cipherText": "Y2lwaGVy"},
            },
        },
    )
    assert plan.variables == {"A": "spec", "B": "spec", "C": "agent"}
    assert plan.secrets == SecretRefs(
        {"T": "projects/p/secrets/t/versions/2", "S": "projects/p/secrets/s/versions/1"},
        (Encrypted(KEY, "Y2lwaGVy"),),
    )


def test_runnable_secrets_are_planned_by_path():
    """A runnable's secretVariables and encryptedVariables become its SecretRefs (no values)."""
    plan = plan_of(
        spec={
            "runnables": [
                {
                    "script": {"text": "a"},
                    "environment": {
                        "secretVariables": {"R": "projects/p/secrets/r/versions/latest"},
                        "encryptedVariables": {"keyName": KEY, "cipherText": "eA=="},
                    },
                }
            ]
        }
    )
    assert plan.runnables[0].secrets == SecretRefs(
        {"R": "projects/p/secrets/r/versions/latest"}, (Encrypted(KEY, "eA=="),)
    )
    assert not plan.secrets


def r(index, *, always_run=False):
    return RunnablePlan(index=index, action=ScriptSpec(text="x"), always_run=always_run)


SEQ = (r(1), r(2), r(3, always_run=True), r(4))


@pytest.mark.parametrize(
    ("after", "failed", "expired", "expected"),
    [
        (0, False, False, 1),
        (1, False, False, 2),
        (3, False, False, 4),
        (4, False, False, None),
        (1, True, False, 3),  # after a failure only alwaysRun runs
        (3, True, False, None),
        (0, False, True, None),  # maxRunDuration expired: nothing, not even alwaysRun
        (1, True, True, None),
    ],
)
def test_next_runnable(after, failed, expired, expected):
    """What runs next is a pure function of position, failure and the deadline."""
    chosen = next_runnable(SEQ, after, failed=failed, expired=expired)
    assert (chosen.index if chosen else None) == expected
