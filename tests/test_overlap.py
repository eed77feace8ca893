"""The overlap policies against the real server: what a worker holding a cancelled run
sees, and runs waiting their turn one at a time."""

from __future__ import annotations

import pytest

from hub.protocol import states
from hub.protocol.couch import Conflict, Forbidden
from hub.protocol.model import Occurrence
from tests.test_hub import FakeClock, add_task, new_hub, occurrences, recent_minute


@pytest.fixture(autouse=True)
def no_tasks_left_behind(farm):
    yield
    rows = [
        row
        for prefix in ("task:", "occ:")
        for row in farm.admin.all_docs(farm.db, startkey=prefix, endkey=prefix + "\ufff0")
    ]
    farm.admin.bulk_docs(
        farm.db, [{"_id": r["id"], "_rev": r["value"]["rev"], "_deleted": True} for r in rows]
    )


def claim(farm, doc: dict, now) -> Occurrence:
    claimed = states.claim(Occurrence.from_doc(doc), "w1", now)
    rev = farm.worker("w1").put(farm.db, claimed.to_doc())
    return claimed.model_copy(update={"rev": rev})


def test_a_cancelled_run_is_refused_at_its_next_touch_and_at_its_finish(farm, world):
    """What replace and cancel_other rely on: the cancel needs no message to the worker."""
    now = farm.now()
    leased = Occurrence.from_doc(world["leased_w1"])
    cancelled = states.cancel(leased, now, "cancelled by test")
    farm.hub.put(farm.db, cancelled.to_doc())
    w1 = farm.worker("w1")
    # CouchDB answers a stale _rev with 409; PouchDB Server validates first (403).
    with pytest.raises((Conflict, Forbidden)):
        w1.put(farm.db, states.touch(leased, "w1", now).to_doc())
    finished = states.finish(leased, "w1", now, started_at=now, output={})
    with pytest.raises((Conflict, Forbidden)):
        w1.put(farm.db, finished.to_doc())
    assert farm.admin.get(farm.db, leased.id)["state"] == "cancelled"


def test_cancel_other_cancels_the_running_run_and_starts_the_new_one_after_it(farm):
    clock = FakeClock(recent_minute(farm))
    task = add_task(farm, "cancelother", clock, ttr=120, overlap="cancel_other")
    hub = new_hub(farm, clock)
    clock.advance(minutes=1, seconds=0.1)
    hub.materialize()
    running = claim(farm, occurrences(farm, task)[0], clock.now)
    hub.follow_once(wait=5)
    clock.advance(minutes=1)
    hub.materialize()
    first, second = occurrences(farm, task)
    assert first["state"] == "cancelled" and "cancel_other" in first["reason"]
    assert second["state"] == "scheduled"
    assert running.lease is not None and second["not_before"] == running.lease.expires_at
    # The worker learns at its next touch.
    with pytest.raises((Conflict, Forbidden)):
        farm.worker("w1").put(farm.db, states.touch(running, "w1", clock.now).to_doc())
    hub.follow_once(wait=5)
    hub.reap()
    assert occurrences(farm, task)[1]["state"] == "scheduled"  # the old lease still runs
    clock.advance(seconds=61)
    hub.reap()
    assert occurrences(farm, task)[1]["state"] == "ready"


def test_buffer_one_runs_the_buffered_run_after_the_running_one_and_skips_the_rest(farm):
    clock = FakeClock(recent_minute(farm))
    task = add_task(farm, "bufferone", clock, ttr=3600, overlap="buffer_one")
    hub = new_hub(farm, clock)
    clock.advance(minutes=1, seconds=0.1)
    hub.materialize()
    running = claim(farm, occurrences(farm, task)[0], clock.now)
    hub.follow_once(wait=5)
    for _ in range(3):
        clock.advance(minutes=1)
        hub.materialize()
    assert [d["state"] for d in occurrences(farm, task)] == [
        "leased", "scheduled", "skipped", "skipped",
    ]  # fmt: skip
    hub.reap()
    assert occurrences(farm, task)[1]["state"] == "scheduled"  # waits while one runs
    done = states.finish(running, "w1", clock.now, started_at=clock.now, output={})
    farm.worker("w1").put(farm.db, done.to_doc())
    hub.follow_once(wait=5)
    hub.reap()
    assert occurrences(farm, task)[1]["state"] == "ready"


def test_queue_promotes_its_waiting_runs_one_at_a_time(farm):
    clock = FakeClock(recent_minute(farm))
    task = add_task(farm, "queued", clock, ttr=3600, overlap="queue", misfire="run_all")
    hub = new_hub(farm, clock)
    clock.advance(minutes=1, seconds=0.1)
    hub.materialize()
    running = claim(farm, occurrences(farm, task)[0], clock.now)
    hub.follow_once(wait=5)
    clock.advance(minutes=2)
    hub.materialize()
    assert [d["state"] for d in occurrences(farm, task)] == ["leased", "scheduled", "scheduled"]
    done = states.finish(running, "w1", clock.now, started_at=clock.now, output={})
    farm.worker("w1").put(farm.db, done.to_doc())
    hub.follow_once(wait=5)
    hub.reap()
    hub.follow_once(wait=5)
    hub.reap()  # the promoted one is ready, not yet claimed: the next keeps waiting
    assert [d["state"] for d in occurrences(farm, task)] == ["done", "ready", "scheduled"]
