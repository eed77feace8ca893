"""hub.reaper: expired leases back to ready or buried, due retries promoted, against the
real server. The hub's promotion rule (``Hub.may_promote``: paused tubes, ``queue``
overlap) is checked through ``Hub.reap``."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from hub import reaper, resolver
from hub.protocol import states
from hub.protocol.model import Backoff, Occurrence, State, Task
from tests import cluster
from tests.conftest import Farm
from tests.test_hub import FakeClock, add_task, new_hub, recent_minute

NO_JITTER = Backoff(base=10, factor=1, jitter=0)


def ready_occurrence(farm: Farm, task: Task, due: datetime, now: datetime) -> Occurrence:
    occ = states.materialize(task, due, now)
    farm.hub.put(farm.db, occ.to_doc())
    return Occurrence.from_doc(farm.hub.get(farm.db, occ.id))


def claimed(farm: Farm, occ: Occurrence, now: datetime, worker: str = "w2") -> Occurrence:
    lease = states.claim(occ, worker, now)
    farm.worker(worker).put(farm.db, lease.to_doc())
    return Occurrence.from_doc(farm.hub.get(farm.db, occ.id))


def failed_for_retry(farm: Farm, occ: Occurrence, now: datetime, worker: str = "w2") -> Occurrence:
    """Claimed, then failed with a 10 s backoff: scheduled, due 10 s after ``now``."""
    lease = claimed(farm, occ, now, worker)
    retry = states.fail(lease, worker, now, error="boom", backoff=NO_JITTER)
    farm.worker(worker).put(farm.db, retry.to_doc())
    stored = farm.hub.get(farm.db, occ.id)
    assert stored["state"] == State.SCHEDULED.value
    return Occurrence.from_doc(stored)


def doc(farm: Farm, occ: Occurrence) -> dict[str, Any]:
    return farm.hub.get(farm.db, occ.id)


def test_an_expired_lease_goes_back_to_ready_and_a_running_one_is_left(farm: Farm) -> None:
    now = recent_minute(farm)
    task = add_task(farm, "reap-expire", FakeClock(now), ttr=30, max_attempts=3)
    expiring = claimed(farm, ready_occurrence(farm, task, now - timedelta(minutes=2), now), now)
    running = claimed(
        farm,
        ready_occurrence(farm, task, now - timedelta(minutes=1), now),
        now + timedelta(seconds=20),
    )
    report = reaper.reap(farm.hub, farm.db, now + timedelta(seconds=31))
    assert (report.expired, report.buried, report.promoted, report.conflicts) == (1, 0, 0, 0)
    back = doc(farm, expiring)
    assert back["state"] == "ready" and back.get("lease") is None
    assert "lease expired" in back["errors"][-1]["error"]
    assert doc(farm, running)["state"] == "leased"  # its lease runs until +50 s


def test_an_expired_lease_in_conflict_waits_for_the_resolver(farm: Farm) -> None:
    """A cluster took two claims of one revision: expiring the branch CouchDB shows could
    put back an occurrence the other branch finished. The reaper leaves it, names it, and
    expires the winner once the conflict is settled."""
    now = recent_minute(farm)
    task = add_task(farm, "reap-conflict", FakeClock(now), ttr=30, max_attempts=3)
    ready = ready_occurrence(farm, task, now - timedelta(minutes=2), now)
    mine = claimed(farm, ready, now)
    other = states.claim(ready, "w3", now).to_doc()
    other["_rev"] = "2-" + ("0" if mine.rev and mine.rev[2] != "0" else "1") * 32
    farm.admin.bulk_docs(farm.db, [other], new_edits=False)  # as a second copy took it
    assert farm.hub.get(farm.db, ready.id, conflicts="true").get("_conflicts")
    later = now + timedelta(seconds=31)
    report = reaper.reap(farm.hub, farm.db, later)
    assert report.conflicted == [ready.id] and report.expired == 0
    assert doc(farm, ready)["state"] == "leased"
    assert resolver.resolve(farm.hub, farm.db, farm.hub.get(farm.db, ready.id, conflicts="true"))
    # On a cluster the view reads one copy of each shard: it may show the conflict for a
    # pass more (the hub reaps again, as here); on one server the first pass expires it.
    expired = 0
    for _ in range(1 if farm.hub.copies(farm.db) == 1 else 5):
        cluster.converge(farm.hub, farm.db, [ready.id])
        report = reaper.reap(farm.hub, farm.db, later)
        expired += report.expired
        if not report.conflicted:
            break
    assert (expired, report.conflicted) == (1, [])
    assert doc(farm, ready)["state"] == "ready"


def test_an_expired_lease_on_the_last_attempt_is_buried(farm: Farm) -> None:
    now = recent_minute(farm)
    task = add_task(farm, "reap-bury", FakeClock(now), ttr=30, max_attempts=1)
    lease = claimed(farm, ready_occurrence(farm, task, now - timedelta(minutes=1), now), now)
    report = reaper.reap(farm.hub, farm.db, now + timedelta(seconds=31))
    assert (report.expired, report.buried) == (0, 1)
    assert doc(farm, lease)["state"] == "buried"


def test_a_due_retry_is_promoted_and_one_not_yet_due_waits(farm: Farm) -> None:
    now = recent_minute(farm)
    task = add_task(farm, "reap-retry", FakeClock(now), ttr=30, max_attempts=3)
    early = ready_occurrence(farm, task, now - timedelta(minutes=2), now)
    late = ready_occurrence(farm, task, now - timedelta(minutes=1), now)
    due_first = failed_for_retry(farm, early, now)
    due_later = failed_for_retry(farm, late, now + timedelta(seconds=30))
    report = reaper.reap(farm.hub, farm.db, now + timedelta(seconds=11))
    assert (report.promoted, report.expired, report.conflicts) == (1, 0, 0)
    assert doc(farm, due_first)["state"] == "ready"
    assert doc(farm, due_later)["state"] == "scheduled"


def test_a_retry_the_hook_refuses_stays_scheduled(farm: Farm) -> None:
    now = recent_minute(farm)
    task = add_task(farm, "reap-hook", FakeClock(now), ttr=30, max_attempts=3)
    retry = failed_for_retry(
        farm, ready_occurrence(farm, task, now - timedelta(minutes=1), now), now
    )
    asked: list[str] = []

    def never(occ: Occurrence) -> bool:
        asked.append(occ.id)
        return False

    report = reaper.reap(farm.hub, farm.db, now + timedelta(seconds=11), may_promote=never)
    assert report.promoted == 0 and retry.id in asked
    assert doc(farm, retry)["state"] == "scheduled"


def test_a_write_that_lost_to_the_worker_counts_as_a_conflict(farm: Farm) -> None:
    now = recent_minute(farm)
    task = add_task(farm, "reap-race", FakeClock(now), ttr=30, max_attempts=3)
    lease = claimed(farm, ready_occurrence(farm, task, now - timedelta(minutes=1), now), now)

    class TouchFirst:
        """The hub's client, but the worker touches the lease between read and write."""

        def __getattr__(self, name: str) -> Any:
            return getattr(farm.hub, name)

        def bulk_docs(self, db: str, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
            touched = states.touch(lease, "w2", now + timedelta(seconds=5))
            farm.worker("w2").put(farm.db, touched.to_doc())
            return farm.hub.bulk_docs(db, docs)

    report = reaper.reap(TouchFirst(), farm.db, now + timedelta(seconds=31))  # type: ignore[arg-type]
    assert (report.expired, report.conflicts) == (0, 1)
    assert doc(farm, lease)["state"] == "leased"  # the worker's touch won


def test_the_hub_promotes_no_retry_in_a_paused_tube(farm: Farm) -> None:
    clock = FakeClock(recent_minute(farm))
    task = add_task(farm, "reap-paused", clock, tube="paused-tube", ttr=30, max_attempts=3)
    retry = failed_for_retry(
        farm, ready_occurrence(farm, task, clock.now - timedelta(minutes=1), clock.now), clock.now
    )
    hub = new_hub(farm, clock)
    hub.paused_tubes = {"paused-tube": "maintenance"}
    clock.advance(seconds=11)
    assert hub.reap().promoted == 0
    assert doc(farm, retry)["state"] == "scheduled"
    hub.paused_tubes = {}
    assert hub.reap().promoted == 1
    assert doc(farm, retry)["state"] == "ready"


def test_the_hub_holds_a_queue_tasks_retry_while_another_run_is_leased(farm: Farm) -> None:
    clock = FakeClock(recent_minute(farm))
    task = add_task(farm, "reap-queue", clock, overlap="queue", ttr=300, max_attempts=3)
    now = clock.now
    retry = failed_for_retry(
        farm, ready_occurrence(farm, task, now - timedelta(minutes=2), now), now
    )
    running = claimed(farm, ready_occurrence(farm, task, now - timedelta(minutes=1), now), now)
    hub = new_hub(farm, clock)
    clock.advance(seconds=11)
    assert hub.reap().promoted == 0  # the queue waits for the leased run
    assert doc(farm, retry)["state"] == "scheduled"
    done = states.finish(running, "w2", clock.now, started_at=now, output={"ok": 1})
    farm.worker("w2").put(farm.db, done.to_doc())
    after = new_hub(farm, clock)  # loads the task's active occurrences again: none leased
    assert after.reap().promoted == 1
    assert doc(farm, retry)["state"] == "ready"
