"""desktop_worker/tray/pausing.py: the owner's pauses, on the injectable clock.

Driven by a FakeEngine on a FakeClock (tests/tray_harness.py); Qt runs offscreen. The real
engine inside the app is in tests/test_tray_integration.py.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from desktop_worker.tray.clock import FakeClock
from desktop_worker.tray.icons import TrayState
from tests.tray_harness import (
    Harness,
    make_harness,
)

pytest_plugins = ["tests.tray_fixtures"]


def test_pause_for_one_hour_then_resumes_by_itself(tray: Harness, qtbot: Any) -> None:
    with qtbot.waitSignal(tray.app.bridge.stateChanged, check_params_cb=lambda s, w: s == "paused"):
        tray.menu("pause_hour").trigger()
    assert tray.engine.why == "paused by you until 10:00"
    assert tray.app.model.tray_state is TrayState.SNOOZED
    assert tray.menu("status").text() == "Snoozed: paused by you until 10:00"
    assert tray.menu("pause_hour").isChecked()
    assert tray.menu("resume").isEnabled()
    tray.clock.advance(minutes=59)
    tray.settle()
    assert tray.engine.state == "paused"
    with qtbot.waitSignal(tray.app.bridge.stateChanged, check_params_cb=lambda s, w: s == "idle"):
        tray.clock.advance(minutes=2)
    assert tray.app.pauses.user is None
    assert not tray.menu("resume").isEnabled()


def test_pause_until_tomorrow_ends_at_midnight(tray: Harness, qtbot: Any) -> None:
    with qtbot.waitSignal(tray.app.bridge.stateChanged, check_params_cb=lambda s, w: s == "paused"):
        tray.menu("pause_tomorrow").trigger()
    assert "until tomorrow (Wed 00:00)" in tray.engine.why
    assert tray.app.model.tray_state is TrayState.SNOOZED
    tray.clock.set(datetime(2026, 12, 1, 23, 59, 59).astimezone())
    tray.settle()
    assert tray.engine.state == "paused"
    with qtbot.waitSignal(tray.app.bridge.stateChanged, check_params_cb=lambda s, w: s == "idle"):
        tray.clock.set(datetime(2026, 12, 2, 0, 0, 1).astimezone())


def test_pause_until_i_resume_never_ends_by_itself(tray: Harness, qtbot: Any) -> None:
    with qtbot.waitSignal(tray.app.bridge.stateChanged, check_params_cb=lambda s, w: s == "paused"):
        tray.menu("pause_forever").trigger()
    assert tray.engine.why == "paused by you until you resume"
    assert tray.app.model.tray_state is TrayState.PAUSED  # not snoozed: it has no end
    for _ in range(40):  # 40 jumps of 19 hours: every hour of the day, weeks ahead
        tray.clock.advance(hours=19)
        tray.app.pauses.check()  # what the 15 s timer does
    tray.clock.advance(days=365)
    tray.settle()
    assert tray.engine.state == "paused"
    assert tray.app.pauses.user is not None and tray.app.pauses.user.until is None
    assert tray.menu("pause_forever").isChecked()
    assert ("resume", None) not in tray.engine.calls
    with qtbot.waitSignal(tray.app.bridge.stateChanged, check_params_cb=lambda s, w: s == "idle"):
        tray.menu("resume").trigger()


def test_a_pause_until_i_resume_survives_a_restart(
    qtbot: Any, tmp_path: Path, clock: FakeClock
) -> None:
    first = make_harness(qtbot, tmp_path, clock)
    with qtbot.waitSignal(first.app.bridge.stateChanged):
        first.menu("pause_forever").trigger()
    first.app.shutdown()
    clock.advance(days=3)
    second = make_harness(qtbot, tmp_path, clock, wait_state=None)
    try:
        qtbot.waitUntil(
            lambda: bool(second.engines) and second.engine.state == "paused", timeout=3000
        )
        assert second.engine.calls[:2] == [
            ("pause", "paused by you until you resume"),
            ("start", None),
        ]
    finally:
        second.app.shutdown()
