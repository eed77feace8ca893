"""The archiver: finished occurrences move to the month's results database, then leave.

Copies each occurrence in a final state (older than a short window) to
``<db>_results_YYYY_MM`` (month of its due time) as ``res:{occurrence}``. The id is
deterministic, so a second copy is a 409 and exactly one result exists per occurrence.
Once the copy exists, the occurrence is deleted from the live database, except the
newest occurrence of each task, which anchors where a restarted hub resumes.

Each month database also holds one tally per task, ``tally:{task}``: counts by status, the
latest due time of each status, and duration/latency sums. The portal's dashboard reads
those (a few hundred small documents) instead of reducing every result at query time,
which PouchDB Server does on each query and which would scale with the number of results.

A tally counts each result exactly once, even with retries, a crash between writes or two
hubs archiving the same occurrences at once (see :func:`store_results`):

1. the batch is announced in each affected tally (``pending[batch]``: its occurrences);
2. the results are written carrying ``batch``; write-once ids mean exactly one writer ever
   creates a given result, so exactly one batch owns it;
3. the batch is folded: the tally adds the results that carry that batch and drops
   ``pending[batch]``, in one document write (optimistic ``_rev``, retried on 409).

A crash after 1 leaves ``pending[batch]`` behind; :func:`recover_pending` folds it later
from the results that carry the batch. Folding is one atomic document update that removes
the pending entry, so no batch is ever counted twice.

Recounting a tally from the stored results (``hub tallies rebuild``, a tally conflicted by
replication) lives in :mod:`hub.tallies`.

Retention drops whole monthly databases (server-admin rights needed).
"""

from __future__ import annotations

import copy
import logging
import random
import secrets
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from hub.protocol import quorum
from hub.protocol.couch import Couch, CouchError, NotFound
from hub.protocol.model import Occurrence, Result, State, result_id
from hub.protocol.names import is_results_db, results_db
from hub.protocol.timefmt import from_wire, to_wire

log = logging.getLogger("couchfarm.archiver")
BATCH = 500
TALLY_PREFIX = "tally:"
# A batch still pending after this long was left by a writer that died (a live writer folds
# within one request's time); recover_pending folds it from the results it wrote.
PENDING_GRACE = timedelta(minutes=5)
TALLY_ATTEMPTS = 20  # optimistic retries of one tally update under contention (409)


@dataclass
class ArchiveReport:
    archived: int = 0
    already: int = 0
    removed: int = 0
    missing_db: list[str] = field(default_factory=list)
    until: str | None = None
    recovered: int = 0  # pending tally batches folded for a writer that died


def to_result(occ: Occurrence) -> Result:
    run = occ.result
    duration = latency = None
    if run is not None:
        started, finished = from_wire(run.started_at), from_wire(run.finished_at)
        duration = int((finished - started).total_seconds() * 1000)
        latency = int((started - from_wire(occ.due_at)).total_seconds() * 1000)
    status: Any = run.status if (occ.state == State.DONE and run) else occ.state.value
    return Result(
        _id=result_id(occ.id),
        occurrence=occ.id,
        task=occ.task,
        client=occ.client,
        kind=occ.kind,
        due_at=occ.due_at,
        state=occ.state,
        attempt=occ.attempt,
        worker=run.worker if run else None,
        started_at=run.started_at if run else None,
        finished_at=run.finished_at if run else None,
        status=status,
        output=run.output if run else None,
        error=(run.error if run else None) or occ.reason,
        errors=occ.errors,
        duration_ms=duration,
        latency_ms=latency,
        # Quorum runs: the decision, and every slot's result (canonical included).
        validation=occ.validation,
        alternatives=quorum.alternatives(occ) if occ.is_quorum and occ.slots else None,
    )


# ---------------------------------------------------------------- tallies


def tally_id(task: str) -> str:
    return f"{TALLY_PREFIX}{task}"


def new_batch_id(now: datetime) -> str:
    """Names one archiving write; random, so two hubs' batches never share a name."""
    return f"{to_wire(now)}-{secrets.token_hex(6)}"


def empty_tally(task: str, client: str) -> dict[str, Any]:
    return {
        "_id": tally_id(task),
        "type": "tally",
        "client": client,
        "task": task,
        "statuses": {},  # status -> {"count": n, "max": latest due time, epoch seconds}
        "duration_ms": {"sum": 0, "n": 0},
        "latency_ms": {"sum": 0, "n": 0},
        "pending": {},  # batch -> {"at": wire time, "occurrences": [occurrence ids]}
    }


def add_to_tally(tally: dict[str, Any], result: dict[str, Any]) -> None:
    """Count one result document in ``tally`` (in place)."""
    status = str(result.get("status"))
    entry = tally.setdefault("statuses", {}).setdefault(status, {"count": 0, "max": 0})
    entry["count"] += 1
    due = from_wire(result["due_at"]).timestamp()
    entry["max"] = max(entry["max"], int(due) if due == int(due) else due)
    for key in ("duration_ms", "latency_ms"):
        value = result.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            agg = tally.setdefault(key, {"sum": 0, "n": 0})
            agg["sum"] += value
            agg["n"] += 1


class TallyContention(CouchError):
    """A tally stayed contended (409) for TALLY_ATTEMPTS rounds; its batch stays pending."""


def update_tallies(
    couch: Couch,
    db: str,
    ids: list[str],
    change: Callable[[str, dict[str, Any] | None], dict[str, Any] | None],
) -> int:
    """Read-modify-write of tally documents with optimistic concurrency.

    ``change(id, doc or None)`` returns the new document (a fresh copy is passed, so it may
    edit it) or None for no write. Conflicted ones are re-read and changed again, so
    ``change`` must be a function of the document it is given. Returns documents written.
    """
    todo = sorted(set(ids))
    written = 0
    for attempt in range(TALLY_ATTEMPTS):
        if not todo:
            return written
        if attempt:
            # Writers that lost together retry apart (full jitter, capped), or on a loaded
            # machine the same ones collide again on every one of the attempts.
            time.sleep(random.uniform(0, min(0.5, 0.01 * 2**attempt)))
        writes = []
        for row in couch.all_docs(db, keys=todo, include_docs=True):
            doc = row.get("doc")
            new = change(row["key"], copy.deepcopy(doc) if doc else None)
            if new is not None:
                writes.append(new)
        todo = []
        for doc, row in zip(writes, couch.bulk_docs(db, writes), strict=True):
            if "rev" in row:
                written += 1
            elif row.get("error") == "conflict":
                todo.append(doc["_id"])
            else:
                raise CouchError(f"tally {doc['_id']} in {db}: {row.get('reason')}")
    if todo:
        raise TallyContention(f"tallies in {db} still contended: {todo[:5]}")
    return written


def fold(couch: Couch, db: str, batch: str, ours: list[dict[str, Any]], tallies: list[str]) -> int:
    """Count ``ours`` (results this batch created) in ``tallies`` and close the batch there.

    A tally whose ``pending`` no longer names the batch was folded already (by a
    recovery that ran meanwhile): it is left alone, so the batch counts once.
    """
    by_tally: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for doc in ours:
        by_tally[tally_id(doc["task"])].append(doc)

    def close(tid: str, doc: dict[str, Any] | None) -> dict[str, Any] | None:
        if doc is None or batch not in (doc.get("pending") or {}):
            return None
        for result in by_tally.get(tid, []):
            add_to_tally(doc, result)
        del doc["pending"][batch]
        return doc

    return update_tallies(couch, db, tallies, close)


def store_results(
    couch: Couch,
    db: str,
    results: list[dict[str, Any]],
    now: datetime,
    *,
    batch: str | None = None,
) -> list[dict[str, Any]]:
    """Write result documents to month database ``db`` and count them in their tallies.

    Returns the ``_bulk_docs`` rows of the results, in input order. The only writer of
    results and tallies; the bench and the tests load results through it too.
    """
    if not results:
        return []
    batch = batch or new_batch_id(now)
    docs = [{**doc, "batch": batch} for doc in results]
    members: dict[str, list[str]] = defaultdict(list)
    clients: dict[str, str] = {}
    for doc in docs:
        members[tally_id(doc["task"])].append(doc["occurrence"])
        clients[tally_id(doc["task"])] = doc["client"]
    stamp = to_wire(now)

    def announce(tid: str, doc: dict[str, Any] | None) -> dict[str, Any]:
        doc = doc or empty_tally(tid.removeprefix(TALLY_PREFIX), clients[tid])
        doc.setdefault("pending", {})[batch] = {"at": stamp, "occurrences": members[tid]}
        return doc

    # 1. Announce first: a result is never written without a pending entry naming it.
    update_tallies(couch, db, list(members), announce)
    # 2. The results. Each one is created by exactly one writer, so owned by one batch.
    rows = couch.bulk_docs(db, docs)
    ours = [doc for doc, row in zip(docs, rows, strict=True) if "rev" in row]
    unsure = [doc["_id"] for doc, row in zip(docs, rows, strict=True) if "rev" not in row]
    if unsure:
        # A refusal may hide our own write (a retried request whose first try landed):
        # the stored document says which batch created it.
        for row in couch.all_docs(db, keys=unsure, include_docs=True):
            if (row.get("doc") or {}).get("batch") == batch:
                ours.append(row["doc"])
    # 3. Fold: count what this batch created, close the batch. A crash before this point
    # leaves the batch pending, and recover_pending finishes it from the stored results.
    fold(couch, db, batch, ours, list(members))
    return rows


def recover_pending(couch: Couch, db: str, now: datetime, grace: timedelta = PENDING_GRACE) -> int:
    """Fold batches announced more than ``grace`` ago and never folded (their writer died).

    Counts the results of each such batch that carry its name, as the writer would have.
    """
    try:
        rows = couch.view(
            db, "results", "pending_tallies", endkey=to_wire(now - grace), include_docs=True
        )["rows"]
    except NotFound:
        return 0
    recovered = 0
    for row in rows:
        doc, batch = row.get("doc") or {}, row["value"]
        occurrences = ((doc.get("pending") or {}).get(batch) or {}).get("occurrences") or []
        ours = []
        for start in range(0, len(occurrences), BATCH):
            keys = [result_id(o) for o in occurrences[start : start + BATCH]]
            for found in couch.all_docs(db, keys=keys, include_docs=True):
                if (found.get("doc") or {}).get("batch") == batch:
                    ours.append(found["doc"])
        if fold(couch, db, batch, ours, [row["id"]]):
            recovered += 1
            log.warning(
                "event=tally_batch_recovered db=%s tally=%s batch=%s results=%d",
                db, row["id"], batch, len(ours),
            )  # fmt: skip
    return recovered


def archive(
    couch: Couch,
    db: str,
    now: datetime,
    *,
    window: timedelta = timedelta(minutes=5),
    keep: Callable[[Occurrence], bool] = lambda occ: False,
    since: str | None = None,
) -> ArchiveReport:
    """One pass over occurrences that ended before ``now - window`` (and after ``since``,
    the ``until`` of the previous pass, so kept occurrences are not copied each pass)."""
    report = ArchiveReport(until=since)
    rows = couch.view(
        db, "farm", "finished_by_time", startkey=since, endkey=to_wire(now - window),
        include_docs=True, limit=BATCH,
    )["rows"]  # fmt: skip
    if rows:
        report.until = rows[-1]["key"]
    by_month: dict[str, list[Occurrence]] = defaultdict(list)
    for row in rows:
        occ = Occurrence.from_doc(row["doc"])
        by_month[results_db(db, from_wire(occ.due_at))].append(occ)
    removable: list[dict[str, Any]] = []
    for month_db, occs in by_month.items():
        try:
            written = store_results(couch, month_db, [to_result(o).to_doc() for o in occs], now)
        except NotFound:
            log.error(
                "event=results_db_missing db=%s hint='run hub init or give the hub admin rights'",
                month_db,
            )
            report.missing_db.append(month_db)
            continue
        for occ, row in zip(occs, written, strict=True):
            if "rev" in row:
                report.archived += 1
            elif row.get("error") == "conflict" or "already exists" in str(row.get("reason")):
                # CouchDB answers 409; a server that runs validation first answers 403.
                report.already += 1
            else:
                log.error("event=archive_failed occ=%s error=%s", occ.id, row.get("reason"))
                continue
            if not keep(occ):
                removable.append({"_id": occ.id, "_rev": occ.rev, "_deleted": True})
    if removable:
        for row in couch.bulk_docs(db, removable):
            report.removed += "rev" in row
    # Batches a dead writer left pending: in the months written now, this month and the
    # last (where a crashed pass wrote; its occurrences were not removed, so the pass
    # after a restart writes to the same months again).
    last_month = now.replace(day=1) - timedelta(days=1)
    sweep = set(by_month) | {results_db(db, now), results_db(db, last_month)}
    for month_db in sorted(sweep):
        try:
            report.recovered += recover_pending(couch, month_db, now)
        except CouchError as exc:
            log.warning("event=tally_recovery_failed db=%s error=%s", month_db, exc)
    return report


def expired_months(all_dbs: list[str], db: str, now: datetime, retention_days: int) -> list[str]:
    """Monthly results databases whose whole month ended more than ``retention_days`` ago."""
    cutoff = now - timedelta(days=retention_days)
    expired = []
    for name in all_dbs:
        if not is_results_db(db, name):
            continue
        year, month = (int(part) for part in name.rsplit("_", 2)[-2:])
        month_end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=now.tzinfo)
        if month_end <= cutoff:
            expired.append(name)
    return sorted(expired)
