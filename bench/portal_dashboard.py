"""Portal dashboard: server time for one client with many tasks and many finished results.

Builds a farm on a fresh database: TASKS tasks for one client, RESULTS archived results per
task spread over about two and a half months (three or four monthly results databases),
and a few live occurrences per task (ready, leased, done). The results are loaded in big
``_bulk_docs`` batches through ``hub.archiver.store_results``, the archiver's own write, so
the per-task tallies the dashboard reads are the ones archiving makes. Then asks the
portal for the dashboard (JSON and the HTML page) REPS times, in-process (FastAPI's
TestClient: no network in the figure), and reports the first call apart from the median,
p90 and p95 of the rest, with the number of CouchDB requests one dashboard costs. A second
series changes the current month before each call (the archiver writes it every 30 s), so
its tallies are read again instead of coming from the portal's per-month cache.

    .venv/bin/python bench/portal_dashboard.py                     # full: 200 x 5,000 = 1M
    PORTAL_BENCH_SCALE=small .venv/bin/python bench/portal_dashboard.py   # 50 x 20, fast
    PORTAL_BENCH_TASKS=200 PORTAL_BENCH_RESULTS=100 PORTAL_BENCH_REPS=9 \\
        .venv/bin/python bench/portal_dashboard.py
    COUCHDB_URL=http://127.0.0.1:5984 COUCHDB_USER=admin COUCHDB_PASSWORD=... \\
        .venv/bin/python bench/portal_dashboard.py                 # a real CouchDB 3
"""

from __future__ import annotations

import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastapi.testclient import TestClient

from hub import archiver, provision
from hub.devserver import DevServer
from hub.portal.app import create_app
from hub.protocol import states
from hub.protocol.couch import Couch
from hub.protocol.model import Task, occurrence_id, result_id
from hub.protocol.names import ADMIN_ROLE, results_db
from hub.protocol.timefmt import to_wire
from hub.service import FarmService, build_task

SCALES = {
    "small": {"tasks": 50, "results": 20, "reps": 9},
    "full": {"tasks": 200, "results": 5000, "reps": 41},  # 1,000,000 finished occurrences
}
# PORTAL_BENCH_SCALE, else make bench's BENCH_SCALE, else full (the figure).
SCALE = os.environ.get("PORTAL_BENCH_SCALE") or os.environ.get("BENCH_SCALE") or "full"
SCALE = SCALE.strip().lower()
if SCALE not in SCALES:
    raise SystemExit(f"PORTAL_BENCH_SCALE must be one of {', '.join(SCALES)}, not {SCALE!r}")
TASKS = int(os.environ.get("PORTAL_BENCH_TASKS", SCALES[SCALE]["tasks"]))
RESULTS = int(os.environ.get("PORTAL_BENCH_RESULTS", SCALES[SCALE]["results"]))  # per task
REPS = int(os.environ.get("PORTAL_BENCH_REPS", SCALES[SCALE]["reps"]))
BATCH = 1000  # live documents per _bulk_docs
RESULT_BATCH = 10_000  # results per store_results call (one _bulk_docs of results)
SPAN = timedelta(days=75)


def templates(task: Task, due: datetime) -> dict[str, dict[str, Any]]:
    """One result of each kind for ``task``, made by the state machine and the archiver.

    The million results are copies of these with their own ids and times (building each
    through pydantic would take longer than loading them).
    """
    started = due + timedelta(seconds=1)
    occ = states.claim(states.materialize(task, due, due), "w1", started)
    ok = states.finish(
        occ, "w1", started + timedelta(milliseconds=250), started_at=started,
        output={"status": 200, "bytes": 1024},
    )  # fmt: skip
    failed = states.fail(occ, "w1", started, error="boom", permanent=True)
    return {
        "ok": archiver.to_result(ok).to_doc(),
        "failed": archiver.to_result(failed).to_doc(),
    }


def result_copy(template: dict[str, Any], task: Task, due: datetime) -> dict[str, Any]:
    doc = dict(template)
    occ = occurrence_id(task.id, due)
    doc["_id"], doc["occurrence"], doc["due_at"] = result_id(occ), occ, to_wire(due)
    if "started_at" in doc:
        started = due + timedelta(seconds=1)
        doc["started_at"] = to_wire(started)
        if doc.get("status") == "ok":
            doc["finished_at"] = to_wire(started + timedelta(milliseconds=250))
        else:
            doc["finished_at"] = to_wire(started)
    return doc


def build(admin: Couch, db: str) -> tuple[Couch, str, dict[str, Any]]:
    now = admin.now().replace(microsecond=0)
    provision.init(admin, db, now=now, hub_user="")
    hub_password, client_password = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
    provision.add_user(admin, "bench-hub", [ADMIN_ROLE], hub_password, replace=True)
    provision.add_user(admin, "bench-acme", ["client:acme"], client_password, replace=True)
    hub = Couch(admin.servers[0].url, "bench-hub", hub_password, read_timeout=300.0)
    created = now - SPAN - timedelta(days=5)
    tasks = [
        build_task(
            "acme", f"task-{i:04d}",
            {"kind": "demo.sleep", "input": {"ms": 5}, "schedule": {"every": 60}}, created,
        )
        for i in range(TASKS)
    ]  # fmt: skip
    bulk(hub, db, [t.to_doc() for t in tasks])
    live = []
    for task in tasks:
        for minutes, kind in ((3, "done"), (2, "leased"), (1, "ready")):
            due = now - timedelta(minutes=minutes)
            occ = states.materialize(task, due, due)
            if kind != "ready":
                occ = states.claim(occ, "w1", due)
            if kind == "done":
                occ = states.finish(occ, "w1", due + timedelta(seconds=1), started_at=due,
                                    output={"status": 200})  # fmt: skip
            live.append(occ.to_doc())
    bulk(hub, db, live)
    # Results, oldest first, every task in each batch (as archiving a busy farm does).
    # Due times are whole seconds and distinct per task; failures: every 17th.
    step = SPAN / max(RESULTS, 1)
    start = now - SPAN - timedelta(hours=1)
    kinds = {t.id: templates(t, start) for t in tasks}
    loaded, pending_db, pending = 0, None, []
    began = time.perf_counter()
    for k in range(RESULTS):
        due = (start + step * k).replace(microsecond=0)
        month_db = results_db(db, due)
        if month_db != pending_db:
            if pending:
                loaded += flush(hub, pending_db, pending, now)
                pending = []
            provision.ensure_results_db(admin, month_db)
            pending_db = month_db
        for index, task in enumerate(tasks):
            kind = "failed" if (k + index) % 17 == 0 else "ok"
            pending.append(result_copy(kinds[task.id][kind], task, due))
        if len(pending) >= RESULT_BATCH:
            loaded += flush(hub, pending_db, pending, now)
            pending = []
            if loaded % 100_000 < RESULT_BATCH:
                rate = loaded / (time.perf_counter() - began)
                print(f"loaded {loaded:,} results ({rate:,.0f}/s)", file=sys.stderr, flush=True)
    if pending:
        loaded += flush(hub, pending_db, pending, now)
    load_s = time.perf_counter() - began
    return hub, client_password, {"results_loaded": loaded, "load_s": round(load_s, 1),
                                  "load_docs_per_s": round(loaded / max(load_s, 1e-9))}  # fmt: skip


def flush(hub: Couch, month_db: str, docs: list[dict[str, Any]], now: datetime) -> int:
    rows = archiver.store_results(hub, month_db, docs, now)
    bad = [r for r in rows if "rev" not in r]
    if bad:
        raise SystemExit(f"results write to {month_db} failed: {bad[:3]}")
    return len(rows)


def probe_result(rep: int) -> dict:
    """A result of another client, as the archiver would write it (changes the month)."""
    from hub.protocol.model import Result

    stamp = f"20000101T{rep // 3600:02d}{rep // 60 % 60:02d}{rep % 60:02d}Z"
    occ = f"occ:task:probe:p:{stamp}"
    due = f"2000-01-01T{rep // 3600:02d}:{rep // 60 % 60:02d}:{rep % 60:02d}.000Z"
    return Result(
        _id=f"res:{occ}", occurrence=occ, task="task:probe:p", client="probe", kind="demo.sleep",
        due_at=due, state="done", attempt=1, status="ok",
    ).to_doc()  # fmt: skip


def summary(times: list[float]) -> dict[str, float]:
    times = sorted(times)

    def pick(q: float) -> float:
        return round(times[min(len(times) - 1, int(len(times) * q))], 3)

    return {"median_s": round(statistics.median(times), 3), "p90_s": pick(0.9),
            "p95_s": pick(0.95), "max_s": round(times[-1], 3), "n": len(times)}  # fmt: skip


def expected_counts() -> tuple[int, int]:
    """(ok, error) the dashboard must show: archived plus one live done per task."""
    failed = sum(1 for k in range(RESULTS) for i in range(TASKS) if (k + i) % 17 == 0)
    return TASKS * RESULTS - failed + TASKS, failed


def bulk(couch: Couch, db: str, docs: list[dict]) -> None:
    for start in range(0, len(docs), BATCH):
        rows = couch.bulk_docs(db, docs[start : start + BATCH])
        bad = [r for r in rows if "rev" not in r]
        if bad:
            raise SystemExit(f"bulk write to {db} failed: {bad[:3]}")


def timed(client: TestClient, path: str, headers: dict[str, str]) -> tuple[float, int]:
    started = time.perf_counter()
    reply = client.get(path, headers=headers)
    elapsed = time.perf_counter() - started
    if reply.status_code != 200:
        raise SystemExit(f"{path}: {reply.status_code} {reply.text[:300]}")
    return elapsed, len(reply.content)


def main() -> int:
    dev = None
    url = os.environ.get("COUCHDB_URL")
    if url:
        admin = Couch(url, os.environ.get("COUCHDB_USER", "admin"),
                      os.environ.get("COUCHDB_PASSWORD", "admin"), read_timeout=300.0)  # fmt: skip
        server = "CouchDB at " + admin.servers[0].label
    else:
        dev = DevServer(Path(tempfile.mkdtemp(prefix="portal-bench-")),
                        admin_password=secrets.token_urlsafe(12)).start()  # fmt: skip
        admin = Couch(dev.url, dev.admin_user, dev.admin_password, read_timeout=300.0)
        server = "PouchDB Server (dev)"
    db = f"farm_portal_bench_{secrets.token_hex(3)}"
    try:
        t0 = time.perf_counter()
        hub, password, loading = build(admin, db)
        setup_s = time.perf_counter() - t0
        service = FarmService(hub, db)
        app = create_app(service, hub, secret_key=secrets.token_urlsafe(32))
        client = TestClient(app)
        login = client.post("/login", data={"username": "bench-acme", "password": password})
        assert login.status_code == 200, login.text
        months = sorted(n for n in admin.all_dbs() if n.startswith(f"{db}_results_"))
        report: dict[str, Any] = {
            "server": server,
            "scale": SCALE,
            "tasks": TASKS,
            "archived_results": TASKS * RESULTS,
            "results_dbs": len(months),
            "live_occurrences": TASKS * 3,
            "setup_s": round(setup_s, 1),
            **loading,
        }
        # The figures mean nothing if the counts are wrong: check them against the fixture.
        board = client.get("/api/tasks", headers={"Accept": "application/json"}).json()
        want_ok, want_error = expected_counts()
        got = (board["totals"]["ok"], board["totals"]["error"])
        report["counts_checked"] = got == (want_ok, want_error)
        if got != (want_ok, want_error):
            raise SystemExit(f"dashboard totals {got} != expected {(want_ok, want_error)}")
        pages = (
            ("json", "/api/tasks", {"Accept": "application/json"}),
            ("html", "/", {"Accept": "text/html"}),
        )
        for name, path, headers in pages:
            first, _size = timed(client, path, headers)
            times = []
            sent_before = hub.requests_sent
            for _ in range(REPS):
                elapsed, size = timed(client, path, headers)
                times.append(elapsed)
            per_call = (hub.requests_sent - sent_before) / REPS
            report[name] = {
                "first_s": round(first, 3),
                **summary(times),
                "couch_requests_per_call": round(per_call, 1),
                "bytes": size,
            }
        # The archiver writes to the current month every 30 s, so on a busy farm that month's
        # tallies are read again on most dashboard calls (past months stay cached).
        month_db = results_db(db, hub.now())
        provision.ensure_results_db(admin, month_db)
        probe = 0
        for name, path, headers in pages:
            times = []
            for _ in range(REPS):
                archiver.store_results(hub, month_db, [probe_result(probe)], hub.now())
                probe += 1
                elapsed, _size = timed(client, path, headers)
                times.append(elapsed)
            report[f"{name}_current_month_changing"] = summary(times)
        print(json.dumps(report, indent=2))
    finally:
        try:
            for name in admin.all_dbs():
                if name == db or name.startswith(f"{db}_results_"):
                    admin.delete_db(name)
        finally:
            if dev is not None:
                dev.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
