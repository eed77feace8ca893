"""plan_task: misfire, coalescing and overlap policies, as pure logic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from hub.materializer import plan_task
from hub.protocol import states
from hub.protocol.model import State, Task

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def task(**overrides) -> Task:
    data = dict(
        _id="task:acme:ping", client="acme", slug="ping", kind="demo.sleep",
        schedule={"every": 60}, created_at="2026-11-30T00:00:00.000Z",
        updated_at="2026-11-30T00:00:00.000Z",
    )  # fmt: skip
    return Task(**{**data, **overrides})


def minutes(*ns: int) -> list[datetime]:
    return [T0 + timedelta(minutes=n) for n in ns]


def states_of(plan) -> list[str]:
    return [occ.state.value for occ in plan.creates]


def test_on_time_run_is_ready():
    plan = plan_task(task(), minutes(1), T0 + timedelta(minutes=1, seconds=0.2), [])
    assert states_of(plan) == ["ready"] and plan.supersede == []


def test_run_latest_after_downtime_runs_one_and_records_the_rest_missed():
    now = T0 + timedelta(minutes=10, seconds=1)
    plan = plan_task(task(), minutes(*range(1, 11)), now, [])
    assert states_of(plan).count("missed") == 9
    assert states_of(plan).count("ready") == 1
    ready = next(o for o in plan.creates if o.state == State.READY)
    assert ready.due_at.startswith("2026-12-01T00:10:00")
    assert all("misfire" in o.reason for o in plan.creates if o.state == State.MISSED)


def test_run_latest_when_everything_is_late_still_runs_the_newest():
    now = T0 + timedelta(hours=1)
    plan = plan_task(task(), minutes(1, 2, 3), now, [])
    assert states_of(plan) == ["missed", "missed", "ready"]


def test_misfire_skip_runs_nothing_late():
    now = T0 + timedelta(hours=1)
    assert states_of(plan_task(task(misfire="skip"), minutes(1, 2), now, [])) == ["missed"] * 2


def test_run_all_runs_every_late_one():
    now = T0 + timedelta(hours=1)
    plan = plan_task(task(misfire="run_all"), minutes(1, 2, 3), now, [])
    assert states_of(plan) == ["ready"] * 3


def test_unclaimed_previous_run_is_coalesced_as_missed():
    previous = states.materialize(task(), T0, T0)
    plan = plan_task(task(), minutes(1), T0 + timedelta(minutes=1), [previous])
    assert states_of(plan) == ["ready"]
    assert [(occ.id, op) for occ, op, _ in plan.supersede] == [(previous.id, "miss")]


@pytest.mark.parametrize(
    ("overlap", "expected_state", "supersede"),
    [("skip", "skipped", []), ("queue", "scheduled", []), ("allow", "ready", []),
     ("replace", "ready", ["cancel"])],
)  # fmt: skip
def test_overlap_policy_with_a_run_still_leased(overlap, expected_state, supersede):
    t = task(overlap=overlap)
    running = states.claim(states.materialize(t, T0, T0), "w1", T0)
    plan = plan_task(t, minutes(1), T0 + timedelta(minutes=1), [running])
    assert states_of(plan) == [expected_state]
    assert [op for _occ, op, _why in plan.supersede] == supersede
    if overlap == "skip":
        assert running.id in plan.creates[0].reason


def test_jitter_delays_not_before_deterministically():
    t = task(schedule={"every": 60, "jitter": 30})
    a = plan_task(t, minutes(1), T0 + timedelta(minutes=1), []).creates[0]
    b = plan_task(t, minutes(1), T0 + timedelta(minutes=1), []).creates[0]
    assert a.id == b.id and a.not_before == b.not_before
    assert a.not_before >= a.due_at
    assert a.state in (State.READY, State.SCHEDULED)


def test_fair_offset_and_priority_shape_the_turn():
    now = T0 + timedelta(minutes=1)
    spaced = plan_task(task(), minutes(1), now, [], fair_offsets=[0.25]).creates[0]
    assert spaced.queue_at == "2026-12-01T00:01:00.250Z"
    urgent = plan_task(task(priority=0), minutes(1), now, []).creates[0]
    assert urgent.queue_at < urgent.due_at < spaced.queue_at


def leased_run(t: Task, minute: int = 0):
    return states.claim(states.materialize(t, T0 + timedelta(minutes=minute), T0), "w1", T0)


@pytest.mark.parametrize("overlap", ["buffer_one", "cancel_other"])
def test_new_policies_with_nothing_running_run_at_once(overlap):
    plan = plan_task(task(overlap=overlap), minutes(1), T0 + timedelta(minutes=1), [])
    assert states_of(plan) == ["ready"] and plan.supersede == []


def test_buffer_one_holds_one_run_behind_the_running_one():
    t = task(overlap="buffer_one")
    running = leased_run(t)
    plan = plan_task(t, minutes(1), T0 + timedelta(minutes=1), [running])
    assert states_of(plan) == ["scheduled"] and plan.supersede == []
    assert "buffer_one" in plan.creates[0].reason


def test_buffer_one_skips_further_fires_and_keeps_the_buffered_run():
    t = task(overlap="buffer_one")
    running = leased_run(t)
    buffered = plan_task(t, minutes(1), T0 + timedelta(minutes=1), [running]).creates[0]
    plan = plan_task(t, minutes(2), T0 + timedelta(minutes=2), [running, buffered])
    assert states_of(plan) == ["skipped"]
    assert buffered.id in plan.creates[0].reason
    assert plan.supersede == []  # not coalesced away, unlike queue with run_latest


def test_buffer_one_in_one_late_batch_runs_one_buffers_one_skips_the_rest():
    t = task(overlap="buffer_one", misfire="run_all")
    plan = plan_task(t, minutes(1, 2, 3, 4), T0 + timedelta(minutes=4), [])
    assert states_of(plan) == ["ready", "scheduled", "skipped", "skipped"]


def test_queue_with_run_latest_still_replaces_the_waiting_run():
    t = task(overlap="queue")
    running = leased_run(t)
    waiting = plan_task(t, minutes(1), T0 + timedelta(minutes=1), [running]).creates[0]
    plan = plan_task(t, minutes(2), T0 + timedelta(minutes=2), [running, waiting])
    assert states_of(plan) == ["scheduled"]
    assert [(occ.id, op) for occ, op, _ in plan.supersede] == [(waiting.id, "miss")]


def test_cancel_other_cancels_the_running_one_and_waits_for_its_lease():
    t = task(overlap="cancel_other", ttr=300)
    running = leased_run(t)
    now = T0 + timedelta(minutes=1)
    plan = plan_task(t, minutes(1), now, [running])
    assert [(occ.id, op) for occ, op, _ in plan.supersede] == [(running.id, "cancel")]
    assert states_of(plan) == ["scheduled"]
    assert running.lease is not None
    assert plan.creates[0].not_before == running.lease.expires_at  # 5 minutes after the claim


def test_replace_starts_the_new_run_at_once():
    t = task(overlap="replace", ttr=300)
    plan = plan_task(t, minutes(1), T0 + timedelta(minutes=1), [leased_run(t)])
    assert states_of(plan) == ["ready"]
    assert plan.creates[0].not_before == plan.creates[0].due_at


def test_backfilled_runs_are_neither_waited_for_nor_coalesced():
    t = task(overlap="skip")
    old = states.materialize(t, T0 - timedelta(days=1), T0, reason="backfill: asked")
    running_backfill = states.claim(old, "w1", T0)
    waiting_backfill = states.materialize(t, T0 - timedelta(days=2), T0, reason="backfill: asked")
    plan = plan_task(t, minutes(1), T0 + timedelta(minutes=1), [running_backfill, waiting_backfill])
    assert states_of(plan) == ["ready"] and plan.supersede == []
