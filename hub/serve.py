"""``hub serve``: the hub's duties on APScheduler, with an injectable clock.

Duties (each a plain method taking hub time ``now``, so tests drive them with a fake
clock and ``hub serve`` drives them with APScheduler and the server's clock):

- materialize: create occurrences as they fall due (every 0.25 s; only due tasks work);
- follow: keep the materializer's schedule current from ``_changes`` (a thread);
- reap: expired leases back to ready or buried, due retries promoted (every 2 s);
- archive: finished occurrences to the month's results database (every 30 s);
- validate: quorum occurrences decided, silent slots expired (every 0.5 s; hub/validator.py);
- retention: drop expired months, create the next month's database (hourly, needs a
  server-admin connection; without one it logs what it could not do). With a standby it
  does both on both servers, and adds or removes those months' replications.

Two ``hub serve`` processes can run side by side: occurrence ids are deterministic, so
the second create of any occurrence is a 409 and nothing is materialized twice.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from hub import archiver, provision, reaper, replication, resolver
from hub.alerts import AlertSender, HealthTracker, missing_alerts, raise_alert
from hub.dispatch import Board, Dispatcher
from hub.materializer import Materializer, is_serial
from hub.notify import SmtpSettings
from hub.protocol.board import KEEPALIVE_MAX_S, ONLINE_FACTOR, read_peers
from hub.protocol.couch import Couch, CouchError, StreamBrokeOff, redact_url
from hub.protocol.model import Occurrence
from hub.protocol.names import CLAIM_DDOC, results_db
from hub.protocol.quorum import TrustPolicy
from hub.protocol.timefmt import to_wire
from hub.service import TUBES_DOC
from hub.validator import ValidateReport, Validator, load_plugin_comparators

log = logging.getLogger("couchfarm.hub")

# How long a claim abandoned with no other claim beside it waits before it is requeued: a
# cluster's copies exchange a write within milliseconds, so by then a winning claim some
# copy holds has reached every copy and shows as a conflict (decision 14).
ABANDONED_GRACE_S = 10.0


@dataclass
class HubConfig:
    db: str = "farm"
    materialize_every: float = 0.25
    reap_every: float = 2.0
    archive_every: float = 30.0
    archive_window: timedelta = timedelta(minutes=5)
    retention_days: int = 90
    follow_wait: float = 20.0
    replication_every: float = 10.0
    # Longpoll fallback only: seconds between two _changes requests that returned
    # changes. Without it the hub wakes on every claim and every finish (2 requests per
    # occurrence, measured); the continuous stream needs no such pause.
    follow_batch_s: float = 1.0
    # The reaper queries its views only when the followed changes show a lease expiring
    # or a retry due, and at least this often anyway (changes it may have missed).
    reap_safety_s: float = 30.0
    # Materialize ahead (trigger, window): when a fire is 1 s away, create every idle
    # task's next fire within 5 s, ready with not_before = due. None: only when due.
    materialize_ahead: tuple[float, float] | None = (1.0, 5.0)
    # Offers to workers (hub/dispatch.py): planned every dispatch_every s, the board written
    # at most every dispatch_gap_s (the first after a quiet spell at once), so every
    # worker's board feed wakes a bounded number of times, whatever the load. None: off.
    dispatch_every: float | None = 0.1
    dispatch_gap_s: float = 0.5
    # How many ready occurrences the dispatcher loads from the view when it (re)starts.
    dispatch_load: int = 5000
    # Alerts (docs/ALERTS.md): the operator's mail server (None: the email channel reports
    # "no SMTP server" in each attempt), whether webhooks may go to private addresses, and
    # how often the pending alerts are looked at.
    smtp: SmtpSettings | None = None
    alerts_allow_private: bool = False
    alerts_every: float = 1.0
    # Quorum runs (hub/validator.py): how often collecting occurrences are decided, and
    # who is trusted alone (adaptive replication) or quarantined.
    validate_every: float = 0.5
    trust: TrustPolicy = field(default_factory=TrustPolicy)


@dataclass
class Hub:
    couch: Couch
    config: HubConfig = field(default_factory=HubConfig)
    admin: Couch | None = None
    clock: Callable[[], datetime] | None = None
    # Server-admin endpoints of primary and standby: the hub then creates each new month's
    # results database on both, with its replications, and retires expired months on both.
    replication_ends: tuple[replication.Endpoint, replication.Endpoint] | None = None

    def __post_init__(self) -> None:
        self.materializer = Materializer(self.couch, self.config.db)
        self.paused_tubes: dict[str, str] = {}
        self._stop = threading.Event()
        self._scheduler: Any = None
        self._follower: threading.Thread | None = None
        self._since = "now"
        self._loaded_from: str | None = None  # the server the in-memory schedule came from
        self._follow_live = False  # the continuous stream is up: the reap gate may trust it
        self._stream_heard = False
        self._last_full_reap = float("-inf")
        self.reaps_skipped = 0
        self._promoting: set[str] = set()  # serial tasks given a promotion in this reap pass
        self._archived_until: str | None = None
        self._resolved_results_since: dict[str, str] = {}
        self.replication_health: replication.Health | None = None
        self.unsettled: set[str] = set()  # to settle again at the next reap (settle_again)
        # claims abandoned with no other claim seen -> when the feed first showed them
        self._lone_abandoned: dict[str, float] = {}
        # The same in the results databases: (month db, document id).
        self.unsettled_results: set[tuple[str, str]] = set()
        self.dispatcher = Dispatcher()
        self.board = Board(self.couch, self.config.db, on_missing=self._create_board)
        self._board_written = float("-inf")
        self._dispatch_lock = threading.Lock()
        self.health = HealthTracker(self.couch, self.config.db)  # hub/alerts.py
        self.validator = Validator(self.couch, self.config.db, trust=self.config.trust)
        self.alert_sender = AlertSender(
            self.couch,
            self.config.db,
            hub_name=f"{socket.gethostname()}:{os.getpid()}:{id(self):x}",
            smtp=self.config.smtp,
            allow_private=self.config.alerts_allow_private,
        )

    def now(self) -> datetime:
        return self.clock() if self.clock else self.couch.now()

    def _create_board(self, url: str) -> bool:
        """The board is missing on ``url`` (a server rebuilt before `hub recover` made it):
        create it with the server-admin connection, if the hub has one for that server."""
        if self.admin is None:
            return False
        for index, server in enumerate(self.admin.servers):
            if server.url == url:
                try:
                    provision.ensure_board_db(self.admin.for_server(index), self.config.db)
                except CouchError as exc:
                    log.warning("event=board_create_failed server=%s error=%r", server.label,
                                str(exc))  # fmt: skip
                    return False
                return True
        return False

    # ------------------------------------------------------------ duties

    def load(self) -> None:
        self._install(self.materializer)
        self.health.load()
        self.alert_sender.load()
        healths = [health for health, _ in self.health.cache.values()]
        for health in missing_alerts(healths, self.alert_sender.known):
            self.alert_sender.observe(raise_alert(self.couch, self.config.db, health, self.now()))

    def watch_health(self) -> int:
        """Count the runs the feed brought (hub/alerts.py): pause on failure, alerts raised."""
        return self.health.process(self.materializer.tasks, self.now())

    def send_alerts(self) -> int:
        """Attempt the alerts that are due (hub/alerts.py AlertSender); channels delivered."""
        return self.alert_sender.process(self.now())

    def _install(self, materializer: Materializer) -> None:
        """Load ``materializer`` from the server in use, then make it the hub's. Nothing is
        swapped in until every read succeeded: a failed load leaves the old schedule (and
        the switch still pending, so the next tick tries again)."""
        source = self.couch.active.url
        since = self.couch.update_seq(self.config.db)
        materializer.load(self.now())
        tubes = self.couch.get_or_none(self.config.db, TUBES_DOC) or {}
        self.paused_tubes = dict(tubes.get("paused", {}))
        if self.config.dispatch_every is not None:
            self._load_dispatcher()
        self.materializer = materializer
        self._since = since
        self._loaded_from = source

    def _load_dispatcher(self) -> None:
        """What is ready, who holds what and who is online, from the server in use; the
        feed keeps it current from the ``since`` read before this."""
        db = self.config.db
        ready = self.couch.view(db, CLAIM_DDOC, "ready", include_docs=True,
                                limit=self.config.dispatch_load)["rows"]  # fmt: skip
        leased = self.couch.view(db, "farm", "leases_by_expiry", include_docs=True)["rows"]
        # Workers may be on a keep-alive as long as KEEPALIVE_MAX_S (a large fleet): read
        # every one that may be online; the dispatcher's own window decides.
        now = self.now()
        workers = read_peers(self.couch, db, ONLINE_FACTOR * KEEPALIVE_MAX_S, now)
        previous = self.board.last_keepalive()  # what the last beat asked the workers for
        with self._dispatch_lock:
            self.dispatcher.reset()
            if previous is not None:
                self.dispatcher.announce(previous, now)
            for doc in [*workers, *(row.get("doc") for row in [*ready, *leased])]:
                self.dispatcher.observe(doc)

    def dispatch(self) -> int:
        """Offer ready occurrences to workers with free slots (hub/dispatch.py)."""
        if self._loaded_from is None or self.couch.active.url != self._loaded_from:
            return 0  # the schedule (and the dispatcher) reload from the new server first
        if time.monotonic() - self._board_written < self.config.dispatch_gap_s:
            return 0
        now = self.now()
        with self._dispatch_lock:
            self.dispatcher.paused_tubes = set(self.paused_tubes)
            before = self.dispatcher.offered
            offers = self.dispatcher.plan(now)
            if self.board.beat_due(now):
                self.dispatcher.keepalive(now)
            keepalive, online = self.dispatcher.keepalive_s, self.dispatcher.online_s
        writes = self.board.writes
        failed = self.board.publish(offers, now, keepalive, online)
        if self.board.writes != writes:
            self._board_written = time.monotonic()
        if failed:
            with self._dispatch_lock:
                self.dispatcher.mark_dirty(failed)
        return self.dispatcher.offered - before

    def materialize(self) -> int:
        if self._loaded_from is not None and self.couch.active.url != self._loaded_from:
            self._reload_after_switch()
        self.materializer.paused_tubes = set(self.paused_tubes)
        return self.materializer.tick(self.now(), ahead=self.config.materialize_ahead)

    def _reload_after_switch(self) -> None:
        """The client moved to another server (failover or fail-back). What the schedule
        holds came from the old one: a batch written there just before it died may never
        have replicated, and the cursors have moved past it. Start again from what the
        server now in use holds; re-creating an occurrence it has is a harmless 409."""
        log.warning(
            "event=hub_reload_after_switch from=%s to=%s",
            redact_url(self._loaded_from or ""),
            redact_url(self.couch.active.url),
        )
        self._install(Materializer(self.couch, self.config.db))
        self._last_full_reap = float("-inf")

    def may_promote(self, occ: Occurrence) -> bool:
        if occ.tube in self.paused_tubes:
            return False
        if not is_serial(occ, self.materializer.tasks.get(occ.task)):
            return True
        # One at a time: nothing of its stream leased or ready, and none promoted already
        # in this reap pass (the pass decides before it writes).
        if self.materializer.stream_busy(occ) or occ.task in self._promoting:
            return False
        self._promoting.add(occ.task)
        return True

    def reap(self) -> reaper.ReapReport:
        if self.unsettled:
            self.settle_again()
        if self._lone_abandoned:
            self.requeue_abandoned()
        now = self.now()
        due = self.materializer.next_reap_due()
        if (
            self._follow_live
            and time.monotonic() - self._last_full_reap < self.config.reap_safety_s
            and (due is None or due > now)
        ):
            self.reaps_skipped += 1
            return reaper.ReapReport()  # nothing can be due yet: no request
        self._last_full_reap = time.monotonic()
        self._promoting = set()
        report = reaper.reap(self.couch, self.config.db, now, may_promote=self.may_promote)
        # Conflicted ones are settled at the next reap (settle_again), then expire.
        self.unsettled.update(report.conflicted)
        return report

    def validate(self) -> ValidateReport:
        """Quorum runs: expire silent slots, decide what is complete or timed out."""
        return self.validator.run(self.now())

    def archive(self) -> archiver.ArchiveReport:
        cursors = self.materializer.cursors

        def newest_of_its_task(occ: Occurrence) -> bool:
            cursor = cursors.get(occ.task)
            return cursor is not None and occ.due_at >= to_wire(cursor)

        report = archiver.archive(
            self.couch,
            self.config.db,
            self.now(),
            window=self.config.archive_window,
            keep=newest_of_its_task,
            since=self._archived_until,
        )
        self._archived_until = report.until
        return report  # fmt: skip

    def retention(self) -> list[str]:
        if self.admin is None:
            log.warning(
                "event=retention_skipped why='no server-admin connection; months are neither "
                "created ahead nor dropped'"
            )
            return []
        now = self.now()
        ahead = (now, now + timedelta(days=32))
        months = [results_db(self.config.db, at) for at in ahead]
        # Every server, not only the one in use: `_security` does not replicate, and a
        # month the standby lacks would have nowhere to replicate to.
        servers = [self.admin.for_server(index) for index in range(len(self.admin.servers))]
        for server in servers:
            try:
                for month in months:
                    provision.ensure_results_db(server, month)
            except CouchError as exc:
                log.warning("event=month_create_failed server=%s error=%r", server.active.label,
                            str(exc))  # fmt: skip
        # Every server's list: a month left on one side only is retired too.
        names: set[str] = set()
        for server in servers:
            try:
                names.update(server.all_dbs())
            except CouchError as exc:
                log.warning("event=retention_failed server=%s error=%r", server.active.label,
                            str(exc))  # fmt: skip
        expired = archiver.expired_months(
            sorted(names), self.config.db, now, self.config.retention_days
        )
        ends = self.replication_ends
        kept: set[str] = set()
        if ends is not None and expired:
            # First: a replication still running would re-fill a dropped copy.
            lines, kept = replication.retire(*ends, expired)
            for line in lines:
                log.info("event=replication_retire %s", line)
        dropped: list[str] = []
        for server in servers:
            for name in expired:
                if name in kept:
                    continue
                try:
                    if server.delete_db(name):
                        log.warning("event=results_month_dropped db=%s server=%s "
                                    "retention_days=%d", name, server.active.label,
                                    self.config.retention_days)  # fmt: skip
                        dropped.append(name)
                except CouchError as exc:
                    log.warning("event=retention_failed server=%s db=%s error=%r",
                                server.active.label, name, str(exc))  # fmt: skip
        if ends is not None:
            try:
                # Only what is missing: the hub's URLs are its view, not the servers'.
                for line in replication.setup(*ends, self.config.db, replace=False,
                                              skip=frozenset(expired)):  # fmt: skip
                    if "exists" not in line:
                        log.info("event=replication_setup %s", line)
            except CouchError as exc:
                log.warning("event=replication_setup_failed error=%r", str(exc))
        return sorted(set(dropped))

    def follow_once(self, wait: float | None = None) -> int:
        results, self._since = self.couch.changes(
            self.config.db, since=self._since, feed="longpoll", include_docs=True,
            conflicts=True, wait=self.config.follow_wait if wait is None else wait,
        )  # fmt: skip
        self._apply_followed(results)
        return len(results)

    def follow_stream(self, max_s: float = 300.0) -> int:
        """Follow one continuous ``_changes`` stream until it ends or the hub stops."""
        seen = 0
        bound = self.couch.active.url
        if bound != self._loaded_from:
            return 0  # the schedule is reloaded from this server first (materialize)
        try:
            for row in self.couch.changes_stream(
                self.config.db, since=self._since, include_docs=True,
                params={"conflicts": "true"}, max_s=max_s,
            ):  # fmt: skip
                self._follow_live = self._stream_heard = True
                if self._stop.is_set() or self._loaded_from != bound:
                    break  # stopping, or the schedule (and its seq) now come from elsewhere
                if row is None:
                    continue
                # Advance first: one row that cannot be applied must not stall the feed.
                self._since = str(row.get("seq", self._since))
                self._apply_followed([row])
                seen += 1
        finally:
            self._follow_live = False
        return seen

    def _settle(self, doc: dict[str, Any]) -> None:
        settled = resolver.resolve(self.couch, self.config.db, doc)
        if isinstance(settled, resolver.Resolution) and not settled.complete:
            self.unsettled.add(doc["_id"])
        else:
            self.unsettled.discard(doc["_id"])

    def settle_again(self) -> int:
        """Conflicts a resolution left behind (a cluster refused a deletion): the feed
        shows a document again only when it changes, so they are read and settled here,
        at every reap. Returns how many are still unsettled."""
        for doc_id in sorted(self.unsettled):
            if resolver.settle_again(self.couch, self.config.db, doc_id):
                self.unsettled.discard(doc_id)
        return len(self.unsettled)

    def requeue_abandoned(self) -> int:
        """Claims abandoned with no other claim seen, once ABANDONED_GRACE_S old: read from
        every copy and requeued, or settled if a winning claim shows up (a reap before that
        could put back an occurrence whose winning claim some copy has not shown yet, and
        it would run twice). Returns how many are still waiting."""
        ripe = time.monotonic() - ABANDONED_GRACE_S
        for doc_id, seen in sorted(self._lone_abandoned.items()):
            if seen <= ripe and resolver.requeue_lone_abandoned(self.couch, self.config.db, doc_id):
                del self._lone_abandoned[doc_id]
        return len(self._lone_abandoned)

    def _apply_followed(self, results: list[dict[str, Any]]) -> None:
        for row in results:
            try:
                doc = row.get("doc")
                if self.config.dispatch_every is not None:
                    seen = doc if doc else {"_id": row.get("id"), "_deleted": True}
                    with self._dispatch_lock:
                        self.dispatcher.observe(seen if not row.get("deleted") else
                                                {**seen, "_deleted": True})  # fmt: skip
                if row.get("id") == TUBES_DOC and doc:
                    self.paused_tubes = dict(doc.get("paused", {}))
                if doc and doc.get("_conflicts"):
                    # Two servers (or cluster nodes) took different writes: settle it now.
                    self._settle(doc)
                elif doc and resolver.is_lone_abandoned(doc):
                    # A claim a cluster took on too few copies, and no other claim seen.
                    self._lone_abandoned.setdefault(doc["_id"], time.monotonic())
                elif doc:
                    self._lone_abandoned.pop(doc["_id"], None)
                self.materializer.apply_changes([row], self.now())
                self.health.observe(doc)
                self.alert_sender.observe(doc)
                self.validator.observe(doc)
            except Exception as exc:  # one bad document must not stop the hub following
                log.warning("event=follow_row_failed doc=%s error=%r", row.get("id"), str(exc))

    def watch_replication(self) -> replication.Health | None:
        """Probe both directions (lag in seconds and documents; with server-admin
        credentials also each replication's state, for every farm database, and restart
        those that need it: ``replication.restart_stalled``); settle conflicts in the
        monthly results databases, which the live feed does not cover."""
        if len(self.couch.servers) < 2:
            try:
                # A cluster's copies can take two creates of one result: settle them (the
                # months have the live database's n; a single server reads nothing more).
                if self.couch.copies(self.config.db) > 1:
                    self.settle_results()
            except CouchError as exc:
                log.warning("event=resolve_failed error=%r", str(exc))
            return None
        primary, standby = self.couch.for_server(0), self.couch.for_server(1)
        for couch, side in ((primary, "primary"), (standby, "standby")):
            try:
                replication.write_probe(couch, self.config.db, side)
            except CouchError as exc:
                log.warning("event=probe_failed side=%s error=%r", side, str(exc))
        if self.admin is not None and len(self.admin.servers) >= 2:
            # A server admin may read the replications' own states and every database, and
            # restart a replication that crashed, failed, backs off or stalled (CouchDB's
            # backoff would keep it idle for minutes after the other server came back).
            readers = (self.admin.for_server(0), self.admin.for_server(1))
            self.replication_health = replication.status(*readers, self.config.db, admin=True)
            restarts = self.__dict__.setdefault("_replication_restarts", {})
            try:
                for line in replication.restart_stalled(
                    *readers, self.replication_health, self.config.db, restarts
                ):
                    log.warning("event=replication_restart %s", line)
            except CouchError as exc:
                log.warning("event=replication_restart_failed error=%r", str(exc))
        else:
            self.replication_health = replication.status(primary, standby, self.config.db)
        self.settle_results()
        return self.replication_health

    def settle_results(self) -> None:
        """Settle the conflicts in this month's results database, which the live feed does
        not cover (replication, or a cluster whose copies took two creates of one result:
        then that task's tally is recounted too, ``tallies.recount_after_result_conflict``).
        What a resolution left incomplete is tried again at the next pass."""
        for month, doc_id in sorted(self.unsettled_results):
            try:
                if resolver.settle_again(self.couch, month, doc_id):
                    self.unsettled_results.discard((month, doc_id))
            except CouchError as exc:
                log.warning("event=resolve_failed db=%s doc=%s error=%r", month, doc_id, str(exc))
        month_db = results_db(self.config.db, self.now())
        since = self._resolved_results_since.get(month_db, "0")
        left: set[str] = set()
        try:
            _n, self._resolved_results_since[month_db] = resolver.resolve_all(
                self.couch, month_db, since, unsettled=left
            )
        except CouchError as exc:
            log.warning("event=resolve_failed db=%s error=%r", month_db, str(exc))
        self.unsettled_results |= {(month_db, doc_id) for doc_id in left}

    # ------------------------------------------------------------ running

    def start(self) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler

        self.load()
        self._stop.clear()
        self._follower = threading.Thread(target=self._follow_loop, name="hub-follow", daemon=True)
        self._follower.start()
        scheduler = BackgroundScheduler(timezone="UTC")
        common = {"max_instances": 1, "coalesce": True, "misfire_grace_time": 30}
        scheduler.add_job(
            self._guard(self.materialize),
            "interval",
            seconds=self.config.materialize_every,
            id="materialize",
            **common,
        )
        scheduler.add_job(
            self._guard(self.reap), "interval", seconds=self.config.reap_every, id="reap", **common
        )
        load_plugin_comparators()
        scheduler.add_job(
            self._guard(self.validate),
            "interval",
            seconds=self.config.validate_every,
            id="validate",
            **common,
        )
        if self.config.dispatch_every is not None:
            scheduler.add_job(
                self._guard(self.dispatch),
                "interval",
                seconds=self.config.dispatch_every,
                id="dispatch",
                **common,
            )
        scheduler.add_job(
            self._guard(self.archive),
            "interval",
            seconds=self.config.archive_every,
            id="archive",
            **common,
        )
        scheduler.add_job(
            self._guard(self.watch_replication),
            "interval",
            seconds=self.config.replication_every,
            id="replication",
            **common,
        )
        scheduler.add_job(
            self._guard(self.watch_health), "interval", seconds=1.0, id="health", **common
        )
        scheduler.add_job(
            self._guard(self.send_alerts),
            "interval",
            seconds=self.config.alerts_every,
            id="alerts",
            **common,
        )
        scheduler.add_job(
            self._guard(self.retention),
            "interval",
            hours=1,
            id="retention",
            next_run_time=datetime.now().astimezone(),
            **common,
        )
        scheduler.start()
        self._scheduler = scheduler
        log.info("event=hub_started db=%s tasks=%d", self.config.db, len(self.materializer.tasks))

    def stop(self) -> None:
        self._stop.set()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None
        log.info("event=hub_stopped created=%d", self.materializer.created)

    def _guard(self, duty: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            try:
                duty()
            except CouchError as exc:
                log.warning("event=duty_failed duty=%s error=%r", duty.__name__, str(exc))
            except Exception:
                log.exception("event=duty_crashed duty=%s", duty.__name__)

        run.__name__ = duty.__name__
        return run

    def _follow_loop(self) -> None:
        silent_streams = 0
        while not self._stop.is_set():
            try:
                if silent_streams < 2:
                    self._stream_heard = False
                    self.follow_stream()
                    silent_streams = 0
                    if self._loaded_from != self.couch.active.url:
                        self._stop.wait(0.25)  # the next materialize tick reloads first
                elif self.follow_once():
                    self._stop.wait(self.config.follow_batch_s)
            except CouchError as exc:
                # Silent from the start, twice: something holds streams back; longpoll.
                if isinstance(exc, StreamBrokeOff) and not self._stream_heard:
                    silent_streams += 1
                log.warning("event=follow_failed error=%r", str(exc))
                self._stop.wait(2.0)
            except Exception:
                log.exception("event=follow_crashed")
                self._stop.wait(2.0)
