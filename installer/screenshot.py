"""The BUILT Linux bundle in a real tray: docs/screenshots/package-tray.png.

    .venv/bin/python installer/screenshot.py [--out docs/screenshots/package-tray.png]

Run after ``make package``. Starts a local PouchDB hub (``hub.devserver``, loopback only)
with ``hub init`` and a worker user, seeds one ``demo.sleep`` occurrence, then starts Xvfb,
the ``trayer`` tray host and ``installer/dist/couchfarm-worker/couchfarm-worker`` on Qt's
xcb platform with a throw-away config. Once the frozen worker has claimed the run (in a
child process), it right-clicks the tray icon with ``xdotool`` and saves the panel and
the open menu from the X screen (``import -window root``). Then it waits for the run to be
``done`` on the hub and stops everything it started.

Needs: xvfb, trayer, imagemagick, xdotool (Debian packages).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BUNDLE = HERE / "dist" / "couchfarm-worker" / "couchfarm-worker"
WIDTH, HEIGHT = 1024, 640
PANEL = 28
WORKING_BLUE = (0x1F, 0x6F, 0xD1)  # desktop_worker.tray.icons.COLOURS[WORKING]


def free_display() -> int:
    for number in range(120, 250):
        if not Path(f"/tmp/.X{number}-lock").exists():
            return number
    raise RuntimeError("no free X display number")


def end(process: subprocess.Popen | None, group: bool = False) -> None:
    if process is None or process.poll() is not None:
        return
    try:
        if group:
            os.killpg(process.pid, signal.SIGTERM)
        else:
            process.terminate()
        process.wait(10)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            if group:
                os.killpg(process.pid, signal.SIGKILL)
            else:
                process.kill()
        except ProcessLookupError:
            pass


def seed(admin, db: str, ms: int) -> str:  # type: ignore[no-untyped-def]
    from hub.protocol import states
    from hub.protocol.model import Task, task_id
    from hub.protocol.timefmt import to_wire

    now = admin.now().replace(microsecond=0)
    stamp = to_wire(now)
    task = Task(
        _id=task_id("acme", "packaged"),
        client="acme",
        slug="packaged",
        kind="demo.sleep",
        input={"ms": ms},
        schedule={"every": 3600},
        ttr=60,
        created_at=stamp,
        updated_at=stamp,
    )
    admin.put(db, task.to_doc())
    occ = states.materialize(task, now - timedelta(seconds=1), now)
    admin.put(db, occ.to_doc())
    return occ.id


def wait_for(check, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    raise RuntimeError(f"timed out waiting for {what}")


def find_icon(png: Path) -> tuple[int, int] | None:
    """Centre of the working-blue tray icon in the panel of a root screenshot."""
    from PySide6.QtGui import QImage

    image = QImage(str(png))
    hits = []
    for y in range(PANEL):
        for x in range(image.width() - 300, image.width()):
            colour = image.pixelColor(x, y)
            rgb = (colour.red(), colour.green(), colour.blue())
            if all(abs(a - b) <= 24 for a, b in zip(rgb, WORKING_BLUE, strict=True)):
                hits.append((x, y))
    if not hits:
        return None
    xs, ys = [h[0] for h in hits], [h[1] for h in hits]
    return (min(xs) + max(xs)) // 2, (min(ys) + max(ys)) // 2


def crop(before: Path, after: Path, out: Path) -> None:
    """Save the top-right corner of ``after``: the panel and whatever appeared since
    ``before`` (the menu), with a margin of desktop around it."""
    from PySide6.QtCore import QRect
    from PySide6.QtGui import QImage

    old, new = QImage(str(before)), QImage(str(after))
    left, bottom = new.width() - 320, PANEL
    for y in range(0, new.height() // 2, 2):
        for x in range(new.width() // 3, new.width(), 2):
            if old.pixel(x, y) != new.pixel(x, y):
                left, bottom = min(left, x), max(bottom, y)
    left = max(0, left - 24)
    area = QRect(left, 0, new.width() - left, min(new.height(), bottom + 24))
    out.parent.mkdir(parents=True, exist_ok=True)
    new.copy(area).save(str(out))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "screenshots" / "package-tray.png"))
    args = parser.parse_args(argv)
    for tool in ("Xvfb", "trayer", "import", "display", "convert", "xdotool"):
        if shutil.which(tool) is None:
            print(f"screenshot: {tool} is missing")
            return 2
    if not BUNDLE.exists():
        print(f"screenshot: {BUNDLE} is missing: run `make package` first")
        return 2
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # this process only reads PNGs
    from PySide6.QtGui import QGuiApplication

    _qt = QGuiApplication.instance() or QGuiApplication(["screenshot"])

    from desktop_worker.tray.screenshots import trayer_command
    from hub import provision
    from hub.devserver import DevServer
    from hub.protocol.couch import Couch
    from hub.protocol.names import WORKER_ROLE

    work = Path(tempfile.mkdtemp(prefix="couchfarm-package-shot-"))
    dev = xvfb = trayer = app = None
    ok = False
    try:
        dev = DevServer(work / "hub").start()
        admin = Couch(dev.url, dev.admin_user, dev.admin_password)
        provision.init(admin, "farm", now=admin.now(), hub_user="")
        password = "packaged-worker-password"
        provision.add_user(admin, "kitchen-pc", [WORKER_ROLE], password, replace=True)
        (work / "password").write_text(password + "\n")
        config_dir = work / "config" / "couchfarm"
        config_dir.mkdir(parents=True)
        (config_dir / "worker.toml").write_text(
            f'hub_urls = ["{dev.url}"]\n'
            'name = "kitchen-pc"\n'
            'db = "farm"\n'
            f'password_file = "{work / "password"}"\n'
            "poll_interval_s = 2.0\n"
        )
        occ_id = seed(admin, "farm", ms=20000)

        number = free_display()
        display = f":{number}"
        xvfb = subprocess.Popen(
            ["Xvfb", display, "-screen", "0", f"{WIDTH}x{HEIGHT}x24", "-nolisten", "tcp"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: Path(f"/tmp/.X11-unix/X{number}").exists(), 10, "Xvfb")
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("WAYLAND_DISPLAY", "DBUS_SESSION_BUS_ADDRESS", "QT_QPA_PLATFORM")
        }
        env.update(
            DISPLAY=display,
            QT_QPA_PLATFORM="xcb",
            XDG_CONFIG_HOME=str(work / "config"),
            XDG_DATA_HOME=str(work / "data"),
            XDG_RUNTIME_DIR=str(work / "run"),
            PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",
        )
        (work / "run").mkdir(mode=0o700)
        background = work / "desktop.png"
        subprocess.run(
            ["convert", "-size", f"{WIDTH}x{HEIGHT}", "gradient:#4a7fb5-#2c4f7c", str(background)],
            check=True,
        )
        # ImageMagick's display paints the root window and exits (its code is 1 then)
        subprocess.run(
            ["display", "-window", "root", str(background)], env=env, check=False, timeout=20
        )
        trayer = subprocess.Popen(
            trayer_command(300, PANEL),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)
        log = (work / "app.log").open("w")
        started = time.monotonic()
        app = subprocess.Popen(
            [str(BUNDLE)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_for(lambda: admin.get("farm", occ_id)["state"] == "leased", 60, "the worker's claim")
        print(f"claimed {occ_id} {time.monotonic() - started:.1f} s after the bundle started")
        time.sleep(1.5)
        before, after = work / "before.png", work / "after.png"
        subprocess.run(["import", "-window", "root", str(before)], env=env, check=True)
        icon = find_icon(before)
        if icon is None:
            print(f"screenshot: no tray icon found in the panel (see {before})")
            return 3
        # click near the icon's lower edge: the menu opens at the pointer, below the panel
        subprocess.run(
            ["xdotool", "mousemove", str(icon[0]), str(PANEL - 2), "click", "3"],
            env=env,
            check=True,
        )
        time.sleep(1.5)
        subprocess.run(["import", "-window", "root", str(after)], env=env, check=True)
        out = Path(args.out)
        crop(before, after, out)
        print(f"wrote {out}")
        subprocess.run(["xdotool", "key", "Escape"], env=env, check=False)
        done = wait_for(
            lambda: admin.get("farm", occ_id)["state"] == "done" and admin.get("farm", occ_id),
            60,
            "the run to finish",
        )
        print(f"{occ_id}: done by {done['result']['worker']}, output {done['result']['output']}")
        ok = True
        return 0
    finally:
        end(app, group=True)
        end(trayer)
        end(xvfb)
        if dev is not None:
            dev.stop()
        if ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work folder (logs, screenshots): {work}")


if __name__ == "__main__":
    sys.exit(main())
