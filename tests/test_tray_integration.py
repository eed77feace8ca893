"""The tray app around the REAL engine, against the test server (fixture ``farm``).

A demo.sleep occurrence goes from claimed to done in the window; Cancel in the menu hands a
run back to the hub; a hub that is down, a wrong password and an unwritable spool each
show a clear state with the reason, never a crash. "Test connection" is checked against
the same server.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from keyring.backends import fail

from desktop_worker.config import WorkerConfig
from desktop_worker.engine import Engine
from desktop_worker.tray.app import TrayApp, build_app
from desktop_worker.tray.clock import SystemClock
from desktop_worker.tray.conditions import IdleDetector, Power
from desktop_worker.tray.diagnose import test_connection
from desktop_worker.tray.icons import TrayState
from desktop_worker.tray.store import SecretStore, SettingsStore
from hub.devserver import free_port
from hub.protocol import states
from hub.protocol.couch import Couch
from hub.protocol.model import Task, task_id
from hub.protocol.timefmt import to_wire


def seed(hub: Couch, db: str, slug: str, tube: str, ms: int) -> str:
    """A demo.sleep task in ``tube`` and one ready occurrence of it (as test_security does)."""
    now = hub.now().replace(microsecond=0)
    stamp = to_wire(now)
    task = Task(
        _id=task_id("acme", slug),
        client="acme",
        slug=slug,
        kind="demo.sleep",
        input={"ms": ms},
        schedule={"every": 60},
        tube=tube,
        ttr=30,
        created_at=stamp,
        updated_at=stamp,
    )
    hub.put(db, task.to_doc())
    occ = states.materialize(task, now - timedelta(seconds=1), now)
    hub.put(db, occ.to_doc())
    return occ.id


@pytest.fixture
def make_app(qtbot: Any, tmp_path: Path, farm: Any) -> Iterator[Callable[..., TrayApp]]:
    made: list[tuple[TrayApp, list[int]]] = []

    def make(**overrides: Any) -> TrayApp:
        data = tmp_path / f"app{len(made)}"
        values: dict[str, Any] = {
            "hub_urls": [farm.server.url],
            "name": "w1",
            "password": farm.passwords["w1"],
            "db": farm.db,
            "tubes": [f"tray-{secrets.token_hex(3)}"],
            "spool_path": data / "spool.sqlite3",
            "poll_interval_s": 2.0,
            "spool_retry_s": 0.3,
        }
        values.update(overrides)
        config = WorkerConfig(**values)
        quits: list[int] = []
        store = SettingsStore(
            data / "worker.toml", data_dir=data, secrets=SecretStore(data, fail.Keyring())
        )
        app = build_app(
            config,
            Engine,
            SystemClock(),
            store=store,
            quit_app=lambda: quits.append(1),
            idle=IdleDetector("none", False),
            power=lambda: Power(False, None, "test"),
            autostart_env={"XDG_CONFIG_HOME": str(data / "xdg")},
        )
        made.append((app, quits))
        return app

    yield make
    for app, quits in made:
        if not app.exited:
            app.quit_now()
            qtbot.waitUntil(lambda q=quits: q == [1], timeout=20000)


def test_a_job_goes_from_claimed_to_done_in_the_window(
    make_app: Callable[..., TrayApp], farm: Any, qtbot: Any
) -> None:
    app = make_app()
    started: list[tuple[str, ...]] = []
    finished: list[tuple[str, ...]] = []
    app.bridge.runStarted.connect(lambda *args: started.append(args))
    app.bridge.runFinished.connect(lambda *args: finished.append(args))
    occ_id = seed(farm.hub, farm.db, "traydone", app.config.tubes[0], ms=2000)
    app.open_window()
    window = app.window
    qtbot.waitUntil(lambda: bool(started), timeout=20000)
    assert started[0] == (occ_id, "demo.sleep", "acme")
    assert app.model.tray_state is TrayState.WORKING
    window.refresh_runs()
    row = window.run_rows()[0]
    assert row[:2] == ["demo.sleep", "acme"]
    assert "(in " in row[6]  # the lease deadline, read from the engine's run
    assert "demo.sleep for acme" in app.tray.icon.toolTip()
    assert farm.hub.get(farm.db, occ_id)["state"] == "leased"
    qtbot.waitUntil(lambda: bool(finished), timeout=20000)
    assert finished[0] == (occ_id, "demo.sleep", "acme", "done")
    qtbot.waitUntil(lambda: bool(window.history_rows()), timeout=5000)
    history = window.history_rows()[0]
    assert history[1:4] == ["demo.sleep", "acme", "done"] and history[5] == occ_id
    assert farm.hub.get(farm.db, occ_id)["state"] == "done"
    assert window.run_rows() == []
    qtbot.waitUntil(lambda: app.model.tray_state is TrayState.IDLE, timeout=5000)


def test_cancel_in_the_menu_hands_the_job_back(
    make_app: Callable[..., TrayApp], farm: Any, qtbot: Any
) -> None:
    app = make_app()
    occ_id = seed(farm.hub, farm.db, "traycancel", app.config.tubes[0], ms=30000)
    qtbot.waitUntil(lambda: occ_id in app.model.runs, timeout=20000)
    # pause first, so the released occurrence is not claimed again at once
    app.tray.menu.aboutToShow.emit()
    with qtbot.waitSignal(
        app.bridge.stateChanged, timeout=5000, check_params_cb=lambda s, w: s == "paused"
    ):
        app.tray.actions["pause_forever"].trigger()
    app.tray.menu.aboutToShow.emit()
    with qtbot.waitSignal(app.bridge.runFinished, timeout=15000) as finished:
        app.tray.actions[f"cancel:{occ_id}"].trigger()
    assert finished.args[3] == "released"
    doc = farm.hub.get(farm.db, occ_id)
    assert doc["state"] == "ready" and doc["attempt"] == 0
    assert app.bridge.engine.state == "paused"
    assert app.model.status_line() == "Paused: paused by you until you resume"


def test_hub_down_at_start_is_offline_with_the_reason(
    make_app: Callable[..., TrayApp], qtbot: Any
) -> None:
    app = make_app(hub_urls=[f"http://127.0.0.1:{free_port()}"])
    qtbot.waitUntil(lambda: app.model.engine_state == "offline", timeout=15000)
    assert app.model.tray_state is TrayState.OFFLINE
    assert "no hub server answers" in app.tray.icon.toolTip()
    app.tray.menu.aboutToShow.emit()
    assert app.tray.actions["status"].text().startswith("Offline: no hub server answers")
    lost = [t for t, _m in app.notifier.sent if "connection lost" in t]
    assert len(lost) == 1


def test_wrong_password_is_an_error_with_the_reason(
    make_app: Callable[..., TrayApp], qtbot: Any
) -> None:
    app = make_app(password="not-the-password")
    qtbot.waitUntil(lambda: app.model.engine_state == "error", timeout=15000)
    assert app.model.tray_state is TrayState.ERROR
    tip = app.tray.icon.toolTip()
    assert "session" in tip or "did not accept worker" in tip
    assert any("cannot work" in t for t, _m in app.notifier.sent)


def test_unwritable_spool_is_an_error_with_the_reason(
    make_app: Callable[..., TrayApp], qtbot: Any, tmp_path: Path
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the spool's directory should be")
    app = make_app(spool_path=blocker / "spool.sqlite3")
    qtbot.waitUntil(lambda: app.model.engine_state == "error", timeout=15000)
    assert "spool" in app.tray.icon.toolTip() and str(blocker) in app.tray.icon.toolTip()
    app.tray.menu.aboutToShow.emit()
    assert app.tray.actions["status"].text().startswith("Error: the local spool")


def test_connection_diagnosis_against_the_server(farm: Any) -> None:
    url = farm.server.url
    good = test_connection([url], "w1", farm.passwords["w1"], db=farm.db)
    assert good.ok and good.problem == "ok", good
    wrong = test_connection([url], "w1", "wrong", db=farm.db)
    assert wrong.problem == "unauthorized" and "401" in wrong.message
    client = test_connection([url], "acme", farm.passwords["acme"], db=farm.db)
    assert client.problem == "not_worker"
    assert "lacks the 'farm_worker' role" in client.message and "client:acme" in client.message
    # w2 from here on, not w1: on CouchDB 3.5 every wrong password counts towards w1's
    # lockout (the one above, and other tests of the session try wrong ones too).
    nodb = test_connection([url], "w2", farm.passwords["w2"], db="no_such_farm")
    assert nodb.problem == "no_database"
    down = f"http://127.0.0.1:{free_port()}"
    both = test_connection([url, down], "w2", farm.passwords["w2"], db=farm.db, timeout=2)
    assert not both.ok and both.problem == "unreachable"
    assert [c.ok for c in both.checks] == [True, False]
