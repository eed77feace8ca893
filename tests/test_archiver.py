"""Retention: which monthly results databases have expired (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

from hub.archiver import expired_months
from hub.provision import is_results_db


def test_results_db_names_are_recognised_exactly():
    assert is_results_db("farm", "farm_results_2026_11")
    for name in ("farm", "farm_results_2026_1", "farm_results_2026-11", "other_results_2026_11",
                 "farm_results_2026_11x", "farm_results_abcd_11"):  # fmt: skip
        assert not is_results_db("farm", name), name


def test_expired_months_are_those_that_ended_before_the_retention_window():
    names = ["farm", "farm_results_2026_01", "farm_results_2026_07", "farm_results_2026_08",
             "farm_results_2026_11", "_users", "farm_results_junk"]  # fmt: skip
    now = datetime(2026, 11, 22, tzinfo=UTC)
    # 90 days back is 2026-08-24: January and July have ended by then, August has not.
    assert expired_months(names, "farm", now, 90) == [
        "farm_results_2026_01",
        "farm_results_2026_07",
    ]
    assert expired_months(names, "farm", now, 3650) == []


def test_december_rolls_over_to_the_next_year():
    now = datetime(2027, 3, 1, tzinfo=UTC)
    assert expired_months(["farm_results_2026_12"], "farm", now, 31) == ["farm_results_2026_12"]
    assert expired_months(["farm_results_2026_12"], "farm", now, 60) == []
