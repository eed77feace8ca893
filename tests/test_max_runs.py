"""max_runs: the task ends after that many runs, the same on every hub (pure + real server)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from hub.materializer import ended_reason, task_schedule
from hub.protocol.model import Schedule, Task
from hub.schedules import MAX_WALKED_RUNS, ScheduleError, fire_times, limit_runs, max_runs_end
from hub.service import FarmService, ServiceError
from tests.test_hub import FakeClock, add_task, new_hub, occurrences

CREATED = datetime(2026, 3, 1, 0, 0, 30, tzinfo=UTC)


def test_every_counts_from_creation_on_the_epoch_grid():
    # Created at :30, so the first of the three runs is the next whole minute.
    assert max_runs_end(Schedule(every=60), 3, CREATED) == datetime(2026, 3, 1, 0, 3, tzinfo=UTC)


def test_start_is_counted_inclusively_and_wins_over_creation():
    schedule = Schedule(every=60, start="2026-03-02T10:00:07Z")
    assert max_runs_end(schedule, 1, CREATED) == datetime(2026, 3, 2, 10, 0, 7, tzinfo=UTC)
    assert max_runs_end(schedule, 2, CREATED) == datetime(2026, 3, 2, 10, 1, 7, tzinfo=UTC)


def test_the_limited_schedule_yields_exactly_max_runs_fires():
    for schedule in (Schedule(every=3600), Schedule(cron="30 2 * * *", tz="Europe/Amsterdam")):
        limited = limit_runs(schedule, 7, CREATED)
        fires = list(fire_times(limited, CREATED, CREATED + timedelta(days=30)))
        assert len(fires) == 7
        assert fires == list(fire_times(schedule, CREATED, fires[-1]))


def test_cron_count_crosses_a_dst_change_like_the_fire_times_do():
    # Europe/Amsterdam springs forward on 2026-03-29: 02:30 does not exist that night and
    # fires once, an hour late; the count still advances by one per fire.
    schedule = Schedule(cron="30 2 * * *", tz="Europe/Amsterdam")
    created = datetime(2026, 3, 27, tzinfo=UTC)
    fires = list(fire_times(schedule, created, created + timedelta(days=4)))
    assert max_runs_end(schedule, 3, created) == fires[2]


def test_an_end_before_the_limit_wins():
    schedule = Schedule(every=60, end="2026-03-01T00:02:00Z")
    assert max_runs_end(schedule, 10, CREATED) is None
    assert limit_runs(schedule, 10, CREATED) == schedule
    assert limit_runs(schedule, None, CREATED) == schedule


def test_a_huge_cron_limit_is_refused_naming_the_field():
    with pytest.raises(ScheduleError) as caught:
        max_runs_end(Schedule(cron="* * * * *"), MAX_WALKED_RUNS + 1, CREATED)
    assert caught.value.problems[0].startswith("max_runs: ")
    # 'every' is counted in one step, so a long series costs nothing.
    assert max_runs_end(Schedule(every=60), 1_000_000, CREATED) is not None


def test_two_hubs_get_the_same_end_whatever_the_time_they_ask():
    task = Task(
        _id="task:acme:x", client="acme", slug="x", kind="demo.sleep", max_runs=5,
        schedule={"every": 600}, created_at="2026-03-01T00:00:30.000Z",
        updated_at="2026-03-09T00:00:00.000Z",
    )  # fmt: skip
    assert task_schedule(task).end == "2026-03-01T00:50:00.000000Z"
    assert "max_runs=5" in (ended_reason(task) or "")


def test_old_task_documents_without_max_runs_still_load():
    doc = {
        "_id": "task:acme:old", "type": "task", "client": "acme", "slug": "old",
        "kind": "demo.sleep", "schedule": {"every": 60},
        "created_at": "2026-01-01T00:00:00.000Z", "updated_at": "2026-01-01T00:00:00.000Z",
    }  # fmt: skip
    task = Task.from_doc(doc)
    assert task.max_runs is None and task_schedule(task) == task.schedule


# ---------------------------------------------------------------- real server


def test_the_hub_creates_max_runs_runs_then_marks_the_task_ended(farm):
    clock = FakeClock(farm.now().replace(second=0, microsecond=0) + timedelta(seconds=30))
    task = add_task(farm, "limited", clock, max_runs=3, misfire="run_all", overlap="allow")
    hub = new_hub(farm, clock)
    for _ in range(6):  # six minutes pass: only three runs come
        clock.advance(minutes=1)
        hub.materialize()
    dues = [doc["due_at"] for doc in occurrences(farm, task)]
    assert len(dues) == 3
    stored = Task.from_doc(farm.admin.get(farm.db, task.id))
    assert stored.paused and stored.paused_at is not None
    assert stored.paused_reason is not None and "max_runs=3" in stored.paused_reason
    assert dues[-1] in stored.paused_reason
    assert stored.status == "ended" and stored.ended  # what the API, portal and CLI show
    from hub.cli import describe_task

    assert describe_task(stored, [])[1].startswith("state         ended (ended: max_runs=3")
    # A second hub starting from the database agrees: nothing more, and no second write.
    other = new_hub(farm, clock)
    clock.advance(minutes=2)
    assert other.materialize() == 0
    assert len(occurrences(farm, task)) == 3
    assert farm.admin.get(farm.db, task.id)["_rev"] == stored.rev


def test_service_refuses_a_limit_already_used_up_and_takes_a_good_one(farm):
    service = FarmService(farm.hub, farm.db)
    spec = {"kind": "demo.sleep", "input": {"ms": 1}}
    past = {"every": 60, "start": "2020-01-01T00:00:00Z"}
    with pytest.raises(ServiceError) as caught:
        service.add_task("acme", "usedup", {**spec, "schedule": past, "max_runs": 5})
    assert any(p.startswith("max_runs: ") for p in caught.value.problems)
    with pytest.raises(ServiceError) as caught:
        service.add_task("acme", "zero", {**spec, "schedule": {"every": 60}, "max_runs": 0})
    assert any("max_runs" in p for p in caught.value.problems)
    task = service.add_task("acme", "tenruns", {**spec, "schedule": {"every": 60}, "max_runs": 10})
    assert task.max_runs == 10
    assert service.update_task("acme", "tenruns", {"max_runs": 20}).max_runs == 20


def test_the_last_run_written_ahead_still_runs_and_the_task_ends_after_its_due_time(farm):
    # The hub writes a fire up to 5 s ahead; ending (pausing) the task at once would
    # withdraw that last run as "paused before this run was due".
    clock = FakeClock(farm.now().replace(second=0, microsecond=0) + timedelta(seconds=30))
    task = add_task(farm, "aheadend", clock, max_runs=1, misfire="run_all", overlap="allow")
    hub = new_hub(farm, clock)
    clock.advance(seconds=29.5)  # half a second before the only fire: it is written ahead
    hub.materialize()
    [ahead] = occurrences(farm, task)
    assert ahead["state"] == "ready"
    assert not farm.admin.get(farm.db, task.id).get("paused")
    clock.advance(seconds=1)  # past its due time
    hub.materialize()
    [run] = occurrences(farm, task)
    assert run["state"] == "ready", run.get("reason")
    assert farm.admin.get(farm.db, task.id)["paused"] is True
