"""Delivery: every finishing write reaches the hub, through the spool.

A run's finishing document (done, failed, a retry) is written ahead to the SQLite spool
(:mod:`desktop_worker.spool`), then everything pending is uploaded in order; a write no
server takes stays pending and the spool loop (:meth:`Delivery.run`) tries again when a
server answers. With a standby, an uploaded result stays until it is seen on the other
server, or settled against it right after a failover (:mod:`desktop_worker.confirm`,
decision 10). ``updated_at`` is stamped with hub time at each send.

The totals (done, failed, lost) count a write's fate here, where it is known.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from pydantic import ValidationError

from desktop_worker import slots
from desktop_worker.config import WorkerConfig
from desktop_worker.confirm import SLOT_OP, Confirmer, archived_result
from desktop_worker.log import log_event
from desktop_worker.spool import Spool, SpoolError
from desktop_worker.status import EngineStatus
from hub.protocol.couch import (
    BadRequest,
    Conflict,
    Couch,
    CouchError,
    Forbidden,
    NotFound,
    Unauthorized,
    Unavailable,
)
from hub.protocol.model import Occurrence, State
from hub.protocol.timefmt import to_wire

LOG_WARNING = logging.WARNING


class Delivery:
    """The spool and the finishing writes. ``spool`` given: used as is (and not closed);
    else the SQLite spool at ``config.resolved_spool_path``, opened by :meth:`open_spool`."""

    def __init__(
        self,
        couch: Couch,
        config: WorkerConfig,
        status: EngineStatus,
        spool: Spool | None = None,
    ) -> None:
        self.couch = couch
        self.config = config
        self.db = config.db
        self.name = config.name
        self.status = status
        self.spool: Spool | None = spool
        self._spool_given = spool is not None
        self.wake = threading.Event()  # the spool loop: something may be uploadable
        self._upload_lock = threading.Lock()
        self._failovers_seen = 0

    def open_spool(self) -> None:
        if self.spool is not None:
            return
        try:
            self.spool = Spool(self.config.resolved_spool_path)
            self.status.set_error("spool", None)
        except SpoolError as exc:
            self.status.set_error("spool", f"the local spool cannot be used: {exc}")

    def retry_spool(self) -> None:
        try:
            if self.spool is None:
                self.open_spool()
            else:
                self.spool.check()
                self.status.set_error("spool", None)
        except SpoolError as exc:
            self.status.set_error("spool", f"the local spool cannot be used: {exc}")

    def deliver(self, doc: dict[str, Any], op: str, occ: Occurrence, claimed_at: str) -> str:
        """Write-ahead to the spool, then upload everything pending in order."""
        seq: int | None = None
        if self.spool is not None:
            try:
                seq = self.spool.add(
                    doc, op=op, worker=self.name, attempt=occ.attempt, claimed_at=claimed_at
                )
            except SpoolError as exc:
                self.status.set_error("spool", f"the local spool cannot be written: {exc}")
        if seq is None:  # no spool: send it straight, so a reachable hub still gets it
            status, _ = self._put_final(doc, occ.attempt, claimed_at)
            status = self._account(doc, status)
            return "unsent" if status == "offline" else status
        results = self.upload_pending(own=seq)
        self.emit_counts()
        return results.get(seq, "spooled")

    def upload_pending(self, own: int | None = None) -> dict[int, str]:
        """Upload pending spool entries in order; stop at the first one no server takes."""
        outcomes: dict[int, str] = {}
        if self.spool is None:
            return outcomes
        with self._upload_lock:
            try:
                entries = self.spool.pending()
            except SpoolError as exc:
                self.status.set_error("spool", f"the local spool cannot be read: {exc}")
                return outcomes
            for entry in entries:
                status, server_index = self._put_final(entry.doc, entry.attempt, entry.claimed_at)
                try:
                    if status == "offline":
                        self.spool.note_failure(entry.seq, "no server answered")
                        break
                    # A quorum slot's result waits for the standby too (decision 17).
                    held = entry.op in ("finish", SLOT_OP)
                    if status == "ok" and held and self.config.has_standby:
                        self.spool.mark_uploaded(entry.seq, server_index or 0)
                    else:
                        self.spool.delete(entry.seq)
                except SpoolError as exc:
                    self.status.set_error("spool", f"the local spool cannot be written: {exc}")
                word = self._account(entry.doc, status)
                outcomes[entry.seq] = word
                if entry.seq != own:  # written earlier (offline, or before a restart)
                    if status in ("lost", "rejected"):
                        self.status.emit("result_dropped", occ_id=entry.occ_id, why=word)
                    else:
                        self.status.emit("result_uploaded", occ_id=entry.occ_id, status=word)
        return outcomes

    def _account(self, doc: dict[str, Any], status: str) -> str:
        """Count a final write's fate in the totals; return the word for it."""
        if status == "ok":
            state = doc.get("state")
            if slots.is_slot_doc(doc):  # a quorum slot's result: the run is done
                self.status.count("done")
                log_event("result_stored", occ=doc["_id"], state="slot", worker=self.name)
                return "done"
            if state == State.DONE.value:
                self.status.count("done")
                word = "done"
            elif state == State.READY.value:
                word = "released"
            else:
                self.status.count("failed")
                word = {"scheduled": "retry"}.get(str(state), str(state))
            run = doc.get("result") or {}  # which run was stored: the fault audit needs it
            log_event(
                "result_stored",
                occ=doc["_id"],
                state=state,
                worker=run.get("worker"),
                started_at=run.get("started_at"),
                finished_at=run.get("finished_at"),
            )
            return word
        if status == "lost":
            self.status.count("lost")
            log_event("result_dropped", LOG_WARNING, occ=doc["_id"], why="lease lost")
        elif status == "rejected":
            log_event("result_dropped", LOG_WARNING, occ=doc["_id"], why="refused by the hub")
        return status

    def _put_final(
        self, doc: dict[str, Any], attempt: int, claimed_at: str
    ) -> tuple[str, int | None]:
        """PUT a finishing doc: ('ok', server index) | ('lost'|'rejected'|'offline', None).

        ``updated_at`` is stamped with hub time at each send: a write that waited in the
        spool is written *now* (validate_doc_update holds it to the server's clock), while
        the result keeps the times the run really started and finished.
        """
        occ_id = str(doc["_id"])
        if slots.is_slot_doc(doc):
            return self._put_slot(doc)
        for try_no in range(2):
            doc = {**doc, "updated_at": to_wire(self.couch.now())}  # same key order
            try:
                self.couch.put(self.db, doc)
                self.status.set_offline(None)
                return "ok", self._active_index()
            except Conflict:
                try:
                    current = self.couch.get_or_none(self.db, occ_id)
                except Unavailable as exc:
                    self.status.set_offline(exc)
                    return "offline", None
                except CouchError:
                    return "lost", None
                if current is None:
                    if self._archived_as_ours(occ_id, doc, attempt):
                        return "ok", self._active_index()
                    return "lost", None
                if _already_applied(current, doc, self.name, attempt):
                    log_event("result_already_stored", occ=occ_id)
                    return "ok", self._active_index()
                lease = current.get("lease") or {}
                if (
                    try_no == 0
                    and claimed_at
                    and current.get("state") == State.LEASED.value
                    and lease.get("worker") == self.name
                    and lease.get("claimed_at") == claimed_at
                    and current.get("attempt") == attempt
                ):
                    # Still our lease (e.g. a touch that reached the server although we
                    # were told it failed): the same write on top of the current revision.
                    doc = {**doc, "_rev": current["_rev"]}
                    continue
                log_event(
                    "lease_lost",
                    LOG_WARNING,
                    occ=occ_id,
                    at="finish",
                    state=current.get("state"),
                    holder=lease.get("worker"),
                )
                return "lost", None
            except Unavailable as exc:
                self.status.set_offline(exc)
                return "offline", None
            except (Forbidden, BadRequest, Unauthorized, NotFound) as exc:
                log_event("finish_refused", LOG_WARNING, occ=occ_id, error=str(exc))
                return ("lost" if isinstance(exc, Forbidden | NotFound) else "rejected"), None
            except CouchError as exc:
                log_event("finish_error", LOG_WARNING, occ=occ_id, error=str(exc))
                return "offline", None
        return "lost", None

    def _put_slot(self, doc: dict[str, Any]) -> tuple[str, int | None]:
        """A quorum slot's result (desktop_worker/slots.py): re-applied onto the current
        document on a conflict; lost only when our slot is gone or the quorum decided."""
        try:
            mine = Occurrence.from_doc({**doc, "updated_at": to_wire(self.couch.now())})
            status, _ = slots.write_slot(self.couch, self.db, mine, self.name, self.couch.now)
        except Unavailable as exc:
            self.status.set_offline(exc)
            return "offline", None
        except (BadRequest, Unauthorized, ValidationError) as exc:
            log_event("finish_refused", LOG_WARNING, occ=doc["_id"], error=str(exc))
            return "rejected", None
        except CouchError as exc:
            log_event("finish_error", LOG_WARNING, occ=doc["_id"], error=str(exc))
            return "offline", None
        if status != "ok":
            return "lost", None
        self.status.set_offline(None)
        return "ok", self._active_index()

    def _active_index(self) -> int:
        active = self.couch.active
        for index, server in enumerate(self.couch.servers):
            if server is active:
                return index
        return 0

    def _archived_as_ours(self, occ_id: str, doc: dict[str, Any], attempt: int) -> bool:
        """Gone from the live database: did the hub archive our run's result?"""
        found = archived_result(self.couch, self.db, occ_id, doc)
        return bool(found and found.get("worker") == self.name and found.get("attempt") == attempt)

    def emit_counts(self) -> None:
        if self.spool is None:
            return
        try:
            counts = self.spool.counts()
        except SpoolError:
            return
        self.status.emit("spool_changed", detail=counts)

    def run(self) -> None:
        last_check = 0.0
        while not self.status.stopping.is_set():
            self.wake.wait(self.config.spool_retry_s)
            self.wake.clear()
            if self.status.stopping.is_set() or self.spool is None:
                continue
            try:
                counts = self.spool.counts()
            except SpoolError as exc:
                self.status.set_error("spool", f"the local spool cannot be read: {exc}")
                continue
            if counts.get("pending"):
                self.upload_pending()
                self.emit_counts()
            failed_over = self.couch.failovers != self._failovers_seen
            if counts.get("uploaded") and (
                failed_over or time.monotonic() - last_check >= self.config.standby_check_s
            ):
                # Right after a failover too: results the dead server held but never
                # replicated must reach the survivor before their leases expire there.
                self._failovers_seen = self.couch.failovers
                last_check = time.monotonic()
                self._confirm_on_standby()

    def _confirm_on_standby(self) -> None:
        """Settle uploaded results against the other server (see desktop_worker.confirm)."""
        if self.spool is None:
            return
        if Confirmer(self.couch, self.db, self.name, self.spool, self.status.emit).run():
            self.emit_counts()

    def report_kept(self, event: str) -> None:
        """Say what the spool still holds (at stop: kept for the next start; at start: what
        that start takes up again). Acknowledged results wait there until both servers
        hold them, so a worker stopped during an outage keeps them and says so."""
        if self.spool is None:
            return
        try:
            counts = self.spool.counts()
        except SpoolError:
            return
        pending, uploaded = counts.get("pending", 0), counts.get("uploaded", 0)
        if pending or uploaded:
            log_event(event, logging.WARNING, pending=pending, uploaded=uploaded,
                      spool=str(self.config.resolved_spool_path),
                      means="pending: not stored yet; uploaded: stored, not yet seen on the "
                      "other server; both are sent or confirmed after the next start")  # fmt: skip

    def close(self) -> None:
        """Close a spool this object opened (a given one is the caller's)."""
        if self.spool is not None and not self._spool_given:
            self.spool.close()
            self.spool = None


def _already_applied(
    current: dict[str, Any], sent: dict[str, Any], worker: str, attempt: int
) -> bool:
    """Does the stored doc already carry the write we are trying to make?"""
    if current.get("state") == State.DONE.value and sent.get("state") == State.DONE.value:
        result = current.get("result") or {}
        return result.get("worker") == worker and result.get("attempt") == attempt
    sent_errors = sent.get("errors") or []
    if sent.get("state") != State.DONE.value and sent_errors:
        mine = sent_errors[-1]
        return any(
            record.get("worker") == worker
            and record.get("attempt") == attempt
            and record.get("at") == mine.get("at")
            for record in current.get("errors") or []
        )
    return False


__all__ = ["Delivery"]
