"""Backfill (FarmService.backfill) against the real server."""

from __future__ import annotations

from datetime import timedelta

import pytest

from hub import provision
from hub.protocol.model import occurrence_id
from hub.protocol.names import results_db
from hub.protocol.timefmt import to_wire
from hub.service import MAX_BACKFILL_RUNS, FarmService, NotFoundError, ServiceError
from tests.test_hub import FakeClock, new_hub

EVERY_MINUTE = {"kind": "demo.sleep", "input": {"ms": 10}, "schedule": {"every": 60}}


@pytest.fixture(scope="module")
def service(farm) -> FarmService:
    return FarmService(farm.hub, farm.db)


def minute_range(farm, minutes: int):
    end = farm.now().replace(second=0, microsecond=0) - timedelta(minutes=1)
    return end - timedelta(minutes=minutes - 1), end


def test_backfill_creates_the_missing_runs_once(farm, service):
    service.add_task("acme", "gap", EVERY_MINUTE)
    start, end = minute_range(farm, 5)
    report = service.backfill("acme", "gap", to_wire(start), to_wire(end))
    assert len(report.created) == 5 and report.already_live == []
    docs = [farm.admin.get(farm.db, occ) for occ in report.created]
    assert {d["state"] for d in docs} == {"ready"}
    assert all(d["reason"].startswith("backfill") for d in docs)
    assert docs[0]["due_at"] == to_wire(start) and docs[-1]["due_at"] == to_wire(end)
    again = service.backfill("acme", "gap", start, end)
    assert again.created == [] and again.already_live == sorted(report.created)


def test_a_run_already_archived_is_not_created_again(farm, service):
    service.add_task("acme", "archived", EVERY_MINUTE)
    start, end = minute_range(farm, 3)
    gone = occurrence_id("task:acme:archived", start)
    month = results_db(farm.db, start)
    provision.ensure_results_db(farm.admin, month)
    farm.admin.put(month, {"_id": f"res:{gone}", "type": "result"})
    report = service.backfill("acme", "archived", start, end)
    assert report.already_archived == [gone]
    assert gone not in report.created and len(report.created) == 2


def test_backfill_queue_runs_one_at_a_time(farm, service):
    service.add_task("acme", "serial", EVERY_MINUTE)
    start, end = minute_range(farm, 3)
    report = service.backfill("acme", "serial", start, end, overlap="queue")
    assert {farm.admin.get(farm.db, o)["state"] for o in report.created} == {"scheduled"}
    hub = new_hub(farm, FakeClock(farm.now() + timedelta(seconds=1)))
    hub.reap()
    assert [farm.admin.get(farm.db, o)["state"] for o in report.created] == [
        "ready", "scheduled", "scheduled",
    ]  # fmt: skip
    hub.follow_once(wait=5)  # as the running hub's feed does between two reaps
    hub.reap()  # the first is ready, not yet run: the next one waits
    assert [farm.admin.get(farm.db, o)["state"] for o in report.created].count("ready") == 1


def test_bad_backfills_name_the_field(farm, service):
    service.add_task("acme", "bounds", EVERY_MINUTE)
    now = farm.now()
    cases = [
        ((now - timedelta(hours=1), now + timedelta(hours=1)), {}, "to: "),
        ((now - timedelta(minutes=5), now - timedelta(minutes=10)), {}, "from: "),
        ((now - timedelta(days=2), now - timedelta(minutes=1)), {}, str(MAX_BACKFILL_RUNS)),
        ((now - timedelta(minutes=5), now - timedelta(minutes=1)), {"overlap": "skip"},
         "overlap: "),
        (("yesterday", now - timedelta(minutes=1)), {}, "from: "),
    ]  # fmt: skip
    for (start, end), extra, words in cases:
        with pytest.raises(ServiceError) as err:
            service.backfill("acme", "bounds", start, end, **extra)
        assert any(words in problem for problem in err.value.problems), err.value.problems
    with pytest.raises(NotFoundError):
        service.backfill("globex", "bounds", now - timedelta(minutes=5), now)
