"""Latency with idle workers: due → claimed and due → done, and requests per occurrence.

``hub serve`` running, ``latency_workers`` real headless workers (``desktop-worker
--headless``, child process per run) waiting, and ``latency_tasks`` demo.sleep (ms=0) tasks
every ``latency_every`` s whose start times are spread evenly over the interval, so one
occurrence falls due every interval/tasks seconds and the workers are idle when it does.

From the documents (hub time, which every writer takes from the server's ``Date`` header):
due → created (``created_at``, the hub's materializing lateness), due → claimed
(``lease.claimed_at`` of revision 2, the claim, read back with ``_bulk_get``), due → started
(``result.started_at``) and due → done (``result.finished_at``). A bench observer follows
``_changes`` too and notes the local time it first sees each occurrence leased and done: a
check on the timestamps that does not depend on the writers' clock estimates (its own
requests are marked and left out of the request counts).

Requests per completed occurrence = all requests logged during the measured seconds (hub
and workers) / occurrences done that fell due then.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.common import (
    BenchServer,
    ChangesObserver,
    Scale,
    Section,
    all_occurrences,
    by_method_status,
    latency_summary,
    log,
    sleep_until,
    summary,
)
from bench.farm import Credentials, Farm
from hub.protocol.couch import Couch
from hub.protocol.timefmt import from_wire


class Observer(ChangesObserver):
    """Follows ``_changes`` and notes when each occurrence is first seen in each state."""

    include_docs = True

    def __init__(self, server: BenchServer, db: str, until: float) -> None:
        super().__init__(server, db, until, name="bench-observer")
        self.seen: dict[str, dict[str, float]] = {}

    def note(self, rows: list[dict[str, Any]], now: float) -> None:
        for row in rows:
            doc = row.get("doc") or {}
            if not str(row.get("id", "")).startswith("occ:"):
                continue
            states = self.seen.setdefault(row["id"], {})
            states.setdefault(str(doc.get("state")), now)


def claimed_at(couch: Couch, db: str, docs: list[dict[str, Any]]) -> dict[str, str]:
    """``lease.claimed_at`` of revision 2 (the claim) of each done occurrence."""
    out: dict[str, str] = {}
    wanted = []
    for doc in docs:
        rev_no = int(doc["_rev"].split("-", 1)[0])
        if rev_no >= 3:
            wanted.append(doc["_id"])
    for start in range(0, len(wanted), 200):
        chunk = wanted[start : start + 200]
        with_revs = couch.request(
            "POST",
            f"/{db}/_bulk_get",
            params={"revs": "true"},
            body={"docs": [{"id": i} for i in chunk]},
        ).body["results"]
        second = []
        for item in with_revs:
            ok = (item.get("docs") or [{}])[0].get("ok") or {}
            ids = (ok.get("_revisions") or {}).get("ids") or []
            if len(ids) >= 2:
                second.append({"id": item["id"], "rev": f"2-{ids[-2]}"})
        if not second:
            continue
        body = couch.request("POST", f"/{db}/_bulk_get", body={"docs": second}).body
        for item in body["results"]:
            ok = (item.get("docs") or [{}])[0].get("ok") or {}
            lease = ok.get("lease") or {}
            if ok.get("state") == "leased" and lease.get("claimed_at"):
                out[item["id"]] = lease["claimed_at"]
    return out


def run(server: BenchServer, scale: Scale, workdir: Path, credentials: Credentials) -> Section:
    section = Section(
        "latency",
        "See bench/latency.py. "
        + f"{scale.latency_tasks} tasks every {scale.latency_every} s (one due every "
        + f"{scale.latency_every / scale.latency_tasks:g} s), {scale.latency_workers} idle "
        + f"workers, {scale.latency_window_s} s measured as {scale.reps} back-to-back windows.",
    )
    db = "bench_latency"
    farm = Farm(server, db, workdir, credentials)
    window = scale.latency_window_s
    try:
        farm.start_hub()
        farm.add_workers(scale.latency_workers, "spawn")
        time.sleep(2.0)  # first heartbeats and feeds settle
        base = farm.add_spread_tasks("lat", scale.latency_tasks, scale.latency_every, lead_s=4)
        observer = Observer(server, db, until=base + window + 30)
        observer.start()
        sleep_until(base)
        seen_start = observer.couch.requests_sent
        mark_start = server.mark()
        cpu_start = farm.cpu()
        sleep_until(base + window)
        mark_end = server.mark()
        observer_requests = observer.couch.requests_sent - seen_start
        cpu_end = farm.cpu()
        time.sleep(4.0)  # the last ones finish
        observer.stop_event.set()
        observer.join(10)
    finally:
        farm.stop()
    docs = all_occurrences(server.admin, db)
    claims = claimed_at(server.admin, db, [d for d in docs if d.get("state") == "done"])
    server.drop_db(db)

    samples: dict[str, list[list[float]]] = {
        k: [[] for _ in range(scale.reps)]
        for k in ("created", "claimed", "started", "done", "seen_leased", "seen_done")
    }
    states: dict[str, int] = {}
    clock_skew: list[float] = []
    done_in_window = 0
    for doc in docs:
        due = from_wire(doc["due_at"]).timestamp()
        if not base <= due < base + window:
            continue
        rep = min(scale.reps - 1, int((due - base) // (window / scale.reps)))
        states[doc["state"]] = states.get(doc["state"], 0) + 1
        samples["created"][rep].append(from_wire(doc["created_at"]).timestamp() - due)
        seen = observer.seen.get(doc["_id"], {})
        if doc["state"] != "done":
            continue
        done_in_window += 1
        result = doc["result"]
        samples["started"][rep].append(from_wire(result["started_at"]).timestamp() - due)
        samples["done"][rep].append(from_wire(result["finished_at"]).timestamp() - due)
        if doc["_id"] in claims:
            claim = from_wire(claims[doc["_id"]]).timestamp()
            samples["claimed"][rep].append(claim - due)
            if "leased" in seen:
                clock_skew.append(seen["leased"] - claim)
        if "leased" in seen:
            samples["seen_leased"][rep].append(seen["leased"] - due)
        if "done" in seen:
            samples["seen_done"][rep].append(seen["done"] - due)
    # The observer's own requests: marked in PouchDB's log, counted by its client on CouchDB.
    figures = server.figures(mark_start, mark_end, exclude=observer_requests)
    cores = {role: (cpu_end[role] - cpu_start[role]) / window for role in cpu_end}
    out: dict[str, Any] = {
        "tasks": scale.latency_tasks,
        "every_s": scale.latency_every,
        "workers": scale.latency_workers,
        "window_s": window,
        "states_of_due_occurrences": states,
        "overall": {k: latency_summary([x for rep in v for x in rep]) for k, v in samples.items()},
        "per_rep": {
            k: {p: summary(latency_summary(rep)[p] for rep in v) for p in ("p50", "p95", "p99")}
            for k, v in samples.items()
        },
        "observer_minus_stamp_s": latency_summary(clock_skew),
        "requests": figures.requests,
        "server": figures.to_json(),
        "done": done_in_window,
        "requests_per_occurrence": figures.requests / done_in_window if done_in_window else None,
        "requests_per_occurrence_by_endpoint": {
            label: n / done_in_window
            for label, n in (figures.endpoints or by_method_status(figures)).items()
        }
        if done_in_window
        else {},
        "cores_by_role": cores,
    }
    overall = out["overall"]
    log(
        f"latency: due→claimed p50/p95/p99 "
        f"{overall['claimed']['p50']}/{overall['claimed']['p95']}/{overall['claimed']['p99']} s, "
        f"req/occ {out['requests_per_occurrence']}"
    )
    section.data = out
    return section
