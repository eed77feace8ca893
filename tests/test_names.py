"""hub/protocol/names.py: the monthly results databases and the roles, spelled alike."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from hub.protocol.names import is_results_db, results_db


def test_results_db_is_named_for_the_utc_month_of_the_moment() -> None:
    assert results_db("farm", datetime(2026, 11, 30, 23, 59, tzinfo=UTC)) == "farm_results_2026_11"
    assert results_db("farm", datetime(2026, 12, 31, 23, 0, tzinfo=UTC)) == "farm_results_2026_12"
    east = timezone(timedelta(hours=3))
    assert results_db("farm", datetime(2027, 1, 1, 1, 0, tzinfo=east)) == "farm_results_2026_12"
    assert results_db("lab_2", datetime(2027, 1, 1, tzinfo=UTC)) == "lab_2_results_2027_01"


def test_results_db_refuses_a_naive_moment() -> None:
    with pytest.raises(ValueError, match="naive"):
        results_db("farm", datetime(2026, 12, 1))


def test_every_name_results_db_makes_is_recognised() -> None:
    for month in range(1, 13):
        name = results_db("farm", datetime(2026, month, 15, tzinfo=UTC))
        assert is_results_db("farm", name), name


@pytest.mark.parametrize(
    "name",
    [
        "farm",
        "farm_board",
        "farm_results_",
        "farm_results_2026_1",
        "farm_results_2026_111",
        "farm_results_2026-11",
        "farm_results_20261_1",
        "farm_results_2026_1a",
        "farm_results_abcd_11",
        "farm_results_2026_11_old",
        "farm2_results_2026_11",
        "other_results_2026_11",
        "_users",
    ],
)
def test_foreign_names_are_not_results_dbs_of_farm(name: str) -> None:
    assert not is_results_db("farm", name)


def test_another_farms_results_are_not_ours() -> None:
    assert not is_results_db("farm2", "farm_results_2026_11")
    assert not is_results_db("farm", "farm_results_results_2026_11")
    assert is_results_db("farm_results", "farm_results_results_2026_11")
