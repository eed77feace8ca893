"""The tray app (desktop_worker.tray) driven by a FakeEngine emitting the engine's events.

Qt runs offscreen (tests/conftest.py). Every pause timer runs on a FakeClock, so a test can
jump days ahead. The real engine inside the app is in tests/test_tray_integration.py.
"""

from __future__ import annotations

import os
import socket
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import keyring.backend
import pytest
from PySide6.QtCore import Qt, QThread
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QApplication, QWizard

from desktop_worker.config import WorkerConfig
from desktop_worker.engine import EngineEvent
from desktop_worker.tray import autostart
from desktop_worker.tray.app import TrayApp, build_app
from desktop_worker.tray.bridge import EngineBridge
from desktop_worker.tray.clock import FakeClock
from desktop_worker.tray.conditions import (
    IdleDetector,
    Power,
    idle_detector,
    parse_hours,
    power_state,
    within_hours,
)
from desktop_worker.tray.diagnose import Diagnosis
from desktop_worker.tray.fake import FakeEngine
from desktop_worker.tray.history import History
from desktop_worker.tray.icons import TrayState, draw, icon
from desktop_worker.tray.notify import OUTAGE_RESET_S
from desktop_worker.tray.settings import SettingsDialog
from desktop_worker.tray.single import SingleInstance
from desktop_worker.tray.store import FIELDS, SecretStore, SettingsStore, dumps_toml
from desktop_worker.tray.wizard import FirstRunWizard

TUESDAY_9AM = datetime(2026, 12, 1, 9, 0)  # a Tuesday


# ------------------------------------------------------------------ harness


class MemoryKeyring(keyring.backend.KeyringBackend):
    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.store: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.store.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.store[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        self.store.pop((service, username), None)


def NoKeyring() -> Any:
    """A machine without a keyring backend (whatever this one has)."""
    from keyring.backends import fail

    return fail.Keyring()


class FakeIdle:
    def __init__(self, seconds: float | None = None) -> None:
        self.seconds = seconds

    def detector(self) -> IdleDetector:
        return IdleDetector("test detector", True, lambda: self.seconds)


def ok_tester(urls: Any, name: str, password: str, **_kw: Any) -> Diagnosis:
    return Diagnosis(True, "ok", f"connected as worker {name!r}")


def failing_tester(urls: Any, name: str, password: str, **_kw: Any) -> Diagnosis:
    return Diagnosis(False, "unauthorized", "wrong password: the hub answered 401")


@dataclass
class Harness:
    app: TrayApp
    clock: FakeClock
    engines: list[FakeEngine]
    quits: list[int]
    tmp: Path
    idle: FakeIdle
    power: dict[str, Any] = field(default_factory=lambda: {"on_battery": False})

    @property
    def engine(self) -> FakeEngine:
        return self.engines[-1]

    def menu(self, key: str | None = None) -> Any:
        """Open the menu (aboutToShow rebuilds it) and return one action, or the controller."""
        self.app.tray.menu.aboutToShow.emit()
        if key is None:
            return self.app.tray
        return self.app.tray.actions[key]

    def settle(self) -> None:
        self.app.bridge.wait_idle(5)
        QApplication.processEvents()
        QApplication.processEvents()


def make_harness(
    qtbot: Any,
    tmp_path: Path,
    clock: FakeClock,
    *,
    store: SettingsStore | None = None,
    factory: Any = None,
    wait_state: str | None = "idle",
    **kwargs: Any,
) -> Harness:
    engines: list[FakeEngine] = []
    quits: list[int] = []
    idle = FakeIdle(None)
    power_box = {"on_battery": False}

    def default_factory(config: WorkerConfig) -> FakeEngine:
        engine = FakeEngine(config, now=clock.now)
        engines.append(engine)
        return engine

    config = kwargs.pop("config", None) or WorkerConfig(
        hub_urls=["http://127.0.0.1:9"], name="w1", password="pw"
    )
    store = store or SettingsStore(
        tmp_path / "cfg" / "worker.toml",
        data_dir=tmp_path / "data",
        secrets=SecretStore(tmp_path / "data", backend=NoKeyring()),
    )
    kwargs.setdefault("tester", ok_tester)
    app = build_app(
        config,
        factory or default_factory,
        clock,
        store=store,
        quit_app=lambda: quits.append(1),
        idle=idle.detector(),
        power=lambda: Power(power_box["on_battery"], 40.0, "test"),
        autostart_env={"XDG_CONFIG_HOME": str(tmp_path / "xdg")},
        **kwargs,
    )
    harness = Harness(app, clock, engines, quits, tmp_path, idle, power_box)
    if factory is None and wait_state:
        qtbot.waitUntil(lambda: app.model.engine_state == wait_state, timeout=5000)
    return harness


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(TUESDAY_9AM)


@pytest.fixture
def tray(qtbot: Any, tmp_path: Path, clock: FakeClock) -> Iterator[Harness]:
    harness = make_harness(qtbot, tmp_path, clock)
    yield harness
    if not harness.app.exited:
        harness.app.shutdown()


def two_runs(h: Harness, qtbot: Any) -> tuple[str, str]:
    a, b = "occ:task:acme:ping:20261201T090000Z", "occ:task:globex:fetch:20261201T090000Z"
    with qtbot.waitSignal(h.app.bridge.runStarted):
        h.engine.begin_run(a, "http.check", "acme", ttr=60)
    with qtbot.waitSignal(h.app.bridge.runStarted):
        h.engine.begin_run(b, "demo.sleep", "globex", ttr=120)
    with qtbot.waitSignal(h.app.bridge.runProgress):
        h.engine.progress(a, 42, 100, "fetching")
    qtbot.waitUntil(lambda: "acme: 42 %" in h.app.tray.icon.toolTip(), timeout=2000)
    return a, b


# ------------------------------------------------------------------ the Qt binding


def test_pyside_is_not_the_release_that_loses_references() -> None:
    """PySide6 6.12.0 drops a reference to None/True on every Python slot call, so a tray
    app that runs for hours aborts (none_dealloc). pyproject.toml must exclude it."""
    import PySide6

    assert PySide6.__version__ != "6.12.0", (
        "PySide6 6.12.0 corrupts reference counts on every slot call; "
        "install pyside6-essentials 6.11.x (pin '!=6.12.0')"
    )


# ------------------------------------------------------------------ icons and state


def test_each_state_has_its_own_icon_drawn_at_run_time(qapp: Any) -> None:
    images = {state: draw(state, 32).toImage() for state in TrayState}
    assert len(images) == 6
    states = list(TrayState)
    for i, first in enumerate(states):
        assert not images[first].isNull()
        for second in states[i + 1 :]:
            assert images[first] != images[second], (first, second)
    assert not icon(TrayState.ERROR).isNull()


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


def test_every_engine_event_becomes_a_qt_signal(tray: Harness, qtbot: Any) -> None:
    bridge, engine = tray.app.bridge, tray.engine
    cases = [
        (bridge.resultUploaded, EngineEvent("result_uploaded", occ_id="o1", status="done")),
        (bridge.resultDropped, EngineEvent("result_dropped", occ_id="o1", why="lease lost")),
        (bridge.resultConfirmed, EngineEvent("result_confirmed", occ_id="o1")),
        (bridge.spoolChanged, EngineEvent("spool_changed", detail={"pending": 3, "uploaded": 1})),
        (bridge.heartbeat, EngineEvent("heartbeat", detail={"state": "running"})),
    ]
    for signal, event in cases:
        with qtbot.waitSignal(signal, timeout=2000):
            engine.emit(event.name, **{k: v for k, v in vars(event).items() if k != "name"})
    qtbot.waitUntil(lambda: "3 result(s) waiting" in tray.app.tray.icon.toolTip(), timeout=2000)


def test_events_from_engine_threads_arrive_on_the_gui_thread(tray: Harness, qtbot: Any) -> None:
    seen: list[bool] = []
    gui = QThread.currentThread()
    tray.app.bridge.runStarted.connect(lambda *_: seen.append(QThread.currentThread() is gui))
    thread = threading.Thread(target=lambda: tray.engine.begin_run("occ:x", "dns.resolve", "acme"))
    with qtbot.waitSignal(tray.app.bridge.runStarted):
        thread.start()
    thread.join()
    assert seen == [True]


def test_commands_run_on_a_worker_thread_not_the_gui_thread(tray: Harness, qtbot: Any) -> None:
    threads: list[str] = []
    original = tray.engine.pause

    def pause(reason: str = "") -> None:
        threads.append(threading.current_thread().name)
        original(reason)

    tray.engine.pause = pause  # type: ignore[method-assign]
    with qtbot.waitSignal(tray.app.bridge.commandFinished):
        tray.app.bridge.pause("testing")
    assert threads and threads[0] != threading.main_thread().name
    assert threads[0].startswith("tray-engine")


# ------------------------------------------------------------------ menu


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


# ------------------------------------------------------------------ owner's conditions


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


# ------------------------------------------------------------------ main window


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


def test_statistics_from_local_history(tray: Harness, qtbot: Any) -> None:
    history = tray.app.history
    now = tray.clock.now()
    for days_ago, status in [(0, "done"), (0, "done"), (0, "failed"), (1, "done"), (8, "done")]:
        at = (now - timedelta(days=days_ago, minutes=5)).timestamp()
        history.started(f"o{days_ago}{status}", "demo.sleep", "acme", at - 2)
        history.finished(f"o{days_ago}{status}", "demo.sleep", "acme", status, at)
    per_hour = history.completed_per_hour(now)
    assert len(per_hour) == 168 and per_hour[-2] == 2 and sum(per_hour) == 3
    per_day = history.success_per_day(now)
    assert per_day[-1] == (2, 3) and per_day[-2] == (1, 1) and per_day[0] == (0, 0)
    window = tray.app.window
    window.tabs.setCurrentIndex(3)
    window.refresh_stats()
    assert "3 completed runs, success rate 75.0 % (3 of 4 decided runs)" in (
        window.stats_summary.text()
    )
    assert window.per_hour.values[-2] == 2.0
    assert window.success.values[-1] == pytest.approx(2 / 3)
    assert window.success.values[0] is None


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


# ------------------------------------------------------------------ settings

SAMPLES: dict[str, Any] = {
    "hub_urls": ["https://hub.example.org:6984", "https://standby.example.org:6984"],
    "name": "kitchen-pc",
    "password": "s3cret pass",
    "db": "farm2",
    "tubes": ["default", "windows"],
    "slots": 3,
    "kinds": ["dns.resolve", "http.check"],
    "scripts": {"backup": "/home/me/bin/backup.sh", "clean": "/opt/clean.py"},
    "allow_private_network": True,
    "idle_minutes": 12,
    "hours": {"mon": "09:00-17:00", "sat": "off", "sun": "10:00-12:00, 14:00-16:00"},
    "pause_on_battery": False,
    "cpu_cap_percent": 50,
    "bandwidth_cap_kbps": 2048,
    "start_at_login": True,
}


def test_every_field_has_a_sample() -> None:
    assert set(SAMPLES) == {f.key for f in FIELDS}
    for f in FIELDS:
        assert f.label and f.help and f.section


@pytest.mark.parametrize(
    ("key", "use_keyring"),
    [(f.key, True) for f in FIELDS] + [("password", False)],
    ids=[f.key for f in FIELDS] + ["password-without-keyring"],
)
def test_each_setting_round_trips_through_the_dialog_and_files(
    qtbot: Any, tmp_path: Path, key: str, use_keyring: bool
) -> None:
    backend = MemoryKeyring() if use_keyring else NoKeyring()
    secrets = SecretStore(tmp_path / "data", backend=backend)
    store = SettingsStore(
        tmp_path / "cfg" / "worker.toml", data_dir=tmp_path / "data", secrets=secrets
    )
    base = {**store.load(), "hub_urls": ["http://127.0.0.1:5984"], "name": "w1", "password": "p"}
    store.save(base)
    dialog = SettingsDialog(store.load(), kinds=["dns.resolve", "http.check", "tcp.connect"])
    qtbot.addWidget(dialog)
    dialog.editors[key].set(SAMPLES[key])
    with qtbot.waitSignal(dialog.saved) as saved:
        dialog.accept()
    store.save(saved.args[0])

    again = SettingsStore(
        tmp_path / "cfg" / "worker.toml",
        data_dir=tmp_path / "data",
        secrets=SecretStore(tmp_path / "data", backend=backend),
    )
    loaded = again.load()
    assert loaded[key] == SAMPLES[key]
    reopened = SettingsDialog(loaded, kinds=["dns.resolve", "http.check", "tcp.connect"])
    qtbot.addWidget(reopened)
    assert reopened.editors[key].get() == SAMPLES[key]
    text = (tmp_path / "cfg" / "worker.toml").read_text()
    assert "s3cret" not in text  # never in the settings file
    if key == "password":
        name = loaded["name"]
        if use_keyring:
            assert backend.store[("couchfarm", name)] == "s3cret pass"
            assert "password_file" not in text
        else:
            file = tmp_path / "data" / f"password-{name}"
            assert file.read_text().strip() == "s3cret pass"
            assert stat.S_IMODE(file.stat().st_mode) == 0o600
            assert "no OS keyring" in secrets.where(name)
    # the engine reads the same file
    config = again.worker_config()
    if hasattr(config, key):
        assert getattr(config, key) == SAMPLES[key]


def test_worker_file_stays_readable_by_the_headless_worker(tmp_path: Path) -> None:
    from desktop_worker.config import load_toml

    store = SettingsStore(
        tmp_path / "worker.toml",
        data_dir=tmp_path,
        secrets=SecretStore(tmp_path, backend=MemoryKeyring()),
    )
    store.save({**store.load(), **SAMPLES})
    loaded = load_toml(tmp_path / "worker.toml")  # refuses unknown keys
    assert loaded["slots"] == 3 and loaded["scripts"]["backup"] == "/home/me/bin/backup.sh"
    assert "idle_minutes" not in loaded and "password" not in loaded


def test_script_tables_keep_their_extra_keys(tmp_path: Path) -> None:
    path = tmp_path / "worker.toml"
    path.write_text(
        dumps_toml(
            {
                "hub_urls": ["http://h:1"],
                "name": "w1",
                "scripts": {"s": {"path": "/x.sh", "interpreter": ["/bin/sh"]}},
            }
        )
    )
    store = SettingsStore(path, data_dir=tmp_path, secrets=SecretStore(tmp_path, NoKeyring()))
    values = store.load()
    store.save({**values, "slots": 2})
    assert SettingsStore(path, data_dir=tmp_path, secrets=store.secrets).load()["scripts"] == {
        "s": {"path": "/x.sh", "interpreter": ["/bin/sh"]}
    }


def test_settings_refuse_bad_values(qtbot: Any, tmp_path: Path) -> None:
    dialog = SettingsDialog(
        {"hub_urls": ["ftp://x"], "name": "Bad Name", "password": "p"}, kinds=["http.check"]
    )
    qtbot.addWidget(dialog)
    dialog.editors["hours"].set({"wed": "17:00-09:00"})
    saved: list[Any] = []
    dialog.saved.connect(saved.append)
    dialog.accept()
    assert saved == []
    problems = dialog.problems.text()
    assert "must start with http" in problems and "Bad Name" in problems
    assert "Wednesday" in problems


def test_settings_dialog_test_connection_runs_off_the_gui_thread(qtbot: Any) -> None:
    threads: list[str] = []

    def tester(urls: Any, name: str, password: str, **_kw: Any) -> Diagnosis:
        threads.append(threading.current_thread().name)
        return Diagnosis(False, "dns", "DNS: the name 'nohub.invalid' does not resolve")

    dialog = SettingsDialog(
        {"hub_urls": ["http://nohub.invalid:5984"], "name": "w1", "password": "p"},
        tester=tester,
        kinds=[],
        idle_detector="X11 (xprintidle)",
    )
    qtbot.addWidget(dialog)
    with qtbot.waitSignal(dialog.connection.finished):
        dialog.test_button.click()
    assert threads == ["tray-test-connection"]
    assert dialog.diagnosis.text() == "✘ DNS: the name 'nohub.invalid' does not resolve"
    assert dialog.idle_label.text() == "Idle detector: X11 (xprintidle)"


def test_saving_settings_restarts_the_engine_and_notifies_the_allow_list(
    tray: Harness, qtbot: Any
) -> None:
    values = {**tray.app.store.load(), **tray.app.values}
    values.update(kinds=["http.check"], scripts={"backup": "/bin/backup"}, slots=2)
    tray.app.apply_settings(values)
    notes = [m for t, m in tray.app.notifier.sent if "allowed work" in t]
    assert notes == ["Kinds: http.check. Scripts: backup."]
    qtbot.waitUntil(lambda: len(tray.engines) == 2 and tray.engine.state == "idle", timeout=3000)
    assert tray.engines[0].state == "stopped"  # drained, then replaced
    assert tray.engine.config.slots == 2 and tray.engine.config.kinds == ["http.check"]


def test_an_edited_config_file_notifies_the_allow_list(tray: Harness, qtbot: Any) -> None:
    store = tray.app.store
    store.save({**store.load(), **tray.app.values})
    tray.app._note_own_write()
    tray.app.values = store.load()
    text = store.config_path.read_text() + 'kinds = ["dns.resolve"]\n'
    store.config_path.write_text(text)
    qtbot.waitUntil(
        lambda: any("allowed work" in t for t, _m in tray.app.notifier.sent), timeout=5000
    )
    assert tray.app.notifier.sent[-1][1] == "Kinds: dns.resolve. Scripts: none."


# ------------------------------------------------------------------ start at login


def test_start_at_login_writes_and_removes_the_xdg_autostart_file(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    where = autostart.set_start_at_login(
        True, platform="linux", environ=env, command=["/opt/couchfarm/worker", "--minimized"]
    )
    file = tmp_path / "autostart" / "couchfarm-worker.desktop"
    assert where == str(file)
    body = file.read_text()
    assert "Exec=/opt/couchfarm/worker --minimized" in body and "Type=Application" in body
    assert autostart.is_start_at_login(platform="linux", environ=env)
    autostart.set_start_at_login(False, platform="linux", environ=env)
    assert not file.exists()
    assert not autostart.is_start_at_login(platform="linux", environ=env)


def test_start_at_login_uses_the_run_key_on_windows() -> None:
    class FakeWinreg:
        HKEY_CURRENT_USER = "HKCU"
        REG_SZ = 1

        def __init__(self) -> None:
            self.values: dict[str, str] = {}

        def CreateKey(self, root: str, path: str) -> str:
            return f"{root}\\{path}"

        OpenKey = CreateKey

        def SetValueEx(self, key: str, name: str, _r: int, _t: int, value: str) -> None:
            self.values[f"{key}\\{name}"] = value

        def DeleteValue(self, key: str, name: str) -> None:
            del self.values[f"{key}\\{name}"]

        def QueryValueEx(self, key: str, name: str) -> str:
            try:
                return self.values[f"{key}\\{name}"]
            except KeyError:
                raise FileNotFoundError(name) from None

        def CloseKey(self, key: str) -> None:
            pass

    reg = FakeWinreg()
    autostart.set_start_at_login(
        True, platform="win32", winreg=reg, command=["C:\\Program Files\\Couchfarm\\couchfarm.exe"]
    )
    key = "HKCU\\Software\\Microsoft\\Windows\\CurrentVersion\\Run\\Couchfarm"
    assert reg.values[key] == '"C:\\Program Files\\Couchfarm\\couchfarm.exe"'
    assert autostart.is_start_at_login(platform="win32", winreg=reg)
    autostart.set_start_at_login(False, platform="win32", winreg=reg)
    assert not autostart.is_start_at_login(platform="win32", winreg=reg)


def test_start_at_login_setting_writes_the_desktop_file(tray: Harness) -> None:
    values = {**tray.app.store.load(), **tray.app.values, "start_at_login": True}
    tray.app.apply_settings(values)
    file = tray.tmp / "xdg" / "autostart" / "couchfarm-worker.desktop"
    assert file.exists()
    tray.app.apply_settings({**values, "start_at_login": False})
    assert not file.exists()


# ------------------------------------------------------------------ first-run wizard


def _fill_wizard(wizard: FirstRunWizard) -> None:
    wizard.hub_page.urls.setText("https://hub.example.org:6984, https://standby.example.org:6984")
    assert wizard.currentPage().isComplete()
    wizard.next()
    assert not wizard.currentPage().isComplete()
    wizard.worker_page.name.setText("kitchen-pc")
    wizard.worker_page.password.setText("secret")
    assert wizard.currentPage().isComplete()


def test_first_run_wizard(qtbot: Any) -> None:
    wizard = FirstRunWizard(tester=ok_tester, password_where=lambda n: f"keyring for {n}")
    qtbot.addWidget(wizard)
    wizard.show()
    wizard.hub_page.urls.setText("not a url")
    assert not wizard.currentPage().isComplete()
    _fill_wizard(wizard)
    assert wizard.worker_page.where.text() == "keyring for kitchen-pc"
    with qtbot.waitSignal(wizard.test_page.connection.finished):
        wizard.next()  # the test starts by itself
    assert wizard.test_page.label.text().startswith("✔ Connection works")
    assert wizard.currentPage().isComplete()
    wizard.next()
    assert wizard.currentPage() is wizard.done_page
    assert "kitchen-pc" in wizard.done_page.summary.text()
    wizard.done_page.start_at_login.setChecked(True)
    with qtbot.waitSignal(wizard.completed) as done:
        wizard.button(QWizard.WizardButton.FinishButton).click()
    assert done.args[0] == {
        "hub_urls": ["https://hub.example.org:6984", "https://standby.example.org:6984"],
        "name": "kitchen-pc",
        "password": "secret",
        "start_at_login": True,
    }


def test_first_run_wizard_failed_test_needs_save_anyway(qtbot: Any) -> None:
    wizard = FirstRunWizard(tester=failing_tester)
    qtbot.addWidget(wizard)
    wizard.show()
    _fill_wizard(wizard)
    with qtbot.waitSignal(wizard.test_page.connection.finished):
        wizard.next()
    assert "wrong password" in wizard.test_page.label.text()
    assert not wizard.currentPage().isComplete()
    wizard.test_page.anyway.setChecked(True)
    assert wizard.currentPage().isComplete()


def test_run_wizard_saves_settings_the_engine_can_use(qtbot: Any, tmp_path: Path) -> None:
    from PySide6.QtCore import QTimer

    from desktop_worker.tray.app import run_wizard

    store = SettingsStore(
        tmp_path / "worker.toml",
        data_dir=tmp_path,
        secrets=SecretStore(tmp_path, backend=MemoryKeyring()),
    )
    steps: list[str] = []

    def drive() -> None:  # runs inside the wizard's modal exec()
        wizard = QApplication.activeModalWidget()
        if not isinstance(wizard, FirstRunWizard):
            QTimer.singleShot(20, drive)
            return
        if not steps:
            wizard.hub_page.urls.setText("http://127.0.0.1:5984")
            wizard.next()
            wizard.worker_page.name.setText("w2")
            wizard.worker_page.password.setText("pw2")
            wizard.next()
            steps.append("filled")
        if wizard.test_page.result is None:
            QTimer.singleShot(20, drive)
            return
        wizard.next()
        wizard.button(QWizard.WizardButton.FinishButton).click()
        steps.append("finished")

    QTimer.singleShot(0, drive)
    assert run_wizard(store, tester=ok_tester)
    assert steps == ["filled", "finished"]
    config = store.worker_config()
    assert (config.hub_urls, config.name, config.password) == (
        ["http://127.0.0.1:5984"],
        "w2",
        "pw2",
    )


def test_wizard_values_saved_make_a_working_config(tmp_path: Path) -> None:
    store = SettingsStore(
        tmp_path / "worker.toml",
        data_dir=tmp_path,
        secrets=SecretStore(tmp_path, backend=MemoryKeyring()),
    )
    store.save({"hub_urls": ["http://127.0.0.1:5984"], "name": "w1", "password": "pw"})
    config = store.worker_config()
    assert config.hub_urls == ["http://127.0.0.1:5984"] and config.password == "pw"


# ------------------------------------------------------------------ notifications


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


# ------------------------------------------------------------------ single instance


def test_second_launch_brings_the_first_to_the_front(
    qtbot: Any, tmp_path: Path, clock: FakeClock
) -> None:
    name = f"couchfarm-test-{os.getpid()}-{id(tmp_path)}"
    first = SingleInstance(name)
    assert first.claim()
    harness = make_harness(qtbot, tmp_path, clock, single=first)
    try:
        assert not harness.app.window.isVisible()
        second = SingleInstance(name)
        with qtbot.waitSignal(first.activated):
            assert second.claim() is False
        qtbot.waitUntil(harness.app.window.isVisible, timeout=2000)
    finally:
        harness.app.shutdown()
    third = SingleInstance(name)  # the first has gone: the next launch becomes the one
    assert third.claim()
    third.close()


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="Unix sockets (QLocalServer on Windows)")
def test_single_instance_socket_is_private_and_replaces_a_crashed_ones(
    qtbot: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    name = f"couchfarm-test-{os.getpid()}"
    path = tmp_path / name
    crashed = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    crashed.bind(str(path))  # what a killed instance leaves: a socket file nobody answers
    crashed.close()
    first = SingleInstance(name)
    assert first.claim()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # A client that connects and says nothing holds nobody up; "show" still gets through.
    slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    slow.connect(str(path))
    try:
        qtbot.wait(100)  # accepted, nothing to read yet
        with qtbot.waitSignal(first.activated, timeout=3000):
            assert SingleInstance(name).claim() is False
        with qtbot.waitSignal(first.activated, timeout=3000):  # its words, when they come
            slow.sendall(b"show\n")
    finally:
        slow.close()
    first.close()
    assert not path.exists()
    # Closing removes only its own socket file, never a newer instance's.
    second = SingleInstance(name)
    assert second.claim()
    first.close()
    assert path.exists()
    second.close()
    assert not path.exists()


# ------------------------------------------------------------------ robustness


def test_an_engine_that_cannot_start_is_an_error_state(
    qtbot: Any, tmp_path: Path, clock: FakeClock
) -> None:
    def broken(_config: WorkerConfig) -> Any:
        raise ValueError("no CouchDB server URL given")

    harness = make_harness(qtbot, tmp_path, clock, factory=broken)
    try:
        qtbot.waitUntil(lambda: harness.app.model.engine_state == "error", timeout=3000)
        assert "the worker cannot start: no CouchDB server URL given" in (
            harness.app.tray.icon.toolTip()
        )
        assert harness.menu("status").text().startswith("Error: the worker cannot start")
        harness.menu("quit").trigger()
        assert harness.quits == [1]
    finally:
        if not harness.app.exited:
            harness.app.shutdown()


def test_full_spool_disk_is_a_clear_error(tray: Harness, qtbot: Any) -> None:
    with qtbot.waitSignal(tray.app.bridge.stateChanged, check_params_cb=lambda s, w: s == "error"):
        tray.engine.set_error(
            "spool", "the local spool cannot be written: database or disk is full"
        )
    assert tray.app.model.tray_state is TrayState.ERROR
    assert "disk is full" in tray.app.tray.icon.toolTip()
    assert "disk is full" in tray.menu("status").text()


def test_an_unwritable_history_never_breaks_the_tray(qapp: Any, tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a directory should be")
    history = History(blocker / "history.sqlite3")
    assert history.problem and "cannot be written" in history.problem
    history.started("o", "k", "c", 1.0)
    history.finished("o", "k", "c", "done", 2.0)
    assert history.recent() == [] and history.completed_per_hour(datetime.now().astimezone())


# ------------------------------------------------------------------ test connection (units)


def test_connection_names_dns_and_unreachable(qapp: Any) -> None:
    from desktop_worker.tray.diagnose import test_connection

    def no_dns(*_a: Any, **_k: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    dns = test_connection(["http://nohub.invalid:5984"], "w1", "pw", resolver=no_dns)
    assert (dns.ok, dns.problem) == (False, "dns")
    assert "DNS: the name 'nohub.invalid' does not resolve" in dns.message

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    down = test_connection([f"http://127.0.0.1:{port}"], "w1", "pw", timeout=2)
    assert down.problem == "unreachable" and "connection refused" in down.message
    assert test_connection(["ftp://x"], "w1", "pw").problem == "bad_url"
    assert test_connection([], "w1", "pw").problem == "bad_url"


def test_connection_names_tls_problems(qapp: Any, tmp_path: Path) -> None:
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from desktop_worker.tray.diagnose import test_connection

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now().astimezone()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]

    def serve() -> None:
        conn, _ = server.accept()
        try:
            with context.wrap_socket(conn, server_side=True):
                pass
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    result = test_connection([f"https://127.0.0.1:{port}"], "w1", "pw", timeout=3)
    thread.join(5)
    server.close()
    assert result.problem == "tls", result
    assert "certificate" in result.message and "not trusted" in result.message


def test_bridge_works_with_no_engine(qapp: Any) -> None:
    bridge = EngineBridge()
    assert bridge.snapshot()["state"] == "stopped"
    assert bridge.run_info("x") is None
    bridge.pause("x")
    assert bridge.wait_idle(2)
    bridge.close()


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


def test_quit_text_with_one_running_job_reads_right(tray: Harness, qtbot: Any) -> None:
    with qtbot.waitSignal(tray.app.bridge.runStarted):
        tray.engine.begin_run("occ:task:acme:ping:20261201T090000Z", "http.check", "acme", ttr=60)
    qtbot.waitUntil(lambda: len(tray.app.model.runs) == 1, timeout=2000)
    tray.app.tray.rebuild_menu()
    texts = tray.app.tray.action_texts()
    assert "Quit when the running job finishes (results are delivered)" in texts, texts
    assert "Quit now, handing 1 running job back to the hub" in texts


# ------------------------------------------------------------------ idle footprint (lean.py)

LEAN_CHECK = """
import linecache, sys
import desktop_worker.tray.app
import desktop_worker.tray.single
assert "cryptography" not in sys.modules, "jwt/cryptography loaded at start"
for name in ("jwt", "dateutil.parser", "more_itertools"):
    assert type(sys.modules[name]).__name__ == "DeferredModule", (name, sys.modules[name])
# Loaded only when used: the runner (first run), ibmcloudant's generated client (never;
# hub/protocol/couch.py uses the SDK core), QtNetwork (Windows' single-instance pipe only).
for name in ("desktop_worker.runner", "multiprocessing", "ibmcloudant", "PySide6.QtNetwork"):
    assert name not in sys.modules, f"{name} loaded at start"
# shiboken reads the source of every module an import statement names once PySide6 is
# loaded; the engine's own dependencies must come before it.
deep = ("ibm_cloud_sdk_core/base_service.py", "pydantic/main.py", "requests/models.py")
scanned = [f for f in linecache.cache if f.endswith(deep)]
assert not scanned, f"the engine's stack was imported after PySide6: {scanned}"
assert not [f for f in linecache.cache if f.endswith("desktop_worker/tray/app.py")]
import jwt
token = jwt.encode({"a": 1}, "k" * 32, algorithm="HS256")
assert jwt.decode(token, "k" * 32, algorithms=["HS256"]) == {"a": 1}
assert type(sys.modules["jwt"]).__name__ == "module"
from ibm_cloud_sdk_core.utils import string_to_datetime
assert string_to_datetime("2026-12-01T09:30:00Z").hour == 9  # the real dateutil, on first use
assert type(sys.modules["dateutil.parser"]).__name__ == "module"
print("lean ok")
"""


def test_tray_starts_without_jwt_and_imports_the_engine_before_qt() -> None:
    import subprocess
    import sys

    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    done = subprocess.run(
        [sys.executable, "-c", LEAN_CHECK], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "lean ok" in done.stdout


def test_default_engine_runs_get_the_owners_caps() -> None:
    from desktop_worker.runner import Limits, Policy
    from desktop_worker.tray.app import capped_runs

    config = WorkerConfig(cpu_cap_percent=40, bandwidth_cap_kbps=8)
    handle = capped_runs(config)("demo.sleep", {"ms": 0}, Limits(timeout_s=20), Policy())
    assert handle.wait(timeout=15) is not None
    assert (handle.limits.cpu_cap_percent, handle.limits.bandwidth_bps) == (40, 8 * 1024)


def test_quiet_shiboken_check_gives_shibokens_answer() -> None:
    import linecache
    import sys
    import types

    from desktop_worker.tray import lean
    from desktop_worker.tray import tray as tray_module

    linecache.clearcache()
    assert lean._uses_pyside(tray_module) is True  # imports PySide6
    assert lean._uses_pyside(sys.modules["desktop_worker.tray.clock"]) is False
    assert lean._uses_pyside(sys) is False  # built in: no source
    assert lean._uses_pyside(types.ModuleType("made_up")) is False
    assert not linecache.cache


def test_caps_an_older_tray_kept_in_tray_toml_still_apply_and_move(tmp_path: Path) -> None:
    # Before WorkerConfig had the caps, the tray stored them in tray.toml [settings].
    (tmp_path / "worker.toml").write_text('hub_urls = ["http://127.0.0.1:5984"]\nname = "w1"\n')
    (tmp_path / "tray.toml").write_text(
        "[settings]\ncpu_cap_percent = 30\nbandwidth_cap_kbps = 512\nidle_minutes = 5\n"
    )
    store = SettingsStore(
        tmp_path / "worker.toml", data_dir=tmp_path, secrets=SecretStore(tmp_path, MemoryKeyring())
    )
    assert (store.load()["cpu_cap_percent"], store.load()["bandwidth_cap_kbps"]) == (30, 512)
    config = store.worker_config(need_password=False)
    assert (config.cpu_cap_percent, config.bandwidth_cap_kbps) == (30, 512)
    store.save({**store.load(), "password": "p"})
    assert "cpu_cap_percent = 30" in (tmp_path / "worker.toml").read_text()
    tray_text = (tmp_path / "tray.toml").read_text()
    assert "cpu_cap_percent" not in tray_text and "idle_minutes = 5" in tray_text
    assert store.worker_config().bandwidth_cap_kbps == 512
