"""Quorum slots: this worker's writes to an occurrence k workers share.

A quorum occurrence (``quorum`` > 1, hub/protocol/quorum.py) is one document in which each
of k workers holds a slot keyed by its name. Its claim, touches, finish and release all
write that one document, so the revision a worker last saw is usually stale by its next
write: a sibling claimed or finished meanwhile. A PUT with that revision was a 409 (on
PouchDB Server a 403: it checks ``validate_doc_update`` against the current revision
first), then a GET and a second PUT: 1.3-1.6 more requests per run at k = 3.

So a slot write goes through the update function ``_design/farm/_update/slot``
(design_docs/farm/updates/slot.js): the server puts our slot, keyed by our user name, onto
the *current* revision and saves it, checked by ``validate_doc_update`` against that
revision (own slot only, once ever, while fewer than k are live). Owning a slot is still
winning a revision-checked write, made by the server on our behalf. A 409 (a sibling's
write landed between the server's read and its save) is sent again as it is, with no GET.
A 403 is a refusal of the move itself (decided, expired, voided, full), or on PouchDB
Server a race again: one GET tells them apart (:func:`hub.protocol.quorum.apply_own_slot`
on the current document). A server whose design document has no such function yet (a hub
not upgraded) gets the PUT / GET / PUT of before.
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
from hub.protocol.timefmt import to_wire

# Rounds of one slot write under contention: k <= 7 workers, each writing a few times
# per run, so a handful of rounds settles any burst.
MAX_ROUNDS = 8
# The update function that puts a worker's slot onto the current revision (slot.js).
SLOT_DDOC = "farm"
SLOT_UPDATE = "slot"


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
    """Write ``mine`` (our slot's next state) onto the current document. Returns ("ok",
    our occurrence with the stored revision), ("lost", None) when the move no longer
    applies, or raises the CouchError that is not a conflict (offline, refused by auth).
    ``put_params`` go to the plain PUT of a server without the update function."""
    wanted = (mine.slots or {}).get(worker)
    if wanted is None:  # nothing of ours to write (the callers always give our slot)
        log_event("slot_lost", logging.WARNING, occ=mine.id, worker=worker, why="no slot")
        return "lost", None
    slot = wanted.model_dump(exclude_none=True, mode="json")
    for round_no in range(MAX_ROUNDS):
        # updated_at is hub time at each send (validate_doc_update holds it to the clock).
        body = {"slot": slot, "updated_at": to_wire(now()) if round_no else mine.updated_at}
        try:
            rev = couch.update(db, SLOT_DDOC, SLOT_UPDATE, mine.id, body)
        except Conflict:
            log_event("slot_retry", logging.DEBUG, occ=mine.id, round=round_no + 1, why="409")
            continue  # the server reads the current revision again: nothing to re-read here
        except NotFound as exc:
            if _no_update_function(exc):
                log_event("slot_update_missing", logging.INFO, occ=mine.id, error=exc.reason)
                return _put_slot(couch, db, mine, worker, now, **put_params)
            return "lost", None  # archived, or deleted
        except Forbidden as exc:
            # A refusal of the move (decided, expired, voided, full), a retried request
            # that landed (our finish is there already), or on PouchDB Server a race
            # (validated against a newer revision than the function read): read once.
            verdict = _reapplied(couch, db, mine, worker, now, exc)
            if isinstance(verdict, tuple):
                return verdict
            # Our move still applies to the current document: send it again.
            log_event("slot_retry", logging.DEBUG, occ=mine.id, round=round_no + 1, why="403")
            continue
        return "ok", mine.model_copy(update={"rev": rev})
    log_event("slot_contended", logging.WARNING, occ=mine.id, worker=worker)
    return "lost", None


def _no_update_function(exc: NotFound) -> bool:
    """A 404 for the design document's function, not for the occurrence (slot.js answers
    ``no occurrence ...`` for that). CouchDB 3.5.0 says ``missing json key: updates`` (or
    ``: slot``), PouchDB Server ``missing update function slot on design doc ...``."""
    return exc.reason.startswith("missing json key") or "update function" in exc.reason


def _reapplied(
    couch: Couch,
    db: str,
    mine: Occurrence,
    worker: str,
    now: Callable[[], datetime],
    exc: CouchError,
) -> tuple[str, Occurrence | None] | Occurrence:
    """A refused slot write, judged from the current document: ("ok", ...) when our slot
    is already stored as we wanted it, ("lost", None) when the move no longer applies,
    else our slot applied again on the current document (a race: send that)."""
    try:
        current = couch.get(db, mine.id)
    except NotFound:
        return "lost", None
    if _already(current, mine, worker):
        return "ok", Occurrence.from_doc(current)
    try:
        return quorum.apply_own_slot(Occurrence.from_doc(current), mine, worker, now())
    except (InvalidTransition, ValidationError) as why:
        log_event("slot_lost", logging.WARNING, occ=mine.id, worker=worker,
                  why=str(why), error=exc.reason)  # fmt: skip
        return "lost", None


def _put_slot(
    couch: Couch,
    db: str,
    mine: Occurrence,
    worker: str,
    now: Callable[[], datetime],
    **put_params: Any,
) -> tuple[str, Occurrence | None]:
    """The write without the update function: PUT with the revision we have; on a 409
    (403 on PouchDB Server) read the current document, re-apply our slot, PUT again."""
    doc = mine.to_doc()
    for round_no in range(MAX_ROUNDS):
        try:
            rev = couch.put(db, doc, **put_params)
        except (Conflict, Forbidden) as exc:
            again = _reapplied(couch, db, mine, worker, now, exc)
            if isinstance(again, tuple):
                return again
            doc = again.to_doc()
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


__all__ = ["MAX_ROUNDS", "SLOT_DDOC", "SLOT_UPDATE", "claim", "is_slot_doc", "write_slot"]
