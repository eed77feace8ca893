"""Screenshots of the tray app for docs/screenshots (a FakeEngine plays the worker).

    .venv/bin/python -m desktop_worker.tray.screenshots [--out docs/screenshots]

Starts Xvfb and the ``trayer`` tray host (Debian packages ``xvfb trayer``; Qt's xcb plugin
needs ``libxcb-icccm4 libxcb-keysyms1``...; see .ci/apt-packages.txt), runs the app inside
with Qt's xcb platform, and saves:

- ``tray-menu.png``: the real tray icon in trayer with its menu open, taken from the X
  screen (``import -window root``, ImageMagick), cropped to the panel and the menu;
- ``tray-main-window.png``: the main window with two runs in progress;
- ``tray-settings.png``: the settings dialog after a successful "Test connection";
- ``tray-stats.png``: the statistics tab over a week of made-up local history.

The last three are ``QWidget.grab()`` images of real windows on the same X server.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def _free_display() -> int:
    for number in range(91, 200):
        if (
            not Path(f"/tmp/.X{number}-lock").exists()
            and not Path(f"/tmp/.X11-unix/X{number}").exists()
        ):
            return number
    raise RuntimeError("no free X display number")


def outer(out: Path) -> int:
    """Start Xvfb + trayer, run the app part on that display, stop them again."""
    for tool in ("Xvfb", "trayer", "import"):
        if shutil.which(tool) is None:
            print(f"screenshots: {tool} is missing (apt-get install xvfb trayer imagemagick)")
            return 2
    display = f":{_free_display()}"
    xvfb = subprocess.Popen(
        ["Xvfb", display, "-screen", "0", "1024x640x24", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {**os.environ, "DISPLAY": display, "QT_QPA_PLATFORM": "xcb"}
    env.pop("WAYLAND_DISPLAY", None)
    try:
        for _ in range(50):
            if Path(f"/tmp/.X11-unix/X{display[1:]}").exists():
                break
            time.sleep(0.1)
        done = subprocess.run(
            [sys.executable, "-m", "desktop_worker.tray.screenshots", "--inner", "--out", str(out)],
            env=env,
            cwd=REPO,
            check=False,
            timeout=120,
        )
        return done.returncode
    finally:
        _end(xvfb)


def _end(process: subprocess.Popen[bytes] | None) -> None:
    if process is None:
        return
    process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()


def trayer_command(width: int, height: int = 28) -> list[str]:
    """The ``trayer`` tray host as a dark panel ``width`` x ``height`` pixels at the top right
    (also used by installer/screenshot.py for the built bundle)."""
    return [
        "trayer",
        "--edge",
        "top",
        "--align",
        "right",
        "--widthtype",
        "pixel",
        "--width",
        str(width),
        "--height",
        str(height),
        "--SetDockType",
        "true",
        "--transparent",
        "true",
        "--alpha",
        "0",
        "--tint",
        "0x2b2b2b",
        "--padding",
        "6",
    ]


# ---------------------------------------------------------------- the app part


def _history(app: Any, now: datetime) -> None:
    """A week of plausible runs: busier in the day, ~96 % success."""
    rng = random.Random(7)
    history = app.history
    start = now - timedelta(days=7)
    moment = start
    kinds = [("http.check", "acme"), ("dns.resolve", "globex"), ("demo.sleep", "acme")]
    n = 0
    while moment < now - timedelta(minutes=2):
        hour = moment.hour
        busy = 1.0 if 8 <= hour < 20 else 0.35
        if rng.random() < busy:
            kind, client = rng.choice(kinds)
            took = rng.uniform(0.4, 9.0)
            status = "done" if rng.random() > 0.04 else rng.choice(["failed", "retry", "lost"])
            occ = f"occ:task:{client}:{kind.replace('.', '-')}:{n}"
            history.started(occ, kind, client, moment.timestamp())
            history.finished(occ, kind, client, status, moment.timestamp() + took)
            n += 1
        moment += timedelta(minutes=rng.choice([4, 5, 6, 7]))


def _spin(seconds: float) -> None:
    from PySide6.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def inner(out: Path) -> int:
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QApplication, QWidget

    qt_app = QApplication(["couchfarm"])
    qt_app.setQuitOnLastWindowClosed(False)
    # A plain "desktop" first, then the tray host on top of it (no window manager here:
    # the window mapped last is on top).
    desktop = QWidget()
    desktop.setWindowFlags(Qt.WindowType.FramelessWindowHint)
    desktop.setStyleSheet(
        "background: qlineargradient(x1:0, y1:0, x2:0, y2:1, stop:0 #4a7fb5, stop:1 #2c4f7c);"
    )
    desktop.setGeometry(qt_app.primaryScreen().geometry())
    desktop.show()
    _spin(0.5)
    trayer = subprocess.Popen(
        trayer_command(460), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _spin(1.0)
        return _shoot(qt_app, out)
    finally:
        _end(trayer)


def _shoot(qt_app: Any, out: Path) -> int:
    from keyring.backends import fail
    from PySide6.QtCore import QPoint, QRect
    from PySide6.QtGui import QImage
    from PySide6.QtWidgets import QSystemTrayIcon

    from desktop_worker.tray.app import build_app
    from desktop_worker.tray.clock import FakeClock
    from desktop_worker.tray.conditions import IdleDetector, Power
    from desktop_worker.tray.diagnose import Check, Diagnosis
    from desktop_worker.tray.fake import FakeEngine
    from desktop_worker.tray.store import SecretStore, SettingsStore

    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="couchfarm-shots-"))
    clock = FakeClock(datetime(2026, 12, 1, 14, 32))  # a Tuesday afternoon
    store = SettingsStore(
        work / "worker.toml", data_dir=work, secrets=SecretStore(work, fail.Keyring())
    )
    store.save(
        {
            **store.load(),
            "hub_urls": ["https://hub.example.org:6984", "https://standby.example.org:6984"],
            "name": "kitchen-pc",
            "password": "correct horse battery staple",
            "tubes": ["default", "windows"],
            "slots": 2,
            "idle_minutes": 5,
            "hours": {"sat": "off", "sun": "10:00-18:00"},
        }
    )
    config = store.worker_config()
    engines: list[FakeEngine] = []

    def factory(cfg: Any) -> FakeEngine:
        engine = FakeEngine(cfg, now=clock.now)
        engines.append(engine)
        return engine

    diagnosis = Diagnosis(
        True,
        "ok",
        "https://hub.example.org:6984: connected as worker 'kitchen-pc'; database 'farm' "
        "is readable",
        (Check("https://hub.example.org:6984", True, "ok", "connected"),),
    )
    app = build_app(
        config,
        factory,
        clock,
        store=store,
        idle=IdleDetector("X11 (xprintidle)", True, lambda: 3600.0),
        power=lambda: Power(False, None, "psutil (no battery)"),
        tester=lambda *_a, **_k: diagnosis,
        quit_app=qt_app.quit,
        autostart_env={"XDG_CONFIG_HOME": str(work / "xdg")},
    )
    _spin(0.5)
    engine = engines[-1]
    _history(app, clock.now())
    for level, text in [
        ("INFO", "state: idle"),
        ("WARNING", "event=touch_offline occ=occ:task:acme:ping:20261201T085900Z"),
    ]:
        app.model.add_log(level, text)
    a = "occ:task:acme:status-page:" + clock.now().strftime("%Y%m%dT%H%M00Z")
    b = "occ:task:globex:prices:" + clock.now().strftime("%Y%m%dT%H%M00Z")
    engine.begin_run(a, "http.fetch", "acme", ttr=120)
    _spin(0.3)
    clock.advance(seconds=19)
    engine.begin_run(b, "demo.sleep", "globex", ttr=300)
    _spin(0.3)
    clock.advance(seconds=28)
    engine.progress(a, 73, 100, "parsing")
    engine.progress(b, 40, 100, "slept 12000 of 30000 ms")
    _spin(0.6)

    # 1. the real tray icon and its menu, from the X screen
    if not QSystemTrayIcon.isSystemTrayAvailable():
        print("screenshots: no system tray on this display (is trayer running?)")
        return 3
    _spin(1.5)  # let trayer embed the icon
    icon_rect = app.tray.icon.geometry()
    if icon_rect.isEmpty():
        screen = qt_app.primaryScreen().geometry()
        icon_rect = QRect(screen.right() - 30, 0, 28, 28)
    menu = app.tray.menu
    menu.popup(QPoint(icon_rect.right() - 360, icon_rect.bottom() + 2))
    _spin(1.0)
    shot = work / "root.png"
    subprocess.run(["import", "-window", "root", str(shot)], check=True, timeout=30)
    root = QImage(str(shot))
    area = menu.geometry().united(icon_rect).adjusted(-24, -6, 24, 24)
    area.setRight(root.width() - 1)
    area = area.intersected(root.rect())
    root.copy(area).save(str(out / "tray-menu.png"))
    menu.hide()

    # 2. the main window, two runs in progress
    window = app.window
    window.resize(940, 300)
    app.open_window()
    window.tabs.setCurrentIndex(0)
    _spin(0.8)
    window.refresh_runs()
    window.grab().save(str(out / "tray-main-window.png"))

    # 3. statistics
    window.resize(940, 560)
    window.tabs.setCurrentIndex(3)
    _spin(0.5)
    window.grab().save(str(out / "tray-stats.png"))

    # 4. settings after "Test connection"
    dialog = app.open_settings()
    dialog.resize(640, 600)
    dialog.test_connection()
    for _ in range(100):
        _spin(0.05)
        if dialog.last_diagnosis is not None:
            break
    _spin(0.3)
    dialog.grab().save(str(out / "tray-settings.png"))
    dialog.reject()

    for name in ("tray-menu", "tray-main-window", "tray-stats", "tray-settings"):
        print(f"wrote {out / (name + '.png')}")
    app.quit_now()
    _spin(0.5)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "screenshots"))
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.inner:
        return inner(out)
    return outer(out)


if __name__ == "__main__":
    sys.exit(main())
