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

After a rescue or a replacement the entry counts as uploaded to the server it was written
to, and waits to be seen on the next one (the rebuilt primary, after ``hub recover``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from desktop_worker.log import log_event
from desktop_worker.spool import Entry, Spool, SpoolError
from hub.protocol import states
from hub.protocol.couch import Conflict, Couch, CouchError, Forbidden
from hub.protocol.model import Occurrence, State, result_id
from hub.protocol.names import results_db
from hub.protocol.states import finished_first, same_run
from hub.protocol.timefmt import from_wire, to_wire

Emit = Callable[..., None]
WAIT = "wait"
CONFIRMED = "confirmed"


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
