"""The claim protocol: optimistic locking on the ``_rev`` a ready row was seen with.

1. Take the hub's offers (readyset.py: doc and ``_rev`` from the board feed), or read
   ``_design/claim/_view/ready`` for a tube with ``include_docs`` (key ``[tube, queue_at]``),
   a few rows more than K.
2. Drop rows that are not claimable *as seen*: not ``ready`` any more, ``not_before``
   after hub time, a kind this worker does not run, no attempts left.
3. PUT each (``states.claim`` on the row's doc, with the row's ``_rev``) until enough are
   won; with several free slots, the claims go in one ``_bulk_docs``, each doc still with
   its own ``_rev``. 201: ours. 409: someone else won, next one.
4. A 409 on a request that was *sent more than once* may be our own first send having
   succeeded: GET the doc and take it only if it is leased by us, for the attempt we
   claimed, with the ``claimed_at`` we wrote. Anything else is someone else's.
5. When every try of a round lost, back off with full jitter and read again (capped).

The doc is never re-read and locked as it comes back: a claim always carries the revision
it was seen with in ``ready`` state (DESIGN.md section 5).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from desktop_worker import slots
from desktop_worker.config import DEFAULT_CLAIM_K
from desktop_worker.log import log_event
from desktop_worker.readyset import ReadySet
from hub.protocol import quorum, states
from hub.protocol.board import read_peers
from hub.protocol.buckets import bucket_order
from hub.protocol.couch import Conflict, Couch, CouchError, Forbidden, NotFound
from hub.protocol.model import Occurrence, State
from hub.protocol.names import CLAIM_DDOC
from hub.protocol.timefmt import from_wire, to_wire

# Backlog page size per online worker: a worker holds the page's rows where it ranks first
# (readyset.py), about this many, and claims them in batches of 1 + claim_ahead
# (claimloop.py): 16 serves one batch of the default 15 ahead per view read.
ROWS_PER_WORKER = 16
# A worker with none of its own rows left on a backlog page reads up to this many pages
# further for its own before it tries other workers' rows (see _read_backlog).
DEEPER_PAGES = 3
PEERS_REFRESH_S = 10.0  # without a dispatcher, who is online is read again this often
# In a backlog without a dispatcher, a worker reads its own ready buckets (the
# ready_buckets view, hub/protocol/buckets.py) this many rows at a time: one batch of the
# default 1 + 15 ahead. It does not grow with the number of workers.
ROWS_PER_BUCKET = 16
# A worker whose own buckets are all empty tries this many of other workers' buckets (past
# the rows their owner holds) before it reads a page of the ready view.
STEAL_TRIES = 3


@dataclass
class ClaimStats:
    view_reads: int = 0  # every read: pages, doc fetches and peer lists (the kinds below)
    id_pages: int = 0  # ready view pages read without docs (a backlog)
    bucket_pages: int = 0  # pages of a ready bucket, with docs (a backlog, no dispatcher)
    stolen_pages: int = 0  # of those, pages of another worker's bucket
    doc_pages: int = 0  # ready view pages read with include_docs
    doc_fetches: int = 0  # _all_docs by keys: the docs of this worker's own rows
    peer_reads: int = 0  # who is online (workers_by_last_seen)
    rows_read: int = 0  # rows in those answers (ids, docs, peers): the client's parsing work
    puts: int = 0  # claim writes (documents), single or in a batch
    batches: int = 0  # _bulk_docs requests carrying claims
    wins: int = 0
    conflicts: int = 0  # 409: another worker's write got there first
    retried_wins: int = 0
    refused: int = 0  # 403 from validate_doc_update (PouchDB's form of a lost race)
    # A cluster took the claim on fewer copies than a majority (202): another claim won
    # there. Abandoned at once, never run (fencing before the run, not after it).
    abandoned: int = 0

    @property
    def lost_races(self) -> int:
        return self.conflicts + self.refused + self.abandoned

    def add(self, other: ClaimStats) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class ClaimResult:
    won: list[Occurrence] = field(default_factory=list)
    candidates: int = 0  # claimable rows seen (before trying)
    contended: bool = False  # there was work but every try lost
    next_not_before: datetime | None = None  # earliest future not_before seen
    retry_in: float | None = None  # seconds until a staggered candidate's turn comes
    stats: ClaimStats = field(default_factory=ClaimStats)


class Claimer:
    """Claims ready occurrences for one worker. Thread-safe if ``rng`` is not shared."""

    def __init__(
        self,
        couch: Couch,
        db: str,
        worker: str,
        tubes: Iterable[str],
        *,
        k: int = DEFAULT_CLAIM_K,
        kinds: Iterable[str] | None = None,
        extra_rows: int = 4,
        max_rounds: int = 3,
        backoff_base: float = 0.05,
        backoff_max: float = 1.0,
        rng: random.Random | None = None,
        sleep: Callable[[float], None] = time.sleep,
        ready_set: ReadySet | None = None,
        poll_s: float = 30.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.couch = couch
        self.db = db
        self.worker = worker
        self.tubes = list(tubes)
        self.k = max(1, k)
        self.kinds = None if kinds is None else frozenset(kinds)
        self.extra_rows = extra_rows
        self.max_rounds = max(1, max_rounds)
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.rng = rng or random.Random()
        self.sleep = sleep
        self.ready_set = ready_set
        self.poll_s = poll_s
        self.monotonic = monotonic
        self._tube_turn = 0
        self._backlog: dict[str, bool] = {}  # the tube's last read was a full page
        self._peers_at = float("-inf")
        self._verified: dict[str, float] = {}  # tube -> when its held rows were last checked
        # Quarantined by the hub's validator (hub:reliability:{name}): take only quorum
        # slots, no work whose result would be accepted alone (the claim loop sets it).
        self.quorum_only = False
        self._bucket_orders: dict[tuple[str, tuple[str, ...]], tuple[list[int], list[int]]] = {}
        self._bucket_turn: dict[str, int] = {}
        # (tube, bucket, skip) pages found with no row to claim now: not read again until
        # the next peer refresh (new work in a backlog queues behind what is there anyway).
        self._empty_buckets: set[tuple[str, int, int]] = set()
        # Buckets that gave a full page in this backlog, and until when (monotonic) a
        # tube's backlog counts as too shallow for buckets (see _read_buckets).
        self._deep_buckets: set[tuple[str, int]] = set()
        self._shallow_until: dict[str, float] = {}

    # ------------------------------------------------------------ public

    def claim(self, wanted: int = 1, ahead: int = 0) -> ClaimResult:
        """Try to lease up to ``wanted`` occurrences, and up to ``ahead`` more in the same
        ``_bulk_docs`` (claimed ahead in a backlog, claimloop.py): those ride along with the
        first batch only, never cost a request of their own. Raises Unavailable when
        offline."""
        result = ClaimResult()
        tubes = self._tube_order()
        for round_no in range(self.max_rounds):
            result.contended = False
            tried_any = False
            for tube in tubes:
                need = wanted - len(result.won)
                if need <= 0:
                    return result
                extra = ahead if round_no == 0 and not result.won else 0
                candidates, next_nb, wait = self._candidates(tube, need + extra, result.stats)
                if wait is not None and (result.retry_in is None or wait < result.retry_in):
                    result.retry_in = wait
                if next_nb is not None and (
                    result.next_not_before is None or next_nb < result.next_not_before
                ):
                    result.next_not_before = next_nb
                if round_no == 0:
                    result.candidates += len(candidates)
                if not candidates:
                    continue
                tried_any = True
                result.won.extend(self._try(candidates, need, result.stats, extra))
            if len(result.won) >= wanted or not tried_any:
                return result
            if result.won:
                return result  # partial success: run what we have, come back for more
            result.contended = True
            delay = self.rng.uniform(0, min(self.backoff_max, self.backoff_base * 2**round_no))
            self.sleep(delay)
        return result

    def in_backlog(self) -> bool:
        """The last read of some tube was a full page: more is ready than one page shows."""
        return any(self._backlog.values())

    # ------------------------------------------------------------ steps

    def _tube_order(self) -> list[str]:
        if len(self.tubes) <= 1:
            return list(self.tubes)
        start = self._tube_turn % len(self.tubes)
        self._tube_turn += 1
        return self.tubes[start:] + self.tubes[:start]

    def _candidates(
        self, tube: str, need: int, stats: ClaimStats
    ) -> tuple[list[Occurrence], datetime | None, float | None]:
        """Claimable occurrences of a tube, in the order to try them; the next future
        ``not_before``; and, with a ready set, the seconds until a staggered one's turn."""
        first = max(self.k, need)
        ready = self.ready_set
        if ready is not None:
            now_mono = self.monotonic()
            now = self.couch.now()
            # A few rows per online worker: each then finds some whose first turn is its own
            # (and holds them), instead of a dozen workers sharing the same first K
            # (measured: 60 % lost races at 16 workers with K=10).
            first = max(first, ROWS_PER_WORKER * (len(ready.online_peers(tube, now)) + 1))
            docs, wait = ready.candidates(tube, now, now_mono, first)
            occs = self._claimable_held(docs, now, now_mono)
            if occs and self._verify_held(tube, occs, first + self.extra_rows, now, stats):
                docs, wait = ready.candidates(tube, now, self.monotonic(), first)
                occs = self._claimable_held(docs, now, self.monotonic())
            if occs or wait is not None or not ready.needs_read(tube, now_mono, self.poll_s):
                return occs, ready.next_not_before(tube, now), wait
        limit = first + self.extra_rows
        epoch = ready.epoch if ready is not None else None
        if ready is not None and not ready.dispatched(self.monotonic()):
            self._refresh_peers(stats)
        if ready is not None and self._backlog.get(tube):
            if not ready.dispatched(self.monotonic()):
                from_buckets = self._read_buckets(tube, first, stats)
                if from_buckets is not None:
                    return from_buckets
            return self._read_backlog(tube, need, first, limit, stats)
        body = self.couch.view(
            self.db,
            CLAIM_DDOC,
            "ready",
            startkey=[tube],
            endkey=[tube, {}],
            limit=limit,
            include_docs=True,
        )
        stats.view_reads += 1
        stats.doc_pages += 1
        rows = body.get("rows", [])
        stats.rows_read += len(rows)
        docs = [row["doc"] for row in rows if isinstance(row.get("doc"), dict)]
        now = self.couch.now()
        if ready is not None:
            full_page = self._backlog[tube] = len(rows) >= limit
            if not full_page:  # the backlog, if any, is over: its buckets' depths too
                self._deep_buckets = {key for key in self._deep_buckets if key[0] != tube}
            if full_page and not ready.dispatched(self.monotonic()):
                # A backlog: this page's rows are every worker's alike, most of them in
                # other workers' buckets; claim from our own buckets instead.
                from_buckets = self._read_buckets(tube, first, stats)
                if from_buckets is not None:
                    return from_buckets
            return self._from_page(tube, docs, full_page, first, now, epoch)
        occs, next_not_before = self._claimable(docs, now)
        chosen = occs[:first]
        self.rng.shuffle(chosen)
        return chosen, next_not_before, None

    def _verify_held(
        self, tube: str, occs: list[Occurrence], limit: int, now: datetime, stats: ClaimStats
    ) -> bool:
        """Without a dispatcher (polling), held rows whose first turn is another worker's
        go stale as that worker claims them: nothing tells us. Before trying such rows,
        read which are still ready (ids only), at most once per stagger period. Trying them
        blind lost nearly every time at the end of a backlog (1,139 lost PUTs of 11,140
        claim writes, CouchDB, 16 workers). True when the held rows changed."""
        ready = self.ready_set
        assert ready is not None
        now_mono = self.monotonic()
        if ready.dispatched(now_mono) or self._backlog.get(tube):
            return False  # offers are ours; a backlog's held rows are our own share
        if now_mono - self._verified.get(tube, float("-inf")) < ready.stagger_s:
            return False
        if all(rank == 0 for rank, _ in ready.rank_ids(tube, [o.id for o in occs], now)):
            return False
        self._verified[tube] = now_mono
        rows = self._id_page(tube, limit, stats)
        horizon = None
        if len(rows) >= limit and isinstance(rows[-1].get("key"), list):
            horizon = str(rows[-1]["key"][-1])
        return ready.keep_only(tube, {row["id"] for row in rows}, horizon, now_mono) > 0

    def _id_page(
        self, tube: str, limit: int, stats: ClaimStats, after: Any = None
    ) -> list[dict[str, Any]]:
        """One page of the tube's ``ready`` rows, ids and keys only (from queue_at ``after``
        on, when given), counted in ``stats``."""
        start = [tube] if after is None else [tube, after]
        body = self.couch.view(
            self.db, CLAIM_DDOC, "ready", startkey=start, endkey=[tube, {}], limit=limit
        )
        stats.view_reads += 1
        stats.id_pages += 1
        rows = [row for row in body.get("rows", []) if isinstance(row.get("id"), str)]
        stats.rows_read += len(rows)
        return rows

    def _refresh_peers(self, stats: ClaimStats) -> None:
        """Workers that came online since the feed started rank too, or two workers would
        each take the same rows for their own (rows no dispatcher offered: no hub, or a
        backlog)."""
        assert self.ready_set is not None
        if self.monotonic() - self._peers_at < PEERS_REFRESH_S:
            return
        self._peers_at = self.monotonic()
        self._empty_buckets.clear()
        peers = read_peers(self.couch, self.db, self.ready_set.online_s)
        self.ready_set.set_peers(peers)
        stats.view_reads += 1
        stats.peer_reads += 1
        stats.rows_read += len(peers)

    def _read_buckets(
        self, tube: str, first: int, stats: ClaimStats
    ) -> tuple[list[Occurrence], datetime | None, float | None] | None:
        """A backlog with no dispatcher: read a page of one of this worker's own ready
        buckets (round robin, each in turn order), hold it and claim from it. Every row read
        is this worker's to claim, so a claim costs the same reads at 1 or 16 workers (a page
        of the ready view, 16 rows per online worker, held about 1 in W). A worker whose own
        buckets are empty takes over rows of others' buckets, past the page their owner
        holds. None when nothing claimable was found: the caller reads the ready view."""
        ready = self.ready_set
        assert ready is not None
        if self.monotonic() < self._shallow_until.get(tube, float("-inf")):
            return None
        now = self.couch.now()
        peers = tuple(sorted(ready.online_peers(tube, now)))
        order = self._bucket_orders.get((tube, peers))
        if order is None:
            if len(self._bucket_orders) > 8:
                self._bucket_orders.clear()
            order = self._bucket_orders[(tube, peers)] = bucket_order(tube, self.worker, peers)
        own, others = order
        turn = self._bucket_turn.get(tube, 0)
        self._bucket_turn[tube] = turn + 1
        if own:
            own = own[turn % len(own) :] + own[: turn % len(own)]
        pages = [(bucket, 0) for bucket in own if (tube, bucket, 0) not in self._empty_buckets]
        steals = [(b, ROWS_PER_BUCKET) for b in others if (tube, b, ROWS_PER_BUCKET)
                  not in self._empty_buckets]  # fmt: skip
        # Own buckets found empty are not read again before the next peer refresh, so a
        # worker reads each at most once more than it has rows (at the end of a backlog).
        for bucket, skip in pages + steals[:STEAL_TRIES]:
            body = self.couch.view(self.db, CLAIM_DDOC, "ready_buckets", startkey=[tube, bucket],
                                   endkey=[tube, bucket, {}], limit=ROWS_PER_BUCKET, skip=skip,
                                   include_docs=True)  # fmt: skip
            stats.view_reads += 1
            stats.bucket_pages += 1
            stats.stolen_pages += 1 if skip else 0
            rows = body.get("rows", [])
            stats.rows_read += len(rows)
            docs = [row["doc"] for row in rows if isinstance(row.get("doc"), dict)]
            now = self.couch.now()
            due = self._claimable(docs, now)[0]
            if len(rows) >= ROWS_PER_BUCKET:
                self._deep_buckets.add((tube, bucket))
            elif rows and not skip and (tube, bucket) not in self._deep_buckets:
                # A short first page of one of our buckets (an empty one is just done): the
                # backlog is shallower than 64 pages, and a read per bucket would bring a
                # row or two. The ready
                # view's pages serve it better (decision 16) for a peer-refresh period.
                self._shallow_until[tube] = self.monotonic() + PEERS_REFRESH_S
                if not due:
                    return None
            if len(rows) < ROWS_PER_BUCKET or not due:
                # Drained once these are claimed (or nothing in it is due yet): skip it.
                self._empty_buckets.add((tube, bucket, skip))
            if not due:
                continue
            now_mono = self.monotonic()
            ready.hold(tube, docs, now_mono)
            held, wait = ready.candidates(tube, now, now_mono, first)
            occs = self._claimable_held(held, now, now_mono)
            if occs or wait is not None:
                return occs, ready.next_not_before(tube, now), wait
        return None

    def _read_backlog(
        self, tube: str, need: int, first: int, limit: int, stats: ClaimStats
    ) -> tuple[list[Occurrence], datetime | None, float | None]:
        """The last read was a full page: a backlog every worker reads alike. Read the
        page's ids only, and the docs of the rows where this worker ranks first (its own
        share: held and claimed one by one), or of the first few in its order when it has
        none. Reading every row's doc for every worker cost most of a claim's server time.
        """
        ready = self.ready_set
        assert ready is not None
        epoch = ready.epoch
        rows = self._id_page(tube, limit, stats)
        full_page = len(rows) >= limit
        now = self.couch.now()
        ranked = ready.rank_ids(tube, [row["id"] for row in rows], now)
        own = [i for rank, i in ranked if rank == 0]
        deeper, more = 0, full_page
        while more and not own and deeper < DEEPER_PAGES and isinstance(rows[-1].get("key"), list):
            # None of this page is ours any more (we claimed faster than our peers): the
            # rest are their owners' turn right now, and trying them lost nearly every
            # time (2,461 lost PUTs in 12,476 claim writes, CouchDB, 16 workers). Our own
            # rows further down are ours alone; the turn order slips by at most a few pages.
            seen = {row["id"] for row in rows}
            page = self._id_page(tube, limit, stats, after=rows[-1]["key"][-1])
            deeper += 1
            more = len(page) >= limit  # (the backlog stays a backlog: the first page was full)
            fresh = [row for row in page if row["id"] not in seen]
            if not fresh:
                break
            rows = fresh
            ranked = ready.rank_ids(tube, [row["id"] for row in rows], now)
            own = [i for rank, i in ranked if rank == 0]
        self._backlog[tube] = full_page
        wanted = own or [i for _, i in ranked[:first]]
        if not full_page:
            wanted = [row["id"] for row in rows]  # all that is ready: held, as any page
        order = {row["id"]: n for n, row in enumerate(rows)}
        fetched = self.couch.all_docs(self.db, keys=wanted, include_docs=True) if wanted else []
        stats.view_reads += 1
        stats.doc_fetches += 1 if wanted else 0
        stats.rows_read += len(fetched)
        docs = sorted(
            (row["doc"] for row in fetched if isinstance(row.get("doc"), dict)),
            key=lambda doc: order.get(doc.get("_id"), len(order)),
        )
        horizon = None
        if full_page and rows and isinstance(rows[-1].get("key"), list):
            horizon = str(rows[-1]["key"][-1])
        return self._from_page(tube, docs, full_page, first, now, epoch, horizon)

    def _from_page(
        self,
        tube: str,
        docs: list[dict[str, Any]],
        full_page: bool,
        first: int,
        now: datetime,
        epoch: int | None,
        horizon: str | None = None,
    ) -> tuple[list[Occurrence], datetime | None, float | None]:
        """What a view read gives to claim: a full page (a backlog) is tried at once, in
        this worker's order; any other page is held and taken in turns."""
        ready = self.ready_set
        assert ready is not None
        now_mono = self.monotonic()
        page = ready.refill(tube, docs, full_page, now_mono, server_now=now, epoch=epoch,
                            horizon=horizon)  # fmt: skip
        if full_page:
            occs, next_not_before = self._claimable(page, now)
            return occs[:first], next_not_before, None
        docs, wait = ready.candidates(tube, now, now_mono, first)
        occs = self._claimable_held(docs, now, now_mono)
        return occs, ready.next_not_before(tube, now), wait

    def _claimable_held(
        self, docs: list[dict[str, Any]], now: datetime, now_mono: float
    ) -> list[Occurrence]:
        """Like :meth:`_claimable`, and what it refuses for good (malformed, no attempts
        left) the ready set forgets, so it cannot crowd out the rows behind it."""
        occs, _ = self._claimable(docs, now)
        kept = {occ.id for occ in occs}
        assert self.ready_set is not None
        for doc in docs:
            if doc.get("_id") not in kept:
                self.ready_set.forget(str(doc.get("_id")), now_mono)
        return occs

    def _claimable(
        self, docs: list[dict[str, Any]], now: datetime
    ) -> tuple[list[Occurrence], datetime | None]:
        """The docs that are claimable *as seen*, in order, and the next future not_before."""
        claimable: list[Occurrence] = []
        next_not_before: datetime | None = None
        for doc in docs:
            if doc.get("state") != State.READY.value:
                continue  # the index ran ahead of or behind the doc: not claimable as seen
            if self.kinds is not None and doc.get("kind") not in self.kinds:
                continue
            try:
                occ = Occurrence.from_doc(doc)
            except ValidationError:
                continue  # a malformed doc is the hub's problem; never lock it
            if occ.attempt >= occ.max_attempts:
                continue
            if occ.is_quorum and quorum.may_claim_slot(occ, self.worker, now) is not None:
                continue  # our slot is taken already (one per worker), or all of them are
            if self.quorum_only and not occ.is_quorum:
                continue  # quarantined: only fully replicated work (decision 17)
            not_before = from_wire(occ.not_before)
            if not_before > now:
                if next_not_before is None or not_before < next_not_before:
                    next_not_before = not_before
                continue
            claimable.append(occ)
        return claimable, next_not_before

    def _try(
        self, candidates: list[Occurrence], need: int, stats: ClaimStats, extra: int = 0
    ) -> list[Occurrence]:
        won: list[Occurrence] = []
        slotted = [occ for occ in candidates if occ.is_quorum]  # quorum runs: desktop_worker.slots
        if slotted:
            candidates = [occ for occ in candidates if not occ.is_quorum]
        if need + extra > 1 and len(candidates) > 1:
            # Several free slots (or claims ahead): one _bulk_docs carries a claim per doc,
            # each with its own _rev, so each is still won or lost by the revision check
            # alone. Single PUTs follow only while the free slots are not all filled: the
            # rows after a batch are other workers' turn first (readyset.py).
            batch = candidates[: need + extra]
            won = self._claim_many(batch, stats)
            candidates = candidates[need + extra :]
        for occ in candidates:
            if len(won) >= need:
                break
            leased = self._claim_one(occ, stats)
            if self.ready_set is not None:
                self.ready_set.forget(occ.id, self.monotonic())  # ours now, or someone's
            if leased is not None:
                won.append(leased)
        for occ in slotted:
            if len(won) >= need:
                break
            stats.puts += 1
            taken = slots.claim(self.couch, self.db, occ, self.worker)
            if self.ready_set is not None:
                self.ready_set.forget(occ.id, self.monotonic())
            if taken is None:
                stats.conflicts += 1
                continue
            stats.wins += 1
            won.append(taken)
        return won

    def _claim_many(self, batch: list[Occurrence], stats: ClaimStats) -> list[Occurrence]:
        now = self.couch.now()
        claims: list[Occurrence] = []
        for occ in batch:
            try:
                claims.append(states.claim(occ, self.worker, now))
            except states.InvalidTransition:
                continue
        if not claims:
            return []
        stats.puts += len(claims)
        stats.batches += 1
        rows = self.couch.bulk_docs(
            self.db, [claim.to_doc() for claim in claims], w=self.couch.majority(self.db)
        )
        won: list[Occurrence] = []
        for claimed, row in zip(claims, rows, strict=True):
            if self.ready_set is not None:
                self.ready_set.forget(claimed.id, self.monotonic())
            if "rev" in row and not row.get("error"):
                taken = claimed.model_copy(update={"rev": row["rev"]})
                if row.get("accepted"):
                    self._abandon(taken, stats)
                    continue
                stats.wins += 1
                won.append(taken)
                continue
            # POUCHDB: a lost race there is "forbidden" from validate_doc_update (see
            # _claim_one); CouchDB 3 says "conflict". A row lost to a retried request of
            # our own is checked as for a single claim.
            mine = self._was_mine(claimed) if row.get("error") == "conflict" else None
            if mine is not None:
                stats.wins += 1
                stats.retried_wins += 1
                won.append(mine)
            elif row.get("error") == "conflict":
                stats.conflicts += 1
            else:
                stats.refused += 1
                log_event("claim_refused", logging.DEBUG, occ=claimed.id, reason=row.get("reason"))
        return won

    def _claim_one(self, occ: Occurrence, stats: ClaimStats) -> Occurrence | None:
        try:
            claimed = states.claim(occ, self.worker, self.couch.now())
        except states.InvalidTransition:
            return None
        doc = claimed.to_doc()
        stats.puts += 1
        try:
            written = self.couch.put_counted(self.db, doc, w=self.couch.majority(self.db))
        except (Conflict, Forbidden) as exc:
            # POUCHDB: PouchDB Server runs validate_doc_update against the current doc before
            # it checks the rev, so a lost race there is a 403 ("leased by w2"); CouchDB 3
            # answers 409. Either way the doc moved on since we saw it: not ours.
            if exc.retried:
                mine = self._was_mine(claimed)
                if mine is not None:
                    stats.wins += 1
                    stats.retried_wins += 1
                    return mine
            if isinstance(exc, Conflict):
                stats.conflicts += 1
            else:
                stats.refused += 1
                log_event("claim_refused", logging.DEBUG, occ=occ.id, reason=exc.reason)
            return None
        taken = claimed.model_copy(update={"rev": written.rev})
        if not written.quorum:
            self._abandon(taken, stats)
            return None
        stats.wins += 1
        return taken

    def _abandon(self, taken: Occurrence, stats: ClaimStats) -> None:
        """A claim a CouchDB cluster took on fewer copies than a majority (202 Accepted):
        each copy takes one of two concurrent claims of a revision, so another claim holds
        the majority and will run. Say so on our own branch, so the hub's resolver keeps
        theirs (and requeues the occurrence if every claim was abandoned), and do not run."""
        stats.abandoned += 1
        try:
            self.couch.put(self.db, states.abandon(taken, self.worker, self.couch.now()).to_doc())
        except CouchError as exc:  # the resolver still prefers theirs by claim time or rev
            log_event("claim_abandon_failed", logging.WARNING, occ=taken.id, error=str(exc))
        log_event("claim_abandoned", occ=taken.id, attempt=taken.attempt,
                  why="a cluster took this claim on fewer copies than a majority")  # fmt: skip

    def _was_mine(self, claimed: Occurrence) -> Occurrence | None:
        """After a retried PUT got 409: is the stored doc exactly the claim we sent?"""
        try:
            current: dict[str, Any] | None = self.couch.get(self.db, claimed.id)
        except NotFound:
            return None
        lease = (current or {}).get("lease") or {}
        assert claimed.lease is not None
        if (
            current
            and current.get("state") == State.LEASED.value
            and lease.get("worker") == self.worker
            and current.get("attempt") == claimed.attempt
            and lease.get("claimed_at") == claimed.lease.claimed_at
        ):
            log_event("claim_won_on_retry", occ=claimed.id, attempt=claimed.attempt)
            return Occurrence.from_doc(current)
        return None


def describe(result: ClaimResult) -> dict[str, Any]:
    return {
        "won": len(result.won),
        "candidates": result.candidates,
        "contended": result.contended,
        "next_not_before": to_wire(result.next_not_before) if result.next_not_before else None,
    }
