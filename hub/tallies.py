"""Tally recount and rebuild: a month's ``tally:{task}`` documents counted again from the
results stored there.

The archiver (:mod:`hub.archiver`) keeps each tally current as it stores results
(announce, write, fold). This module recounts one from scratch, for months archived
before tallies existed, a damaged tally (:func:`recount_tallies`, ``hub tallies rebuild``)
or one conflicted by replication (:func:`resolve_tally`, the resolver's hook). The
recount relies on the invariant the archiver's protocol keeps: a tally counts exactly the
results whose batch is not in its ``pending``. So it recounts for the revision it
replaces, leaves the batches pending there to their folds (keeping the pending entries as
they are), and writes with that revision's ``_rev``; results stored while it scans come
from ``_changes``, and a 409 means re-read, catch up, write again. It is safe while hubs
archive (see :class:`_Recount`).
"""

from __future__ import annotations

import copy
import json
import logging
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from hub.archiver import (
    TALLY_PREFIX,
    TallyContention,
    add_to_tally,
    empty_tally,
    recover_pending,
    tally_id,
)
from hub.protocol.couch import Couch, CouchError
from hub.protocol.timefmt import from_wire

# The archiver's logger: the recount's events were always logged under it, and log
# readers filter on it.
log = logging.getLogger("couchfarm.archiver")

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


def pending_batches_naming(tally: dict[str, Any] | None, occurrence: str) -> list[str]:
    """The batches pending in ``tally`` that announced ``occurrence``."""
    pending = (tally or {}).get("pending") or {}
    return sorted(
        batch
        for batch, entry in pending.items()
        if occurrence in ((entry or {}).get("occurrences") or [])
    )


def recount_after_result_conflict(couch: Couch, db: str, result: dict[str, Any]) -> bool:
    """Make the tally exact again after a conflicted ``res:`` document was settled.

    On a CouchDB cluster two hubs archiving the same occurrence at once can both create
    ``res:{occ}`` (each create taken by different copies of the shard), so both batches
    fold it and the tally counts one result twice. Once the resolver has kept one of
    them the stored results are exact again, and so is a recount of that task's tally.
    But a batch still pending that names the occurrence has a fold to come, which counts
    the copy its writer created whatever the recount found; a recount now would be
    undone. So this returns False (settle it again later) while such a batch is pending
    (a dead writer's batch is folded by ``recover_pending``, which counts only results
    that still carry its name), and True once the tally was recounted.
    """
    task = task_of_result(str(result.get("_id", "")))
    if task is None:
        return True
    occurrence = str(result["_id"]).removeprefix("res:")
    # On a cluster every copy is read (r = n): a fold one copy took must not be missed.
    copies = couch.copies(db)
    tally = couch.get_or_none(db, tally_id(task), **({"r": copies} if copies > 1 else {}))
    waiting = pending_batches_naming(tally, occurrence)
    if waiting:
        log.info(
            "event=tally_recount_deferred db=%s occ=%s task=%s pending=%s",
            db, occurrence, task, waiting,
        )  # fmt: skip
        return False
    change = recount_tally(couch, db, task)
    if change.action != "unchanged":
        log.warning(
            "event=tally_recounted_after_result_conflict db=%s occ=%s task=%s before=%s "
            "after=%s",
            db, occurrence, task, change.before, change.after,
        )  # fmt: skip
    return True


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


__all__ = [
    "TALLY_PREFIX",
    "RecountReport",
    "TallyChange",
    "TallyResolution",
    "pending_batches_naming",
    "recount_after_result_conflict",
    "recount_tallies",
    "recount_tally",
    "resolve_tally",
]
