"""hub.schedules: fire times must be exact, stitchable and the same on every hub."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.protocol.model import Schedule
from hub.schedules import (
    ScheduleError,
    fire_times,
    jitter_offset,
    next_fire,
    preview,
    validate_schedule,
)

DAY = datetime(2026, 12, 1, tzinfo=UTC)
NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def fires(schedule: Schedule, after: datetime, until: datetime) -> list[datetime]:
    return list(fire_times(schedule, after, until))


def stitched(schedule: Schedule, cuts: list[datetime]) -> list[datetime]:
    out: list[datetime] = []
    for a, b in pairwise(cuts):
        out.extend(fire_times(schedule, a, b))
    return out


def problems(schedule: Schedule, now: datetime = NOW, **kwargs: Any) -> list[str]:
    with pytest.raises(ScheduleError) as caught:
        validate_schedule(schedule, now, **kwargs)
    return caught.value.problems


def assert_strictly_increasing_utc(times: list[datetime]) -> None:
    assert all(t.tzinfo is UTC for t in times)
    assert all(a < b for a, b in pairwise(times))


# ---------------------------------------------------------------- every


def test_every_60_over_a_day_gives_1440_fires() -> None:
    schedule = Schedule(every=60)
    out = fires(schedule, DAY, DAY + timedelta(days=1))
    assert len(out) == 1440
    assert out[0] == DAY + timedelta(minutes=1)  # strictly after `after`
    assert out[-1] == DAY + timedelta(days=1)  # `until` is inclusive
    assert_strictly_increasing_utc(out)


def test_every_chunked_in_5_minute_windows_equals_one_window() -> None:
    schedule = Schedule(every=60)
    cuts = [DAY + timedelta(minutes=5 * i) for i in range(24 * 12 + 1)]
    assert stitched(schedule, cuts) == fires(schedule, DAY, DAY + timedelta(days=1))


def test_every_is_anchored_at_the_epoch_so_hubs_agree() -> None:
    schedule = Schedule(every=7 * 60)
    # Two hubs that start at unrelated moments compute the same grid.
    hub_a = fires(schedule, DAY + timedelta(seconds=13.25), DAY + timedelta(hours=3))
    hub_b = fires(schedule, DAY + timedelta(minutes=41, seconds=2), DAY + timedelta(hours=3))
    assert set(hub_b) <= set(hub_a)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert all((t - epoch) % timedelta(seconds=420) == timedelta(0) for t in hub_a)


def test_every_with_start_is_anchored_at_start_and_fires_at_start() -> None:
    schedule = Schedule(every=60, start="2026-12-01T00:00:07Z")
    out = fires(schedule, DAY - timedelta(hours=1), DAY + timedelta(minutes=3))
    assert out == [utc("2026-12-01T00:00:07Z") + timedelta(minutes=i) for i in range(3)]
    # Strictly after: asking from the start itself skips it.
    assert next_fire(schedule, utc("2026-12-01T00:00:07Z")) == utc("2026-12-01T00:01:07Z")


def test_every_far_from_anchor_is_computed_without_walking() -> None:
    schedule = Schedule(every=1)
    far = datetime(2999, 1, 1, 0, 0, 0, 500_000, tzinfo=UTC)
    assert next_fire(schedule, far) == datetime(2999, 1, 1, 0, 0, 1, tzinfo=UTC)


def test_every_ignores_tz_because_it_counts_elapsed_seconds() -> None:
    window = (utc("2026-10-24T23:00:00Z"), utc("2026-10-25T04:00:00Z"))  # EU fall-back
    local = fires(Schedule(every=3600, tz="Europe/Amsterdam"), *window)
    assert local == fires(Schedule(every=3600), *window)
    assert len(local) == 5


def test_end_is_inclusive_and_nothing_fires_after_it() -> None:
    schedule = Schedule(every=60, end="2026-12-01T00:10:00Z")
    out = fires(schedule, DAY, DAY + timedelta(hours=1))
    assert len(out) == 10
    assert out[-1] == utc("2026-12-01T00:10:00Z")
    assert next_fire(schedule, utc("2026-12-01T00:10:00Z")) is None


def test_empty_or_inverted_window_yields_nothing() -> None:
    schedule = Schedule(every=60)
    assert fires(schedule, DAY, DAY) == []
    assert fires(schedule, DAY, DAY - timedelta(hours=1)) == []


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        fire_times(Schedule(every=60), datetime(2026, 1, 1), DAY)


def test_non_utc_aware_inputs_are_accepted_and_output_is_utc() -> None:
    from zoneinfo import ZoneInfo

    after = datetime(2026, 12, 1, 1, 0, tzinfo=ZoneInfo("Europe/Amsterdam"))  # 00:00Z
    out = fires(Schedule(every=3600), after, after + timedelta(hours=2))
    assert out == [DAY + timedelta(hours=1), DAY + timedelta(hours=2)]
    assert_strictly_increasing_utc(out)


@given(
    every=st.integers(min_value=10, max_value=7200),
    start_offset=st.one_of(st.none(), st.integers(min_value=-86_400, max_value=86_400)),
    span=st.integers(min_value=1, max_value=2 * 86_400),
    begin=st.integers(min_value=0, max_value=400 * 86_400),
    fractions=st.lists(st.floats(min_value=0, max_value=1), max_size=12),
)
def test_property_split_windows_concatenate_to_the_single_window(
    every: int, start_offset: int | None, span: int, begin: int, fractions: list[float]
) -> None:
    after = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=begin)
    until = after + timedelta(seconds=span)
    start = None
    if start_offset is not None:
        start = (after + timedelta(seconds=start_offset)).isoformat()
    schedule = Schedule(every=every, start=start)
    whole = fires(schedule, after, until)
    cuts = sorted({after, until, *(after + (until - after) * f for f in fractions)})
    assert stitched(schedule, cuts) == whole
    assert len(whole) in (span // every, span // every + 1) or start is not None
    assert_strictly_increasing_utc(whole)


# ---------------------------------------------------------------- cron


def test_cron_workdays_in_amsterdam_across_spring_forward() -> None:
    schedule = Schedule(cron="*/15 9-17 * * 1-5", tz="Europe/Amsterdam")
    # Friday 27 March 2026 (CET, +01:00) to Tuesday 31 March (CEST, +02:00 since Sunday 29).
    out = fires(schedule, utc("2026-03-27T00:00:00Z"), utc("2026-03-31T00:00:00Z"))
    assert len(out) == 2 * 9 * 4  # Friday and Monday; 1-5 is Monday-Friday, as in crontab
    friday, monday = out[:36], out[36:]
    assert friday[0] == utc("2026-03-27T08:00:00Z")  # 09:00 CET
    assert friday[-1] == utc("2026-03-27T16:45:00Z")  # 17:45 CET
    assert monday[0] == utc("2026-03-30T07:00:00Z")  # 09:00 CEST: an hour earlier in UTC
    assert monday[-1] == utc("2026-03-30T15:45:00Z")
    assert_strictly_increasing_utc(out)


def test_cron_across_fall_back_is_strictly_increasing_with_no_duplicates() -> None:
    window = (utc("2026-10-24T22:00:00Z"), utc("2026-10-25T23:00:00Z"))  # local 25 Oct: 25 h
    every_half_hour = fires(Schedule(cron="*/30 * * * *", tz="Europe/Amsterdam"), *window)
    assert len(every_half_hour) == 50
    assert_strictly_increasing_utc(every_half_hour)
    assert len({t.isoformat() for t in every_half_hour}) == 50
    # 02:30 happens twice that night; APScheduler fires both (two distinct UTC instants).
    twice = fires(Schedule(cron="30 2 * * *", tz="Europe/Amsterdam"), *window)
    assert twice == [utc("2026-10-25T00:30:00Z"), utc("2026-10-25T01:30:00Z")]


def test_cron_wall_time_skipped_by_spring_forward_fires_once() -> None:
    window = (utc("2026-03-28T12:00:00Z"), utc("2026-03-30T12:00:00Z"))
    out = fires(Schedule(cron="30 2 * * *", tz="Europe/Amsterdam"), *window)
    assert out == [utc("2026-03-29T01:30:00Z"), utc("2026-03-30T00:30:00Z")]


def test_cron_minutely_day_in_chunks_matches_one_window() -> None:
    schedule = Schedule(cron="* * * * *", tz="Europe/Amsterdam")
    whole = fires(schedule, DAY, DAY + timedelta(days=1))
    assert len(whole) == 1440
    cuts = [DAY + timedelta(minutes=5 * i, seconds=i % 7) for i in range(24 * 12)]
    cuts.append(DAY + timedelta(days=1))
    assert stitched(schedule, cuts) == whole


@pytest.mark.parametrize(
    ("dow", "weekdays"),
    [
        ("0", {"Sun"}),
        ("7", {"Sun"}),
        ("1-5", {"Mon", "Tue", "Wed", "Thu", "Fri"}),
        ("0,6", {"Sat", "Sun"}),
        ("*/2", {"Sun", "Tue", "Thu", "Sat"}),
        ("1-5/2", {"Mon", "Wed", "Fri"}),
        ("mon", {"Mon"}),
        ("sat,0", {"Sat", "Sun"}),
        ("*", {"Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"}),
    ],
)
def test_cron_day_of_week_uses_crontab_numbering(dow: str, weekdays: set[str]) -> None:
    out = fires(Schedule(cron=f"0 12 * * {dow}"), DAY, DAY + timedelta(days=14))
    assert {t.strftime("%a") for t in out} == weekdays


def test_cron_respects_start_and_end() -> None:
    schedule = Schedule(
        cron="0 * * * *", start="2026-12-01T05:00:00Z", end="2026-12-01T08:00:00+00:00"
    )
    out = fires(schedule, DAY, DAY + timedelta(days=1))
    assert out == [utc(f"2026-12-01T0{h}:00:00Z") for h in (5, 6, 7, 8)]


def test_cron_that_never_matches_in_window_stops_at_the_window() -> None:
    assert fires(Schedule(cron="0 0 30 2 *"), DAY, DAY + timedelta(days=365)) == []


# ---------------------------------------------------------------- at, next_fire, preview


def test_at_fires_exactly_once() -> None:
    schedule = Schedule(at="2026-12-01T10:30:00+01:00")
    assert fires(schedule, DAY - timedelta(days=30), DAY + timedelta(days=30)) == [
        utc("2026-12-01T09:30:00Z")
    ]
    assert fires(schedule, utc("2026-12-01T09:30:00Z"), DAY + timedelta(days=1)) == []
    assert next_fire(schedule, DAY) == utc("2026-12-01T09:30:00Z")
    assert next_fire(schedule, utc("2026-12-01T09:30:00Z")) is None
    assert preview(schedule, DAY, count=5) == [utc("2026-12-01T09:30:00Z")]


def test_at_outside_start_end_never_fires() -> None:
    schedule = Schedule(at="2026-12-01T10:00:00Z", end="2026-12-01T09:00:00Z")
    assert fires(schedule, DAY, DAY + timedelta(days=1)) == []


def test_preview_and_next_fire_agree_with_fire_times() -> None:
    schedule = Schedule(cron="*/15 9-17 * * 1-5", tz="Europe/Amsterdam")
    upcoming = preview(schedule, NOW, count=7)
    assert len(upcoming) == 7
    assert next_fire(schedule, NOW) == upcoming[0]
    assert fires(schedule, NOW, upcoming[-1]) == upcoming
    assert preview(Schedule(every=60), NOW, count=0) == []
    assert preview(Schedule(every=60), NOW) == [NOW + timedelta(minutes=i) for i in range(1, 6)]


def test_fire_times_rejects_a_schedule_it_cannot_understand_at_call_time() -> None:
    with pytest.raises(ScheduleError, match=r"^schedule\.tz: "):
        fire_times(Schedule(every=60, tz="Mars/Olympus"), DAY, DAY + timedelta(hours=1))
    with pytest.raises(ScheduleError, match=r"^schedule\.cron: "):
        next_fire(Schedule(cron="61 * * * *"), DAY)


# ---------------------------------------------------------------- validation


def test_valid_schedules_pass() -> None:
    validate_schedule(Schedule(every=10), NOW)
    validate_schedule(Schedule(cron="*/15 9-17 * * 1-5", tz="Europe/Amsterdam"), NOW)
    validate_schedule(Schedule(at="2026-07-01T00:00:00Z"), NOW)
    validate_schedule(Schedule(cron="0 * * * *"), NOW, min_interval=3600)
    validate_schedule(
        Schedule(every=60, start="2026-01-01T00:00:00Z", end="2027-01-01T00:00:00Z"), NOW
    )


def test_end_before_start() -> None:
    schedule = Schedule(every=60, start="2026-02-01T00:00:00Z", end="2026-01-01T00:00:00Z")
    (message,) = problems(schedule)
    assert message.startswith("schedule.end: 2026-01-01T00:00:00Z is before start")
    assert "2026-02-01T00:00:00Z" in message


def test_end_equal_to_start() -> None:
    schedule = Schedule(every=60, start="2026-07-01T00:00:00Z", end="2026-07-01T02:00:00+02:00")
    (message,) = problems(schedule)
    assert message.startswith("schedule.end:")
    assert "same moment as start" in message


def test_every_below_min_interval_names_the_minimum_and_the_setting() -> None:
    (message,) = problems(Schedule(every=5))
    assert message.startswith("schedule.every: 5 seconds")
    assert "minimum interval of 10 seconds" in message
    assert "min_interval" in message
    (message,) = problems(Schedule(every=30), min_interval=60)
    assert "every >= 60" in message
    validate_schedule(Schedule(every=5), NOW, min_interval=5)


def test_unknown_timezone_suggests_names() -> None:
    (message,) = problems(Schedule(every=60, tz="Europe/Amsterdm"))
    assert message.startswith("schedule.tz: unknown time zone 'Europe/Amsterdm'")
    assert "'Europe/Amsterdam'" in message
    (message,) = problems(Schedule(every=60, tz="../etc/passwd"))
    assert "schedule.tz" in message and "IANA" in message


@pytest.mark.parametrize(
    ("cron", "said"),
    [
        ("* * * * * *", "Wrong number of fields"),
        ("61 * * * *", "higher than the maximum value (59)"),
        ("x * * * *", 'Unrecognized expression "x"'),
        ("0 12 * * 8", "outside 0-7"),
        ("0 12 * * 5-1", "runs backwards"),
    ],
)
def test_bad_cron_reports_what_apscheduler_said_and_the_format(cron: str, said: str) -> None:
    (message,) = problems(Schedule(cron=cron))
    assert message.startswith(f"schedule.cron: {cron!r} is not a valid cron expression")
    assert said in message
    assert "'min hour dom month dow'" in message


def test_cron_gap_below_min_interval() -> None:
    # Minute resolution: with the default minimum (10 s) any cron is fine.
    validate_schedule(Schedule(cron="* * * * *"), NOW)
    (message,) = problems(Schedule(cron="*/5 * * * *"), min_interval=600)
    assert message.startswith("schedule.cron: '*/5 * * * *' fires 300 seconds apart")
    assert "minimum interval of 600 seconds" in message and "min_interval" in message
    # The short gap only shows across the hour boundary (00:59 -> 01:00).
    (message,) = problems(Schedule(cron="0,59 * * * *"), min_interval=120)
    assert "fires 60 seconds apart" in message


def test_at_in_the_past() -> None:
    (message,) = problems(Schedule(at="2020-01-01T00:00:00Z"))
    assert message.startswith("schedule.at: 2020-01-01T00:00:00Z is not after now")
    assert "2026-06-15T12:00:00Z" in message


def test_end_in_the_past() -> None:
    (message,) = problems(Schedule(cron="0 * * * *", end="2026-01-01T00:00:00Z"))
    assert message.startswith("schedule.end: 2026-01-01T00:00:00Z is in the past")


def test_no_fire_between_now_and_end() -> None:
    schedule = Schedule(every=3600, end="2026-06-15T12:30:00Z")  # next fire would be 13:00
    (message,) = problems(schedule)
    assert message.startswith("schedule.end: no run falls between now")


def test_cron_that_never_fires() -> None:
    (message,) = problems(Schedule(cron="0 0 30 2 *"))
    assert message.startswith("schedule.cron: '0 0 30 2 *' never fires")


def test_at_outside_bounds() -> None:
    schedule = Schedule(at="2026-08-01T00:00:00Z", start="2026-09-01T00:00:00Z")
    (message,) = problems(schedule)
    assert message.startswith("schedule.at: 2026-08-01T00:00:00Z is outside start")


def test_all_problems_are_listed_together() -> None:
    schedule = Schedule(
        every=1, tz="Nowhere/Atlantis", start="2026-02-01T00:00:00Z", end="2026-01-01T00:00:00Z"
    )
    found = problems(schedule)
    assert [p.split(":", 1)[0] for p in found] == ["schedule.tz", "schedule.end", "schedule.every"]
    error = ScheduleError(found)
    assert isinstance(error, ValueError)
    assert str(error) == "\n".join(found)
    assert pickle.loads(pickle.dumps(error)).problems == found


# ---------------------------------------------------------------- jitter


def test_jitter_offset_is_deterministic_and_in_range() -> None:
    due = utc("2026-12-01T00:01:00Z")
    first = jitter_offset("task:acme:ping", due, 300)
    assert first == jitter_offset("task:acme:ping", due, 300)
    assert 0 <= first < 300
    offsets = [jitter_offset("task:acme:ping", due + timedelta(minutes=i), 300) for i in range(500)]
    assert all(0 <= o < 300 for o in offsets)
    assert len(set(offsets)) > 490  # spread, not a constant
    assert min(offsets) < 30 and max(offsets) > 270
    assert jitter_offset("task:acme:pong", due, 300) != first
    # Sub-second differences in due do not change the occurrence, nor its jitter.
    assert jitter_offset("task:acme:ping", due + timedelta(milliseconds=400), 300) == first


def test_jitter_zero_and_negative() -> None:
    assert jitter_offset("task:acme:ping", DAY, 0) == 0.0
    assert jitter_offset("task:acme:ping", DAY, 1) < 1
    with pytest.raises(ValueError):
        jitter_offset("task:acme:ping", DAY, -1)


@given(
    task=st.text(min_size=1, max_size=60),
    seconds=st.integers(min_value=0, max_value=4_000_000_000),
    jitter=st.integers(min_value=1, max_value=3600),
)
def test_property_jitter_in_range(task: str, seconds: int, jitter: int) -> None:
    due = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)
    assert 0 <= jitter_offset(task, due, jitter) < jitter


def test_next_fire_times_for_the_live_preview():
    from hub.schedules import MAX_PREVIEW, ScheduleError, next_fire_times

    after = datetime(2026, 12, 1, 8, 59, 30, tzinfo=UTC)
    weekdays_at_nine = Schedule(cron="0 9 * * 1-5", tz="Europe/Amsterdam")
    fires = next_fire_times(weekdays_at_nine, 3, after)
    # 2026-12-01 is a Tuesday; 09:00 in Amsterdam is 08:00 UTC (already past).
    assert fires == [datetime(2026, 12, d, 8, 0, tzinfo=UTC) for d in (2, 3, 4)]
    assert next_fire_times(Schedule(every=60), 2, after) == [
        datetime(2026, 12, 1, 9, 0, tzinfo=UTC), datetime(2026, 12, 1, 9, 1, tzinfo=UTC),
    ]  # fmt: skip
    with pytest.raises(ValueError, match="n: "):
        next_fire_times(Schedule(every=60), MAX_PREVIEW + 1, after)
    with pytest.raises(ScheduleError, match=r"schedule\.tz"):
        next_fire_times(Schedule(every=60, tz="Mars/Olympus"), 1, after)
