"""What the tray app costs while it waits: resident memory and CPU over a quiet minute.

Starts PouchDB Server (or uses COUCHDB_URL), creates a farm database and a worker user, then
runs the tray app (``desktop_worker.tray.app.build_app`` with the real Engine, Qt offscreen)
in a child process with nothing to do: the engine is connected (changes feed, heartbeat) and
idle. After a warm-up, it samples the child for ``--seconds`` (default 60) with psutil:

- RSS at the start and end of the window, and its peak (target: at most 80 MB). The RSS
  is the tray process's plus that of every child process it keeps (none while idle: the
  runner's forkserver starts with the first run), so nothing hides in a helper process;
- CPU time used in the window as a share of one core (target: about 0).

``--runs N`` repeats the whole measurement in fresh processes and reports the median.
``--after-run`` first gives the app one ``demo.sleep`` run and waits until it is done, so
the measurement includes what a run leaves behind (on POSIX, the runner's forkserver and
multiprocessing's resource tracker stay alive as child processes; their RSS is added).
``--breakdown`` prints where the memory is at the end (``/proc/PID/smaps``: anonymous
memory, the heap, and the largest shared libraries), Linux only.

The child starts the way ``desktop-worker`` does (``desktop_worker.cli``'s imports, then
``desktop_worker.tray.app``, then the engine through ``default_engine_factory``), so
start-up measures, import order included.

    .venv/bin/python bench/tray_idle.py [--seconds 60] [--warmup 8] [--runs 3] [--breakdown]
"""

from __future__ import annotations

import argparse
import collections
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RSS_TARGET_MB = 80.0
PASSWORD_ENV = "COUCHFARM_BENCH_PASSWORD"


def child(url: str, db: str, data: str) -> int:
    """The tray app itself: real engine, nothing to do. Imports in ``main``'s order."""
    password = os.environ.pop(PASSWORD_ENV)  # not on the command line: it may start with "-"
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    # The console entry point's own imports count too (it is what a volunteer launches).
    import desktop_worker.cli  # noqa: F401

    # Then, as in desktop-worker: the tray package readies the engine before Qt (lean.py).
    from desktop_worker.tray.app import build_app, default_engine_factory

    # isort: split
    from keyring.backends import fail
    from PySide6.QtWidgets import QApplication

    from desktop_worker.config import WorkerConfig
    from desktop_worker.tray.clock import SystemClock
    from desktop_worker.tray.single import SingleInstance
    from desktop_worker.tray.store import SecretStore, SettingsStore

    qt_app = QApplication(["couchfarm-bench"])
    qt_app.setQuitOnLastWindowClosed(False)
    single = SingleInstance(f"couchfarm-bench-{os.getpid()}")  # main() claims one too
    single.claim()
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
    app = build_app(
        config,
        default_engine_factory,
        SystemClock(),
        store=store,
        single=single,
        quit_app=qt_app.quit,
    )

    def report(state: str, why: str) -> None:
        print(f"state {state} {why}", flush=True)

    app.bridge.stateChanged.connect(report)
    return qt_app.exec()


def smaps_breakdown(pid: int, top: int = 12) -> list[tuple[str, int]]:
    """(mapping, resident KiB) for the largest mappings of ``pid``; anonymous memory as one."""
    totals: collections.Counter[str] = collections.Counter()
    current = "?"
    with open(f"/proc/{pid}/smaps", encoding="utf-8") as file:
        for line in file:
            parts = line.split()
            if not parts:
                continue
            if not parts[0].endswith(":"):  # a mapping header: range perms offset dev inode path
                path = parts[5] if len(parts) > 5 else "[anon]"
                current = path.split("site-packages/")[-1]
            elif parts[0] == "Rss:":
                totals[current] += int(parts[1])
    return totals.most_common(top)


def seed_one_run(admin: Any, db: str) -> str:
    """One ready demo.sleep occurrence in the bench's tube; returns its id."""
    from datetime import timedelta

    from hub.protocol import states
    from hub.protocol.model import Task, task_id
    from hub.protocol.timefmt import to_wire

    now = admin.now().replace(microsecond=0)
    stamp = to_wire(now)
    task = Task(
        _id=task_id("bench", "idle-once"),
        client="bench",
        slug="idle-once",
        kind="demo.sleep",
        input={"ms": 100},
        schedule={"every": 3600},
        tube="bench-idle",
        ttr=60,
        created_at=stamp,
        updated_at=stamp,
    )
    if admin.get_or_none(db, task.id) is None:
        admin.put(db, task.to_doc())
    occ = states.materialize(task, now - timedelta(seconds=1), now)
    admin.put(db, occ.to_doc())
    return occ.id


def measure(
    args: argparse.Namespace, url: str, db: str, password: str, work: Path, admin: Any
) -> dict:
    import psutil

    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", PASSWORD_ENV: password}
    process = subprocess.Popen(
        [sys.executable, __file__, "--child", url, db, str(work)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )

    def tree_rss(proc: psutil.Process) -> tuple[int, int]:
        """(RSS of the tray and all its children, number of children)."""
        kids = proc.children(recursive=True)
        total = proc.memory_info().rss
        for kid in kids:
            try:
                total += kid.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total, len(kids)

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
            raise RuntimeError("the tray app did not reach the idle state")
        if args.after_run:
            occ_id = seed_one_run(admin, db)
            deadline = time.monotonic() + 60
            while (admin.get_or_none(db, occ_id) or {}).get("state") != "done":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the run {occ_id} did not finish within 60 s")
                time.sleep(0.5)
        time.sleep(args.warmup)
        proc = psutil.Process(process.pid)
        rss_start, children = tree_rss(proc)
        cpu_start = sum(proc.cpu_times()[:4])  # children's times count too, once reaped
        peak = rss_start
        t0 = time.monotonic()
        while time.monotonic() - t0 < args.seconds:
            time.sleep(1.0)
            rss, kids = tree_rss(proc)
            peak = max(peak, rss)
            children = max(children, kids)
        elapsed = time.monotonic() - t0
        cpu = sum(proc.cpu_times()[:4]) - cpu_start
        rss_end, _ = tree_rss(proc)
        uss = proc.memory_full_info().uss
        # PSS shares each page among the processes mapping it: the tree's sum without
        # counting twice the libraries the tray and its helpers both map.
        pss = 0
        for member in [proc, *proc.children(recursive=True)]:
            try:
                pss += member.memory_full_info().pss
            except (psutil.NoSuchProcess, AttributeError):
                pass
        breakdown = smaps_breakdown(process.pid) if args.breakdown else []
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return {
        "elapsed": elapsed,
        "rss_start": rss_start,
        "rss_end": rss_end,
        "peak": peak,
        "uss": uss,
        "pss": pss,
        "cpu": cpu,
        "children": children,
        "breakdown": breakdown,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=8.0)
    parser.add_argument("--runs", type=int, default=1, help="repeat; report the median")
    parser.add_argument("--breakdown", action="store_true", help="where the memory is")
    parser.add_argument("--after-run", action="store_true", help="measure after one run")
    parser.add_argument("--child", nargs=3, metavar=("URL", "DB", "DATA"))
    args = parser.parse_args()
    if args.child:
        return child(*args.child)

    from hub import provision
    from hub.devserver import DevServer
    from hub.protocol.couch import Couch
    from hub.protocol.names import WORKER_ROLE

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
    provision.add_user(admin, "w1", [WORKER_ROLE], password, replace=True)

    mb = 1024 * 1024
    runs = []
    try:
        for number in range(max(1, args.runs)):
            try:
                run = measure(args, url, db, password, work / f"app{number}", admin)
            except RuntimeError as exc:
                print(str(exc), file=sys.stderr)
                return 1
            runs.append(run)
            print(
                f"run {number + 1}: RSS start {run['rss_start'] / mb:.1f} MB, "
                f"end {run['rss_end'] / mb:.1f} MB, peak {run['peak'] / mb:.1f} MB "
                f"(USS {run['uss'] / mb:.1f} MB, PSS of the tree {run['pss'] / mb:.1f} MB); "
                f"CPU {run['cpu']:.2f} s in "
                f"{run['elapsed']:.0f} s; child processes {run['children']}",
                flush=True,
            )
    finally:
        if dev is not None:
            dev.stop()
        else:
            admin.delete_db(db)

    def median(key: str) -> float:
        return statistics.median(run[key] for run in runs)

    elapsed = median("elapsed")
    peak = median("peak")
    cpu = median("cpu")
    print(
        f"tray app idle for {elapsed:.0f} s with the real engine connected, nothing to do "
        f"{'(after one run) ' if args.after_run else ''}(median of {len(runs)} run(s))"
    )
    print(
        f"RSS (tray + children): start {median('rss_start') / mb:.1f} MB, "
        f"end {median('rss_end') / mb:.1f} MB, peak {peak / mb:.1f} MB "
        f"(USS {median('uss') / mb:.1f} MB, PSS {median('pss') / mb:.1f} MB; "
        f"target <= {RSS_TARGET_MB:.0f} MB)"
    )
    print(
        f"CPU: {cpu:.2f} s in {elapsed:.0f} s = {cpu / elapsed * 100:.2f} % of one core "
        "(target ~ 0)"
    )
    print(f"child processes while idle: {max(run['children'] for run in runs)}")
    if runs[-1]["breakdown"]:
        print("resident memory by mapping at the end of the last run (MB):")
        for name, kib in runs[-1]["breakdown"]:
            print(f"  {kib / 1024:6.1f}  {name}")
    return 0 if peak / mb <= RSS_TARGET_MB else 3


if __name__ == "__main__":
    sys.exit(main())
