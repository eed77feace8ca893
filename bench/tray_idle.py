"""What the tray app costs while it waits: resident memory and CPU over a quiet minute.

Starts PouchDB Server (or uses COUCHDB_URL), creates a farm database and a worker user, then
runs the tray app (``desktop_worker.tray.app.build_app`` with the real Engine, Qt offscreen)
in a child process with nothing to do: the engine is connected (changes feed, heartbeat) and
idle. After a warm-up, it samples the child for ``--seconds`` (default 60) with psutil:

- RSS at the start and end of the window, and its peak (target: at most 80 MB);
- CPU time used in the window as a share of one core (target: about 0).

    .venv/bin/python bench/tray_idle.py [--seconds 60] [--warmup 8]
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RSS_TARGET_MB = 80.0


def child(url: str, db: str, password: str, data: str) -> int:
    """The tray app itself: real engine, nothing to do."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from keyring.backends import fail
    from PySide6.QtWidgets import QApplication

    from desktop_worker.config import WorkerConfig
    from desktop_worker.engine import Engine
    from desktop_worker.tray.app import build_app
    from desktop_worker.tray.clock import SystemClock
    from desktop_worker.tray.store import SecretStore, SettingsStore

    qt_app = QApplication(["couchfarm-bench"])
    qt_app.setQuitOnLastWindowClosed(False)
    base = Path(data)
    config = WorkerConfig(
        hub_urls=[url],
        name="w1",
        password=password,
        db=db,
        tubes=["bench-idle"],
        spool_path=base / "spool.sqlite3",
    )
    store = SettingsStore(
        base / "worker.toml", data_dir=base, secrets=SecretStore(base, fail.Keyring())
    )
    app = build_app(config, Engine, SystemClock(), store=store, quit_app=qt_app.quit)

    def report(state: str, why: str) -> None:
        print(f"state {state} {why}", flush=True)

    app.bridge.stateChanged.connect(report)
    return qt_app.exec()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=8.0)
    parser.add_argument("--child", nargs=4, metavar=("URL", "DB", "PASSWORD", "DATA"))
    args = parser.parse_args()
    if args.child:
        return child(*args.child)

    import psutil

    from hub import provision
    from hub.couch import Couch
    from hub.devserver import DevServer

    work = Path(tempfile.mkdtemp(prefix="couchfarm-tray-bench-"))
    dev = None
    if os.environ.get("COUCHDB_URL"):
        url = os.environ["COUCHDB_URL"].rstrip("/")
        admin = Couch(
            url, os.environ.get("COUCHDB_USER", "admin"), os.environ.get("COUCHDB_PASSWORD")
        )
    else:
        dev = DevServer(work / "server").start()
        url = dev.url
        admin = Couch(url, dev.admin_user, dev.admin_password)
    db = f"farm_tray_bench_{secrets.token_hex(3)}"
    password = secrets.token_urlsafe(12)
    provision.init(admin, db, now=admin.now(), hub_user="")
    provision.add_user(admin, "w1", [provision.WORKER_ROLE], password, replace=True)

    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    process = subprocess.Popen(
        [sys.executable, __file__, "--child", url, db, password, str(work / "app")],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        began = time.monotonic()
        state = ""
        while time.monotonic() - began < 30:
            line = process.stdout.readline()
            if not line:
                break
            if line.startswith("state idle"):
                state = "idle"
                break
        if state != "idle":
            print("the tray app did not reach the idle state", file=sys.stderr)
            return 1
        time.sleep(args.warmup)
        proc = psutil.Process(process.pid)
        rss_start = proc.memory_info().rss
        cpu_start = sum(proc.cpu_times()[:2])
        peak = rss_start
        t0 = time.monotonic()
        while time.monotonic() - t0 < args.seconds:
            time.sleep(1.0)
            peak = max(peak, proc.memory_info().rss)
        elapsed = time.monotonic() - t0
        cpu = sum(proc.cpu_times()[:2]) - cpu_start
        rss_end = proc.memory_info().rss
        uss = proc.memory_full_info().uss
        children = len(proc.children(recursive=True))
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        if dev is not None:
            dev.stop()
        else:
            admin.delete_db(db)

    mb = 1024 * 1024
    print(f"tray app idle for {elapsed:.0f} s with the real engine connected, nothing to do")
    print(
        f"RSS: start {rss_start / mb:.1f} MB, end {rss_end / mb:.1f} MB, peak {peak / mb:.1f} MB "
        f"(USS {uss / mb:.1f} MB; target <= {RSS_TARGET_MB:.0f} MB)"
    )
    print(
        f"CPU: {cpu:.2f} s in {elapsed:.0f} s = {cpu / elapsed * 100:.2f} % of one core "
        "(target ~ 0)"
    )
    print(f"child processes while idle: {children}")
    return 0 if peak / mb <= RSS_TARGET_MB else 3


if __name__ == "__main__":
    sys.exit(main())
