"""Letting a CouchDB cluster's copies agree before a test judges what is stored.

On a cluster each shard has n copies, and a write some copies refused (a concurrent edit
of the same revision) lives on fewer copies until internal replication carries it over.
A test that settles conflicts right after such a race can run before the other copies
know of the losing branch. On one server or PouchDB Server these do nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta

from hub import archiver, resolver
from hub.protocol.couch import Couch

MAX_SETTLE_PASSES = 5


def converge(couch: Couch, db: str, doc_ids: Iterable[str] | None = None) -> None:
    """Read each document from every copy (``r=n``): where the copies disagree, CouchDB
    repairs them before it answers (fabric's read repair), so afterwards every copy holds
    every branch. ``doc_ids`` None: every document of ``db``."""
    n = couch.copies(db)
    if n <= 1:
        return
    if doc_ids is None:
        doc_ids = [row["id"] for row in couch.all_docs(db)]
    for doc_id in doc_ids:
        couch.get_or_none(db, doc_id, r=n)


def settle(
    couch: Couch, db: str, doc_ids: Iterable[str] | None = None, left: set[str] | None = None
) -> int:
    """What `hub serve` does over time, done now: let the copies agree, then settle every
    conflicted document, and again what a resolution left incomplete, until a pass finds
    nothing. Returns how many were settled; what is still incomplete is left in ``left``
    (a result whose tally recount waits for a batch still pending)."""
    ids = None if doc_ids is None else list(doc_ids)
    left = set() if left is None else left
    total = 0
    for _ in range(MAX_SETTLE_PASSES):
        converge(couch, db, ids)
        for doc_id in sorted(left):
            if resolver.settle_again(couch, db, doc_id):
                left.discard(doc_id)
        resolved, _seq = resolver.resolve_all(couch, db, unsettled=left)
        total += resolved
        if not resolved:
            return total
    return total


def settle_tallies(couch: Couch, db: str) -> None:
    """Settle a results database's conflicted tallies, then fold the batches their losing
    branches announced (the archiver's pending records), as `hub serve` does. On a
    cluster a fold can also have been taken by too few copies and lost to a concurrent
    one without leaving a conflict behind, so there the pending batches are always
    folded; on one server a batch left pending is a bug the test must see."""
    left: set[str] = set()
    if settle(couch, db, left=left) or couch.copies(db) > 1:
        archiver.recover_pending(couch, db, couch.now(), grace=timedelta(0))
    # A result created twice (both creates taken by some copies) was counted by both
    # batches; its tally is recounted once no batch naming it is pending, as `hub serve`
    # does at its next passes (hub.tallies.recount_after_result_conflict).
    for _ in range(MAX_SETTLE_PASSES):
        if not left:
            return
        for doc_id in sorted(left):
            if resolver.settle_again(couch, db, doc_id):
                left.discard(doc_id)
        if left:
            archiver.recover_pending(couch, db, couch.now(), grace=timedelta(0))
    assert not left, f"results in {db} whose tally could not be recounted: {sorted(left)}"
