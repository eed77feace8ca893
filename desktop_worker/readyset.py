"""What a worker may claim: the hub's offers from its board feed, and rows of view reads.

The hub offers each ready occurrence to one worker (hub/dispatch.py); the worker's feed
brings its ``offer:{name}`` document, each offered occurrence *with its doc and ``_rev``*,
so the worker claims straight from what it holds, at the occurrence's ``not_before``,
without asking the server. An offer the hub withdraws leaves the set.

The view is still read: when the feed (re)starts (what was ready before it), when the
worker knows of no claimable occurrence although the last page was full (a backlog), every
``SAFETY_READ_S`` as a safety net, and on every wake-up when no dispatcher beats on the
board (the hub is down: the worker polls as a plain poller would). Rows it was not offered
belong to the workers the hub offered them to: while the hub's beat is fresh, the worker
takes such a row only once it is ``overdue_s`` past its ``not_before`` (its offer lapsed or
never came), and only if it ranks first for it among its peers (rank r waits r + 1 times
as long), so a running dispatcher sees no races, and a broken one still loses nothing.

Who goes first among workers trying the same rows (overdue rows, a backlog, or no hub):
every worker ranks itself among the online workers of the occurrence's tube by rendezvous
hashing of ``(occurrence id, worker name)``; rank ``r`` waits ``min(r, max_rank) *
stagger_s``. A full page is tried at once in this worker's rendezvous order (so workers
start on different rows); of its rows, only those where this worker ranks first are held,
and claimed one by one before the page is read again. Within what it holds, the worker
never takes an occurrence whose turn (``queue_at``) comes after the last row of a full
page, so the view's turn order (priority, aging, fair share) holds.

Pure: no I/O; callers pass the clocks. Thread-safe (the feed thread applies offers while
the claim loop reads).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from hub.protocol.board import is_left_beat, str_items
from hub.protocol.states import rendezvous as _score
from hub.protocol.states import rev_generation as _generation
from hub.protocol.timefmt import from_wire

_GONE_FOR_S = 120.0  # how long a doc seen leaving `ready` shadows older copies of it
SAFETY_READ_S = 300.0  # with a dispatcher beating, the view is read at least this often anyway


@dataclass
class _Known:
    doc: dict[str, Any]
    seen: float  # monotonic time it was first seen ready: its stagger counts from here
    offered: bool = False  # the hub offered it to this worker: no turns, no waiting


@dataclass
class _Peer:
    last_seen: datetime
    tubes: frozenset[str]
    running: bool


class ReadySet:
    def __init__(
        self,
        worker: str,
        tubes: Iterable[str],
        kinds: Iterable[str] | None = None,
        *,
        stagger_s: float = 0.15,
        max_rank: int = 3,
        capacity: int = 2000,
        online_s: float = 90.0,
    ) -> None:
        self.worker = worker
        self.tubes = list(tubes)
        self.kinds = None if kinds is None else frozenset(kinds)
        self.stagger_s = stagger_s
        self.max_rank = max_rank
        self.capacity = capacity
        self.online_s = online_s
        self.base_online_s = online_s
        self._lock = threading.Lock()
        self._docs: dict[str, _Known] = {}
        self._gone: dict[str, tuple[int, float]] = {}  # id -> (rev generation, when)
        self._peers: dict[str, _Peer] = {}
        self._live = False
        self._epoch = 0
        self._complete = dict.fromkeys(self.tubes, False)
        self._horizon: dict[str, str | None] = dict.fromkeys(self.tubes)
        self._read_at = dict.fromkeys(self.tubes, float("-inf"))
        self._offered: set[str] = set()
        self._beat_until = float("-inf")  # monotonic: a dispatcher beats until then
        self._overdue_s = 8.0
        # The keep-alive period the hub's beat asks for (it grows with the fleet, see
        # hub/protocol/board.py); None until a beat says so.
        self.hub_keepalive_s: float | None = None

    # ------------------------------------------------------------ feed side

    @property
    def live(self) -> bool:
        return self._live

    @property
    def epoch(self) -> int:
        """Changes each time the feed (re)starts: a view read begun in an earlier epoch may
        have missed what fell between its answer and the new feed's ``since``."""
        return self._epoch

    def feed_started(self) -> None:
        """The feed (re)connected from a fresh ``since``, maybe to another server: what was
        ready before is unknown, and revisions seen leaving ``ready`` may not exist there."""
        with self._lock:
            self._live = True
            self._epoch += 1
            self._docs.clear()
            self._gone.clear()
            self._offered.clear()
            self._beat_until = float("-inf")
            for tube in self.tubes:
                self._complete[tube] = False

    def feed_lost(self) -> None:
        """No feed: every claim reads the view, as a plain poller would."""
        with self._lock:
            self._live = False
            self._docs.clear()
            self._offered.clear()
            self._beat_until = float("-inf")

    def apply_board(self, doc: Any, now_mono: float, server_now: datetime) -> bool:
        """A board document: the hub's beat, or this worker's offers (all of them: what is
        no longer there was withdrawn). True when it brought something to claim."""
        if not isinstance(doc, dict):
            return False
        if doc.get("type") == "beat":
            try:
                age = (server_now - from_wire(str(doc.get("at")))).total_seconds()
                every = float(doc.get("every_s", 15.0))
                self._overdue_s = float(doc.get("overdue_s", self._overdue_s))
                keepalive = doc.get("keepalive_s")
                online = doc.get("online_s")
            except (TypeError, ValueError):
                return False
            if isinstance(keepalive, int | float) and keepalive > 0:
                self.hub_keepalive_s = float(keepalive)
            if isinstance(online, int | float) and online > 0:
                # Peers on the hub's keep-alive: online as long as the hub counts them.
                self.online_s = max(self.base_online_s, float(online))
            with self._lock:
                if is_left_beat(doc):  # the hub went to another server: no offers here
                    self._beat_until = float("-inf")
                    return True  # wake the claim loop: it reads the ready view itself now
                self._beat_until = now_mono + 3 * every - max(age, 0.0)
            return False
        if doc.get("type") != "offer" or doc.get("worker") != self.worker:
            return False
        offers = [d for d in doc.get("offers") or [] if isinstance(d, dict)]
        offered = {str(d.get("_id")) for d in offers}
        with self._lock:
            for occ_id in self._offered - offered:
                known = self._docs.get(occ_id)
                if known is not None and known.offered:
                    del self._docs[occ_id]  # withdrawn: the hub gave it to someone else
            self._offered = offered
        brought = [self.apply(d, now_mono, offered=True) for d in offers]
        return any(brought)

    def dispatched(self, now_mono: float) -> bool:
        """A dispatcher beats on the board: rows not offered to us are someone else's."""
        with self._lock:
            return now_mono < self._beat_until

    def apply(self, doc: Any, now_mono: float, *, offered: bool = False) -> bool:
        """One occurrence doc. True when it brought something this worker may claim."""
        if not isinstance(doc, dict):
            return False
        if doc.get("type") == "worker":
            self._apply_worker(doc)
            return False
        occ_id = doc.get("_id")
        if not isinstance(occ_id, str):
            return False
        generation = _generation(doc.get("_rev"))
        with self._lock:
            if self._claimable(doc):
                if self._shadowed(occ_id, generation):
                    return False
                known = self._docs.get(occ_id)
                seen = known.seen if known is not None else now_mono
                self._docs[occ_id] = _Known(doc, seen, offered or (known is not None and
                                                                   known.offered))  # fmt: skip
                self._trim()
                return True
            self._forget_locked(occ_id, generation, now_mono)
            return False

    def set_peers(self, worker_docs: Iterable[dict[str, Any]]) -> None:
        for doc in worker_docs:
            self._apply_worker(doc)

    def _apply_worker(self, doc: dict[str, Any]) -> None:
        name = doc.get("name")
        if not isinstance(name, str) or name == self.worker:
            return
        try:
            last_seen = from_wire(str(doc.get("last_seen")))
        except ValueError:
            return
        with self._lock:
            self._peers[name] = _Peer(
                last_seen=last_seen,
                tubes=str_items(doc.get("tubes")),
                running=doc.get("state") == "running",
            )

    # ------------------------------------------------------------ view side

    def rank_ids(self, tube: str, ids: list[str], server_now: datetime) -> list[tuple[int, str]]:
        """Ids in this worker's rendezvous order, each with its rank (0: this worker's own)."""
        with self._lock:
            peers = self._online_peers(tube, server_now)
        ranked = []
        for occ_id in ids:
            mine = _score(occ_id, self.worker)
            ranked.append((sum(1 for peer in peers if _score(occ_id, peer) < mine), mine, occ_id))
        return [(rank, occ_id) for rank, _, occ_id in sorted(ranked)]

    def refill(
        self,
        tube: str,
        docs: list[dict[str, Any]],
        full_page: bool,
        now_mono: float,
        server_now: datetime | None = None,
        epoch: int | None = None,
        horizon: str | None = None,
    ) -> list[dict[str, Any]]:
        """The rows of a view read (docs in turn order). A full page may hide more rows.

        A page that is not full is everything ready: it is held, and turns apply to it. A
        full page (``horizon``: the ``queue_at`` of its last row, when ``docs`` are only some
        of its rows) is a backlog, a race every worker reads alike: it is not held (its rows
        go stale within milliseconds) but returned, claimable rows only, in this worker's
        rendezvous order, to try at once; the next claim reads again, as plain polling does.
        """
        with self._lock:
            self._read_at[tube] = now_mono
            dispatched = now_mono < self._beat_until
            # No feed keeps rows we were not offered current: the page is the truth there.
            self._docs = {
                i: k for i, k in self._docs.items() if k.offered or k.doc.get("tube") != tube
            }
            fresh = [
                doc
                for doc in docs
                if isinstance(doc.get("_id"), str)
                and self._claimable(doc)
                and not self._shadowed(doc["_id"], _generation(doc.get("_rev")))
            ]
            # A read begun before the feed last (re)started may have missed something.
            same_epoch = epoch is None or epoch == self._epoch
            # Without a dispatcher, new work shows only in the view: read at every wake-up.
            self._complete[tube] = self._live and dispatched and not full_page and same_epoch
            self._horizon[tube] = (
                None if not full_page or not docs else horizon or str(docs[-1].get("queue_at", ""))
            )
            if full_page:
                if dispatched and server_now is not None:
                    fresh = [d for d in fresh if self._overdue(d, server_now)]
                peers = self._online_peers(tube, server_now) if server_now else []
                ranked = sorted(self._ranked(fresh, peers))
                # The rows where this worker ranks first are its own share of the backlog:
                # no other worker tries them before its own run out, so they are held and
                # claimed one by one without reading the page again. (A read per claim was
                # half of every claim's requests and most of its server time.)
                for rank, _, doc in ranked:
                    if rank == 0:
                        self._docs[doc["_id"]] = _Known(doc, float("-inf"))
                self._trim()
                return [doc for _, _, doc in ranked]
            for doc in fresh:
                known = self._docs.get(doc["_id"])
                if known is None or _generation(known.doc.get("_rev")) < _generation(
                    doc.get("_rev")
                ):
                    self._docs[doc["_id"]] = _Known(
                        doc, now_mono if self._live else float("-inf"),
                        known is not None and known.offered,
                    )  # fmt: skip
            self._trim()
            return fresh

    def hold(self, tube: str, docs: list[dict[str, Any]], now_mono: float) -> None:
        """The docs of a page of this worker's own ready buckets (claim.py): all of them are
        its own share of the backlog, held to claim in turn order without reading again.
        They may lie past the horizon of the last ``ready`` page (each bucket runs in turn
        order on its own), so the horizon goes; a later page of ``ready`` sets it again."""
        with self._lock:
            self._read_at[tube] = now_mono
            self._complete[tube] = False
            self._horizon[tube] = None
            for doc in docs:
                occ_id = doc.get("_id")
                if (
                    isinstance(occ_id, str)
                    and self._claimable(doc)
                    and not self._shadowed(occ_id, _generation(doc.get("_rev")))
                ):
                    self._docs[occ_id] = _Known(doc, float("-inf"))
            self._trim()

    def _ranked(
        self, docs: list[dict[str, Any]], peers: list[str]
    ) -> list[tuple[int, int, dict[str, Any]]]:
        out = []
        for doc in docs:
            mine = _score(doc["_id"], self.worker)
            out.append((sum(1 for peer in peers if _score(doc["_id"], peer) < mine), mine, doc))
        return out

    def needs_read(self, tube: str, now_mono: float, poll_s: float) -> bool:
        """Ask only when :meth:`candidates` had nothing to offer, not even a wait."""
        with self._lock:
            return (
                not self._live
                or not self._complete.get(tube, False)
                # The dispatcher fell silent or left since the last read, which it made
                # complete: new work shows only in the view now.
                or now_mono >= self._beat_until
                or now_mono - self._read_at.get(tube, float("-inf")) >= max(poll_s, SAFETY_READ_S)
            )

    def keep_only(
        self, tube: str, still_ready: set[str], horizon: str | None, now_mono: float
    ) -> int:
        """A read of which rows of ``tube`` are still ready (up to ``horizon``, the last
        row's ``queue_at`` when the read was a full page): forget held rows it lacks that
        were not offered to us. Returns how many were forgotten."""
        with self._lock:
            gone = [
                occ_id
                for occ_id, known in self._docs.items()
                if not known.offered
                and known.doc.get("tube") == tube
                and occ_id not in still_ready
                and (horizon is None or str(known.doc.get("queue_at", "")) <= horizon)
            ]
            for occ_id in gone:
                self._forget_locked(occ_id, _generation(self._docs[occ_id].doc.get("_rev")),
                                    now_mono)  # fmt: skip
            return len(gone)

    def forget(self, occ_id: str, now_mono: float) -> None:
        """A claim of it lost: someone else has it, whatever the feed says yet."""
        with self._lock:
            known = self._docs.get(occ_id)
            generation = _generation(known.doc.get("_rev")) if known else 0
            self._forget_locked(occ_id, generation, now_mono)

    def candidates(
        self, tube: str, server_now: datetime, now_mono: float, k: int
    ) -> tuple[list[dict[str, Any]], float | None]:
        """Up to ``k`` docs whose turn has come, best first for this worker, and, when
        some wait on their stagger, the seconds until the next one may go."""
        with self._lock:
            horizon = self._horizon.get(tube)
            rows = sorted(
                (
                    known
                    for known in self._docs.values()
                    if known.doc.get("tube") == tube
                    and (horizon is None or str(known.doc.get("queue_at", "")) <= horizon)
                ),
                key=lambda known: str(known.doc.get("queue_at", "")),
            )
            peers = self._online_peers(tube, server_now)
            dispatched = now_mono < self._beat_until
            ready: list[tuple[int, int, dict[str, Any]]] = []
            wait: float | None = None
            for known in rows:
                if len(ready) >= k:
                    break
                doc = known.doc
                start = known.seen
                try:
                    not_before = from_wire(str(doc.get("not_before")))
                except ValueError:
                    pass  # the claim's own checks refuse it; don't hide it here
                else:
                    if not_before > server_now:
                        continue
                    # Materialized ahead: the turns count from its due time, not arrival.
                    start = max(start, now_mono - (server_now - not_before).total_seconds())
                    if dispatched and not known.offered:  # someone else's until overdue
                        start = max(start, now_mono - (server_now - not_before).total_seconds()
                                    + self._overdue_s)  # fmt: skip
                if known.offered:
                    ready.append((0, 0, doc))
                    continue
                mine = _score(doc["_id"], self.worker)
                rank = sum(1 for peer in peers if _score(doc["_id"], peer) < mine)
                if dispatched:  # a rescue: one worker at a time, each a full overdue later
                    due = start + rank * self._overdue_s
                else:
                    due = start + min(rank, self.max_rank) * self.stagger_s
                if due > now_mono:
                    wait = due - now_mono if wait is None else min(wait, due - now_mono)
                    continue
                ready.append((rank, mine, doc))
            # Rank only says when this worker may try; among what it may try now, turn
            # order (queue_at: priority, aging, fair share) comes first. ``rows`` is sorted.
            return [doc for _, _, doc in ready], wait

    def next_not_before(self, tube: str, server_now: datetime) -> datetime | None:
        with self._lock:
            times = []
            for known in self._docs.values():
                if known.doc.get("tube") != tube:
                    continue
                try:
                    moment = from_wire(str(known.doc.get("not_before")))
                except ValueError:
                    continue
                if moment > server_now:
                    times.append(moment)
            return min(times, default=None)

    def online_peers(self, tube: str, server_now: datetime) -> list[str]:
        """The other workers that count for the turn order in ``tube``."""
        with self._lock:
            return self._online_peers(tube, server_now)

    def __len__(self) -> int:
        return len(self._docs)

    # ------------------------------------------------------------ internals

    def _claimable(self, doc: dict[str, Any]) -> bool:
        return (
            doc.get("type") == "occurrence"
            and doc.get("state") == "ready"
            and doc.get("tube") in self._complete
            and (self.kinds is None or doc.get("kind") in self.kinds)
        )

    def _overdue(self, doc: dict[str, Any], server_now: datetime) -> bool:
        try:
            not_before = from_wire(str(doc.get("not_before")))
        except ValueError:
            return True
        return (server_now - not_before).total_seconds() >= self._overdue_s

    def _shadowed(self, occ_id: str, generation: int) -> bool:
        gone = self._gone.get(occ_id)
        return gone is not None and generation <= gone[0]

    def _forget_locked(self, occ_id: str, generation: int, now_mono: float) -> None:
        self._docs.pop(occ_id, None)
        previous = self._gone.get(occ_id)
        if previous is None or previous[0] < generation:
            self._gone[occ_id] = (generation, now_mono)
        if len(self._gone) > 4 * self.capacity:
            cutoff = now_mono - _GONE_FOR_S
            self._gone = {k: v for k, v in self._gone.items() if v[1] >= cutoff}

    def _trim(self) -> None:
        """Keep the ``capacity`` earliest turns; what is dropped is found again by a read."""
        if len(self._docs) <= self.capacity:
            return
        ordered = sorted(self._docs.items(), key=lambda item: str(item[1].doc.get("queue_at")))
        for occ_id, known in ordered[self.capacity :]:
            del self._docs[occ_id]
            tube = known.doc.get("tube")
            if tube in self._complete:
                self._complete[tube] = False
        kept_last = str(ordered[self.capacity - 1][1].doc.get("queue_at"))
        for tube in self.tubes:
            if not self._complete[tube]:
                horizon = self._horizon.get(tube)
                self._horizon[tube] = kept_last if horizon is None else min(horizon, kept_last)

    def _online_peers(self, tube: str, server_now: datetime) -> list[str]:
        cutoff = server_now - timedelta(seconds=self.online_s)
        return [
            name
            for name, peer in self._peers.items()
            if peer.running and peer.last_seen >= cutoff and (not peer.tubes or tube in peer.tubes)
        ]
