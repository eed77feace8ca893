"""The validator: decides quorum occurrences and keeps the workers' reliability.

A hub duty (docs/DECISIONS.md decision 17). The live ``_changes`` feed hands it every
quorum occurrence that changed (:meth:`Validator.observe`, no request); each pass
(:meth:`Validator.run`):

1. expires leased slots whose lease ran out and reads the quorum deadlines that passed
   (the ``quorum_due`` view), only when the followed documents say one is due, or every
   ``safety_s`` (changes it may have missed);
2. decides each collecting occurrence that has something to decide
   (:func:`hub.protocol.quorum.decide`): the canonical result (``done``), ``inconclusive``,
   or a trusted worker's result accepted alone (adaptive replication);
3. writes the decision with the ``_rev`` it read, and only when that write wins, updates
   ``hub:reliability:{worker}`` for every worker whose result was compared.

Requests (decision 17, "Cost"): the document to decide is the one the feed brought (its
``_rev`` guards the decision write; a 409 drops it, and the next pass reads the current
one), and each worker's reliability is the revision last seen on the feed or written here
(a stale one makes its write a conflict, then read and written again): a decision costs
its own write and one ``_bulk_docs`` of reliability updates.

Two hubs are harmless: the decision is a function of the document and the hub time, the
second write of it is a 409, and only the hub whose decision was stored counts the
agreements. Cost: a hub that dies between the two writes loses that occurrence's
reliability update (the decision itself stands).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from hub.protocol import quorum
from hub.protocol.couch import Conflict, Couch, Forbidden
from hub.protocol.model import (
    RESULT_SLOT_STATES,
    Occurrence,
    Reliability,
    State,
    reliability_id,
)
from hub.protocol.states import InvalidTransition
from hub.protocol.timefmt import from_wire, to_wire

log = logging.getLogger("couchfarm.validator")
BATCH = 500
RELIABILITY_ATTEMPTS = 10  # optimistic retries of one reliability update (409)
COMPARATOR_GROUP = "couchfarm.comparators"


@dataclass
class ValidateReport:
    decided: int = 0
    canonical: int = 0
    inconclusive: int = 0
    accepted_alone: int = 0
    slots_expired: int = 0
    conflicts: int = 0
    reliability_updates: int = 0
    voided: int = 0  # quorum-1 results of quarantined workers put back to ready
    decided_ids: list[str] = field(default_factory=list)


@dataclass
class Validator:
    couch: Couch
    db: str
    trust: quorum.TrustPolicy = field(default_factory=quorum.TrustPolicy)
    safety_s: float = 30.0  # read the due view at least this often (hub time)
    pending: set[str] = field(default_factory=set)  # changed, with results to look at
    # Collecting occurrences seen on the feed -> their earliest slot expiry or deadline.
    due: dict[str, datetime] = field(default_factory=dict)
    _last_scan: datetime | None = None
    # Quarantined workers (None: not read yet) and quorum-1 results of theirs to void.
    quarantined: set[str] | None = None
    voids: set[str] = field(default_factory=set)
    # The newest revision the feed brought of each pending occurrence: decided from it, no
    # read (dropped once used; a decision write it makes stale is a 409, then read).
    seen: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Each worker's reliability as last seen on the feed or written by this validator.
    reliabilities: dict[str, Reliability] = field(default_factory=dict)

    @property
    def next_due(self) -> datetime | None:
        return min(self.due.values()) if self.due else None

    # ------------------------------------------------------------ feed

    def observe(self, doc: dict[str, Any] | None) -> None:
        """A document from the live feed: note a collecting quorum occurrence."""
        if isinstance(doc, dict) and doc.get("type") == "reliability":
            self._remember(doc)
            if self.quarantined is not None and isinstance(doc.get("worker"), str):
                (self.quarantined.add if doc.get("quarantined") else self.quarantined.discard)(
                    doc["worker"]
                )
            return
        if not isinstance(doc, dict) or doc.get("type") != "occurrence":
            return
        if doc.get("state") == State.DONE.value and not doc.get("quorum"):
            worker = (doc.get("result") or {}).get("worker")
            if self.quarantined and worker in self.quarantined:
                self.voids.add(str(doc["_id"]))
            return
        if doc.get("_deleted") or doc.get("state") != State.READY.value:
            self.pending.discard(str(doc.get("_id")))
            self.due.pop(str(doc.get("_id")), None)
            self.seen.pop(str(doc.get("_id")), None)
            return
        if not isinstance(doc.get("quorum"), int) or doc["quorum"] < 2:
            return
        slots = doc.get("slots") or {}
        states = [s.get("state") for s in slots.values() if isinstance(s, dict)]
        results = sum(1 for state in states if state in RESULT_SLOT_STATES)
        # Decidable now: k results in, or an adaptive run's first (a trusted worker's is
        # accepted alone). Anything else waits for more results or for its deadline (the
        # due scan): no read per result.
        adaptive_alone = bool(doc.get("adaptive")) and not doc.get("spot_check")
        if results >= doc["quorum"] or (results and adaptive_alone):
            self.pending.add(str(doc["_id"]))
            self.seen[str(doc["_id"])] = doc
        moments = [s.get("expires_at") for s in slots.values()
                   if isinstance(s, dict) and s.get("state") == "leased"]  # fmt: skip
        moments.append(doc.get("quorum_deadline"))
        times = []
        for moment in moments:
            if isinstance(moment, str):
                try:
                    times.append(from_wire(moment))
                except ValueError:
                    continue
        if times:
            self.due[str(doc["_id"])] = min(times)

    # ------------------------------------------------------------ a pass

    def run(self, now: datetime) -> ValidateReport:
        report = ValidateReport()
        if self.quarantined is None:
            rows = self.couch.view(self.db, "farm", "reliability")["rows"]
            self.quarantined = {
                str(row["value"]["worker"]) for row in rows if row["value"].get("quarantined")
            }
        if self.voids:
            self._void(now, report)
        to_decide = set(self.pending)
        self.pending.clear()
        scan = (
            self._last_scan is None
            or (now - self._last_scan).total_seconds() >= self.safety_s
            or (self.next_due is not None and self.next_due <= now)
        )
        docs: dict[str, dict[str, Any]] = {}
        if scan:
            self._last_scan = now
            for doc_id in [i for i, at in self.due.items() if at <= now]:
                del self.due[doc_id]  # read below; what it still waits for comes back on the feed
            rows = self.couch.view(
                self.db, "farm", "quorum_due", endkey=to_wire(now), include_docs=True,
                limit=BATCH,
            )["rows"]  # fmt: skip
            for row in rows:
                if isinstance(row.get("doc"), dict):
                    docs[row["id"]] = row["doc"]
        for doc_id in to_decide - set(docs):
            fed = self.seen.pop(doc_id, None)
            if fed is not None:
                docs[doc_id] = fed
        missing = sorted(to_decide - set(docs))
        if missing:
            for row in self.couch.all_docs(self.db, keys=missing, include_docs=True):
                if isinstance(row.get("doc"), dict):
                    docs[row["doc"]["_id"]] = row["doc"]
        for doc_id in docs:
            self.seen.pop(doc_id, None)  # the decision write is checked against this revision
        for doc_id in sorted(docs):
            try:
                occ = Occurrence.from_doc(docs[doc_id])
            except ValidationError as exc:
                log.warning("event=quorum_malformed occ=%s error=%r", doc_id, str(exc)[:200])
                continue
            self._one(occ, now, report)
        return report

    def _one(self, occ: Occurrence, now: datetime, report: ValidateReport) -> None:
        expired = quorum.expire_slots(occ, now)
        if expired is not None:
            written = self._put(expired, report)
            if written is None:
                self.pending.add(occ.id)  # moved meanwhile: look again next pass
                return
            report.slots_expired += sum(
                1 for s in (occ.slots or {}).values()
                if s.state == "leased" and from_wire(s.expires_at) <= now
            )  # fmt: skip
            log.info("event=slots_expired occ=%s", occ.id)
            occ = written
        reliability = {}
        if occ.adaptive and not occ.spot_check:  # only adaptive replication asks who it is
            reliability = self.reliability([s.worker for s in quorum.results_in(occ)])
        decision = quorum.decide(occ, now, reliability=reliability, trust=self.trust)
        if decision is None:
            return
        stored = self._put(decision.occurrence, report)
        if stored is None:
            self.pending.add(occ.id)
            return
        validation = decision.occurrence.validation
        assert validation is not None
        report.decided += 1
        report.decided_ids.append(occ.id)
        setattr(report, validation.outcome, getattr(report, validation.outcome) + 1)
        log.info(
            "event=quorum_decided occ=%s outcome=%s canonical=%s agree=%s disagree=%s why=%r",
            occ.id, validation.outcome, validation.canonical, ",".join(decision.agree),
            ",".join(decision.disagree), validation.why,
        )  # fmt: skip
        if decision.compared:
            verdicts = {w: True for w in decision.agree} | {w: False for w in decision.disagree}
            report.reliability_updates += self.record_all(verdicts, now)

    def _void(self, now: datetime, report: ValidateReport) -> None:
        """Quorum-1 results of quarantined workers go back to ready: a worker whose
        results disagreed with the majority again and again is trusted with no result
        that nobody checks (it still takes quorum slots, where it is outvoted)."""
        ids, self.voids = sorted(self.voids), set()
        for row in self.couch.all_docs(self.db, keys=ids, include_docs=True):
            doc = row.get("doc")
            if not isinstance(doc, dict):
                continue
            try:
                occ = Occurrence.from_doc(doc)
                worker = occ.result.worker if occ.result else ""
                if self.quarantined is None or worker not in self.quarantined:
                    continue
                voided = quorum.void_result(occ, now, f"{worker} is quarantined")
            except (ValidationError, InvalidTransition):
                continue
            if self._put(voided, report) is not None:
                report.voided += 1
                log.warning("event=result_voided occ=%s worker=%s why=quarantined", occ.id, worker)

    def _put(self, occ: Occurrence, report: ValidateReport) -> Occurrence | None:
        try:
            rev = self.couch.put(self.db, occ.to_doc())
        except (Conflict, Forbidden):
            # POUCHDB: a write on a revision another hub already ended is checked by
            # validate_doc_update first there ("a final state never changes": 403).
            report.conflicts += 1
            return None
        return occ.model_copy(update={"rev": rev})

    # ------------------------------------------------------------ reliability

    def reliability(self, workers: Iterable[str]) -> dict[str, Reliability]:
        names = sorted(set(workers))
        if not names:
            return {}
        found: dict[str, Reliability] = {}
        rows = self.couch.all_docs(self.db, keys=[reliability_id(n) for n in names],
                                   include_docs=True)  # fmt: skip
        for row in rows:
            doc = row.get("doc")
            if isinstance(doc, dict):
                try:
                    rel = Reliability.from_doc(doc)
                except ValidationError:
                    continue
                found[rel.worker] = rel
        return found

    def _remember(self, doc: dict[str, Any]) -> None:
        """A reliability document from the feed (or our own write): keep the newest."""
        try:
            rel = Reliability.from_doc(doc)
        except ValidationError:
            return
        known = self.reliabilities.get(rel.worker)
        if known is None or _generation(rel.rev) >= _generation(known.rev):
            self.reliabilities[rel.worker] = rel

    def record_all(self, verdicts: dict[str, bool], now: datetime) -> int:
        """One decision's comparisons: every worker's reliability as last seen (the feed,
        our own writes; the others read in one request), written in one ``_bulk_docs``; a
        worker whose write conflicted (another hub's decision updated it meanwhile, or the
        feed had not brought it yet) is read and done again alone. Returns how many were
        written."""
        current = {w: self.reliabilities[w] for w in verdicts if w in self.reliabilities}
        unknown = [w for w in verdicts if w not in current]
        if unknown:
            current |= self.reliability(unknown)
        updates = [
            quorum.update_reliability(current.get(w), w, agreed, now, self.trust)
            for w, agreed in sorted(verdicts.items())
        ]
        written = 0
        rows = self.couch.bulk_docs(self.db, [u.to_doc() for u in updates])
        for update, row in zip(updates, rows, strict=True):
            if "rev" in row and not row.get("error"):
                written += 1
                self._remember({**update.to_doc(), "_rev": row["rev"]})
                self._noted(update, current.get(update.worker))
            else:
                written += self.record(update.worker, verdicts[update.worker], now)
        return written

    def _noted(self, updated: Reliability, before: Reliability | None) -> None:
        if updated.quarantined and self.quarantined is not None:
            self.quarantined.add(updated.worker)
        if updated.quarantined and not (before and before.quarantined):
            log.warning("event=worker_quarantined worker=%s disagree_streak=%d score=%.3f",
                        updated.worker, updated.disagree_streak, updated.score)  # fmt: skip

    def record(self, worker: str, agreed: bool, now: datetime) -> int:
        """One comparison for ``worker``, read-modify-write with ``_rev`` (two hubs deciding
        different occurrences may update the same worker). 1 when written."""
        for _ in range(RELIABILITY_ATTEMPTS):
            current = self.reliability([worker]).get(worker)
            updated = quorum.update_reliability(current, worker, agreed, now, self.trust)
            try:
                rev = self.couch.put(self.db, updated.to_doc())
            except (Conflict, Forbidden):
                continue
            self._remember({**updated.to_doc(), "_rev": rev})
            self._noted(updated, current)
            return 1
        log.warning("event=reliability_contended worker=%s", worker)
        return 0


def _generation(rev: str | None) -> int:
    """The number before the dash of a ``_rev`` (0 for none)."""
    head = (rev or "0").split("-", 1)[0]
    return int(head) if head.isdigit() else 0


def load_plugin_comparators() -> list[str]:
    """Comparators plugins declare in the ``couchfarm.comparators`` entry-point group
    (name = kind, object = a function (RunResult, RunResult) -> bool). A broken plugin is
    logged and skipped: its kind then compares outputs for equality."""
    from importlib import metadata

    loaded: list[str] = []
    try:
        points = metadata.entry_points(group=COMPARATOR_GROUP)
    except Exception as exc:  # a broken environment must not stop the hub
        log.warning("event=comparators_unreadable error=%r", str(exc))
        return loaded
    for point in points:
        try:
            quorum.register_comparator(point.name, point.load())
            loaded.append(point.name)
        except Exception as exc:
            log.warning("event=comparator_broken kind=%s error=%r", point.name, str(exc))
    return loaded


__all__ = ["ValidateReport", "Validator", "load_plugin_comparators"]
