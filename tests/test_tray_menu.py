"""desktop_worker/tray/tray.py: the tray icon and its menu.

Driven by a FakeEngine on a FakeClock (tests/tray_harness.py); Qt runs offscreen. The real
engine inside the app is in tests/test_tray_integration.py.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QPoint

from desktop_worker.tray.icons import LABELS, TrayState, icon
from tests.tray_harness import (
    Harness,
    two_runs,
)

pytest_plugins = ["tests.tray_fixtures"]


def test_menu_is_rebuilt_each_time_it_opens(tray: Harness, qtbot: Any) -> None:
    builds = tray.app.tray.menu_builds
    tray.menu()
    assert tray.app.tray.menu_builds == builds + 1
    assert "No runs in progress" in tray.app.tray.action_texts()
    two_runs(tray, qtbot)
    texts = tray.menu().action_texts()
    assert tray.app.tray.menu_builds == builds + 2
    assert "http.check for acme: 42 %" in texts
    assert "demo.sleep for globex: starting" in texts
    assert texts[0] == "Working: 2 runs in progress"


def test_menu_cancel_hands_one_run_back(tray: Harness, qtbot: Any) -> None:
    a, b = two_runs(tray, qtbot)
    cancel = tray.menu(f"cancel:{a}")
    assert "hand it back" in cancel.text()
    with qtbot.waitSignal(
        tray.app.bridge.runFinished, check_params_cb=lambda o, k, c, s: s == "released"
    ):
        cancel.trigger()
    assert ("cancel", a) in tray.engine.calls
    assert list(tray.app.model.runs) == [b]
    assert f"cancel:{a}" not in tray.menu().actions


def test_open_and_settings_actions(tray: Harness, qtbot: Any) -> None:
    assert not tray.app.window.isVisible()
    tray.menu("open").trigger()
    assert tray.app.window.isVisible()
    tray.menu("settings").trigger()
    dialog = tray.app.settings_dialog
    assert dialog is not None and dialog.isVisible()
    assert dialog.editors["name"].get() == "w1"
    dialog.reject()


def test_quit_without_runs_says_nothing_is_handed_back(tray: Harness, qtbot: Any) -> None:
    quit_action = tray.menu("quit")
    assert "no jobs running, nothing is handed back" in quit_action.text()
    quit_action.trigger()
    qtbot.waitUntil(lambda: tray.quits == [1], timeout=3000)
    assert ("stop", None) in tray.engine.calls


def test_quit_after_runs_finish_drains(tray: Harness, qtbot: Any) -> None:
    a, b = two_runs(tray, qtbot)
    assert "quit" not in tray.menu().actions
    drain = tray.menu("quit_drain")
    assert drain.text() == "Quit when the 2 running jobs finish (results are delivered)"
    with qtbot.waitSignal(
        tray.app.bridge.stateChanged, check_params_cb=lambda s, w: s == "draining"
    ):
        drain.trigger()
    assert tray.quits == []
    tray.engine.finish_run(a, "done")
    tray.settle()
    assert tray.quits == []
    tray.engine.finish_run(b, "done")
    qtbot.waitUntil(lambda: tray.quits == [1], timeout=3000)
    assert ("stop", None) not in tray.engine.calls


def test_quit_now_hands_running_jobs_back(tray: Harness, qtbot: Any) -> None:
    two_runs(tray, qtbot)
    now = tray.menu("quit_now")
    assert now.text() == "Quit now, handing 2 running jobs back to the hub"
    now.trigger()
    qtbot.waitUntil(lambda: tray.quits == [1], timeout=3000)
    released = [e.text for e in tray.app.model.log if e.text.startswith("released:")]
    assert len(released) == 2 and ("stop", None) in tray.engine.calls


def test_quit_text_with_one_running_job_reads_right(tray: Harness, qtbot: Any) -> None:
    with qtbot.waitSignal(tray.app.bridge.runStarted):
        tray.engine.begin_run("occ:task:acme:ping:20261201T090000Z", "http.check", "acme", ttr=60)
    qtbot.waitUntil(lambda: len(tray.app.model.runs) == 1, timeout=2000)
    tray.app.tray.rebuild_menu()
    texts = tray.app.tray.action_texts()
    assert "Quit when the running job finishes (results are delivered)" in texts, texts
    assert "Quit now, handing 1 running job back to the hub" in texts


def _agree(controller: Any, expected: TrayState) -> bool:
    """The icon, the controller's reading and the menu's status line say the same."""
    status = controller.actions["status"].text()
    return (
        controller.shown_state is expected
        and controller.icon.icon().cacheKey() == icon(expected).cacheKey()
        and status.startswith(LABELS[expected] + ":")
    )


def test_an_open_menu_follows_the_state_with_the_icon(tray: Harness, qtbot: Any) -> None:
    """The menu said "Working: 1 run in progress" beside the idle icon."""
    controller = tray.app.tray
    controller.menu.popup(QPoint(0, 0))
    qtbot.waitUntil(controller.menu.isVisible, timeout=2000)
    occ_id = "occ:task:acme:ping:20261201T090000Z"
    tray.engine.begin_run(occ_id, "http.check", "acme")
    qtbot.waitUntil(lambda: _agree(controller, TrayState.WORKING), timeout=2000)
    assert controller.actions["status"].text() == "Working: 1 run in progress"
    assert f"cancel:{occ_id}" in controller.actions
    tray.engine.finish_run(occ_id, "done")
    qtbot.waitUntil(lambda: _agree(controller, TrayState.IDLE), timeout=2000)
    assert "No runs in progress" in controller.action_texts()
    controller.menu.hide()


def test_opening_the_menu_redraws_the_icon_from_the_same_reading(tray: Harness) -> None:
    assert _agree(tray.menu(), TrayState.IDLE)
    tray.app.model.engine_state = "working"  # a change whose redraw has not happened yet
    assert _agree(tray.menu(), TrayState.WORKING)
