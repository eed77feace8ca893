"""The claim loop: while a slot is free and the engine may take work, claim.

Claims come from the ready set (:mod:`desktop_worker.claim`: the hub's offers, which the
board feed brings in, or the ``ready`` view). In a backlog (the view's last page was full)
it claims ``claim_ahead`` more than its free slots in the same ``_bulk_docs`` and holds
them, starting each as a slot frees: on CouchDB one validated write per claim was the
claim's whole cost (docs/DECISIONS.md decision 16). A held claim not started within
``touch_at`` of its TTR, and every held claim when the engine stops, pauses or drains, is
released (one ``_bulk_docs``), so holding never outlives a lease nor keeps work from others
for long. When nothing is claimable the loop sleeps
until the board feed, a finished run or a state change wakes it (``status.wake``), a
staggered candidate's turn comes, the next offer's ``not_before`` passes, or
``poll_interval_s`` passes. Its first request checks the session (the credentials, and
the server clock's first samples) and the hub's minimum worker version (``hub:policy``).
A draining engine with no run left is stopped from here (``on_drained``).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from desktop_worker.claim import Claimer, ClaimStats
from desktop_worker.config import WorkerConfig
from desktop_worker.delivery import Delivery
from desktop_worker.heartbeat import Heartbeat
from desktop_worker.log import log_event
from desktop_worker.runs import RunSlots
from desktop_worker.status import EngineStatus
from hub.protocol import states
from hub.protocol.couch import Couch, CouchError, Forbidden, Unauthorized, Unavailable
from hub.protocol.model import Occurrence, reliability_id
from hub.protocol.version import POLICY_DOC_ID, __version__, worker_too_old

LOG_WARNING = logging.WARNING
MAX_OFFLINE_WAIT_S = 15.0  # the back-off between tries while no server answers
# How often the worker reads its own reliability (hub:reliability:{name}): quarantined by
# the hub's validator, it takes only quorum slots (decision 17). One GET per 5 minutes.
QUARANTINE_CHECK_S = 300.0


@dataclass
class Held:
    """A claim won ahead of a free slot: the lease, and when (monotonic) it was written."""

    occ: Occurrence
    leased_at: float


class ClaimLoop:
    """:meth:`run` is the claim thread. ``claimer`` claims; ``slots`` starts the runs."""

    def __init__(
        self,
        couch: Couch,
        config: WorkerConfig,
        status: EngineStatus,
        claimer: Claimer,
        slots: RunSlots,
        delivery: Delivery,
        heartbeat: Heartbeat,
        *,
        rng: random.Random,
        on_drained: Callable[[], None],
        version: str = __version__,
    ) -> None:
        self.couch = couch
        self.config = config
        self.db = config.db
        self.name = config.name
        self.status = status
        self.claimer = claimer
        self.slots = slots
        self.delivery = delivery
        self.heartbeat = heartbeat
        self.rng = rng
        self.on_drained = on_drained
        self.version = version  # what the hub's minimum is held against
        self.claim_stats = ClaimStats()
        self.monotonic: Callable[[], float] = time.monotonic
        self.held: list[Held] = []  # claimed ahead in a backlog, in turn order
        self._quarantine_read = float("-inf")
        self.released_ahead = 0  # held claims handed back (stale, stop, pause)

    def run(self) -> None:
        try:
            self._run()
        finally:
            self.release_held("worker stopping")

    def _run(self) -> None:
        offline_wait = 1.0
        checked_session = False
        while not self.status.stopping.is_set():
            self.status.wake.clear()
            with self.status.lock:
                drained = self.status.draining and not self.status.runs
            if drained:
                threading.Thread(target=self.on_drained, daemon=True).start()
                return
            if not checked_session:
                checked_session = self._check_session()
                if not checked_session:
                    self.status.wake.wait(min(offline_wait, self.config.poll_interval_s))
                    offline_wait = min(offline_wait * 2, MAX_OFFLINE_WAIT_S)
                    continue
            if self.status.errors.get("spool"):
                self.delivery.retry_spool()
            if self.status.errors.get("auth"):
                checked_session = False
                self.status.wake.wait(self.config.poll_interval_s)
                continue
            if not self.status.may_claim():
                if self.held and not self._only_busy():
                    self.release_held("worker paused or draining")
                self.status.wake.wait(self.config.poll_interval_s)
                continue
            free = self.config.slots - len(self.status.runs)
            free -= self._start_held(free)
            if free <= 0:
                continue  # may_claim() said a slot was free: the held claims took them
            # Claim ahead only when the last read was a full page (a backlog): then every
            # slot stays busy anyway, and one _bulk_docs carries several claims. Offers and
            # short queues are claimed as slots free, so turn order across workers holds.
            ahead = self.config.claim_ahead if self.claimer.in_backlog() else 0
            try:
                self._check_quarantine()
                result = self.claimer.claim(free, ahead)
            except Unavailable as exc:
                self.status.set_offline(exc)
                self.status.wake.wait(offline_wait)
                offline_wait = min(offline_wait * 2, MAX_OFFLINE_WAIT_S)
                continue
            except (Unauthorized, Forbidden) as exc:
                self.status.set_error("auth", f"the hub refused worker {self.name}: {exc.reason}")
                self.status.wake.wait(self.config.poll_interval_s)
                continue
            except CouchError as exc:
                log_event("claim_error", LOG_WARNING, worker=self.name, error=str(exc))
                self.status.wake.wait(5.0)
                continue
            offline_wait = 1.0
            self.status.set_offline(None)
            self.status.set_error("auth", None)
            self.claim_stats.add(result.stats)
            now_mono = self.monotonic()
            for index, occ in enumerate(result.won):
                if index < free:
                    self.slots.start(occ)
                else:
                    self.held.append(Held(occ, now_mono))
            if result.won:
                continue
            if result.contended:
                self.status.wake.wait(self.rng.uniform(0.05, 0.5))
                continue
            timeout = self.config.poll_interval_s
            if result.retry_in is not None:  # a staggered candidate's turn comes
                timeout = min(timeout, result.retry_in + 0.01)
            if result.next_not_before is not None:
                until = (result.next_not_before - self.couch.now()).total_seconds()
                timeout = max(0.005, min(timeout, until + 0.005))
            self.status.wake.wait(timeout)

    def _check_quarantine(self) -> None:
        """Read our reliability now and then: a quarantined worker (its results disagreed
        with the majority again and again) takes only fully replicated quorum slots."""
        if self.monotonic() - self._quarantine_read < QUARANTINE_CHECK_S:
            return
        self._quarantine_read = self.monotonic()
        doc = self.couch.get_or_none(self.db, reliability_id(self.name)) or {}
        quarantined = bool(doc.get("quarantined"))
        if quarantined != self.claimer.quorum_only:
            means = "only quorum slots are claimed" if quarantined else "all work is claimed"
            log_event("worker_quarantine", LOG_WARNING if quarantined else logging.INFO,
                      worker=self.name, quarantined=quarantined, means=means)  # fmt: skip
        self.claimer.quorum_only = quarantined

    def _only_busy(self) -> bool:
        """may_claim() is false only because every slot is running: keep what is held."""
        with self.status.lock:
            return (
                not self.status.stopping.is_set()
                and not self.status.draining
                and not self.status.paused
                and not self.status.errors
            )

    def _start_held(self, free: int) -> int:
        """Start held claims in the free slots; release those too old to start safely (the
        lease would run out before the run's first touch). Returns how many started."""
        started = 0
        stale: list[Held] = []
        now_mono = self.monotonic()
        while self.held and started < free:
            held = self.held.pop(0)
            if now_mono - held.leased_at >= held.occ.ttr * self.config.touch_at:
                stale.append(held)
                continue
            self.slots.start(held.occ, leased_at=held.leased_at)
            started += 1
        if stale:
            self._release(stale, "claimed ahead, not started within its lease")
        return started

    def release_held(self, why: str) -> None:
        held, self.held = self.held, []
        if held:
            self._release(held, why)

    def _release(self, held: list[Held], why: str) -> None:
        """Hand held claims back (ready, the attempt given back) in one ``_bulk_docs``. A
        release that fails leaves the lease to expire: the reaper requeues it."""
        try:
            now = self.couch.now()
            docs = [states.release(h.occ, self.name, now, why).to_doc() for h in held]
            rows = self.couch.bulk_docs(self.db, docs)
        except (CouchError, states.InvalidTransition) as exc:
            log_event("release_ahead_failed", LOG_WARNING, worker=self.name, count=len(held),
                      error=str(exc))  # fmt: skip
            return
        released = sum(1 for row in rows if "rev" in row and not row.get("error"))
        self.released_ahead += released
        log_event("claims_released", worker=self.name, count=len(held), released=released,
                  why=why)  # fmt: skip

    def _check_session(self) -> bool:
        """First request: checks the credentials and samples the server clock."""
        try:
            ctx = self.couch.session().get("userCtx", {})
        except Unavailable as exc:
            self.status.set_offline(exc)
            return False
        except CouchError as exc:
            self.status.set_error("auth", f"cannot check the session: {exc}")
            return False
        self.status.set_offline(None)
        if ctx.get("name") != self.name:
            self.status.set_error(
                "auth",
                f"the hub did not accept worker {self.name!r}: wrong name or password "
                "(check the keyring entry, password file or COUCHFARM_WORKER_PASSWORD)",
            )
            return False
        self.status.set_error("auth", None)
        if self.status.started_at is None:
            self.status.started_at = self.couch.now()
        fit = self._check_version()  # before the first heartbeat, so it shows the refusal
        self.heartbeat.wake.set()
        try:
            # A claim asks for a majority of copies (decision 14): learn it now, at start,
            # not in the first claim's way (a db info read, once per database).
            self.couch.majority(self.db)
        except Unavailable as exc:
            self.status.set_offline(exc)
            return False
        except CouchError as exc:  # the first claim asks again
            log_event("majority_unknown", LOG_WARNING, worker=self.name, error=str(exc))
        return fit

    def _check_version(self) -> bool:
        """Refuse to claim while the hub's ``hub:policy`` asks for a newer worker (the
        claim loop asks again on its back-off, so lowering the minimum needs no restart)."""
        try:
            policy = self.couch.get_or_none(self.db, POLICY_DOC_ID)
        except Unavailable as exc:
            self.status.set_offline(exc)
            return False
        except CouchError as exc:  # unreadable policy: work as before
            log_event("policy_unreadable", LOG_WARNING, worker=self.name, error=str(exc))
            policy = None
        problem = worker_too_old(self.version, (policy or {}).get("min_worker_version"))
        self.status.set_error("version", problem)
        return problem is None


__all__ = ["ClaimLoop"]
