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

A tally can be recounted from the stored results (:func:`recount_tallies`, ``hub tallies
rebuild``; :func:`resolve_tally` for one conflicted by replication). The recount relies on
the invariant the protocol keeps: a tally counts exactly the results whose batch is not in
its ``pending``. So it recounts for the revision it replaces, leaves the batches pending
there to their folds (keeping the pending entries as they are), and writes with that
revision's ``_rev``; results stored while it scans come from ``_changes``, and a 409 means
re-read, catch up, write again. It is safe while hubs archive (see :class:`_Recount`).

Retention drops whole monthly databases (server-admin rights needed).
"""

from __future__ import annotations

import copy
import json
import logging
import random
import secrets
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

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
    missing_db: list[str] | None = None
    until: str | None = None
    recovered: int = 0  # pending tally batches folded for a writer that died


def to_result(occ: Occurrence) -> Result:
    run = occ.result
    duration = latency = None
    if run is not None:
        started, finished = from_wire(run.started_at), from_wire(run.finished_at)
        duration = int((finished - started).total_seconds() * 1000)
        latency = int((started - from_wire(occ.due_at)).total_seconds() * 1000)
    status = run.status if (occ.state == State.DONE and run) else occ.state.value
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
    report = ArchiveReport(missing_db=[], until=since)
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


# ---------------------------------------------------------------- recount (rebuild)

# A batch named more than this long before a recount began is taken as settled: folded, or
# pending in the tally read before the scan. The recount checks that assumption against
# every result stored while it scans, and starts over if one breaks it.
RECENT_BATCH = timedelta(hours=1)
REBUILD_PAGE = 1000  # results per _all_docs page
RECOUNT_RESTARTS = 3  # fresh scans after the recent-batch assumption was broken
# Rounds of read-recount-write for one tally that archiving hubs keep changing (each 409
# costs a tally read and a short _changes read, not a rescan).
REBUILD_ATTEMPTS = 60
CHANGES_PAGE = 1000


class RecountRestart(CouchError):
    """A result stored during the scan belongs to a batch the scan had summed as settled."""


@dataclass
class TallyChange:
    """One task's tally, before and after a recount."""

    task: str
    action: str  # "created", "changed" or "unchanged"
    before: dict[str, int]  # counts by status
    after: dict[str, int]
    rev: str | None = None  # the revision written
    deleted: list[str] | None = None  # conflicting revisions removed


@dataclass
class RecountReport:
    db: str
    dry_run: bool = False
    results: int = 0  # result documents read
    recovered: int = 0  # batches of dead writers folded before the recount
    restarts: int = 0
    tallies: list[TallyChange] | None = None

    def of(self, action: str) -> list[TallyChange]:
        return [t for t in self.tallies or [] if t.action == action]


@dataclass
class TallyResolution:
    """A conflicted tally settled by a recount; the fields of hub.resolver.Resolution."""

    doc_id: str
    kept: str
    deleted: list[str]
    merged: bool
    change: TallyChange


@dataclass
class _Current:
    """A tally as stored: the winning revision, the other live leaves (a replication
    conflict) and the union of their pending batches."""

    doc: dict[str, Any]
    losers: list[str]
    pending: dict[str, Any]


def status_counts(doc: dict[str, Any] | None) -> dict[str, int]:
    return {s: int(v.get("count", 0)) for s, v in ((doc or {}).get("statuses") or {}).items()}


def batch_time(batch: str) -> datetime | None:
    """When a batch was named (``new_batch_id``); None for a name of another form."""
    try:
        return from_wire(batch.rsplit("-", 1)[0])
    except ValueError:
        return None


def task_of_result(doc_id: str) -> str | None:
    """``res:occ:task:acme:ping:20261122T000000Z`` -> ``task:acme:ping``."""
    parts = doc_id.split(":")
    if len(parts) != 6 or parts[:3] != ["res", "occ", "task"]:
        return None
    return ":".join(parts[2:5])


def _counted(tally: dict[str, Any] | None) -> dict[str, Any]:
    """The fields of a tally that a recount replaces (the rest is kept as stored)."""
    tally = tally or {}
    return {
        "statuses": tally.get("statuses") or {},
        "duration_ms": tally.get("duration_ms") or {"sum": 0, "n": 0},
        "latency_ms": tally.get("latency_ms") or {"sum": 0, "n": 0},
    }


def _summary(doc: dict[str, Any]) -> dict[str, Any]:
    # What add_to_tally reads; outputs and error histories are not held in memory.
    return {k: doc.get(k) for k in ("status", "due_at", "duration_ms", "latency_ms")}


def read_current(couch: Couch, db: str, tasks: list[str] | None) -> dict[str, _Current]:
    """The stored tallies of ``tasks`` (None: all of the month), by task."""
    if tasks is None:
        rows = couch.all_docs(
            db, startkey=TALLY_PREFIX, endkey=TALLY_PREFIX + "\ufff0",
            include_docs=True, conflicts=True,
        )  # fmt: skip
    else:
        rows = couch.all_docs(db, keys=[tally_id(t) for t in tasks], include_docs=True,
                              conflicts=True)  # fmt: skip
    found: dict[str, _Current] = {}
    for row in rows:
        doc = row.get("doc")
        if not doc or not str(row.get("id", "")).startswith(TALLY_PREFIX):
            continue
        conflicts = doc.pop("_conflicts", None)
        leaves = [doc]
        if conflicts:
            reply = couch.request(
                "GET", couch.doc_path(db, doc["_id"]),
                params={"open_revs": json.dumps([doc["_rev"], *conflicts])},
            )  # fmt: skip
            others = [r["ok"] for r in reply.body if "ok" in r and not r["ok"].get("_deleted")]
            leaves = [leaf for leaf in others if leaf["_rev"] != doc["_rev"]] + [doc]
        pending: dict[str, Any] = {}
        for leaf in leaves:
            # Every side's pending batches stay pending: each is folded by its own writer
            # (or recover_pending), which counts it then; dropping one would lose it.
            pending.update(leaf.get("pending") or {})
        task = doc["_id"].removeprefix(TALLY_PREFIX)
        found[task] = _Current(doc, [x["_rev"] for x in leaves if x is not doc], pending)
    return found


class _Recount:
    """The counts of some tasks' results in one month, exact while hubs archive.

    The tally protocol gives the invariant: a tally's counts are exactly the results of
    its task whose batch is not in its ``pending`` (a batch is announced before any of its
    results is stored, and folded, counted and un-pended in one write after all of them
    are). So for a tally revision read with pending P, the right counts are "every stored
    result whose batch is not in P", once every result stored before that read was seen.
    The scan pages ``_all_docs`` while the archiver writes, so a result stored behind its
    cursor is taken from ``_changes`` since a sequence read before the scan began. A
    result can come both ways; to tell them apart without holding millions of ids, only
    the results of batches that can still change state (named within RECENT_BATCH of the
    start, or pending at the start) are kept by id; the rest are summed as they pass. A
    result from ``_changes`` of a summed batch breaks that, and the scan starts over.
    """

    def __init__(self, couch: Couch, db: str, tasks: set[str] | None, page: int) -> None:
        self.couch, self.db, self.tasks, self.page = couch, db, tasks, page
        self.base: dict[str, dict[str, Any]] = {}  # task -> counts of settled results
        # task -> batch -> result id -> summary, for batches that may change state
        self.open: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
        self.start_pending: dict[str, set[str]] = {}
        self.since = "0"
        self.cutoff: datetime | None = None
        self.results = 0
        self.seen_tasks: set[str] = set()

    def tracked(self, task: str, batch: str | None) -> bool:
        if batch is None:
            return False  # archived before tallies existed: never pending, never rewritten
        if batch in self.start_pending.get(task, ()):
            return True
        named = batch_time(batch)
        return named is None or self.cutoff is None or named >= self.cutoff

    def scan(self) -> None:
        # The order matters: pending batches, then the sequence, then the scan. A batch
        # not pending at that first read and named before the cutoff was folded before it
        # (or is announced later, and then any result of it comes through _changes), so
        # all its results were stored before the sequence.
        for task, current in read_current(
            self.couch, self.db, None if self.tasks is None else sorted(self.tasks)
        ).items():
            self.start_pending[task] = set(current.pending)
            self.seen_tasks.add(task)
        self.since = self.couch.update_seq(self.db)
        self.cutoff = self.couch.now() - RECENT_BATCH
        ranges = (
            [("res:", "res:\ufff0")]
            if self.tasks is None
            else [(f"res:occ:{t}:", f"res:occ:{t}:\ufff0") for t in sorted(self.tasks)]
        )
        for start, end in ranges:
            params: dict[str, Any] = {"startkey": start}
            while True:
                rows = self.couch.all_docs(
                    self.db, endkey=end, include_docs=True, limit=self.page, **params
                )
                for row in rows:
                    self.take(row.get("doc") or {}, from_changes=False)
                if len(rows) < self.page:
                    break
                params = {"startkey": rows[-1]["key"], "skip": 1}  # ids are unique

    def take(self, doc: dict[str, Any], *, from_changes: bool) -> None:
        doc_id = str(doc.get("_id", ""))
        task = task_of_result(doc_id)
        if task is None or (self.tasks is not None and task not in self.tasks):
            return
        if doc.get("_deleted"):
            # Deleted by hand during the scan: forgotten if kept by id; a sum cannot be.
            for members in self.open.get(task, {}).values():
                if members.pop(doc_id, None) is not None:
                    return
            raise RecountRestart(f"{doc_id} was deleted during the recount")
        if doc.get("type") != "result":
            return
        self.seen_tasks.add(task)
        batch = None if doc.get("batch") is None else str(doc["batch"])
        if self.tracked(task, batch):
            self.open.setdefault(task, {}).setdefault(str(batch), {})[doc_id] = _summary(doc)
            self.results += not from_changes
        elif from_changes:
            raise RecountRestart(f"{doc_id} (batch {batch}) was stored during the recount")
        else:
            add_to_tally(self.base.setdefault(task, _counted(None)), doc)
            self.results += 1

    def catch_up(self) -> None:
        """Take in every result stored since the scan began (or the last catch-up)."""
        while True:
            rows, last = self.couch.changes(
                self.db, since=self.since, include_docs=True, limit=CHANGES_PAGE
            )
            for row in rows:
                doc = row.get("doc") or {"_id": row.get("id"), "_deleted": row.get("deleted")}
                self.take(doc, from_changes=True)
            self.since = last
            if len(rows) < CHANGES_PAGE:
                return

    def counts(self, task: str, pending: set[str]) -> dict[str, Any]:
        """The counted fields of a tally revision whose pending batches are ``pending``."""
        total = copy.deepcopy(self.base.get(task)) or _counted(None)
        for batch, members in sorted(self.open.get(task, {}).items()):
            if batch in pending:
                continue  # its fold counts it
            for summary in members.values():
                add_to_tally(total, summary)
        return total


def _rewrite(task: str, current: _Current | None, counted: dict[str, Any]) -> list[dict[str, Any]]:
    """The writes that make the tally hold ``counted``: the winning revision updated
    (pending kept), and any conflicting revisions deleted."""
    if current is None:
        return [{**empty_tally(task, task.split(":")[1]), **copy.deepcopy(counted)}]
    doc = {**copy.deepcopy(current.doc), **copy.deepcopy(counted)}
    doc["pending"] = copy.deepcopy(current.pending)
    return [doc] + [{"_id": doc["_id"], "_rev": rev, "_deleted": True} for rev in current.losers]


def recount_tallies(
    couch: Couch,
    db: str,
    *,
    tasks: set[str] | None = None,
    dry_run: bool = False,
    page: int = REBUILD_PAGE,
    recover: bool = True,
) -> RecountReport:
    """Recount the tallies of ``tasks`` (default: every task with a result or a tally) in
    month database ``db`` from its stored results, and write those that differ.

    Safe while hubs archive (see :class:`_Recount`): the counts are computed for the
    tally revision they replace, leaving out the batches pending there (their folds count
    them, and the pending entries are kept as they are), and written with that revision's
    ``_rev``. A 409 means an announce or a fold landed meanwhile: the tally is read again,
    the results stored since are taken in, and the write is tried again. A conflicted
    tally is settled on the way: its winning revision gets the counts and the union of
    every side's pending batches, and the other revisions are deleted. Running it twice
    writes nothing the second time.
    """
    report = RecountReport(db=db, dry_run=dry_run, tallies=[])
    if recover and not dry_run:
        # Batches whose writer died are folded first; left pending, they would not count.
        report.recovered = recover_pending(couch, db, couch.now())
    for restart in range(RECOUNT_RESTARTS + 1):
        try:
            report.tallies = _recount_once(couch, db, tasks, dry_run, page, report)
            break
        except RecountRestart as exc:
            if restart == RECOUNT_RESTARTS:
                raise
            report.restarts += 1
            log.warning("event=tally_recount_restart db=%s reason=%r", db, str(exc))
    for change in report.tallies or []:
        if change.action != "unchanged":
            log.warning(
                "event=tally_recounted db=%s task=%s action=%s before=%s after=%s dry_run=%s",
                db, change.task, change.action, change.before, change.after, dry_run,
            )  # fmt: skip
    return report


def _recount_once(
    couch: Couch,
    db: str,
    tasks: set[str] | None,
    dry_run: bool,
    page: int,
    report: RecountReport,
) -> list[TallyChange]:
    recount = _Recount(couch, db, tasks, page)
    recount.scan()
    report.results = recount.results
    todo = sorted(tasks if tasks is not None else recount.seen_tasks)
    done: dict[str, TallyChange] = {}
    for attempt in range(REBUILD_ATTEMPTS):
        if attempt:
            # Lost to an archiving write: let that hub's announce-write-fold burst pass.
            time.sleep(random.uniform(0, min(0.5, 0.02 * attempt)))
        # Catch up first, so the window between the tally read and the write stays short.
        recount.catch_up()
        if tasks is None:  # tasks archived for the first time during the scan
            todo = sorted(set(todo) | (recount.seen_tasks - set(done)))
        # Read the tallies, then take in the results stored up to now: every result of a
        # batch folded before this read is counted.
        current = read_current(couch, db, todo)
        recount.catch_up()
        writes: dict[str, list[dict[str, Any]]] = {}
        for task in todo:
            cur = current.get(task)
            counted = recount.counts(task, set(cur.pending) if cur else set())
            before, after = status_counts(cur.doc if cur else None), status_counts(counted)
            if cur is None and not counted["statuses"]:
                done[task] = TallyChange(task, "unchanged", before, after)  # nothing to count
            elif cur is not None and not cur.losers and _counted(cur.doc) == counted:
                done[task] = TallyChange(task, "unchanged", before, after, rev=cur.doc["_rev"])
            else:
                action = "created" if cur is None else "changed"
                done[task] = TallyChange(task, action, before, after,
                                         deleted=cur.losers if cur else [])  # fmt: skip
                writes[task] = _rewrite(task, cur, counted)
        if dry_run or not writes:
            return [done[t] for t in sorted(done)]
        docs = [doc for group in writes.values() for doc in group]
        rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for doc, row in zip(docs, couch.bulk_docs(db, docs), strict=True):
            rows[doc["_id"]].append(row)
        todo = []
        for task in writes:
            got = rows[tally_id(task)]
            if all("rev" in row for row in got):
                # Rows of one id may come back in any order (POUCHDB): with deletions in the
                # write, the new winning revision is read back.
                single = len(got) == 1
                done[task].rev = got[0]["rev"] if single else couch.get(db, tally_id(task))["_rev"]
            elif all("rev" in row or row.get("error") == "conflict" for row in got):
                todo.append(task)  # an announce, a fold or a replicated edit came first
                log.debug("event=tally_recount_lost db=%s task=%s attempt=%d rows=%s",
                          db, task, attempt, got)  # fmt: skip
            else:
                bad = [row for row in got if "rev" not in row and row.get("error") != "conflict"]
                raise CouchError(f"tally {tally_id(task)} in {db}: {bad[0].get('reason')}")
        if not todo:
            return [done[t] for t in sorted(done)]
    raise TallyContention(f"tallies in {db} still contended during the recount: {todo[:5]}")


def recount_tally(couch: Couch, db: str, task_id: str, *, dry_run: bool = False) -> TallyChange:
    """Recount one task's tally in month database ``db`` from its results; write it if it
    differs (or is conflicted). See :func:`recount_tallies`."""
    report = recount_tallies(couch, db, tasks={task_id}, dry_run=dry_run, recover=False)
    return (report.tallies or [TallyChange(task_id, "unchanged", {}, {})])[0]


def resolve_tally(couch: Couch, db: str, doc: dict[str, Any]) -> TallyResolution | None:
    """Settle a conflicted ``tally:`` document (as read with ``conflicts=true``).

    Two servers that archived during a partition each folded their own batches into their
    own revision, so no revision is right and neither is any merge of the counts (both may
    have counted a result archived on both sides). The answer is a recount of the stored
    results: written on the winning revision with every side's pending batches, the other
    revisions deleted. Returns None when there was nothing to settle.
    """
    if not doc.get("_conflicts") or not doc["_id"].startswith(TALLY_PREFIX):
        return None
    change = recount_tally(couch, db, doc["_id"].removeprefix(TALLY_PREFIX))
    if change.action == "unchanged" or change.rev is None:
        return None
    log.warning(
        "event=tally_conflict_recounted db=%s tally=%s kept=%s deleted=%s before=%s after=%s",
        db, doc["_id"], change.rev, change.deleted, change.before, change.after,
    )  # fmt: skip
    return TallyResolution(doc["_id"], change.rev, change.deleted or [], True, change)
