"""desktop_worker/tray/model.py: engine events become the state, status line and tooltip.

Driven by a FakeEngine on a FakeClock (tests/tray_harness.py); Qt runs offscreen. The real
engine inside the app is in tests/test_tray_integration.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from desktop_worker.config import WorkerConfig
from desktop_worker.tray.clock import FakeClock
from desktop_worker.tray.icons import TrayState, icon
from tests.tray_harness import (
    Harness,
    make_harness,
    two_runs,
)

pytest_plugins = ["tests.tray_fixtures"]


def test_state_changes_from_engine_events_drive_icon_tooltip_and_status(
    tray: Harness, qtbot: Any
) -> None:
    app, engine = tray.app, tray.engine
    assert app.model.tray_state is TrayState.IDLE
    assert app.tray.icon.icon().cacheKey() == icon(TrayState.IDLE).cacheKey()

    a, b = two_runs(tray, qtbot)
    assert app.model.tray_state is TrayState.WORKING
    tip = app.tray.icon.toolTip()
    assert "http.check for acme: 42 %" in tip
    assert "demo.sleep for globex: starting" in tip

    with qtbot.waitSignal(app.bridge.stateChanged, check_params_cb=lambda s, w: s == "offline"):
        engine.set_offline("connection refused")
    assert app.model.tray_state is TrayState.OFFLINE
    assert "no hub server answers (connection refused)" in app.tray.icon.toolTip()
    assert app.tray.icon.icon().cacheKey() == icon(TrayState.OFFLINE).cacheKey()

    with qtbot.waitSignal(app.bridge.stateChanged, check_params_cb=lambda s, w: s == "error"):
        engine.set_error("auth", "the hub refused worker w1: wrong password")
    assert app.model.tray_state is TrayState.ERROR
    assert "Error: the hub refused worker w1" in app.model.status_line()
    assert "wrong password" in app.tray.icon.toolTip()
    assert "wrong password" in tray.menu("status").toolTip()

    with qtbot.waitSignal(app.bridge.stateChanged):
        engine.set_error("auth", None)
    with qtbot.waitSignal(app.bridge.stateChanged):
        engine.set_offline(None)
    assert app.model.tray_state is TrayState.WORKING
    with qtbot.waitSignal(app.bridge.runFinished):
        engine.finish_run(a, "done")
    with qtbot.waitSignal(app.bridge.stateChanged, check_params_cb=lambda s, w: s == "idle"):
        engine.finish_run(b, "failed")
    assert app.model.tray_state is TrayState.IDLE
    assert [r.status for r in app.history.recent()] == ["failed", "done"]


def test_full_spool_disk_is_a_clear_error(tray: Harness, qtbot: Any) -> None:
    with qtbot.waitSignal(tray.app.bridge.stateChanged, check_params_cb=lambda s, w: s == "error"):
        tray.engine.set_error(
            "spool", "the local spool cannot be written: database or disk is full"
        )
    assert tray.app.model.tray_state is TrayState.ERROR
    assert "disk is full" in tray.app.tray.icon.toolTip()
    assert "disk is full" in tray.menu("status").text()


def test_tls_verification_off_shows_a_warning(qtbot: Any, tmp_path: Path, clock: FakeClock) -> None:
    from desktop_worker.tray.model import INSECURE_TLS_WARNING

    config = WorkerConfig(hub_urls=["https://hub.example"], name="w1", password="pw",
                          verify_tls=False)  # fmt: skip
    h = make_harness(qtbot, tmp_path, clock, config=config)
    try:
        qtbot.waitUntil(lambda: INSECURE_TLS_WARNING in h.app.tray.icon.toolTip(), timeout=3000)
        assert any(e.level == "WARNING" and "NOT verified" in e.text for e in h.app.model.log)
    finally:
        h.app.shutdown()


def test_tls_verified_by_default_shows_no_warning(tray: Harness) -> None:
    assert "NOT verified" not in tray.app.tray.icon.toolTip()
