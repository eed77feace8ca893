"""The hub offers each ready occurrence to one worker (docs/DECISIONS.md decision 12).

Why: on CouchDB 3 every continuous ``_changes`` feed on a database costs the server
0.3 to 0.6 ms of CPU for *every write* to that database, whatever its filter (``_doc_ids``,
``_selector`` or JS; measured on 3.5.0). With one feed per worker on the live database,
the server's cost per occurrence grew with the number of connected workers, and racing
idle workers turned every new occurrence into a storm of 409s. So no worker follows the
live database. The hub, which follows it anyway, keeps the ready occurrences and the
online workers, and writes *offers* into a small separate database, ``{db}_board``:

- ``offer:{worker}``: the occurrence documents (with their ``_rev``) offered to that
  worker, at most its free slots. Each worker follows only its own offer document
  (``filter=_doc_ids``). Owning an occurrence still means winning the ``_rev`` write:
  the offer only says who should try, so a stale offer costs one 409 and nothing else.
- ``hub:dispatcher``: a beat every ``BEAT_S`` seconds, so workers know offers are coming
  and leave ready rows they were not offered to their owners (``OVERDUE_S``).

The board is written in one ``_bulk_docs`` per dispatch, at most every ``min_gap_s``
(the first after a quiet spell at once), and only when some offer must reach its worker
(``WRITE_AHEAD_S`` before its ``not_before``; what is due already, at once), carrying
every offer document that changed since the last write. Each write wakes every worker's
feed, so its cost grows with the fleet: offers made ahead of their due time are gathered
into few writes, and withdrawals nobody can act on wrongly (the worker claimed it itself,
or let the offer lapse) wait for the next write (``LAZY_WRITE_S`` at the latest).

Choosing the worker: in turn order (``queue_at``: priority, aging, fair share), each
occurrence goes to the online worker of its tube and kind with a free slot that ranks
first by rendezvous hashing of (occurrence, worker), so offers spread evenly and every
hub computes the same choice. Free slots = the worker's ``slots`` minus its leases (seen
on the feed) minus what it holds on offer. When no worker has a free slot, a busy one may
hold ``PREFETCH`` more, which it claims the moment a run ends (no round trip through the
hub between two runs). Occurrences materialized ahead are offered up
to ``lead_s`` before their ``not_before`` and claimed on time. An offer not claimed
``offer_s`` after ``not_before`` is withdrawn and given to the next worker; a worker that
let it lapse with a slot free gets none for ``REST_S``, doubled for each lapse in a row
(a dead worker soon gets nothing, whatever its keep-alive period), until it claims or its
heartbeat shows it alive again.

Pure: :class:`Dispatcher` does no I/O; :class:`Board` writes the documents.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from hub.protocol.board import (
    BEAT_ID,
    BEAT_S,
    KEEPALIVE_MAX_S,
    KEEPALIVE_S,
    LAZY_WRITE_S,
    LEAD_S,
    LEFT_FOR,
    OFFER_S,
    ONLINE_FACTOR,
    ONLINE_S,
    OVERDUE_S,
    PREFETCH,
    REST_S,
    WRITE_AHEAD_S,
    board_db,
    keepalive_for,
    left_beat,
    offer_doc_id,
    str_items,
)
from hub.protocol.couch import Couch, CouchError, NotFound
from hub.protocol.states import rendezvous
from hub.protocol.states import rev_generation as _generation
from hub.protocol.timefmt import from_wire, to_wire

log = logging.getLogger("couchfarm.dispatch")


def _moment(value: Any) -> datetime | None:
    try:
        return from_wire(str(value))
    except ValueError:
        return None


@dataclass
class Seat:
    """What the hub knows of one worker."""

    name: str
    tubes: frozenset[str] = frozenset()
    kinds: frozenset[str] | None = None  # None: any kind
    slots: int = 1
    accepting: bool = False
    last_seen: datetime | None = None
    leased: set[str] = field(default_factory=set)
    offers: dict[str, datetime] = field(default_factory=dict)  # occurrence -> lapses at
    lapsed_at: datetime | None = None  # let an offer lapse: none until it beats again
    lapses: int = 0  # offers let lapse in a row (with a slot free): the rest doubles

    def free(self, prefetch: int = 0) -> int:
        return self.slots + prefetch - len(self.leased) - len(self.offers)

    def takes(self, doc: dict[str, Any]) -> bool:
        return (
            (not self.tubes or doc.get("tube") in self.tubes)
            and (self.kinds is None or doc.get("kind") in self.kinds)
            and self.name not in (doc.get("slots") or {})  # a quorum slot: one per worker
        )


def quorum_full(doc: dict[str, Any]) -> bool:
    """A quorum occurrence (hub/protocol/quorum.py) whose slots are all live: it stays
    ready while it collects results, but nobody can claim it."""
    quorum = doc.get("quorum")
    if not isinstance(quorum, int) or quorum < 2:
        return False
    slots = doc.get("slots") or {}
    live = sum(1 for s in slots.values() if isinstance(s, dict) and s.get("state") in
               ("leased", "done", "error"))  # fmt: skip
    return live >= quorum


class Dispatcher:
    def __init__(
        self,
        *,
        offer_s: float = OFFER_S,
        lead_s: float = LEAD_S,
        online_s: float = ONLINE_S,
        prefetch: int = PREFETCH,
    ) -> None:
        self.prefetch = prefetch
        self.offer_s = offer_s
        self.lead_s = lead_s
        self.online_s = online_s
        self.ready: dict[str, dict[str, Any]] = {}
        self.seats: dict[str, Seat] = {}
        self.paused_tubes: set[str] = set()
        self._generation: dict[str, int] = {}
        self._forked: set[str] = set()  # seen in conflict: its winner may step back (cluster)
        self._offered_to: dict[str, str] = {}  # occurrence -> worker
        self._lessee: dict[str, str] = {}  # occurrence -> worker holding its lease
        self._slot_holders: dict[str, set[str]] = {}  # quorum occurrence -> leased slots' workers
        # worker -> when its offer doc must be written at the latest (None: a withdrawal
        # that waits for the next write, LAZY_WRITE_S at most from when plan() first sees it)
        self._dirty: dict[str, datetime | None] = {}
        self._lazy_by: dict[str, datetime] = {}
        self.offered = 0
        self.lapsed = 0
        self.write_ahead_s = WRITE_AHEAD_S
        self.keepalive_s = KEEPALIVE_S  # what the beat asks of each worker now
        self._announced: list[tuple[datetime, float]] = []  # (when, keep-alive) announced
        self._min_online_s = online_s

    # ------------------------------------------------------------ what the hub sees

    def reset(self) -> None:
        """Forget everything (the hub moved to another server): reload, then observe."""
        self.__init__(  # type: ignore[misc]
            offer_s=self.offer_s, lead_s=self.lead_s, online_s=self._min_online_s,
            prefetch=self.prefetch,
        )  # fmt: skip

    def keepalive(self, now: datetime) -> float:
        """The keep-alive period to announce now (in the beat), from the fleet's size, and
        the online window that follows: ONLINE_FACTOR times the longest period announced in
        the last longest window, so a worker still on an older, longer period is not taken
        for offline when the fleet shrinks."""
        cutoff = now - timedelta(seconds=self.online_s)
        online = sum(
            1 for seat in self.seats.values()
            if seat.last_seen is not None and seat.last_seen >= cutoff
        )  # fmt: skip
        self.keepalive_s = keepalive_for(online)
        self.announce(self.keepalive_s, now)
        return self.keepalive_s

    def announce(self, keepalive_s: float, now: datetime) -> None:
        """A keep-alive period workers were asked for (by this hub, or the one before it,
        whose beat the hub finds on the board when it starts)."""
        keep = now - timedelta(seconds=ONLINE_FACTOR * KEEPALIVE_MAX_S)
        self._announced = [(at, k) for at, k in self._announced if at >= keep]
        self._announced.append((now, keepalive_s))
        longest = max(k for _, k in self._announced)
        self.online_s = max(self._min_online_s, ONLINE_FACTOR * longest)

    def observe(self, doc: dict[str, Any] | None) -> None:
        """One document from the live database (a feed row's doc, or a view row's)."""
        if not isinstance(doc, dict) or not isinstance(doc.get("_id"), str):
            return
        if doc.get("type") == "worker" and not doc.get("_deleted"):
            self._observe_worker(doc)
            return
        doc_id = doc["_id"]
        if not doc_id.startswith("occ:"):
            return
        generation = _generation(doc.get("_rev"))
        if (
            not doc.get("_deleted")
            and generation < self._generation.get(doc_id, 0)
            and doc_id not in self._forked
        ):
            return  # an older copy (a view read racing the feed)
        if doc.get("_conflicts"):
            # Settling a conflict deletes the losing leaves, and the winner left may be of
            # a lower generation than one seen here (a CouchDB cluster took two claims, and
            # the abandoned one went a revision further): take its next copy as it comes.
            # Dropped, the lost lease would stay on its worker's seat, which then looks
            # busy and is offered nothing until the occurrence is archived (issue 21).
            self._forked.add(doc_id)
        else:
            self._forked.discard(doc_id)
        self._generation[doc_id] = generation
        state = None if doc.get("_deleted") else doc.get("state")
        lease = doc.get("lease") or {}
        # An abandoned claim (decision 14) holds nothing: its worker runs it not.
        held = state == "leased" and not lease.get("abandoned")
        worker = lease.get("worker") if held else None
        if state == "ready" and quorum_full(doc):
            self.ready.pop(doc_id, None)  # every slot of a quorum taken: nothing to offer
            self._withdraw(doc_id, lazy=True)
        elif state == "ready":
            self.ready[doc_id] = doc
            holder = self._offered_to.get(doc_id)
            if holder is not None and holder in (doc.get("slots") or {}):
                self._withdraw(doc_id, lazy=True)  # it took its slot: offer the next one
            elif holder is not None:  # the offer must carry the new _rev before it is tried
                self._mark(holder, self._deadline(holder, doc_id))
        else:
            self.ready.pop(doc_id, None)
            # Its holder claimed it: the worker knows, the withdrawal can wait. Anyone else
            # (another worker, a cancel): tell the holder before it would try it.
            self._withdraw(doc_id, lazy=worker is not None and
                           worker == self._offered_to.get(doc_id))  # fmt: skip
        lessee = self._lessee.pop(doc_id, None)
        if lessee is not None and lessee in self.seats:
            self.seats[lessee].leased.discard(doc_id)
        if isinstance(worker, str):
            self._lessee[doc_id] = worker
            seat = self._seat(worker)
            seat.leased.add(doc_id)
            seat.lapses = 0  # it claims: alive
        self._observe_slots(doc_id, doc if state == "ready" else {})
        if state in (None, "done", "failed", "cancelled", "missed", "skipped", "inconclusive"):
            self._generation.pop(doc_id, None)  # it never comes back: keep memory flat
            self._forked.discard(doc_id)

    def _observe_slots(self, doc_id: str, doc: dict[str, Any]) -> None:
        """A running quorum slot (hub/protocol/quorum.py) takes its worker's slot as a
        lease does, so the worker is not offered more than it can start."""
        slots = doc.get("slots") or {}
        holders = {
            name for name, slot in slots.items()
            if isinstance(slot, dict) and slot.get("state") == "leased"
        }  # fmt: skip
        for name in self._slot_holders.pop(doc_id, set()) - holders:
            if name in self.seats:
                self.seats[name].leased.discard(doc_id)
        for name in holders:
            self._seat(name).leased.add(doc_id)
        if holders:
            self._slot_holders[doc_id] = holders

    def _observe_worker(self, doc: dict[str, Any]) -> None:
        name = doc.get("name")
        if not isinstance(name, str):
            return
        seat = self._seat(name)
        seat.tubes = str_items(doc.get("tubes"))
        seat.kinds = str_items(doc.get("kinds")) or None
        slots = doc.get("slots")
        seat.slots = slots if isinstance(slots, int) and slots > 0 else 1
        seat.accepting = doc.get("state") == "running"
        seen = _moment(doc.get("last_seen"))
        if seen is not None and (seat.last_seen is None or seen > seat.last_seen):
            seat.last_seen = seen
        if seat.lapsed_at is not None and seat.last_seen and seat.last_seen > seat.lapsed_at:
            seat.lapsed_at = None
            seat.lapses = 0

    def _seat(self, name: str) -> Seat:
        seat = self.seats.get(name)
        if seat is None:
            seat = self.seats[name] = Seat(name)
        return seat

    def _withdraw(self, occ_id: str, *, lazy: bool = False) -> None:
        holder = self._offered_to.get(occ_id)
        if holder is None:
            return
        deadline = None if lazy else self._deadline(holder, occ_id)
        del self._offered_to[occ_id]
        if holder in self.seats:
            self.seats[holder].offers.pop(occ_id, None)
            self._mark(holder, deadline)

    def _deadline(self, holder: str, occ_id: str) -> datetime:
        """When the holder's doc must be on the board: before it would try the offer."""
        seat = self.seats.get(holder)
        lapses = seat.offers.get(occ_id) if seat is not None else None
        if lapses is None:
            return datetime.min.replace(tzinfo=UTC)  # at once
        return lapses - timedelta(seconds=self.offer_s + self.write_ahead_s)

    def _mark(self, worker: str, deadline: datetime | None) -> None:
        """The worker's offer doc changed; write it by ``deadline`` (None: lazily)."""
        current = self._dirty.get(worker)
        if worker not in self._dirty or (
            deadline is not None and (current is None or deadline < current)
        ):
            self._dirty[worker] = deadline

    # ------------------------------------------------------------ deciding

    def plan(self, now: datetime) -> dict[str, list[dict[str, Any]]]:
        """New offers. Returns, for each worker whose offers changed, all it now holds."""
        cutoff = now - timedelta(seconds=self.online_s)
        for seat in self.seats.values():
            online = seat.accepting and seat.last_seen is not None and seat.last_seen >= cutoff
            lapsed_now = False
            for occ_id, lapses in list(seat.offers.items()):
                if not online or lapses <= now:
                    if online:
                        self.lapsed += 1
                        log.info("event=offer_lapsed occ=%s worker=%s", occ_id, seat.name)
                    self._withdraw(occ_id, lazy=True)  # the next holder's offer is urgent
                    if online and seat.free() > 0:
                        seat.lapsed_at = now  # a free slot, and it did not claim: rest
                        lapsed_now = True
            if lapsed_now:
                seat.lapses += 1
        for seat in self.seats.values():
            rest = REST_S * 2 ** min(max(seat.lapses - 1, 0), 10)
            if seat.lapsed_at is not None and (now - seat.lapsed_at).total_seconds() >= rest:
                seat.lapsed_at = None
        open_seats = [
            seat
            for seat in self.seats.values()
            if seat.accepting
            and seat.lapsed_at is None
            and seat.last_seen is not None
            and seat.last_seen >= cutoff
            and seat.free(self.prefetch) > 0
        ]
        if open_seats:
            horizon = now + timedelta(seconds=self.lead_s)
            for doc in sorted(self._unoffered(horizon), key=lambda d: str(d.get("queue_at"))):
                takers = [seat for seat in open_seats if seat.takes(doc)]
                # A free slot first; a busy worker's prefetch only when none is free.
                takers = [seat for seat in takers if seat.free() > 0] or takers
                if not takers:
                    continue
                seat = max(takers, key=lambda s: rendezvous(doc["_id"], s.name))
                not_before = _moment(doc.get("not_before")) or now
                seat.offers[doc["_id"]] = max(now, not_before) + timedelta(seconds=self.offer_s)
                self._offered_to[doc["_id"]] = seat.name
                self._mark(seat.name, not_before - timedelta(seconds=self.write_ahead_s))
                self.offered += 1
                if seat.free(self.prefetch) <= 0:
                    open_seats.remove(seat)
                    if not open_seats:
                        break
        for name, deadline in self._dirty.items():
            if deadline is None and name not in self._lazy_by:
                self._lazy_by[name] = now + timedelta(seconds=LAZY_WRITE_S)
        due = [
            self._lazy_by[name] if deadline is None else deadline
            for name, deadline in self._dirty.items()
        ]
        if not due or min(due) > now:
            return {}  # nothing must reach a worker yet: gather it into a later write
        # One write wakes every feed however many docs it holds: send every change.
        changed = {
            name: [self.ready[i] for i in self.seats[name].offers if i in self.ready]
            for name in sorted(self._dirty)
            if name in self.seats
        }
        self._dirty.clear()
        self._lazy_by.clear()
        return changed

    def _unoffered(self, horizon: datetime) -> Iterable[dict[str, Any]]:
        for occ_id, doc in self.ready.items():
            if occ_id in self._offered_to or doc.get("tube") in self.paused_tubes:
                continue
            attempt, most = doc.get("attempt", 0), doc.get("max_attempts", 1)
            if isinstance(attempt, int) and isinstance(most, int) and attempt >= most:
                continue
            not_before = _moment(doc.get("not_before"))
            if not_before is not None and not_before > horizon:
                continue
            yield doc

    def mark_dirty(self, workers: Iterable[str]) -> None:
        """These offer documents were not written: write them at the next plan."""
        for worker in workers:
            self._mark(worker, datetime.min.replace(tzinfo=UTC))


class Board:
    """Writes the dispatcher's offers and beat into ``{db}_board`` on the hub's server."""

    def __init__(
        self, couch: Couch, db: str, *, on_missing: Callable[[str], bool] | None = None
    ) -> None:
        self.couch = couch
        self.db = board_db(db)
        self._revs: dict[str, str] = {}
        self._bound = ""
        self._beat_at: datetime | None = None
        self.writes = 0
        # Given a server's URL, create the board there (needs a server admin); True if it
        # did. A server rebuilt by an older `hub recover` has none.
        self.on_missing = on_missing
        self._missing_logged: set[str] = set()

    def _leave(self, url: str, revs: dict[str, str], now: datetime) -> None:
        """Tell workers still on the server we left that no offers come from here any
        more (in the background: that server may be dead or unreachable)."""
        urls = [server.url for server in self.couch.servers]
        if url not in urls:
            return
        old = self.couch.for_server(urls.index(url))
        old.retries = 0
        doc = left_beat(now, self.couch.active.label)

        def write() -> None:
            for _ in range(2):
                if BEAT_ID in revs:
                    doc["_rev"] = revs[BEAT_ID]
                try:
                    row = old.bulk_docs(self.db, [doc])[0]
                except CouchError:
                    return  # gone: its workers fail over by themselves
                if row.get("error") != "conflict":
                    log.info("event=board_left server=%s went_to=%s", old.active.label,
                             doc[LEFT_FOR])  # fmt: skip
                    return
                current = old.get_or_none(self.db, BEAT_ID)
                if current is None:
                    return
                revs[BEAT_ID] = current["_rev"]

        threading.Thread(target=write, name="board-leave", daemon=True).start()

    def beat_due(self, now: datetime) -> bool:
        return self._beat_at is None or (now - self._beat_at).total_seconds() >= BEAT_S

    def last_keepalive(self) -> float | None:
        """The keep-alive period the board's beat asks for now (a previous hub's), if any."""
        try:
            beat = self.couch.get_or_none(self.db, BEAT_ID)
        except CouchError:
            return None
        value = (beat or {}).get("keepalive_s")
        return float(value) if isinstance(value, int | float) and value > 0 else None

    def publish(
        self,
        offers: dict[str, list[dict[str, Any]]],
        now: datetime,
        keepalive_s: float = KEEPALIVE_S,
        online_s: float | None = None,
    ) -> list[str]:
        """Write the changed offer docs (and the beat when due) in one request. Returns
        the workers whose doc could not be written (retry at the next plan)."""
        if self.couch.active.url != self._bound:  # another server: its revisions are its own
            if self._bound:
                self._leave(self._bound, dict(self._revs), now)
            self._revs.clear()
            self._bound = self.couch.active.url
            self._beat_at = None
            # A note we left here earlier must give way at once to this beat.
            self._learn_revs([BEAT_ID])
        docs: list[dict[str, Any]] = [
            {"_id": offer_doc_id(worker), "type": "offer", "worker": worker, "at": to_wire(now),
             "offers": list(held)}
            for worker, held in offers.items()
        ]  # fmt: skip
        beat_due = self._beat_at is None or (now - self._beat_at).total_seconds() >= BEAT_S
        if beat_due:
            docs.append({"_id": BEAT_ID, "type": "beat", "at": to_wire(now), "every_s": BEAT_S,
                         "overdue_s": OVERDUE_S, "keepalive_s": keepalive_s,
                         "online_s": online_s or ONLINE_FACTOR * keepalive_s})  # fmt: skip
        if not docs:
            return []
        failed, conflicted = self._write(docs, now)
        if conflicted:
            # A retried request whose first try landed, another hub, or a server we came
            # back to: learn the revisions (one read) and write those docs again now, not
            # at the next dispatch, or their offers reach their workers late.
            self._learn_revs([doc["_id"] for doc in conflicted])
            again, _ = self._write(conflicted, now)
            failed = [w for w in failed if w not in {d.get("worker") for d in conflicted}]
            failed += again
        return failed

    def _write(
        self, docs: list[dict[str, Any]], now: datetime
    ) -> tuple[list[str], list[dict[str, Any]]]:
        """One ``_bulk_docs``: the workers whose offer doc failed, and the docs refused as
        conflicts (to write again with the stored revision)."""
        for doc in docs:
            doc.pop("_rev", None)
            if doc["_id"] in self._revs:
                doc["_rev"] = self._revs[doc["_id"]]
        try:
            rows = self.couch.bulk_docs(self.db, docs)
        except NotFound as exc:
            self._missing(str(exc))
            return [d["worker"] for d in docs if d["type"] == "offer"], []
        except CouchError as exc:
            log.warning("event=board_write_failed error=%r", str(exc))
            return [d["worker"] for d in docs if d["type"] == "offer"], []
        self.writes += 1
        failed: list[str] = []
        conflicted: list[dict[str, Any]] = []
        for doc, row in zip(docs, rows, strict=False):
            if "rev" in row and not row.get("error"):
                self._revs[doc["_id"]] = row["rev"]
                if doc["_id"] == BEAT_ID:
                    self._beat_at = now
                continue
            self._revs.pop(doc["_id"], None)
            if row.get("error") == "conflict":
                conflicted.append(doc)
            else:
                log.warning("event=board_write_refused doc=%s error=%r", doc["_id"], row)
            if doc["type"] == "offer":
                failed.append(doc["worker"])
        return failed, conflicted

    def _missing(self, error: str) -> None:
        """No board database on this server: create it if we can, else say so once (the
        workers there read the ready view themselves meanwhile)."""
        url = self.couch.active.url
        if self.on_missing is not None and self.on_missing(url):
            log.warning("event=board_created db=%s server=%s", self.db, self.couch.active.label)
            return
        if url not in self._missing_logged:
            self._missing_logged.add(url)
            log.error(
                "event=board_missing db=%s server=%s error=%r hint=%r", self.db,
                self.couch.active.label, error,
                "run `hub init` (or `hub recover`) with a server admin on that server",
            )  # fmt: skip

    def _learn_revs(self, doc_ids: list[str]) -> None:
        try:
            rows = self.couch.all_docs(self.db, keys=doc_ids)
        except CouchError:
            return
        for row in rows:
            rev = (row.get("value") or {}).get("rev")
            if isinstance(rev, str) and not (row.get("value") or {}).get("deleted"):
                self._revs[row["id"]] = rev
