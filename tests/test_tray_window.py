"""desktop_worker/tray/window.py: the main window (runs, event log, closing).

Driven by a FakeEngine on a FakeClock (tests/tray_harness.py); Qt runs offscreen. The real
engine inside the app is in tests/test_tray_integration.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication

from desktop_worker.tray.store import SettingsStore
from tests.tray_harness import (
    Harness,
    two_runs,
)

pytest_plugins = ["tests.tray_fixtures"]


def test_window_shows_current_runs(tray: Harness, qtbot: Any) -> None:
    two_runs(tray, qtbot)
    tray.clock.advance(seconds=10)
    tray.app.open_window()
    qtbot.waitExposed(tray.app.window)
    tray.app.window.refresh_runs()
    rows = tray.app.window.run_rows()
    assert rows[0][:6] == ["http.check", "acme", "42 %", "fetching", "10 s", "14 s"]
    assert rows[0][6].endswith("(in 50 s)")  # lease: ttr 60 s from the last write
    assert rows[1][:6] == ["demo.sleep", "globex", "", "", "10 s", "—"]
    assert rows[1][6].endswith("(in 1 min 50 s)")


def test_window_cancel_button(tray: Harness, qtbot: Any) -> None:
    a, _b = two_runs(tray, qtbot)
    tray.app.open_window()
    button = tray.app.window.runs_table.cellWidget(0, 7)
    with qtbot.waitSignal(tray.app.bridge.runFinished):
        button.click()
    assert ("cancel", a) in tray.engine.calls


def test_event_log_filters_by_level_and_copies(tray: Harness, qtbot: Any) -> None:
    window = tray.app.window
    tray.app.model.add_log("WARNING", "a warning line")
    tray.app.model.add_log("ERROR", "an error line")
    tray.app.model.add_log("INFO", "an info line")
    everything = window.log_view.toPlainText()
    assert "an info line" in everything and "a warning line" in everything
    window.level_filter.setCurrentIndex(2)  # warnings and errors
    shown = window.log_view.toPlainText()
    assert "a warning line" in shown and "an error line" in shown
    assert "an info line" not in shown
    window.level_filter.setCurrentIndex(3)
    assert "a warning line" not in window.log_view.toPlainText()
    window.level_filter.setCurrentIndex(2)
    qtbot.mouseClick(window.copy_button, Qt.MouseButton.LeftButton)
    assert QGuiApplication.clipboard().text() == window.log_view.toPlainText()
    assert "an error line" in QGuiApplication.clipboard().text()


def test_engine_warnings_reach_the_event_log(tray: Harness, qtbot: Any) -> None:
    import logging

    logging.getLogger("couchfarm.worker").warning("event=lease_lost occ=o1")
    qtbot.waitUntil(lambda: any("lease_lost" in e.text for e in tray.app.model.log), timeout=2000)


def test_closing_the_window_keeps_the_app_and_says_so_once(
    tray: Harness, qtbot: Any, tmp_path: Path
) -> None:
    window = tray.app.window
    tray.app.open_window()
    window.close()
    assert not window.isVisible() and not tray.app.exited
    notices = [t for t, _m in tray.app.notifier.sent if "still running" in t]
    assert len(notices) == 1
    tray.app.open_window()
    window.close()
    assert len([t for t, _m in tray.app.notifier.sent if "still running" in t]) == 1
    assert SettingsStore(tray.app.store.config_path).state("close_notice_shown") is True
