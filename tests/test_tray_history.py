"""desktop_worker/tray/history.py: local history, its table in the window and the statistics.

Driven by a FakeEngine on a FakeClock (tests/tray_harness.py); Qt runs offscreen. The real
engine inside the app is in tests/test_tray_integration.py.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from desktop_worker.tray.history import History
from desktop_worker.tray.model import format_duration
from tests.tray_harness import (
    Harness,
    two_runs,
)

pytest_plugins = ["tests.tray_fixtures"]


def test_window_history_with_status_and_duration(tray: Harness, qtbot: Any) -> None:
    a, b = two_runs(tray, qtbot)
    tray.clock.advance(seconds=75)
    with qtbot.waitSignal(tray.app.bridge.runFinished):
        tray.engine.finish_run(a, "done")
    with qtbot.waitSignal(tray.app.bridge.runFinished):
        tray.engine.finish_run(b, "buried")
    qtbot.waitUntil(lambda: len(tray.app.window.history_rows()) == 2, timeout=2000)
    rows = tray.app.window.history_rows()
    assert [r[1:5] for r in rows] == [
        ["demo.sleep", "globex", "buried", "1 min 15 s"],
        ["http.check", "acme", "done", "1 min 15 s"],
    ]


def test_statistics_from_local_history(tray: Harness, qtbot: Any) -> None:
    history = tray.app.history
    now = tray.clock.now()
    for days_ago, status in [(0, "done"), (0, "done"), (0, "failed"), (1, "done"), (8, "done")]:
        at = (now - timedelta(days=days_ago, minutes=5)).timestamp()
        history.started(f"o{days_ago}{status}", "demo.sleep", "acme", at - 2)
        history.finished(f"o{days_ago}{status}", "demo.sleep", "acme", status, at)
    per_hour = history.completed_per_hour(now)
    # Today (Tuesday) is the last of the 7 days; 08:55 is its hour 8.
    assert len(per_hour) == 168 and per_hour[6 * 24 + 8] == 2 and sum(per_hour) == 3
    per_day = history.success_per_day(now)
    assert per_day[-1] == (2, 3) and per_day[-2] == (1, 1) and per_day[0] == (0, 0)
    window = tray.app.window
    window.tabs.setCurrentIndex(3)
    window.refresh_stats()
    assert "3 completed runs, success rate 75.0 % (3 of 4 decided runs)" in (
        window.stats_summary.text()
    )
    assert window.per_hour.values[6 * 24 + 8] == 2.0
    assert window.success.values[-1] == pytest.approx(2 / 3)
    assert window.success.values[0] is None


def test_an_unwritable_history_never_breaks_the_tray(qapp: Any, tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a directory should be")
    history = History(blocker / "history.sqlite3")
    assert history.problem and "cannot be written" in history.problem
    history.started("o", "k", "c", 1.0)
    history.finished("o", "k", "c", "done", 2.0)
    assert history.recent() == [] and history.completed_per_hour(datetime.now().astimezone())


def _finished(history: Any, occ_id: str, at: datetime, seconds: float = 1.0) -> None:
    history.started(occ_id, "demo.sleep", "acme", at.timestamp() - seconds)
    history.finished(occ_id, "demo.sleep", "acme", "done", at.timestamp())


def test_both_statistics_charts_cover_the_same_seven_days(tray: Harness) -> None:
    """The hourly chart covered the last 168 hours (Tue 24 10:00 to now) while the daily one
    covered Wed 25 to Tue 01: one range for both, whole days, today the last."""
    history = tray.app.history
    now = tray.clock.now()
    assert now.replace(tzinfo=None) == datetime(2026, 12, 1, 9, 0)  # Tuesday 1 December
    local = now.tzinfo
    _finished(history, "first", datetime(2026, 11, 25, 0, 30, tzinfo=local))  # Wednesday
    _finished(history, "before", datetime(2026, 11, 24, 23, 30, tzinfo=local))  # outside
    window = tray.app.window
    window.refresh_stats()
    days = ["Wed 25", "Thu 26", "Fri 27", "Sat 28", "Sun 29", "Mon 30", "Tue 01"]
    assert [label for _at, label in window.per_hour.x_labels] == days
    assert [label for _at, label in window.success.x_labels] == days
    assert [at for at, _label in window.per_hour.x_labels] == [day * 24 for day in range(7)]
    assert window.per_hour.values[0] == 1.0 and sum(window.per_hour.values) == 1.0
    assert window.success.values[0] == 1.0 and window.success.values[1:] == [None] * 6


def test_history_shows_runs_under_a_second_as_milliseconds_and_tenths(
    tray: Harness, qtbot: Any
) -> None:
    for occ_id, seconds in (("occ:fast", 0.35), ("occ:short", 4.24)):
        with qtbot.waitSignal(tray.app.bridge.runStarted):
            tray.engine.begin_run(occ_id, "demo.sleep", "acme")
        tray.clock.advance(seconds=seconds)
        with qtbot.waitSignal(tray.app.bridge.runFinished):
            tray.engine.finish_run(occ_id, "done")
    qtbot.waitUntil(lambda: len(tray.app.window.history_rows()) == 2, timeout=2000)
    assert [row[4] for row in tray.app.window.history_rows()] == ["4.2 s", "350 ms"]


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(None, "—"), (0, "0 s"), (0.0004, "1 ms"), (0.35, "350 ms"), (0.9994, "999 ms"),
     (0.9996, "1.0 s"), (4.24, "4.2 s"), (9.96, "10 s"), (75, "1 min 15 s"),
     (7380, "2 h 03 min")],
)  # fmt: skip
def test_durations_read_right_from_milliseconds_to_hours(seconds: float | None, shown: str) -> None:
    assert format_duration(seconds) == shown
