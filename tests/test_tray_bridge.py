"""desktop_worker/tray/bridge.py: engine events as Qt signals on the GUI thread, commands off
it.

Driven by a FakeEngine on a FakeClock (tests/tray_harness.py); Qt runs offscreen. The real
engine inside the app is in tests/test_tray_integration.py.
"""

from __future__ import annotations

import threading
from typing import Any

from PySide6.QtCore import QThread

from desktop_worker.engine import EngineEvent
from desktop_worker.tray.bridge import EngineBridge
from tests.tray_harness import (
    Harness,
)

pytest_plugins = ["tests.tray_fixtures"]


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


def test_bridge_works_with_no_engine(qapp: Any) -> None:
    bridge = EngineBridge()
    assert bridge.snapshot()["state"] == "stopped"
    assert bridge.run_info("x") is None
    bridge.pause("x")
    assert bridge.wait_idle(2)
    bridge.close()
