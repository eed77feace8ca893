"""Cluster: the fleet's load on a CouchDB cluster, and a check that every occurrence has
at most one result (issue 21, item 2).

Runs only with ``COUCHDB_NODE_URLS`` set (the node URLs of one cluster; ``COUCHDB_URL`` is
one of them). The real hub (``hub serve``, on ``COUCHDB_URL``) and W engines
(bench/workers/fleet_host.py, runs in-process), the workers spread round-robin over the
node URLs (``BENCH_PIN_NODE=1``: all on the first node). Load: ``BENCH_CLUSTER_TASKS``
tasks of ``demo.sleep`` ``BENCH_CLUSTER_MS`` every ``BENCH_CLUSTER_EVERY`` s, starts spread,
``overlap: allow``, for ``BENCH_CLUSTER_SECONDS``; then the tasks are paused, the fleet
finishes what it holds, the workers stop, and the hub keeps running until no live
occurrence is in conflict (its resolver settles what it sees on its feed) and nothing is
leased. Defaults: W = 16 (``BENCH_CLUSTER_WORKERS``), 100 tasks every 5 s for 600 s
(20 occurrences/s offered, ~12,000 occurrences).

Then :func:`check` scans the live database and every results database:

- results: every ``res:`` leaf in every month, plus each live occurrence's ``done``
  leaves; an occurrence with two different results (worker, finish time) counts as
  *two results*, the acceptance figure (0 expected);
- conflicts left: documents with more than one live leaf (0 expected once settled);
- double claims, seen by the server: occurrences whose revision tree forked into two
  branches each starting with a ``leased`` revision by a different worker (read with
  ``_changes?style=all_docs`` for the leaves, then ``open_revs=all&revs=true`` and the
  branches' first revisions); settled ones have a deleted leaf;
- double claims and double runs, seen by the workers (their run tables,
  ``fleet_host`` ``runs``): occurrences whose same attempt was started by two workers
  (each ran it: a double run), and how those runs ended (``lost`` = fenced: the touch
  or finish got a 409, result dropped; ``done`` = the finish was accepted).
"""

from __future__ import annotations

import os
import secrets
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from bench.common import (
    BenchServer,
    Scale,
    Section,
    add_users_bulk,
    log,
    wait_for,
)
from bench.farm import Credentials, Farm
from bench.fleet import Fleet, _can_log_in, worker_names
from hub.protocol.couch import Couch, CouchError
from hub.protocol.names import WORKER_ROLE
from hub.protocol.timefmt import to_wire

DB = "bench_cluster"


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


# ---------------------------------------------------------------- the check


def leaves_by_doc(couch: Couch, db: str) -> dict[str, list[str]]:
    """Every document's leaf revisions, deleted ones included (``style=all_docs``)."""
    out: dict[str, list[str]] = {}
    since = "0"
    while True:
        rows, last = couch.changes(
            db, since=since, limit=5000, params={"style": "all_docs"}, wait=0
        )
        for row in rows:
            out[row["id"]] = [c["rev"] for c in row.get("changes", [])]
        if len(rows) < 5000 or last == since:
            return out
        since = last


def open_revs(couch: Couch, db: str, doc_id: str) -> list[dict[str, Any]]:
    """Every leaf of a document with its revision history (``open_revs=all&revs=true``)."""
    body = couch.request(
        "GET",
        Couch.doc_path(db, doc_id),
        params={"open_revs": "all", "revs": "true"},
        headers={"Accept": "application/json"},
    ).body
    return [row["ok"] for row in body or [] if "ok" in row]


def _rev_ids(doc: dict[str, Any]) -> list[str]:
    """The branch's revisions, oldest first (``1-a``, ``2-b`` ...)."""
    revs = doc.get("_revisions") or {}
    start, ids = int(revs.get("start", 0)), list(revs.get("ids", []))
    return [f"{start - i}-{rid}" for i, rid in enumerate(ids)][::-1]


def forks(couch: Couch, db: str, doc_id: str) -> dict[str, Any]:
    """How a conflicted document's branches began: the first revision of each branch after
    the last common one (state, lease worker), and which leaves are deleted."""
    branches = [d for d in open_revs(couch, db, doc_id) if d.get("_revisions")]
    paths = [_rev_ids(d) for d in branches]
    common = 0
    while paths and all(len(p) > common for p in paths) and len({p[common] for p in paths}) == 1:
        common += 1
    firsts = []
    for doc, path in zip(branches, paths, strict=True):
        if len(path) <= common:
            continue
        rev = path[common]
        if rev == doc["_rev"] and not doc.get("_deleted"):
            body: dict[str, Any] | None = doc
        else:
            try:
                body = couch.get(db, doc_id, rev=rev)
            except CouchError:
                body = None  # compacted away
        firsts.append(
            {
                "rev": rev,
                "state": (body or {}).get("state"),
                "worker": ((body or {}).get("lease") or {}).get("worker"),
                "leaf_deleted": bool(doc.get("_deleted")),
            }
        )
    return {"id": doc_id, "common": common, "branches": firsts}


def _result_key(result: dict[str, Any]) -> tuple[str, str]:
    return (str(result.get("worker") or ""), str(result.get("finished_at") or ""))


def check(couch: Couch, db: str) -> dict[str, Any]:
    """Scan the live database and its results databases (see the module docstring)."""
    results: dict[str, set[tuple[str, str]]] = defaultdict(set)
    occurrences: set[str] = set()
    conflicts_left: list[str] = []
    forked: list[dict[str, Any]] = []
    # Live database.
    live_leaves = leaves_by_doc(couch, db)
    for doc_id, revs in live_leaves.items():
        if not doc_id.startswith("occ:"):
            if len(revs) > 1:
                docs = [d for d in open_revs(couch, db, doc_id) if not d.get("_deleted")]
                if len(docs) > 1:
                    conflicts_left.append(doc_id)
            continue
        occurrences.add(doc_id)
        if len(revs) == 1:
            continue
        alive = [d for d in open_revs(couch, db, doc_id) if not d.get("_deleted")]
        if len(alive) > 1:
            conflicts_left.append(doc_id)
        forked.append(forks(couch, db, doc_id))
    # Done occurrences still live: one request for all winners, then the conflicted ones'
    # other live leaves.
    start = "occ:"
    while True:
        rows = couch.all_docs(
            db, startkey=start, endkey="occ:\ufff0", include_docs=True, conflicts=True, limit=5001
        )
        for row in rows[:5000]:
            doc = row.get("doc") or {}
            if doc.get("state") == "done" and doc.get("result"):
                results[doc["_id"]].add(_result_key(doc["result"]))
        if len(rows) <= 5000:
            break
        start = rows[5000]["id"]
    for doc_id in conflicts_left:
        if doc_id.startswith("occ:"):
            for doc in open_revs(couch, db, doc_id):
                if not doc.get("_deleted") and doc.get("state") == "done" and doc.get("result"):
                    results[doc_id].add(_result_key(doc["result"]))
    # Results databases: every res: leaf that is not deleted.
    months = [name for name in couch.all_dbs() if name.startswith(f"{db}_results_")]
    archived = 0
    for month in months:
        month_leaves = leaves_by_doc(couch, month)
        for doc_id, revs in month_leaves.items():
            if not doc_id.startswith("res:"):
                if len(revs) > 1:
                    alive = [d for d in open_revs(couch, month, doc_id) if not d.get("_deleted")]
                    if len(alive) > 1:
                        conflicts_left.append(f"{month}/{doc_id}")
                continue
            docs = (
                [couch.get(month, doc_id)]
                if len(revs) == 1
                else [d for d in open_revs(couch, month, doc_id) if not d.get("_deleted")]
            )
            docs = [d for d in docs if not d.get("_deleted")]
            if len(docs) > 1:
                conflicts_left.append(f"{month}/{doc_id}")
            for doc in docs:
                occ = doc.get("occurrence") or doc_id[4:]
                occurrences.add(occ)
                archived += 1
                if doc.get("status") in ("ok", "error") and doc.get("finished_at"):
                    results[occ].add(_result_key(doc))
    two_results = sorted(occ for occ, keys in results.items() if len(keys) > 1)
    leased_forks = [
        f
        for f in forked
        if len({b["worker"] for b in f["branches"] if b["state"] == "leased" and b["worker"]}) > 1
    ]
    return {
        "occurrences": len(occurrences),
        "with_a_result": sum(1 for keys in results.values() if keys),
        "archived_results": archived,
        "results_databases": months,
        "two_results": len(two_results),
        "two_results_examples": two_results[:10],
        "conflicts_left": len(conflicts_left),
        "conflicts_left_examples": conflicts_left[:10],
        "forked_occurrences": len(forked),
        "double_claims_server": len(leased_forks),
        "fork_kinds": dict(
            Counter(
                " + ".join(sorted(str(b["state"]) for b in f["branches"])) for f in forked
            ).most_common()
        ),
        "forks_settled": sum(
            1 for f in forked if sum(1 for b in f["branches"] if not b["leaf_deleted"]) <= 1
        ),
        "double_claim_examples": leased_forks[:5],
    }


def from_runs(runs: list[list[Any]]) -> dict[str, Any]:
    """Double claims and double runs from the workers' run tables."""
    by_attempt: dict[tuple[str, Any], list[list[Any]]] = defaultdict(list)
    for entry in runs:
        by_attempt[(entry[1], entry[2])].append(entry)
    doubles = {key: rows for key, rows in by_attempt.items() if len({r[0] for r in rows}) > 1}
    endings = Counter(
        " + ".join(sorted(r[4] or "running" for r in rows)) for rows in doubles.values()
    )
    return {
        "runs_started": len(runs),
        "occurrences_run": len({r[1] for r in runs}),
        "run_endings": dict(Counter(r[4] or "running" for r in runs).most_common()),
        "double_claims": len(doubles),
        # Each claim that was accepted started a run: a double claim ran twice.
        "double_runs": len(doubles),
        "double_run_endings": dict(endings.most_common()),
        "double_runs_both_done": sum(
            1 for rows in doubles.values() if sum(1 for r in rows if r[4] == "done") > 1
        ),
        "double_run_examples": [rows for rows in list(doubles.values())[:5]],
    }


# ---------------------------------------------------------------- the run


def pause_tasks(couch: Couch, db: str) -> None:
    rows = couch.all_docs(db, startkey="task:", endkey="task:\ufff0", include_docs=True)
    stamp = to_wire(couch.now())
    docs = [{**row["doc"], "paused": True, "updated_at": stamp} for row in rows if row.get("doc")]
    couch.bulk_docs(db, docs)


def _busy(couch: Couch, db: str) -> int:
    """Live occurrences still ready, leased or in conflict."""
    busy = 0
    start = "occ:"
    while True:
        rows = couch.all_docs(
            db, startkey=start, endkey="occ:\ufff0", include_docs=True, conflicts=True, limit=5001
        )
        for row in rows[:5000]:
            doc = row.get("doc") or {}
            if doc.get("state") in ("ready", "leased", "retry") or doc.get("_conflicts"):
                busy += 1
        if len(rows) <= 5000:
            return busy
        start = rows[5000]["id"]


def run(server: BenchServer, scale: Scale, workdir: Path, credentials: Credentials) -> Section:
    workers = _env_int("BENCH_CLUSTER_WORKERS", 16)
    tasks = _env_int("BENCH_CLUSTER_TASKS", 100)
    every = _env_int("BENCH_CLUSTER_EVERY", 5)
    seconds = _env_int("BENCH_CLUSTER_SECONDS", 600)
    ms = _env_int("BENCH_CLUSTER_MS", 200)
    placement = "pinned to the first node" if server.pin_node else "round-robin over the nodes"
    section = Section(
        "cluster",
        "See bench/cluster.py. "
        + f"W = {workers} engines {placement}, the hub on {server.url}; {tasks} tasks of "
        + f"demo.sleep {ms} ms every {every} s ({tasks / every:g} occ/s offered) for "
        + f"{seconds} s; then every occurrence's results and revision tree are checked.",
    )
    if not server.cluster:
        section.status, section.why = "skipped", "COUCHDB_NODE_URLS is not set"
        return section
    password = secrets.token_urlsafe(15)
    password_file = workdir / "passwords" / "cluster.password"
    password_file.parent.mkdir(parents=True, exist_ok=True)
    password_file.write_text(password)
    password_file.chmod(0o600)
    names = worker_names(workers)
    add_users_bulk(server.admin, names, WORKER_ROLE, password)
    wait_for(lambda: all(_can_log_in(server, n, password) for n in names), 60, "users to log in")
    farm = Farm(server, DB, workdir, credentials)
    fleet = Fleet(server, DB, names, password_file, workdir / DB, scale.fleet_per_host)
    began = time.monotonic()
    runs: list[list[Any]] = []
    progress: list[dict[str, Any]] = []
    try:
        farm.start_hub()
        fleet.start()
        farm.wait_checked_in(names, timeout=60 + workers)
        time.sleep(3.0)
        farm.add_spread_tasks("cluster", tasks, every, lead_s=3, ms=ms, overlap="allow")
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            time.sleep(min(60.0, seconds - (time.monotonic() - t0)))
            sample = fleet.sample()
            progress.append({"s": round(time.monotonic() - t0), "done": sample["done"],
                             "lost": sample["lost"]})  # fmt: skip
            log(f"cluster: {progress[-1]['s']} s, {sample['done']} runs done, "
                f"{sample['lost']} lost (fenced)")  # fmt: skip
        pause_tasks(server.admin, DB)
        loaded = time.monotonic() - t0
        # The fleet finishes what it holds; then only the hub runs, and settles conflicts.
        try:
            wait_for(lambda: _busy(server.admin, DB) == 0, 120, "the fleet to drain", pause=3)
        except TimeoutError as exc:
            log(f"cluster: {exc}")
        runs = fleet.runs()
        fleet.stop()
        try:
            wait_for(lambda: _busy(server.admin, DB) == 0, 60, "conflicts to settle", pause=3)
        except TimeoutError as exc:
            log(f"cluster: {exc}")
    finally:
        fleet.stop()
        farm.stop()
    scan_began = time.monotonic()
    found = check(server.admin, DB)
    from_workers = from_runs(runs)
    section.data = {
        "workers": workers,
        "nodes": server.node_urls,
        "pinned": server.pin_node,
        "tasks": tasks,
        "every_s": every,
        "ms": ms,
        "loaded_s": loaded,
        "offered_per_s": tasks / every,
        "completed_per_s": found["with_a_result"] / loaded if loaded else None,
        "progress": progress,
        "check": found,
        "workers_saw": from_workers,
        "check_s": time.monotonic() - scan_began,
        "total_s": time.monotonic() - began,
    }
    total = found["with_a_result"] or 1
    log(
        f"cluster W={workers}: {found['with_a_result']:,} occurrences with a result "
        f"({found['occurrences']:,} in all); two results: {found['two_results']}; conflicts "
        f"left: {found['conflicts_left']}; double claims: {from_workers['double_claims']} "
        f"by the workers' run tables, {found['double_claims_server']} by the revision trees "
        f"({100 * from_workers['double_claims'] / total:.3f} %); double runs "
        f"{from_workers['double_runs']}, endings {from_workers['double_run_endings']}"
    )
    if found["two_results"] or found["conflicts_left"]:
        section.status = "failed"
        section.why = (
            f"{found['two_results']} occurrences with two results, "
            f"{found['conflicts_left']} documents still in conflict"
        )
    if os.environ.get("BENCH_KEEP") != "1":
        server.drop_db(DB)
    return section
