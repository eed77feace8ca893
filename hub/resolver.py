"""The conflict resolver: settles every conflicted document by a fixed rule.

Replication between a primary and a standby that both took writes (or a CouchDB cluster
accepting two claims under quorum) leaves documents with several leaf revisions. CouchDB
picks a winner deterministically, but not by our rules, so the hub settles each one:

- occurrence: one total order of the states (``states.PROGRESS_RANK``): done >
  inconclusive (a quorum that did not agree) > failed > cancelled > skipped > missed >
  buried > leased > ready > scheduled; between two leases the later claim wins; between
  two results the first finished wins; the error histories are merged. So the hub's own
  policies (skip, miss, coalesce) never overrule a run that ended on the other server,
  and the worker's spool applies the same rule when it puts an acknowledged run back
  over a survivor's ending (``states.restore``).
- quorum occurrence (decision 17): the leaf is kept by the same order, and written again
  with the *union* of every leaf's slots, one per worker, the one further along where two
  copies hold one worker's slot (``quorum.merged_slots``: a result > a live lease > an
  expired or void slot). A copy that was decided keeps its decision and the slots it
  compared; the other copy's results are added beside them, not re-validated. So no slot
  is lost to a failover: the worker that ran it keeps it, and is never refused "one slot
  per worker, ever" for a slot that only the losing leaf held.
- result (``res:``): the first finished wins; the others are logged.

"First finished" is one total order, :func:`result_order`: ``finished_at`` (hub time),
then the worker's name, so two results that finished in the same millisecond are still
settled the same way everywhere. The worker's spool applies the same order when it finds
the survivor of a failover holding a later-finished result than the one it was given a
201 for (``desktop_worker.confirm``), and ``validate_doc_update`` lets a worker replace a
done result only with one that comes first in this order.
- task: the last edit by hub time (``updated_at``) wins.
- user (``_users``): the last edit (``updated_at``, stamped by ``hub add-worker`` and its
  kin) wins. CouchDB refuses to log in a user whose document is in conflict, and only
  server admins can read ``_users``: ``hub replication setup``, ``hub recover`` and
  ``hub serve`` given server-admin credentials (hourly) settle them (:func:`settle_users`).
- worker and hub documents: the latest ``last_seen``/``at`` wins.

Every tie falls to CouchDB's own winner order (revision number, then revision hash), so
all copies pick the same leaf.

The chosen leaf is kept (plus one revision on top of it when error histories or quorum
slots had to be merged) and every other leaf is deleted, so every copy converges to the
same document. Nothing is rewritten onto another branch, so ``validate_doc_update``'s "a
final state never changes" holds even for the resolver.

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

from hub import tallies
from hub.protocol import quorum, states
from hub.protocol.couch import Conflict, Couch
from hub.protocol.model import MAX_ERROR_HISTORY, Occurrence, State
from hub.protocol.states import PROGRESS_RANK, finished_first, result_order, same_run

__all__ = [
    "choose",
    "finished_first",
    "merged_errors",
    "resolve",
    "result_order",
    "same_run",
    "settle_again",
    "settle_users",
]

log = logging.getLogger("couchfarm.resolver")
USER_PREFIX = "org.couchdb.user:"


def _inverted(key: tuple[str, str]) -> tuple[tuple[int, ...], ...]:
    # max() picks the winner, and the earliest result must win: negate every character.
    # The trailing 1 (above any negated character) keeps a prefix first: "w1" before "w10".
    return tuple((*(-ord(ch) for ch in part), 1) for part in key)


def _occurrence_key(doc: dict[str, Any]) -> tuple:
    rank = PROGRESS_RANK.get(State(doc.get("state", "scheduled")), 0)
    lease = doc.get("lease") or {}
    first = _inverted(result_order(doc.get("result")))
    running = not lease.get("abandoned")  # a claim that reached a majority beats one that did not
    claimed = lease.get("claimed_at", "")
    return (rank, first, running, claimed, doc.get("updated_at", ""), _rev_key(doc))


def _result_key(doc: dict[str, Any]) -> tuple:
    return (_inverted(result_order(doc)), _rev_key(doc))


def _rev_key(doc: dict[str, Any]) -> tuple[int, str]:
    """CouchDB's winner order among leaves: the longer history, then the larger hash."""
    number, _, digest = str(doc.get("_rev", "")).partition("-")
    return (int(number) if number.isdigit() else 0, digest)


def choose(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The winning revision among the leaves of one document, by the rules above."""
    doc_id = docs[0]["_id"]
    if doc_id.startswith("occ:"):
        return max(docs, key=_occurrence_key)
    if doc_id.startswith("res:"):
        return max(docs, key=_result_key)
    if doc_id.startswith(("task:", USER_PREFIX)):
        return max(docs, key=lambda d: (d.get("updated_at", ""), _rev_key(d)))
    return max(docs, key=lambda d: (d.get("last_seen", d.get("at", "")), _rev_key(d)))


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
    # False when a losing leaf or the merge could not be written (a cluster may refuse a
    # deletion): the caller settles the document again later (hub.serve keeps a list).
    complete: bool = True


def leaves(couch: Couch, db: str, doc: dict[str, Any]) -> list[dict[str, Any]]:
    """All live leaf revisions of a document that has ``_conflicts``."""
    revs = [doc["_rev"], *doc.get("_conflicts", [])]
    reply = couch.request(
        "GET", couch.doc_path(db, doc["_id"]), params={"open_revs": json.dumps(revs)}
    )
    return [row["ok"] for row in reply.body if "ok" in row and not row["ok"].get("_deleted")]


def resolve(
    couch: Couch, db: str, doc: dict[str, Any]
) -> Resolution | tallies.TallyResolution | None:
    """Settle one conflicted document (given as read with ``conflicts=true``)."""
    if not doc.get("_conflicts"):
        return None
    if doc["_id"].startswith(tallies.TALLY_PREFIX):
        # No revision of a month's tally is right after a partition: recount the results.
        return tallies.resolve_tally(couch, db, doc)
    candidates = leaves(couch, db, doc)
    if len(candidates) < 2:
        return None
    winner = choose(candidates)
    writes: list[dict[str, Any]] = []
    merged = False
    slots: dict[str, Any] | None = None
    if winner["_id"].startswith("occ:"):
        history = merged_errors(candidates)
        kept = {**winner, "errors": history}
        # A quorum occurrence: every copy's slots, not only the kept leaf's (decision 17).
        slots = quorum.merged_slots(winner, candidates)
        if slots is not None:
            kept["slots"] = slots
        if (winner.get("lease") or {}).get("abandoned"):
            # Every claim of this revision was abandoned: nobody runs it, so it is ready again.
            requeued = states.requeue_abandoned(Occurrence.from_doc(kept), couch.now()).to_doc()
            writes.append({**requeued, "_rev": winner["_rev"]})
            merged = True
        elif history != winner.get("errors", []) or _slots_grew(winner, slots):
            writes.append(kept)
            merged = True
    losers = [c["_rev"] for c in candidates if c["_rev"] != winner["_rev"]]
    writes += [{"_id": winner["_id"], "_rev": rev, "_deleted": True} for rev in losers]
    rows = couch.bulk_docs(db, writes)
    complete = True
    failed = [row for row in rows if "rev" not in row]
    if failed:
        # A 409 here usually means replication already brought the other server's
        # deletion of that same leaf. What counts is what is left: any branch still in
        # conflict, or a merged error history that did not land (the next pass retries).
        now = couch.get_or_none(db, winner["_id"], conflicts="true") or {}
        merge_lost = merged and (
            now.get("errors") != writes[0]["errors"]
            or (slots is not None and now.get("slots") != writes[0].get("slots"))
        )
        if now.get("_conflicts") or merge_lost:
            complete = False
            merged = merged and not merge_lost
            log.warning(
                "event=resolve_incomplete doc=%s left=%s merge_lost=%s rows=%s", winner["_id"],
                sorted(now.get("_conflicts", [])), merge_lost, failed,
            )  # fmt: skip
    if merged and _slots_grew(winner, slots):
        assert slots is not None
        _log_slot_merge(winner, candidates, slots, complete)
    if complete and winner["_id"].startswith("res:"):
        # Both creates of this result may have been counted (a cluster took both): the
        # task's tally is recounted once no fold naming it is still to come.
        complete = tallies.recount_after_result_conflict(couch, db, winner)
    for loser in candidates:
        if loser["_rev"] != winner["_rev"]:
            # A dropped result is named (worker, finish time) so it can be traced later.
            dropped = loser.get("result") or (loser if loser["_id"].startswith("res:") else {})
            log.info(
                "event=conflict_resolved doc=%s kept=%s dropped=%s dropped_state=%s "
                "dropped_result_worker=%s dropped_finished_at=%s",
                winner["_id"],
                winner["_rev"],
                loser["_rev"],
                loser.get("state", loser.get("status")),
                dropped.get("worker"),
                dropped.get("finished_at"),
            )
    return Resolution(winner["_id"], winner["_rev"], losers, merged, complete)


def _slots_grew(winner: dict[str, Any], slots: dict[str, Any] | None) -> bool:
    """Did the merge of the leaves' slots change the kept leaf's (None: not a quorum)?"""
    return slots is not None and slots != (winner.get("slots") or {})


def _log_slot_merge(
    winner: dict[str, Any], candidates: list[dict[str, Any]], slots: dict[str, Any], complete: bool
) -> None:
    """One line per merge: which workers' slots came from a losing leaf (and as what)."""
    kept_slots = winner.get("slots") or {}
    taken = sorted(name for name, slot in slots.items() if kept_slots.get(name) != slot)
    states_now = {n: slots[n].get("state") if isinstance(slots[n], dict) else "?" for n in taken}
    log.info(
        "event=slots_merged doc=%s kept=%s state=%s from_other_copies=%s slots=%d leaves=%d "
        "complete=%s", winner["_id"], winner["_rev"], winner.get("state"),
        ",".join(f"{n}:{s}" for n, s in states_now.items()), len(slots), len(candidates), complete,
    )  # fmt: skip


def _settled(couch: Couch, db: str, doc: dict[str, Any]) -> bool:
    """Settle a conflicted document; False when the resolution left something behind."""
    settled = resolve(couch, db, doc)
    return not (isinstance(settled, Resolution) and not settled.complete)


def settle_again(couch: Couch, db: str, doc_id: str) -> bool:
    """A document an earlier resolution left unsettled, read and settled again (a leaf a
    cluster refused to delete, a result whose tally must wait for a fold, or a claim
    abandoned with no other beside it). True once nothing is left to do."""
    doc = couch.get_or_none(db, doc_id, conflicts="true")
    if doc is None:
        return True
    if doc.get("_conflicts"):
        return _settled(couch, db, doc)
    if doc_id.startswith("res:"):
        return tallies.recount_after_result_conflict(couch, db, doc)
    if is_lone_abandoned(doc):
        return requeue_lone_abandoned(couch, db, doc_id)
    return True


def is_lone_abandoned(doc: dict[str, Any]) -> bool:
    """A claim marked abandoned (decision 14) with no other branch beside it, as read."""
    return (
        doc.get("state") == State.LEASED.value
        and bool((doc.get("lease") or {}).get("abandoned"))
        and not doc.get("_conflicts")
        and not doc.get("_deleted")
    )


def requeue_lone_abandoned(couch: Couch, db: str, doc_id: str) -> bool:
    """An abandoned claim whose copies show no other claim: a cluster answered 202 with no
    competing write (a copy was slow or down), so nobody runs the occurrence and only the
    lease's expiry would bring it back. It is read from every copy first (``r=n``): a claim
    that did reach a majority is then a conflict, which this settles instead. Returns
    False only when the document must be looked at again (the requeue lost a race)."""
    doc = couch.get_or_none(db, doc_id, conflicts="true", r=max(1, couch.copies(db)))
    if doc is None:
        return True
    if doc.get("_conflicts"):
        return _settled(couch, db, doc)
    if not is_lone_abandoned(doc):
        return True
    requeued = states.requeue_abandoned(Occurrence.from_doc(doc), couch.now()).to_doc()
    try:
        couch.put(db, {**requeued, "_rev": doc["_rev"]})
    except Conflict:
        return False  # it changed meanwhile: read again
    log.info("event=abandoned_requeued occ=%s rev=%s", doc_id, doc["_rev"])
    return True


def resolve_all(
    couch: Couch, db: str, since: str = "0", batch: int = 500, unsettled: set[str] | None = None
) -> tuple[int, str]:
    """One pass over ``_changes`` since ``since``: settle every conflicted document. The ids
    of those a resolution left incomplete are added to ``unsettled`` (for
    :func:`settle_again`)."""
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
            if doc and doc.get("_conflicts"):
                settled = resolve(couch, db, doc)
                resolved += settled is not None
                incomplete = isinstance(settled, Resolution) and not settled.complete
                if incomplete and unsettled is not None:
                    unsettled.add(doc["_id"])
            elif doc and is_lone_abandoned(doc):
                if requeue_lone_abandoned(couch, db, doc["_id"]):
                    resolved += 1
                elif unsettled is not None:
                    unsettled.add(doc["_id"])
        if len(results) < batch or last == since:
            return resolved, last
        since = last


def settle_users(admin: Couch) -> int:
    """Settle every conflicted ``_users`` document (server admins only). A user edited on
    both servers while they were apart cannot log in on CouchDB until this runs."""
    resolved, _seq = resolve_all(admin, "_users")
    if resolved:
        log.info("event=users_settled count=%d", resolved)
    return resolved
