"""Exclusion windows: no run is due inside one (skipped, never missed), in the task's time
zone across DST; the preview, the API, the form and the CLI (pure + real server)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from hub.materializer import task_schedule
from hub.portal.app import create_app
from hub.portal.forms import exclusions_text, spec_from_form
from hub.protocol.model import Exclusion, Schedule, Task
from hub.schedules import (
    ExclusionTextError,
    ScheduleError,
    excluded_fires,
    fire_times,
    max_runs_end,
    next_fire,
    next_fire_times,
    parse_exclusions,
    validate_schedule,
)
from hub.service import FarmService, ServiceError
from tests.test_hub import FakeClock, add_task, new_hub, occurrences

AMS = ZoneInfo("Europe/Amsterdam")
NIGHTLY = {"from": "02:00", "to": "03:00", "note": "maintenance"}
WIDE = {"from": "02:00", "to": "04:00"}


def local(fire: datetime) -> str:
    return fire.astimezone(AMS).strftime("%a %H:%M")


def test_a_nightly_window_skips_the_fires_inside_it_in_the_tasks_zone():
    schedule = Schedule(every=1800, tz="Europe/Amsterdam", exclusions=[NIGHTLY])
    after = datetime(2026, 6, 10, 22, 0, tzinfo=UTC)  # 00:00 in Amsterdam (CEST)
    fires = [local(f) for f in fire_times(schedule, after, after + timedelta(hours=4))]
    assert fires == ["Thu 00:30", "Thu 01:00", "Thu 01:30", "Thu 03:00", "Thu 03:30", "Thu 04:00"]
    assert [local(f) for f in excluded_fires(schedule, after, after + timedelta(hours=4))] == [
        "Thu 02:00",
        "Thu 02:30",
    ]


def test_spring_forward_the_window_is_wall_clock_time():
    # 2026-03-29: Amsterdam jumps from 02:00 CET to 03:00 CEST. A 01:00-03:30 window is
    # then 1.5 h of real time; every fire with a wall time inside it is skipped.
    schedule = Schedule(
        every=1800, tz="Europe/Amsterdam", exclusions=[{"from": "01:00", "to": "03:30"}]
    )
    after = datetime(2026, 3, 28, 23, 0, tzinfo=UTC)  # 00:00 CET
    fires = list(fire_times(schedule, after, after + timedelta(hours=4)))
    walls = [f.astimezone(AMS).strftime("%H:%M%z") for f in fires]
    assert walls == ["00:30+0100", "03:30+0200", "04:00+0200", "04:30+0200", "05:00+0200"]


def test_fall_back_the_repeated_hour_is_skipped_twice():
    # 2026-10-25: 02:00-03:00 happens twice (CEST, then CET); both are inside 02:00-03:00.
    schedule = Schedule(every=1800, tz="Europe/Amsterdam", exclusions=[NIGHTLY])
    after = datetime(2026, 10, 24, 23, 0, tzinfo=UTC)  # 01:00 CEST
    fires = list(fire_times(schedule, after, after + timedelta(hours=4)))
    walls = [f.astimezone(AMS).strftime("%H:%M%z") for f in fires]
    assert walls == ["01:30+0200", "03:00+0100", "03:30+0100", "04:00+0100"]
    assert len(excluded_fires(schedule, after, after + timedelta(hours=4))) == 4


def test_a_window_across_midnight_on_chosen_days_and_a_one_off_window():
    weekend = Schedule(
        cron="0 * * * *", tz="Europe/Amsterdam",
        exclusions=[{"from": "23:00", "to": "02:00", "days": ["sat"]},
                    {"from": "2026-06-15T10:00", "to": "2026-06-15T12:00"}],
    )  # fmt: skip
    after = datetime(2026, 6, 13, 19, 30, tzinfo=UTC)  # Sat 21:30 CEST
    fires = [local(f) for f in fire_times(weekend, after, after + timedelta(hours=7))]
    assert fires == ["Sat 22:00", "Sun 02:00", "Sun 03:00", "Sun 04:00"]
    # Friday night the window does not apply (it starts on Saturdays only).
    friday = after - timedelta(days=1)
    assert "Sat 00:00" in [
        local(f) for f in fire_times(weekend, friday, friday + timedelta(hours=7))
    ]
    monday = datetime(2026, 6, 15, 7, 30, tzinfo=UTC)  # 09:30 CEST; 10:00 and 11:00 are out
    assert [local(f) for f in next_fire_times(weekend, 2, monday)] == ["Mon 12:00", "Mon 13:00"]
    assert local(next_fire(weekend, monday) or monday) == "Mon 12:00"


def test_windows_that_cover_every_fire_are_refused_naming_the_field():
    now = datetime(2026, 6, 1, tzinfo=UTC)
    # 02:00-04:00, not 02:00-03:00: the night 02:30 does not exist (spring forward) the
    # cron fires at 03:30, which a 02:00-03:00 window leaves as the one run a year.
    daily_at_two = Schedule(cron="30 2 * * *", tz="Europe/Amsterdam", exclusions=[WIDE])
    with pytest.raises(ScheduleError) as caught:
        validate_schedule(daily_at_two, now)
    assert caught.value.problems[0].startswith("schedule.exclusions: ")
    once = Schedule(at="2026-06-02T02:30:00+02:00", tz="Europe/Amsterdam", exclusions=[NIGHTLY])
    with pytest.raises(ScheduleError):
        validate_schedule(once, now)
    validate_schedule(Schedule(cron="30 4 * * *", tz="Europe/Amsterdam", exclusions=[NIGHTLY]), now)


@pytest.mark.parametrize(
    ("window", "says"),
    [
        ({"from": "02:00", "to": "02:00"}, "needs a length"),
        ({"from": "02:00", "to": "2026-01-01T00:00"}, "both be HH:MM"),
        ({"from": "25:00", "to": "03:00"}, "not a time of day"),
        ({"from": "tonight", "to": "tomorrow"}, "neither HH:MM"),
        ({"from": "2026-01-02T00:00", "to": "2026-01-01T00:00"}, "not after"),
        ({"from": "2026-01-01T00:00", "to": "2026-01-02T00:00", "days": ["mon"]}, "days"),
        ({"from": "02:00", "to": "03:00", "days": ["monday"]}, "days"),
    ],
)
def test_bad_windows_are_refused_naming_the_field(window, says):
    with pytest.raises(ValidationError) as caught:
        Schedule(every=60, exclusions=[window])
    assert says in str(caught.value) and "exclusions" in str(caught.value)


def test_max_runs_counts_runs_not_excluded_fires():
    schedule = Schedule(
        every=3600, tz="Europe/Amsterdam", exclusions=[{"from": "00:00", "to": "12:00"}]
    )
    created = datetime(2026, 6, 10, 22, 0, tzinfo=UTC)  # 00:00 CEST
    last = max_runs_end(schedule, 3, created)
    assert last is not None and local(last) == "Thu 14:00"  # 12:00, 13:00, 14:00


def test_exclusions_text_round_trips():
    text = "02:00-03:00 # maintenance\n23:00-01:00 sat,sun\n2026-12-24T00:00 .. 2026-12-27T00:00"
    windows = parse_exclusions(text)
    assert windows[0] == {"from": "02:00", "to": "03:00", "note": "maintenance"}
    assert windows[1]["days"] == ["sat", "sun"]
    assert windows[2] == {"from": "2026-12-24T00:00", "to": "2026-12-27T00:00"}
    task = Task(
        _id="task:acme:t", client="acme", slug="t", kind="demo.sleep",
        schedule={"every": 60, "exclusions": windows},
        created_at="2026-01-01T00:00:00.000Z", updated_at="2026-01-01T00:00:00.000Z",
    )  # fmt: skip
    assert parse_exclusions(exclusions_text(task)) == windows
    assert Exclusion.model_validate(windows[1]).daily
    with pytest.raises(ExclusionTextError, match=r"^schedule\.exclusions: line 2"):
        parse_exclusions("02:00-03:00\nnightly please")


def test_the_form_reads_exclusions_max_runs_and_pause_after_failures():
    form = {
        "kind": "demo.sleep", "schedule_mode": "every", "schedule.every": "60",
        "schedule.tz": "Europe/Amsterdam", "schedule.exclusions": "02:00-03:00",
        "max_runs": "10", "pause_after_failures": "",
    }  # fmt: skip
    spec, problems = spec_from_form(form)
    assert problems == []
    assert spec["schedule"]["exclusions"] == [{"from": "02:00", "to": "03:00"}]
    assert spec["max_runs"] == 10 and spec["pause_after_failures"] is None
    _, problems = spec_from_form({**form, "schedule.exclusions": "sometimes"})
    assert problems[0].startswith("schedule.exclusions: line 1")


# ---------------------------------------------------------------- real server


def test_the_hub_never_materializes_a_run_inside_a_window_not_even_as_missed(farm):
    start = farm.now().replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    clock = FakeClock(start - timedelta(seconds=30))
    minute = start.astimezone(UTC)
    # A window over minutes 2 and 3 of the hour (UTC wall clock): those fires are no runs.
    window = {"from": f"{minute:%H}:02", "to": f"{minute:%H}:04"}
    task = add_task(
        farm, "excl", clock, schedule={"every": 60, "exclusions": [window]},
        misfire="run_all", overlap="allow",
    )  # fmt: skip
    hub = new_hub(farm, clock)
    clock.advance(minutes=6)  # the hub was "down": run_all makes every due fire a run
    hub.materialize()
    dues = [doc["due_at"][11:16] for doc in occurrences(farm, task)]
    assert dues == [f"{minute:%H}:0{m}" for m in (0, 1, 4, 5)]
    assert all(doc["state"] != "missed" for doc in occurrences(farm, task))
    assert task_schedule(Task.from_doc(farm.admin.get(farm.db, task.id))).exclusions


def test_service_and_api_refuse_a_window_covering_every_fire_and_keep_a_good_one(farm):
    service = FarmService(farm.hub, farm.db)
    spec = {"kind": "demo.sleep", "input": {"ms": 1}}
    bad = {"cron": "30 2 * * *", "tz": "Europe/Amsterdam", "exclusions": [WIDE]}
    with pytest.raises(ServiceError) as caught:
        service.add_task("acme", "covered", {**spec, "schedule": bad})
    assert caught.value.problems[0].startswith("schedule.exclusions: ")
    good = {**bad, "cron": "30 4 * * *", "exclusions": [NIGHTLY]}
    task = service.add_task("acme", "nightly", {**spec, "schedule": good})
    assert task.schedule.exclusions and task.schedule.exclusions[0].note == "maintenance"
    assert farm.admin.get(farm.db, task.id)["schedule"]["exclusions"][0]["from"] == "02:00"


@pytest.fixture(scope="module")
def acme(farm) -> TestClient:
    app = create_app(FarmService(farm.hub, farm.db), farm.hub, secret_key="x" * 40)
    client = TestClient(app)
    reply = client.post("/login", data={"username": "acme", "password": farm.passwords["acme"]})
    assert reply.status_code == 200, reply.text
    client.headers["X-CSRF-Token"] = reply.json()["csrf_token"]
    return client


def test_the_preview_says_which_fires_a_window_skips(acme):
    schedule = {"every": 1800, "tz": "Europe/Amsterdam", "exclusions": "02:00-03:00 # maint"}
    body = acme.post("/api/schedule/preview", json={"schedule": schedule, "count": 50}).json()
    assert body["exclusions"] == 1
    assert not any(" 02:" in text for text in body["local"])
    assert body["excluded_local"] and all(" 02:" in text for text in body["excluded_local"])
    bad = acme.post("/api/schedule/preview", json={"schedule": {**schedule, "exclusions": "x"}})
    assert bad.status_code == 400 and bad.json()["problems"][0].startswith("schedule.exclusions")
    covered = {"cron": "30 2 * * *", "tz": "Europe/Amsterdam", "exclusions": [WIDE]}
    refused = acme.post("/api/schedule/preview", json={"schedule": covered})
    assert refused.status_code == 400
    assert refused.json()["problems"][0].startswith("schedule.exclusions: ")


def test_api_and_task_page_show_exclusions_and_max_runs(acme):
    made = acme.post(
        "/api/tasks",
        json={"name": "windowed", "kind": "demo.sleep", "input": {"ms": 1}, "max_runs": 50,
              "schedule": {"every": 600, "tz": "Europe/Amsterdam", "exclusions": [NIGHTLY]}},
    )  # fmt: skip
    assert made.status_code == 201, made.text
    body = made.json()
    assert body["max_runs"] == 50 and body["status"] == "active"
    assert body["schedule"]["exclusions"] == [NIGHTLY]
    page = acme.get("/tasks/windowed", headers={"Accept": "text/html"}).text
    assert 'id="exclusions"' in page and "02:00 to 03:00" in page and "skipped, not missed" in page
    edit = acme.get("/tasks/windowed/edit", headers={"Accept": "text/html"}).text
    assert "02:00-03:00 # maintenance" in edit and 'name="max_runs" value="50"' in edit
    bad = acme.patch("/api/tasks/windowed", json={"max_runs": 0})
    assert bad.status_code in (400, 422) and "max_runs" in bad.text
