"""Quorum slots: this worker's writes to an occurrence k workers share.

A quorum occurrence (``quorum`` > 1, hub/protocol/quorum.py) is one document in which each
of k workers holds a slot keyed by its name. Its claim, touches, finish and release all
write that one document, so another worker's write to its own slot makes ours a 409 (on
PouchDB Server a 403: it checks ``validate_doc_update`` against the current revision
before the revision itself). That is no lost lease: we read the current document, put our
slot change on it (:func:`hub.protocol.quorum.apply_own_slot`) and write again. Only a
slot that is gone (expired, void), a decided occurrence or a full quorum ends the attempt.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from desktop_worker.log import log_event
from hub.protocol import quorum
from hub.protocol.couch import Conflict, Couch, CouchError, Forbidden, NotFound
from hub.protocol.model import Occurrence
from hub.protocol.states import InvalidTransition

# Re-reads of one slot write under contention: k <= 7 workers, each writing a few times
# per run, so a handful of rounds settles any burst.
MAX_ROUNDS = 8


def is_slot_doc(doc: dict[str, Any]) -> bool:
    quorum_k = doc.get("quorum")
    return isinstance(quorum_k, int) and quorum_k > 1


def write_slot(
    couch: Couch,
    db: str,
    mine: Occurrence,
    worker: str,
    now: Callable[[], datetime],
    **put_params: Any,
) -> tuple[str, Occurrence | None]:
    """Write ``mine`` (our slot's next state); on a conflict re-apply it to the current
    document. Returns ("ok", the stored occurrence), ("lost", None) when the move no longer
    applies, or raises the CouchError that is not a conflict (offline, refused by auth)."""
    doc = mine.to_doc()
    for round_no in range(MAX_ROUNDS):
        try:
            rev = couch.put(db, doc, **put_params)
        except (Conflict, Forbidden) as exc:
            try:
                current = couch.get(db, mine.id)
            except NotFound:
                return "lost", None
            if _already(current, mine, worker):
                return "ok", Occurrence.from_doc(current)
            try:
                doc = quorum.apply_own_slot(
                    Occurrence.from_doc(current), mine, worker, now()
                ).to_doc()
            except (InvalidTransition, ValidationError) as why:
                log_event("slot_lost", logging.WARNING, occ=mine.id, worker=worker,
                          why=str(why), error=exc.reason)  # fmt: skip
                return "lost", None
            log_event("slot_retry", logging.DEBUG, occ=mine.id, round=round_no + 1)
            continue
        stored = Occurrence.from_doc({**doc, "_rev": rev})
        return "ok", stored
    log_event("slot_contended", logging.WARNING, occ=mine.id, worker=worker)
    return "lost", None


def _already(current: dict[str, Any], mine: Occurrence, worker: str) -> bool:
    """The stored slot is already the one we are writing (a retried request landed)."""
    want = (mine.slots or {}).get(worker)
    have = (current.get("slots") or {}).get(worker)
    return (
        want is not None
        and isinstance(have, dict)
        and have == want.model_dump(exclude_none=True, mode="json")
    )


def claim(
    couch: Couch, db: str, occ: Occurrence, worker: str, **put_params: Any
) -> Occurrence | None:
    """Take a slot of ``occ`` as seen; None when none is left for us."""
    try:
        mine = quorum.claim_slot(occ, worker, couch.now())
    except InvalidTransition:
        return None
    try:
        status, stored = write_slot(couch, db, mine, worker, couch.now, **put_params)
    except CouchError as exc:
        log_event("slot_claim_failed", logging.WARNING, occ=occ.id, error=str(exc))
        raise
    if status != "ok" or stored is None:
        return None
    log_event("slot_claimed", occ=occ.id, worker=worker, quorum=occ.quorum)
    return stored


__all__ = ["MAX_ROUNDS", "claim", "is_slot_doc", "write_slot"]
