"""desktop_worker/tray/conditions.py: the owner's conditions (idle, hours, battery).

Driven by a FakeEngine on a FakeClock (tests/tray_harness.py); Qt runs offscreen. The real
engine inside the app is in tests/test_tray_integration.py.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from desktop_worker.tray.conditions import (
    idle_detector,
    parse_hours,
    power_state,
    within_hours,
)
from tests.tray_harness import (
    Harness,
)

pytest_plugins = ["tests.tray_fixtures"]


def test_conditions_pause_with_a_reason_and_resume(tray: Harness, qtbot: Any) -> None:
    tray.app.values["idle_minutes"] = 10
    tray.idle.seconds = 30
    with qtbot.waitSignal(tray.app.bridge.stateChanged, check_params_cb=lambda s, w: s == "paused"):
        tray.clock.advance(seconds=15)
    assert "the computer is in use" in tray.engine.why
    assert tray.menu("status").text().startswith("Paused: the computer is in use")
    assert not tray.menu("resume").isEnabled()  # nothing of the user's to resume
    with qtbot.waitSignal(tray.app.bridge.stateChanged, check_params_cb=lambda s, w: s == "idle"):
        tray.idle.seconds = 11 * 60
        tray.clock.advance(seconds=15)

    tray.app.values["hours"] = {"tue": "18:00-23:00"}
    with qtbot.waitSignal(tray.app.bridge.stateChanged):
        tray.clock.advance(seconds=15)
    assert tray.engine.why == "outside the allowed hours (Tue 18:00-23:00)"
    with qtbot.waitSignal(tray.app.bridge.stateChanged, check_params_cb=lambda s, w: s == "idle"):
        tray.clock.set(datetime(2026, 12, 1, 18, 0).astimezone())

    tray.app.values["pause_on_battery"] = True
    tray.power["on_battery"] = True
    with qtbot.waitSignal(tray.app.bridge.stateChanged):
        tray.clock.advance(seconds=15)
    assert tray.engine.why == "running on battery"
    # a user pause on top: both reasons show, Resume says what still holds
    with qtbot.waitSignal(tray.app.bridge.stateChanged):
        tray.menu("pause_forever").trigger()
    assert tray.engine.why == "paused by you until you resume; running on battery"
    assert "still waiting: running on battery" in tray.menu("resume").text()


def test_hours_rules() -> None:
    assert parse_hours("") is None
    assert parse_hours("off") == []
    assert parse_hours("20:00-23:30, 09:00-17:00") == [(540, 1020), (1200, 1410)]
    for bad in ("9-5", "17:00-09:00", "25:00-26:00", "09:00-24:30"):
        with pytest.raises(ValueError):
            parse_hours(bad)
    monday_noon = datetime(2026, 11, 30, 12, 0)
    assert within_hours({"mon": "09:00-17:00"}, monday_noon) == (True, "Mon 09:00-17:00")
    assert within_hours({"mon": "off"}, monday_noon) == (False, "not on Mondays")
    assert within_hours({}, monday_noon)[0]


def test_idle_detector_is_chosen_per_platform() -> None:
    assert idle_detector("win32").name == "Windows (GetLastInputInfo)"
    x11 = idle_detector("linux", {"DISPLAY": ":0"}, which=lambda _n: "/usr/bin/xprintidle")
    assert x11.available and x11.name == "X11 (xprintidle)"
    missing = idle_detector("linux", {"DISPLAY": ":0"}, which=lambda _n: None)
    assert not missing.available and "xprintidle" in missing.name
    headless = idle_detector("linux", {}, which=lambda _n: None)
    assert not headless.available and headless.idle_seconds() is None


def test_power_state_reads_psutil_battery() -> None:
    class Battery:
        percent = 57.0
        power_plugged = False

    assert power_state(lambda: Battery()).on_battery
    assert not power_state(lambda: None).on_battery  # a desktop PC: no battery
