"""Portal dashboard: server time for one client with many tasks and many finished results.

Builds a farm on a fresh database: TASKS tasks for one client, RESULTS archived results per
task spread over the current and the previous month, and a few live occurrences per task
(ready, leased, done). Then asks the portal for the dashboard (JSON and the HTML page) REPS
times, in-process (FastAPI's TestClient: no network in the figure), and reports the first
call (which builds the view indexes) apart from the median and p90 of the rest, with the
number of CouchDB requests one dashboard costs.

    .venv/bin/python bench/portal_dashboard.py                      # PouchDB Server it starts
    PORTAL_BENCH_TASKS=200 PORTAL_BENCH_RESULTS=100 PORTAL_BENCH_REPS=9 \\
        .venv/bin/python bench/portal_dashboard.py
    COUCHDB_URL=http://127.0.0.1:5984 COUCHDB_USER=admin COUCHDB_PASSWORD=... \\
        .venv/bin/python bench/portal_dashboard.py                  # a real CouchDB 3
"""

from __future__ import annotations

import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastapi.testclient import TestClient

from hub import archiver, provision, states
from hub.couch import Couch
from hub.devserver import DevServer
from hub.portal.app import create_app
from hub.provision import results_db
from hub.service import FarmService, build_task

TASKS = int(os.environ.get("PORTAL_BENCH_TASKS", "200"))
RESULTS = int(os.environ.get("PORTAL_BENCH_RESULTS", "50"))  # archived results per task
REPS = int(os.environ.get("PORTAL_BENCH_REPS", "7"))
BATCH = 1000


def build(admin: Couch, db: str) -> tuple[Couch, str]:
    now = admin.now().replace(microsecond=0)
    provision.init(admin, db, now=now, hub_user="")
    hub_password, client_password = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
    provision.add_user(admin, "bench-hub", [provision.ADMIN_ROLE], hub_password, replace=True)
    provision.add_user(admin, "bench-acme", ["client:acme"], client_password, replace=True)
    hub = Couch(admin.servers[0].url, "bench-hub", hub_password)
    created = now - timedelta(days=40)
    tasks = [
        build_task(
            "acme", f"task-{i:04d}",
            {"kind": "demo.sleep", "input": {"ms": 5}, "schedule": {"every": 60}}, created,
        )
        for i in range(TASKS)
    ]  # fmt: skip
    bulk(hub, db, [t.to_doc() for t in tasks])
    live, by_month = [], {}
    span = timedelta(days=35)
    for index, task in enumerate(tasks):
        for k in range(RESULTS):
            due = (now - span + span * k / max(RESULTS, 1)).replace(microsecond=0)
            started = due + timedelta(seconds=1)
            occ = states.claim(states.materialize(task, due, due), "w1", started)
            if (k + index) % 17 == 0:
                final = states.fail(occ, "w1", started, error="boom", permanent=True)
            else:
                final = states.finish(
                    occ, "w1", started + timedelta(milliseconds=250), started_at=started,
                    output={"status": 200, "bytes": 1024},
                )  # fmt: skip
            doc = archiver.to_result(final).to_doc()
            by_month.setdefault(results_db(db, due), []).append(doc)
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
    for month_db, docs in by_month.items():
        provision.ensure_results_db(admin, month_db)
        bulk(hub, month_db, docs)
    return hub, client_password


def probe_result(db: str, rep: int) -> dict:
    """A result of another client, as the archiver would write it (changes the month)."""
    from hub.model import Result

    occ = f"occ:task:probe:p:20000101T0000{rep:02d}Z"
    return Result(
        _id=f"res:{occ}", occurrence=occ, task="task:probe:p", client="probe", kind="demo.sleep",
        due_at=f"2000-01-01T00:00:{rep:02d}.000Z", state="done", attempt=1, status="ok",
    ).to_doc()  # fmt: skip


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
                      os.environ.get("COUCHDB_PASSWORD", "admin"))  # fmt: skip
        server = "CouchDB at " + admin.servers[0].label
    else:
        dev = DevServer(Path(tempfile.mkdtemp(prefix="portal-bench-")),
                        admin_password=secrets.token_urlsafe(12)).start()  # fmt: skip
        admin = Couch(dev.url, dev.admin_user, dev.admin_password)
        server = "PouchDB Server (dev)"
    db = f"farm_portal_bench_{secrets.token_hex(3)}"
    try:
        t0 = time.perf_counter()
        hub, password = build(admin, db)
        setup_s = time.perf_counter() - t0
        service = FarmService(hub, db)
        app = create_app(service, hub, secret_key=secrets.token_urlsafe(32))
        client = TestClient(app)
        login = client.post("/login", data={"username": "bench-acme", "password": password})
        assert login.status_code == 200, login.text
        report = {
            "server": server,
            "tasks": TASKS,
            "archived_results": TASKS * RESULTS,
            "live_occurrences": TASKS * 3,
            "setup_s": round(setup_s, 1),
        }
        for name, path, headers in (
            ("json", "/api/tasks", {"Accept": "application/json"}),
            ("html", "/", {"Accept": "text/html"}),
        ):
            first, _size = timed(client, path, headers)
            times = []
            sent_before = hub.requests_sent
            for _ in range(REPS):
                elapsed, size = timed(client, path, headers)
                times.append(elapsed)
            per_call = (hub.requests_sent - sent_before) / REPS
            times.sort()
            report[name] = {
                "first_s": round(first, 3),
                "median_s": round(statistics.median(times), 3),
                "p90_s": round(times[min(len(times) - 1, int(len(times) * 0.9))], 3),
                "couch_requests_per_call": round(per_call, 1),
                "bytes": size,
            }
        # The archiver writes to the current month every 30 s, so on a busy farm that month's
        # outcomes are reduced again on most dashboard calls (past months stay cached).
        month_db = results_db(db, hub.now())
        times = []
        for rep in range(REPS):
            hub.put(month_db, probe_result(db, rep))
            elapsed, _size = timed(client, "/api/tasks", {"Accept": "application/json"})
            times.append(elapsed)
        times.sort()
        report["json_current_month_changing"] = {
            "median_s": round(statistics.median(times), 3),
            "p90_s": round(times[min(len(times) - 1, int(len(times) * 0.9))], 3),
        }
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
