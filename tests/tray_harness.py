"""The tray tests' shared harness: a FakeEngine-driven app on a FakeClock, with no keyring,
a scripted idle detector and battery. Its fixtures, ``clock`` and ``tray``, are in
tests/tray_fixtures.py, which each tests/test_tray_*.py loads with ``pytest_plugins``."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import keyring.backend
from PySide6.QtWidgets import QApplication

from desktop_worker.config import WorkerConfig
from desktop_worker.tray.app import TrayApp, build_app
from desktop_worker.tray.clock import FakeClock
from desktop_worker.tray.conditions import (
    IdleDetector,
    Power,
)
from desktop_worker.tray.diagnose import Diagnosis
from desktop_worker.tray.fake import FakeEngine
from desktop_worker.tray.store import SecretStore, SettingsStore

TUESDAY_9AM = datetime(2026, 12, 1, 9, 0)  # a Tuesday


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
