"""The worker's feed: its offers from the hub's dispatch board, into the :class:`ReadySet`.

The worker follows no feed on the live database: on CouchDB 3 each continuous feed costs
the server CPU for every write to its database, so one feed per worker made the server's
cost per occurrence grow with the fleet (hub/dispatch.py). It follows ``{db}_board``
instead, filtered to two documents (``filter=_doc_ids``): ``offer:{name}``, the
occurrences the hub offers it, and ``hub:dispatcher``, the hub's beat. One continuous
``_changes`` request carries them; a proxy that buffers streams shows as a stream silent
from the start, and after two of those longpoll (one request per wake-up) takes over.
With no feed at all the ready set goes dark and the claim loop polls the view. The feed
follows the server the claim loop uses: when that one fails over, it rebinds at its next
heartbeat.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from desktop_worker.log import log_event
from desktop_worker.readyset import ReadySet
from hub.protocol.board import BEAT_ID, board_db, is_left_beat, offer_doc_id, read_peers
from hub.protocol.couch import Couch, CouchError, StreamBrokeOff, Unavailable

HEARTBEAT_S = 5.0
SILENT_STREAMS_BEFORE_LONGPOLL = 2
PEERS_EVERY_S = 60.0  # who is online is read again this often (heartbeats: every 30 s)


class ClaimFeed:
    def __init__(
        self,
        couch: Couch,
        db: str,
        worker: str,
        tubes: list[str],
        ready_set: ReadySet,
        *,
        wake: Callable[[], None],
        stopping: threading.Event,
        stream_s: float = 300.0,
        longpoll_wait_s: float = 25.0,
        error_wait_s: float = 30.0,
    ) -> None:
        self.couch = couch
        self.db = db
        self.worker = worker
        self.ready_set = ready_set
        self.wake = wake
        self.stopping = stopping
        self.stream_s = stream_s
        self.longpoll_wait_s = longpoll_wait_s
        self.error_wait_s = error_wait_s
        self.board = board_db(db)
        self.params = {"filter": "_doc_ids",
                       "doc_ids": json.dumps([offer_doc_id(worker), BEAT_ID])}  # fmt: skip
        self.silent_streams = 0
        self._peers_at = float("-inf")

    @property
    def longpoll(self) -> bool:
        return self.silent_streams >= SILENT_STREAMS_BEFORE_LONGPOLL

    def run(self) -> None:
        since: str | None = None
        bound: Couch | None = None
        bound_url = ""
        failures = 0
        while not self.stopping.is_set():
            try:
                if since is None or self.couch.active.url != bound_url:
                    since = "0"  # the two documents as they are now, then their changes
                    bound_url = self.couch.active.url
                    bound = self.couch.for_server(
                        [s.url for s in self.couch.servers].index(bound_url)
                    )
                    bound.retries = 0  # a failed feed rebinds at once, via the failover list
                    self.ready_set.feed_started()
                    self._load_peers(bound)
                    self.wake()  # whatever happened before `since` is seen by a read
                assert bound is not None
                if self.longpoll:
                    results, since = bound.changes(
                        self.board, since=since, feed="longpoll", wait=self.longpoll_wait_s,
                        include_docs=True, params=self.params,
                    )  # fmt: skip
                    self._apply(results)
                else:
                    since = self._follow_stream(bound, since, bound_url)
                failures = 0
            except Unavailable:
                since = None
                failures += 1
                self.ready_set.feed_lost()
                self.wake()  # the claim loop polls now, failing over if it must
                self.stopping.wait(min(2.0**failures, 15.0))
            except Exception as exc:  # the feed is broken here: polling covers it
                since = None
                failures += 1
                self.ready_set.feed_lost()
                if self.stopping.is_set():
                    return
                log_event("feed_error", logging.WARNING, worker=self.worker, error=str(exc))
                self.stopping.wait(min(self.error_wait_s, 2.0**failures))

    def _follow_stream(self, bound: Couch, since: str, bound_url: str) -> str:
        """Read one continuous stream until it ends, we stop, or the claim loop failed
        over to another server (seen at the next heartbeat). Returns the seq to resume at."""
        heard = False
        try:
            for row in bound.changes_stream(
                self.board, since=since, include_docs=True, params=self.params,
                heartbeat_s=HEARTBEAT_S, max_s=self.stream_s,
            ):  # fmt: skip
                heard = True
                if self.stopping.is_set() or self.couch.active.url != bound_url:
                    break
                if (
                    time.monotonic() - self._peers_at >= PEERS_EVERY_S
                    and not self.ready_set.dispatched(time.monotonic())
                ):  # with a hub offering, peers only order rescues: no read per minute
                    self._load_peers(bound)
                if row is None:
                    continue
                since = str(row.get("seq", since))
                self._apply([row])
        except StreamBrokeOff:
            if not heard:  # connected, then not even a heartbeat: something holds it back
                self.silent_streams += 1
                if self.longpoll:
                    log_event("feed_longpoll", logging.WARNING, worker=self.worker)
            raise
        self.silent_streams = 0
        return since

    def _apply(self, rows: list[dict[str, Any]]) -> None:
        now = time.monotonic()
        server_now = self.couch.now()
        if any(is_left_beat(row.get("doc")) for row in rows):
            log_event("hub_left_server", worker=self.worker, server=self.couch.active.label)
            self.couch.fail_back_soon()
        if any([self.ready_set.apply_board(row.get("doc"), now, server_now) for row in rows]):
            self.wake()

    def _load_peers(self, couch: Couch) -> None:
        """Who else is online, for the ready set's rendezvous order."""
        self._peers_at = time.monotonic()
        try:
            self.ready_set.set_peers(read_peers(couch, self.db, self.ready_set.online_s))
        except CouchError as exc:
            log_event("peers_unreadable", logging.WARNING, worker=self.worker, error=str(exc))
