"""Run health (hub/alerts.py): which ends count, pause on failure, against the real server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from hub.alerts import (
    Health,
    advance,
    alert_id,
    alert_message,
    end_of,
    health_id,
    outcome_of,
    pause_reason,
)
from hub.protocol import quorum, states
from hub.protocol.model import Occurrence, Task
from hub.service import FarmService
from tests.test_hub import FakeClock, add_task, new_hub, occurrences, recent_minute

T0 = datetime(2026, 12, 1, tzinfo=UTC)
STAMP = "2026-12-01T00:00:00.000Z"


def run(state: str, status: str | None = None) -> dict:
    doc: dict = {"_id": "occ:task:acme:ping:20261201T000000Z", "type": "occurrence",
                 "state": state}  # fmt: skip
    if status:
        doc["result"] = {"status": status}
    return doc


@pytest.mark.parametrize(
    ("state", "status", "expected"),
    [("done", "ok", "ok"), ("done", "error", "failure"), ("failed", None, "failure"),
     ("buried", None, "failure"), ("inconclusive", None, "failure"),
     ("missed", None, None), ("skipped", None, None),
     ("cancelled", None, None), ("scheduled", None, None), ("leased", None, None)],
)  # fmt: skip
def test_which_ends_count(state, status, expected):
    assert outcome_of(run(state, status)) == expected


def test_consecutive_failures_count_once_each_and_a_success_resets():
    health = Health("task:acme:ping", "acme")
    first = advance(health, "occ:1", "2026-12-01T00:01:00.000Z", "failure", T0)
    assert first is not None and (first.streak, first.pause_streak) == (1, 1)
    assert advance(first, "occ:1", "2026-12-01T00:01:00.000Z", "failure", T0) is None
    assert advance(first, "occ:0", "2026-12-01T00:00:00.000Z", "failure", T0) is None
    second = advance(first, "occ:2", "2026-12-01T00:02:00.000Z", "failure", T0)
    assert second is not None and second.streak == 2
    healed = advance(second, "occ:3", "2026-12-01T00:03:00.000Z", "ok", T0)
    assert healed is not None and (healed.streak, healed.pause_streak) == (0, 0)
    # A healthy task's successes write nothing.
    assert advance(healed, "occ:4", "2026-12-01T00:04:00.000Z", "ok", T0) is None
    # A buried run kicked and then done counts again as the success it became.
    kicked = advance(second, "occ:2", "2026-12-01T00:02:00.000Z", "ok", T0)
    assert kicked is not None and kicked.streak == 0


def test_an_inconclusive_run_is_a_failure_the_alert_names():
    """A quorum run whose results disagree ended, and the farm has no answer: it breaks a
    healthy streak like an error, and the alert says it was inconclusive."""
    assert end_of(run("inconclusive")) == "inconclusive"
    assert (end_of(run("done", "error")), end_of(run("done", "ok"))) == ("error", "ok")
    health = Health("task:acme:ping", "acme")
    first = advance(health, "occ:1", "2026-12-01T00:01:00.000Z", "failure", T0, "inconclusive")
    assert first is not None and first.streak == 1 and first.last_end == "inconclusive"


def test_pause_reason_needs_the_limit_and_an_unpaused_task():
    task = Task(_id="task:acme:ping", client="acme", slug="ping", kind="demo.sleep",
                schedule={"every": 60}, created_at=STAMP, updated_at=STAMP,
                pause_after_failures=3)  # fmt: skip
    two = Health("task:acme:ping", "acme", streak=2, pause_streak=2, last_occurrence="occ:x")
    three = Health("task:acme:ping", "acme", streak=5, pause_streak=3, last_occurrence="occ:x")
    assert pause_reason(task, two) is None
    reason = pause_reason(task, three)
    assert reason is not None and "3 consecutive failed runs" in reason and "occ:x" in reason
    assert pause_reason(task.model_copy(update={"paused": True}), three) is None
    assert pause_reason(task.model_copy(update={"pause_after_failures": None}), three) is None


def test_old_task_documents_still_load():
    doc = {"_id": "task:acme:ping", "type": "task", "client": "acme", "slug": "ping",
           "kind": "demo.sleep", "schedule": {"every": 60}, "created_at": STAMP,
           "updated_at": STAMP, "paused": False}  # fmt: skip
    task = Task.from_doc(doc)
    assert task.pause_after_failures is None and task.paused_reason is None


@pytest.fixture(autouse=True)
def no_tasks_left_behind(farm):
    yield
    rows = [
        row
        for prefix in ("task:", "occ:", "hub:health:")
        for row in farm.admin.all_docs(farm.db, startkey=prefix, endkey=prefix + "\ufff0")
    ]
    farm.admin.bulk_docs(
        farm.db, [{"_id": r["id"], "_rev": r["value"]["rev"], "_deleted": True} for r in rows]
    )


def run_once(farm, hub, clock, task, *, ok: bool) -> None:
    """The next fire, claimed by w1 and ended ok or with a permanent failure."""
    clock.advance(seconds=30)
    hub.materialize()
    doc = occurrences(farm, task)[-1]
    claimed = states.claim(Occurrence.from_doc(doc), "w1", clock.now)
    rev = farm.worker("w1").put(farm.db, claimed.to_doc())
    claimed = claimed.model_copy(update={"rev": rev})
    if ok:
        ended = states.finish(claimed, "w1", clock.now, started_at=clock.now, output={})
    else:
        ended = states.fail(claimed, "w1", clock.now, error="target refused", permanent=True)
    farm.worker("w1").put(farm.db, ended.to_doc())
    hub.follow_once(wait=5)
    hub.watch_health()


def test_pause_after_failures_pauses_the_task_and_resume_clears_it(farm):
    clock = FakeClock(recent_minute(farm) + timedelta(seconds=0.1))
    task = add_task(farm, "flaky", clock, pause_after_failures=2, overlap="allow",
                    schedule={"every": 30})  # fmt: skip
    hub = new_hub(farm, clock)
    service = FarmService(farm.hub, farm.db)
    run_once(farm, hub, clock, task, ok=False)
    assert not service.get_task("acme", "flaky").paused
    run_once(farm, hub, clock, task, ok=False)
    paused = service.get_task("acme", "flaky")
    assert paused.paused and paused.paused_at is not None
    assert paused.paused_reason is not None and "2 consecutive failed runs" in paused.paused_reason
    health = farm.admin.get(farm.db, health_id(task.id))
    assert (health["streak"], health["pause_streak"]) == (2, 2)
    # The hub's own feed sees the pause: no more runs are due.
    hub.follow_once(wait=5)
    before = len(occurrences(farm, task))
    clock.advance(seconds=61)
    hub.materialize()
    assert len(occurrences(farm, task)) == before

    resumed = service.set_paused("acme", "flaky", False)
    assert not resumed.paused and resumed.paused_reason is None and resumed.paused_at is None
    assert farm.admin.get(farm.db, health_id(task.id))["pause_streak"] == 0
    hub.follow_once(wait=5)
    run_once(farm, hub, clock, task, ok=False)  # one failure after the resume: not enough
    assert not service.get_task("acme", "flaky").paused
    run_once(farm, hub, clock, task, ok=True)
    health = farm.admin.get(farm.db, health_id(task.id))
    assert (health["streak"], health["pause_streak"]) == (0, 0)


def test_a_second_hub_does_not_count_a_run_twice(farm):
    clock = FakeClock(recent_minute(farm) + timedelta(seconds=0.1))
    task = add_task(farm, "twohubs", clock, pause_after_failures=5, overlap="allow",
                    schedule={"every": 30})  # fmt: skip
    hub, other = new_hub(farm, clock), new_hub(farm, clock)
    run_once(farm, hub, clock, task, ok=False)
    other.follow_once(wait=5)
    other.watch_health()
    assert farm.admin.get(farm.db, health_id(task.id))["streak"] == 1


def test_an_inconclusive_quorum_run_raises_the_alert_and_counts_toward_the_pause(farm):
    clock = FakeClock(recent_minute(farm) + timedelta(seconds=0.1))
    task = add_task(farm, "disagree", clock, quorum=2, alert_after_failures=1,
                    pause_after_failures=2, overlap="allow", schedule={"every": 30})  # fmt: skip
    hub = new_hub(farm, clock)
    clock.advance(seconds=30)
    hub.materialize()
    occ = Occurrence.from_doc(occurrences(farm, task)[-1])
    for worker, slept in (("w1", 1), ("w2", 2)):  # two results that disagree
        occ = quorum.claim_slot(occ, worker, clock.now)
        occ = quorum.finish_slot(occ, worker, clock.now, started_at=clock.now,
                                 output={"slept_ms": slept})  # fmt: skip
    decision = quorum.decide(occ, clock.now)
    assert decision is not None and decision.occurrence.state.value == "inconclusive"
    farm.hub.put(farm.db, decision.occurrence.to_doc())
    hub.follow_once(wait=5)
    hub.watch_health()
    health = farm.admin.get(farm.db, health_id(task.id))
    assert (health["streak"], health["last_end"], health["failing"]) == (1, "inconclusive", True)
    alert = farm.admin.get(farm.db, alert_id(task.id, 1))
    assert alert["transition"] == "failing" and alert["end"] == "inconclusive"
    _subject, text, payload = alert_message(alert)
    assert payload["event"] == "task.failing" and payload["end"] == "inconclusive"
    assert "inconclusive" in text and "did not agree" in text
    assert not FarmService(farm.hub, farm.db).get_task("acme", "disagree").paused  # 1 of 2
