"""The conflict resolver: settles every conflicted document by a fixed rule.

Replication between a primary and a standby that both took writes (or a CouchDB cluster
accepting two claims under quorum) leaves documents with several leaf revisions. CouchDB
picks a winner deterministically, but not by our rules, so the hub settles each one:

- occurrence: the state furthest along wins (done > failed/cancelled > missed/skipped >
  buried > leased > ready > scheduled); between two leases the later claim wins;
  between two results the first finished wins; the error histories are merged.
- result (``res:``): the first finished wins; the others are logged.
- task: the last edit by hub time (``updated_at``) wins.
- worker and hub documents: the latest ``last_seen``/``at`` wins.

The chosen leaf is kept (plus one revision on top of it when error histories had to be
merged) and every other leaf is deleted, so every copy converges to the same document.
Nothing is rewritten onto another branch, so ``validate_doc_update``'s "a final state
never changes" holds even for the resolver.

On a cluster this is what makes the claim protocol safe: if two workers' claims were
both accepted, the later claim is kept, the other worker's lease branch is deleted, and
that worker's next touch or finish carries a rev that is no longer a live leaf: 409, so
it stops the run and drops its result.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from hub.couch import Couch
from hub.model import MAX_ERROR_HISTORY
from hub.states import PROGRESS_RANK, State

log = logging.getLogger("couchfarm.resolver")


def _occurrence_key(doc: dict[str, Any]) -> tuple:
    rank = PROGRESS_RANK.get(State(doc.get("state", "scheduled")), 0)
    lease = doc.get("lease") or {}
    result = doc.get("result") or {}
    # Earlier finish wins among results, so negate by sorting on an inverted string.
    finished = result.get("finished_at") or "9999"
    inverted_finish = "".join(chr(0x10FFFF - ord(ch)) for ch in finished)
    return (rank, inverted_finish, lease.get("claimed_at", ""), doc.get("updated_at", ""))


def _result_key(doc: dict[str, Any]) -> tuple:
    finished = doc.get("finished_at") or "9999"
    return (tuple(-ord(ch) for ch in finished), doc.get("_rev", ""))


def choose(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The winning revision among the leaves of one document, by the rules above."""
    doc_id = docs[0]["_id"]
    if doc_id.startswith("occ:"):
        return max(docs, key=_occurrence_key)
    if doc_id.startswith("res:"):
        return max(docs, key=_result_key)
    if doc_id.startswith("task:"):
        return max(docs, key=lambda d: (d.get("updated_at", ""), d.get("_rev", "")))
    return max(docs, key=lambda d: (d.get("last_seen", d.get("at", "")), d.get("_rev", "")))


def merged_errors(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for doc in docs:
        for record in doc.get("errors", []):
            seen[json.dumps(record, sort_keys=True)] = record
    history = sorted(seen.values(), key=lambda r: (r.get("at", ""), r.get("attempt", 0)))
    if len(history) > MAX_ERROR_HISTORY:
        history = [history[0], *history[-(MAX_ERROR_HISTORY - 1) :]]
    return history


@dataclass
class Resolution:
    doc_id: str
    kept: str
    deleted: list[str]
    merged: bool


def leaves(couch: Couch, db: str, doc: dict[str, Any]) -> list[dict[str, Any]]:
    """All live leaf revisions of a document that has ``_conflicts``."""
    revs = [doc["_rev"], *doc.get("_conflicts", [])]
    reply = couch.request(
        "GET", couch.doc_path(db, doc["_id"]), params={"open_revs": json.dumps(revs)}
    )
    return [row["ok"] for row in reply.body if "ok" in row and not row["ok"].get("_deleted")]


def resolve(couch: Couch, db: str, doc: dict[str, Any]) -> Resolution | None:
    """Settle one conflicted document (given as read with ``conflicts=true``)."""
    if not doc.get("_conflicts"):
        return None
    candidates = leaves(couch, db, doc)
    if len(candidates) < 2:
        return None
    winner = choose(candidates)
    writes: list[dict[str, Any]] = []
    merged = False
    if winner["_id"].startswith("occ:"):
        history = merged_errors(candidates)
        if history != winner.get("errors", []):
            writes.append({**winner, "errors": history})
            merged = True
    losers = [c["_rev"] for c in candidates if c["_rev"] != winner["_rev"]]
    writes += [{"_id": winner["_id"], "_rev": rev, "_deleted": True} for rev in losers]
    rows = couch.bulk_docs(db, writes)
    failed = [row for row in rows if "rev" not in row]
    if failed:
        log.warning("event=resolve_incomplete doc=%s rows=%s", winner["_id"], failed)
    for loser in candidates:
        if loser["_rev"] != winner["_rev"]:
            log.info(
                "event=conflict_resolved doc=%s kept=%s dropped=%s dropped_state=%s",
                winner["_id"],
                winner["_rev"],
                loser["_rev"],
                loser.get("state", loser.get("status")),
            )
    return Resolution(winner["_id"], winner["_rev"], losers, merged)


def resolve_all(couch: Couch, db: str, since: str = "0", batch: int = 500) -> tuple[int, str]:
    """One pass over ``_changes`` since ``since``: settle every conflicted document."""
    resolved = 0
    while True:
        results, last = couch.changes(
            db,
            since=since,
            include_docs=True,
            conflicts=True,
            limit=batch,
        )
        for row in results:
            doc = row.get("doc")
            if doc and doc.get("_conflicts") and resolve(couch, db, doc):
                resolved += 1
        if len(results) < batch or last == since:
            return resolved, last
        since = last
