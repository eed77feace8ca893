"""Spool confirmation: a finished result stays in the spool until another server has it.

A worker that got a 201 for its finishing PUT keeps the result (spool state ``uploaded``)
until it sees it on the *other* server of its list (the standby). Each pass of
:meth:`Confirmer.run` looks there and settles every such entry:

- the other server holds **this run's** result (same worker, start and finish; the attempt
  may have been renumbered by a rescue): ``confirmed``, the entry is deleted;
- it holds a result that **finished first** (``hub.protocol.states.result_order``: finish time,
  then worker name): ours lost by the documented rule, logged ``result_superseded``;
- it holds a result that **finished later** (the dead primary accepted ours and never
  replicated it, and the occurrence ran again on the standby): ours is put back over it
  (``validate_doc_update`` allows exactly this move) and the replaced one is logged
  ``result_replaced`` with its worker and finish time. First finished wins, everywhere;
- the occurrence there is not done yet and we have *left* the server that took our
  upload (failover): ``_rescue`` re-uploads it, keeping the run's own start and finish
  times (claiming it first when the survivor has it ready, or finishing on top of our
  own lease there). Anyone else's lease there: we wait for their finish (then the later
  result is replaced) or for the lease to expire (then we claim it);
- it is not done and we are still on that server: replication lag, wait;
- the survivor ended its copy without a result (missed, skipped, cancelled, failed) or
  buried it: ``_restore`` puts our run back (``states.restore``), logged
  ``result_restored``: done beats every other state, the resolver's own rule, so one
  server's policy never throws away a run another server acknowledged;
- the survivor archived the occurrence (we came back after the 5-minute archive window)
  or refuses the write (older than the replacement window): ours can no longer be
  applied. Logged at ERROR as ``result_not_restored`` with the run's identity, then
  dropped from the spool. Nothing else drops an acknowledged result.

A quorum slot's result (decision 17) waits the same way (:meth:`Confirmer.slot_verdict`):
it is confirmed when the other server's copy carries this run in our slot, or an archived
decision lists it (canonical or an alternative). The copy is decided without it: while we
are still on the server that took it, wait (replication or the resolver's slot merge may
bring it); once we left that server, the decision stands (``result_superseded``). Not
decided and we left: ``_rescue_slot`` finishes our own slot there with the run's own times
(taking a slot first when our claim never replicated); a slot of ours there that expired or
was voided cannot take it (``result_not_restored``). Only our own slot is ever written.

After a rescue or a replacement the entry counts as uploaded to the server it was written
to, and waits to be seen on the next one (the rebuilt primary, after ``hub recover``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from desktop_worker import slots
from desktop_worker.log import log_event
from desktop_worker.spool import Entry, Spool, SpoolError
from hub.protocol import quorum, states
from hub.protocol.couch import Conflict, Couch, CouchError, Forbidden
from hub.protocol.model import Occurrence, RunResult, State, result_id
from hub.protocol.names import results_db
from hub.protocol.states import InvalidTransition, finished_first, same_run
from hub.protocol.timefmt import from_wire, to_wire

Emit = Callable[..., None]
WAIT = "wait"
CONFIRMED = "confirmed"
SLOT_OP = "slot"  # the spool's op for a quorum slot's result (desktop_worker/runs.py)


def own_slot_result(doc: Any, worker: str) -> dict[str, Any] | None:
    """The result in ``worker``'s slot of a spooled quorum occurrence, if it has one."""
    slot = ((doc.get("slots") or {}) if isinstance(doc, dict) else {}).get(worker)
    result = slot.get("result") if isinstance(slot, dict) else None
    return result if isinstance(result, dict) else None


def archived_result(couch: Couch, db: str, occ_id: str, doc: dict[str, Any]) -> dict | None:
    """The archived ``res:<occ>`` in the month database of its due time (or finish time)."""
    months: list[str] = []
    for stamp in (doc.get("due_at"), (doc.get("result") or {}).get("finished_at")):
        if stamp:
            name = results_db(db, from_wire(stamp))
            if name not in months:
                months.append(name)
    for name in months:
        try:
            found = couch.get_or_none(name, result_id(occ_id))
        except CouchError:
            continue
        if found:
            return found
    return None


class Confirmer:
    """One pass over the spool's uploaded results (thread: the engine's spool loop)."""

    def __init__(self, couch: Couch, db: str, name: str, spool: Spool, emit: Emit) -> None:
        self.couch = couch
        self.db = db
        self.name = name
        self.spool = spool
        self.emit = emit

    def run(self) -> bool:
        """Check every uploaded result once; True when the spool changed."""
        if len(self.couch.servers) < 2:
            return False
        try:
            entries = self.spool.awaiting_confirmation()
        except SpoolError:
            return False
        by_server: dict[int, list[Entry]] = {}
        for entry in entries:
            next_server = ((entry.uploaded_to or 0) + 1) % len(self.couch.servers)
            by_server.setdefault(next_server, []).append(entry)
        changed = False
        for index, group in by_server.items():
            other = self.couch.for_server(index)
            try:
                rows = other.all_docs(self.db, keys=[e.occ_id for e in group], include_docs=True)
            except CouchError as exc:
                log_event("standby_check_failed", server=other.active.label, error=str(exc))
                continue
            for entry, row in zip(group, rows, strict=False):
                verdict = self.verdict(other, index, entry, row.get("doc"))
                if verdict == WAIT:
                    continue
                try:
                    self.spool.delete(entry.seq)
                except SpoolError:
                    continue
                changed = True
                if verdict == CONFIRMED:
                    log_event("result_confirmed", occ=entry.occ_id, server=other.active.label)
                    self.emit("result_confirmed", occ_id=entry.occ_id)
                else:
                    self.emit("result_dropped", occ_id=entry.occ_id, why=verdict)
        return changed

    # ------------------------------------------------------------ one entry

    def verdict(self, other: Couch, index: int, entry: Entry, doc: Any) -> str:
        """``confirmed``, ``wait``, or why the entry leaves the spool without confirmation."""
        if entry.op == SLOT_OP:
            return self.slot_verdict(other, index, entry, doc)
        ours = entry.doc.get("result") if isinstance(entry.doc, dict) else None
        if entry.op != "finish" or not isinstance(ours, dict):
            return CONFIRMED  # only finished results wait for confirmation
        if isinstance(doc, dict) and not doc.get("_deleted"):
            if doc.get("state") == State.DONE.value:
                return self._against_result(other, index, entry, ours, doc)
            if self.left_server(entry.uploaded_to, index):
                return self._rescue(other, index, entry, ours, doc)
            return WAIT  # not replicated yet
        found = archived_result(other, self.db, entry.occ_id, entry.doc)
        if not found:
            return WAIT  # not replicated (or not materialized on the survivor) yet
        if same_run(found, ours):
            return CONFIRMED
        if finished_first(found, ours):
            return self._superseded(entry, ours, found)
        if found.get("state") != State.DONE.value:
            # Archived (5 minutes after it ended): the results database is the hub's alone.
            return self._not_restored(entry, ours, f"the survivor archived it {found.get('state')}")
        return self._not_restored(entry, ours, "the survivor archived a later result")

    # ------------------------------------------------------------ one quorum slot

    def slot_verdict(self, other: Couch, index: int, entry: Entry, doc: Any) -> str:
        """A quorum slot's result (decision 17, "Failover"): kept until the other server's
        copy carries this run in our slot, or an archived decision lists it; re-applied
        there (our own slot only) when we left the server that took it."""
        ours = own_slot_result(entry.doc, self.name)
        if ours is None:
            return CONFIRMED  # no result in our slot: nothing to keep
        if isinstance(doc, dict) and not doc.get("_deleted"):
            there = (doc.get("slots") or {}).get(self.name)
            if isinstance(there, dict) and same_run(there.get("result"), ours):
                return CONFIRMED
            left = self.left_server(entry.uploaded_to, index)
            if doc.get("state") != State.READY.value:
                # Decided (or ended) without our run. While we are still on the server that
                # took it, that copy may yet bring it (replication, the resolver's merge of
                # the two copies' slots); once we left it, the decision stands.
                return self._slot_superseded(entry, ours, doc) if left else WAIT
            return self._rescue_slot(other, index, entry, ours, doc) if left else WAIT
        found = archived_result(other, self.db, entry.occ_id, entry.doc)
        if not found:
            return WAIT  # not replicated (or not materialized on the survivor) yet
        runs = [found, *(found.get("alternatives") or [])]
        if any(isinstance(run, dict) and same_run(run, ours) for run in runs):
            return CONFIRMED
        return self._slot_superseded(entry, ours, found)

    def _rescue_slot(
        self, other: Couch, index: int, entry: Entry, ours: dict, doc: dict[str, Any]
    ) -> str:
        """Put our slot's result on the survivor, which never got it: finish our own slot
        there when our claim replicated, or take a slot first when it did not (a new claim:
        ``validate_doc_update`` lets a worker add only a leased slot), then finish it with
        the run's own times and output. A slot of ours there that expired or was voided can
        no longer take it (one slot per worker, ever): logged, dropped."""
        try:
            current = Occurrence.from_doc(doc)
            run = RunResult.model_validate(ours)
            if self.name not in (current.slots or {}):
                if quorum.may_claim_slot(current, self.name, other.now()) is not None:
                    return WAIT  # full (a slot may expire) or not yet due: look again
                claimed = slots.claim(other, self.db, current, self.name)
                if claimed is None:
                    return WAIT
                current = claimed
            have = (current.slots or {})[self.name]
            if have.state != "leased":
                return self._not_restored(entry, ours, f"our slot there is {have.state}")
            mine = quorum.restore_own_result(current, self.name, run, other.now())
            status, stored = slots.write_slot(other, self.db, mine, self.name, other.now)
        except (CouchError, ValueError, InvalidTransition) as exc:
            log_event("result_rescue_failed", logging.WARNING, occ=entry.occ_id, slot=True,
                      error=str(exc))  # fmt: skip
            return WAIT
        if status != "ok" or stored is None:
            return WAIT  # our slot moved meanwhile (expired, decided): the next pass says so
        log_event("result_rescued", occ=entry.occ_id, server=other.active.label, slot=True,
                  attempt=run.attempt, finished_at=run.finished_at)  # fmt: skip
        self._moved_to(entry, index, stored.to_doc())
        return WAIT  # confirmed once the next server has it

    def _slot_superseded(self, entry: Entry, ours: dict, decided: dict[str, Any]) -> str:
        """The other copy was decided without our slot's result: a decision is final (the
        VDU refuses any slot write on it), so ours is dropped, named in the log."""
        validation = decided.get("validation") or {}
        why = (
            f"the quorum was decided without this run ({decided.get('state')}, "
            f"{validation.get('outcome') or 'no validation'})"
        )
        log_event(
            "result_superseded",
            logging.WARNING,
            occ=entry.occ_id,
            slot=True,
            why=why,
            our_finished_at=ours.get("finished_at"),
            canonical=validation.get("canonical"),
        )
        return why

    def left_server(self, uploaded_to: int | None, other_index: int) -> bool:
        """We failed over away from the server that took the upload, to ``other_index``."""
        return (
            uploaded_to is not None
            and self.couch.servers.index(self.couch.active) == other_index != uploaded_to
        )

    def _against_result(
        self, other: Couch, index: int, entry: Entry, ours: dict, doc: dict[str, Any]
    ) -> str:
        stored = doc.get("result") or {}
        if same_run(stored, ours):
            return CONFIRMED
        if finished_first(stored, ours):
            return self._superseded(entry, ours, stored)
        # Ours finished first: it wins. But an occurrence kept live (the newest of its task)
        # may already be archived with the later result: rewriting only the live copy would
        # leave the archive and the tallies with the other run, and the archiver would keep
        # theirs. That case is reported, not half-applied.
        archived = archived_result(other, self.db, entry.occ_id, doc)
        if archived is not None:
            if same_run(archived, ours):
                return CONFIRMED
            return self._not_restored(entry, ours, "the survivor archived a later result")
        # Put it back, on top of the later one.
        attempt = min(int(ours.get("attempt") or 1), int(doc.get("attempt") or 1))
        replaced = {
            **{k: v for k, v in doc.items() if k not in ("_conflicts", "_revisions")},
            "result": {**ours, "attempt": max(1, attempt)},
            "updated_at": to_wire(other.now()),
        }
        try:
            replaced["_rev"] = other.put(self.db, replaced)
        except Conflict:
            return WAIT  # it changed meanwhile: look again next pass
        except Forbidden as exc:  # e.g. too late to replace: final, say so once
            return self._not_restored(entry, ours, f"the survivor refused it: {exc.reason}")
        except CouchError as exc:
            log_event("result_rescue_failed", logging.WARNING, occ=entry.occ_id, error=str(exc))
            return WAIT
        log_event(
            "result_replaced",
            logging.WARNING,
            occ=entry.occ_id,
            server=other.active.label,
            kept_worker=self.name,
            kept_finished_at=ours.get("finished_at"),
            dropped_worker=stored.get("worker"),
            dropped_attempt=stored.get("attempt"),
            dropped_finished_at=stored.get("finished_at"),
        )
        self._moved_to(entry, index, replaced)
        return WAIT  # confirmed once the next server has it

    def _rescue(
        self, other: Couch, index: int, entry: Entry, ours: dict, doc: dict[str, Any]
    ) -> str:
        """Re-upload a result the dead server took but never replicated.

        The survivor holds our lease (the claim replicated): finish on top of it. It holds
        the occurrence ready (it did not): claim it again and finish. Either way the result
        keeps the run's own times and output, so "first finished" still sees when it ran.
        """
        try:
            current = Occurrence.from_doc(doc)
            if current.state in states.RESTORABLE_STATES:
                return self._restore(other, index, entry, ours, current)
            now = other.now()
            if current.state == State.READY:
                claimed = states.claim(current, self.name, now)
                current = claimed.model_copy(update={"rev": other.put(self.db, claimed.to_doc())})
            if current.state != State.LEASED or current.lease is None:
                return WAIT  # a retry is scheduled: wait until it is ready again
            if current.lease.worker != self.name:
                return WAIT  # theirs: their later result is replaced when it lands
            finished = states.finish(
                current, self.name, now, started_at=from_wire(ours["started_at"]),
                output=ours.get("output"),
            ).to_doc()  # fmt: skip
            finished["result"] = {**ours, "attempt": current.attempt}
            finished["_rev"] = other.put(self.db, finished)
        except (CouchError, ValueError, states.InvalidTransition) as exc:
            log_event("result_rescue_failed", logging.WARNING, occ=entry.occ_id, error=str(exc))
            return WAIT
        log_event("result_rescued", occ=entry.occ_id, server=other.active.label,
                  attempt=current.attempt, finished_at=ours.get("finished_at"))  # fmt: skip
        self._moved_to(entry, index, finished)
        return WAIT

    def _restore(
        self, other: Couch, index: int, entry: Entry, ours: dict, current: Occurrence
    ) -> str:
        """The survivor ended its copy without a result (missed, skipped, cancelled,
        failed) or buried it, while our run's result was acknowledged by the lost server:
        put the run back (``states.restore``: done wins, as the resolver would decide)."""
        was = current.state.value
        try:
            restored = states.restore(current, ours, other.now()).to_doc()
            restored["_rev"] = other.put(self.db, restored)
        except Conflict:
            return WAIT  # it changed meanwhile: look again next pass
        except Forbidden as exc:  # e.g. the run is older than the replacement window
            return self._not_restored(entry, ours, f"the survivor refused it: {exc.reason}")
        except (CouchError, ValueError, states.InvalidTransition) as exc:
            log_event("result_rescue_failed", logging.WARNING, occ=entry.occ_id, error=str(exc))
            return WAIT
        log_event(
            "result_restored",
            logging.WARNING,
            occ=entry.occ_id,
            server=other.active.label,
            over=was,
            finished_at=ours.get("finished_at"),
        )
        self._moved_to(entry, index, restored)
        return WAIT  # confirmed once the next server has it

    def _moved_to(self, entry: Entry, index: int, doc: dict[str, Any]) -> None:
        try:
            self.spool.replace_doc(entry.seq, doc)
            self.spool.mark_uploaded(entry.seq, index)
        except SpoolError:
            pass  # the entry stays as it was: the next pass finds our run there, confirmed

    def _superseded(self, entry: Entry, ours: dict, stored: dict) -> str:
        why = (
            f"a result that finished first is stored (worker {stored.get('worker')}, "
            f"{stored.get('finished_at')})"
        )
        log_event(
            "result_superseded",
            logging.WARNING,
            occ=entry.occ_id,
            why=why,
            our_finished_at=ours.get("finished_at"),
            kept_worker=stored.get("worker"),
            kept_finished_at=stored.get("finished_at"),
        )
        return why

    def _not_restored(self, entry: Entry, ours: dict, why: str) -> str:
        log_event(
            "result_not_restored",
            logging.ERROR,
            occ=entry.occ_id,
            why=why,
            started_at=ours.get("started_at"),
            finished_at=ours.get("finished_at"),
        )
        return why
