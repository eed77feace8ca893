"""The claim loop: while a slot is free and the engine may take work, claim.

Claims come from the ready set (:mod:`desktop_worker.claim`: the hub's offers, which the
board feed brings in, or the ``ready`` view). When nothing is claimable the loop sleeps
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
from collections.abc import Callable

from desktop_worker.claim import Claimer, ClaimStats
from desktop_worker.config import WorkerConfig
from desktop_worker.delivery import Delivery
from desktop_worker.heartbeat import Heartbeat
from desktop_worker.log import log_event
from desktop_worker.runs import RunSlots
from desktop_worker.status import EngineStatus
from hub.protocol.couch import Couch, CouchError, Forbidden, Unauthorized, Unavailable
from hub.protocol.version import POLICY_DOC_ID, __version__, worker_too_old

LOG_WARNING = logging.WARNING
MAX_OFFLINE_WAIT_S = 15.0  # the back-off between tries while no server answers


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

    def run(self) -> None:
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
                self.status.wake.wait(self.config.poll_interval_s)
                continue
            free = self.config.slots - len(self.status.runs)
            try:
                result = self.claimer.claim(free)
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
            for occ in result.won:
                self.slots.start(occ)
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
