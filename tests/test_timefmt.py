"""hub/protocol/timefmt.py: the one wire format of hub time, always timezone-aware UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from hub.protocol.timefmt import as_utc, from_wire, month_key, seconds, to_id_stamp, to_wire, utcnow

PLUS_2 = timezone(timedelta(hours=2))
MINUS_5 = timezone(timedelta(hours=-5))


def test_to_wire_is_fixed_width_utc_with_milliseconds_truncated() -> None:
    assert to_wire(datetime(2026, 12, 1, 0, 1, tzinfo=UTC)) == "2026-12-01T00:01:00.000Z"
    assert to_wire(datetime(2026, 12, 1, 2, 1, 0, 999_999, tzinfo=PLUS_2)) == (
        "2026-12-01T00:01:00.999Z"
    )
    assert to_wire(datetime(2026, 1, 2, 3, 4, 5, 6_000, tzinfo=UTC)) == "2026-01-02T03:04:05.006Z"


def test_wire_strings_sort_as_time_across_zones() -> None:
    moments = [datetime(2026, 12, 31, 20, 0, tzinfo=MINUS_5),  # 2027-01-01T01:00Z
               datetime(2027, 1, 1, 2, 30, tzinfo=PLUS_2),  # 2027-01-01T00:30Z
               datetime(2026, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC)]  # fmt: skip
    assert sorted(map(to_wire, moments)) == [to_wire(m) for m in sorted(moments)]


def test_from_wire_reads_z_and_offsets_as_utc_and_round_trips() -> None:
    assert from_wire("2026-12-01T00:01:00.000Z") == datetime(2026, 12, 1, 0, 1, tzinfo=UTC)
    parsed = from_wire("2026-12-01T02:01:00+02:00")
    assert parsed == datetime(2026, 12, 1, 0, 1, tzinfo=UTC) and parsed.tzinfo is UTC
    assert to_wire(from_wire("2026-12-01T00:01:00.123Z")) == "2026-12-01T00:01:00.123Z"


@pytest.mark.parametrize("naive", ["2026-12-01T00:00:00", "2026-12-01T00:00:00.000", "2026-12-01"])
def test_from_wire_refuses_a_time_without_a_zone(naive: str) -> None:
    with pytest.raises(ValueError, match="has no time zone"):
        from_wire(naive)


@pytest.mark.parametrize(
    "malformed", ["", "nonsense", "2026-13-01T00:00:00Z", "2026-12-01T25:00:00Z", "01/12/2026 Z"]
)
def test_from_wire_refuses_malformed_text(malformed: str) -> None:
    with pytest.raises(ValueError, match="not an ISO-8601 timestamp"):
        from_wire(malformed)


def test_naive_datetimes_are_refused_everywhere() -> None:
    naive = datetime(2026, 12, 1)
    for convert in (as_utc, to_wire, to_id_stamp, month_key):
        with pytest.raises(ValueError, match="naive datetime"):
            convert(naive)


def test_id_stamp_has_whole_seconds_in_utc() -> None:
    assert to_id_stamp(datetime(2026, 12, 1, 0, 1, 0, 999_999, tzinfo=UTC)) == "20261201T000100Z"
    assert to_id_stamp(datetime(2026, 12, 1, 1, 1, tzinfo=PLUS_2)) == "20261130T230100Z"


def test_month_key_is_the_utc_month_across_year_ends() -> None:
    assert month_key(datetime(2026, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)) == "2026_12"
    assert month_key(datetime(2027, 1, 1, tzinfo=UTC)) == "2027_01"
    assert month_key(datetime(2026, 12, 31, 20, 0, tzinfo=MINUS_5)) == "2027_01"
    assert month_key(datetime(2027, 1, 1, 1, 0, tzinfo=PLUS_2)) == "2026_12"
    assert month_key(datetime(999, 3, 1, tzinfo=UTC)) == "0999_03"


def test_utcnow_is_aware_utc_and_seconds_is_a_timedelta() -> None:
    before = datetime.now(UTC)
    now = utcnow()
    assert now.tzinfo is UTC and before <= now <= datetime.now(UTC)
    assert seconds(1.5) == timedelta(milliseconds=1500)


@pytest.mark.parametrize("stored", [None, 5, ["2026-12-01T00:00:00Z"]])
def test_a_stored_value_of_the_wrong_type_is_a_value_error(stored: object) -> None:
    with pytest.raises(ValueError, match="not an ISO-8601 timestamp"):
        from_wire(stored)  # type: ignore[arg-type]
