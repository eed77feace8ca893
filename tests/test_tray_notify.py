"""desktop_worker/tray/notify.py: notifications, once per outage.

Driven by a FakeEngine on a FakeClock (tests/tray_harness.py); Qt runs offscreen. The real
engine inside the app is in tests/test_tray_integration.py.
"""

from __future__ import annotations

from typing import Any

from desktop_worker.tray.notify import OUTAGE_RESET_S
from tests.tray_harness import (
    Harness,
    two_runs,
)

pytest_plugins = ["tests.tray_fixtures"]


def test_lost_connection_is_notified_once_per_outage(tray: Harness, qtbot: Any) -> None:
    def lost() -> int:
        return len([t for t, _m in tray.app.notifier.sent if "connection lost" in t])

    engine = tray.engine
    with qtbot.waitSignal(tray.app.bridge.stateChanged):
        engine.set_offline("connection refused")
    assert lost() == 1
    for _ in range(10):  # the hub flaps every 30 s: still one outage
        tray.clock.advance(seconds=30)
        with qtbot.waitSignal(tray.app.bridge.stateChanged):
            engine.set_offline(None)
        tray.clock.advance(seconds=30)
        with qtbot.waitSignal(tray.app.bridge.stateChanged):
            engine.set_offline("connection refused")
    assert lost() == 1
    with qtbot.waitSignal(tray.app.bridge.stateChanged):
        engine.set_offline(None)
    tray.clock.advance(seconds=OUTAGE_RESET_S + 1)
    with qtbot.waitSignal(tray.app.bridge.stateChanged):
        engine.set_offline("timed out")
    assert lost() == 2


def test_buried_job_is_notified(tray: Harness, qtbot: Any) -> None:
    a, _b = two_runs(tray, qtbot)
    with qtbot.waitSignal(tray.app.notifier.notified) as note:
        tray.engine.finish_run(a, "buried")
    assert note.args[0] == "Couchfarm: a job was buried"
    assert "http.check for acme" in note.args[1]
