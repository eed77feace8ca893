"""The headless worker engine: claim, lease, run, report, spool. No Qt here.

:class:`Engine` is a facade: it builds one collaborator per job, wires them together, and
keeps the public interface the tray, the CLI, the self-test, the tests and the bench use.

- :mod:`desktop_worker.status`: the state they share (paused, draining, errors, offline,
  the runs, the totals), the state precedence (:func:`desktop_worker.engine_api.derive_state`),
  the listeners;
- :mod:`desktop_worker.claimloop`: the ``claim`` thread: while a slot is free and the
  engine may take work, claims (:mod:`desktop_worker.claim`); otherwise sleeps until the
  board feed, a finished run or a state change wakes it, or ``poll_interval_s`` passes;
- :mod:`desktop_worker.feed`: the ``changes`` thread: one continuous ``_changes`` stream on
  the hub's board ``{db}_board`` (decision 12), ``filter=_doc_ids`` to this worker's
  ``offer:{name}`` and the hub's beat, into the ready set; it wakes the claim loop, rebinds
  when the client fails over, and falls back to longpoll after two silent streams. The
  worker follows no feed on the live database. When the feed fails the claim loop's
  polling covers the gap;
- :mod:`desktop_worker.runs`: one ``slot`` thread per run: supervises the runner's child,
  touches the lease when ``touch_at`` (default 1/2) of the TTR has passed since the last
  lease write, and builds the finishing document. A 409 on touch or finish means the lease
  is gone: the child is cancelled and the result dropped ("lost");
- :mod:`desktop_worker.delivery`: every finishing write goes through the spool; the
  ``spool`` thread uploads spooled writes in order when a server answers and deletes
  finished results once they are seen on the standby;
- :mod:`desktop_worker.heartbeat`: the ``heartbeat`` thread writes ``worker:{name}`` at
  most once per ``heartbeat_interval_s``;
- :mod:`desktop_worker.lifecycle`: start, pause/resume, drain, stop.

Every time written to the hub comes from ``couch.now()`` (server clock), never the PC's.

Observers: :meth:`Engine.add_listener` takes a callable that receives :class:`EngineEvent`
objects, called from engine threads (a GUI must hop to its own thread).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from desktop_worker.claim import Claimer, ClaimStats
from desktop_worker.claimloop import ClaimLoop
from desktop_worker.config import WorkerConfig
from desktop_worker.delivery import Delivery
from desktop_worker.engine_api import EngineEvent, EngineLike, EngineState, Listener
from desktop_worker.feed import ClaimFeed
from desktop_worker.heartbeat import Heartbeat, enabled_kinds
from desktop_worker.lifecycle import Lifecycle
from desktop_worker.readyset import ReadySet
from desktop_worker.runs import Run, RunSlots, script_specs
from desktop_worker.spool import Spool
from desktop_worker.status import EngineStatus
from hub.protocol.couch import Couch
from hub.protocol.version import __version__


def default_couch_factory(
    config: WorkerConfig, local_clock: Callable[[], float] | None = None
) -> Couch:
    return Couch(
        config.hub_urls,
        config.name,
        config.password,
        verify=config.verify,
        local_clock=local_clock,
        connect_timeout=3.0,
        read_timeout=15.0,
        retries=2,
        home_db=config.db,
    )


class Engine:
    """One worker: ``start()``, then ``pause``/``resume``/``drain``/``stop``.

    ``couch_factory(config)`` builds the client (default: :func:`default_couch_factory`,
    which also takes ``local_clock``, the PC's wall clock that hub time is offset from);
    ``start_run`` replaces ``desktop_worker.runner.start_run``; ``spool`` replaces the
    SQLite spool at ``config.resolved_spool_path``. For a UI: :meth:`add_listener`,
    :attr:`state`, :attr:`why`, :attr:`current`, :attr:`totals`, :meth:`run_info`,
    :meth:`cancel`.
    """

    def __init__(
        self,
        config: WorkerConfig,
        *,
        couch_factory: Callable[[WorkerConfig], Couch] | None = None,
        local_clock: Callable[[], float] | None = None,
        start_run: Callable[..., Any] | None = None,
        spool: Spool | None = None,
        feed_wait_s: float = 25.0,
        heartbeat_keepalive_s: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.db = config.db
        self.local_clock = local_clock or time.time
        if couch_factory is None:
            self.couch = default_couch_factory(config, self.local_clock)
        else:
            self.couch = couch_factory(config)
        self.feed_wait_s = feed_wait_s
        self.heartbeat_keepalive_s = heartbeat_keepalive_s or 2 * config.heartbeat_interval_s
        self.rng = rng or random.Random()
        # Read at construction, so a test can make an engine of another version by
        # setting this module's __version__ (tests/test_packaging.py).
        self.version = __version__
        self.ready_set = ReadySet(self.name, config.tubes, config.kinds)
        self.claimer = Claimer(
            self.couch,
            self.db,
            self.name,
            config.tubes,
            k=config.claim_k,
            kinds=config.kinds,
            rng=random.Random(self.rng.random()),
            ready_set=self.ready_set,
            poll_s=config.poll_interval_s,
        )
        self.status = EngineStatus(self.name, config.slots)
        self.feed = ClaimFeed(
            self.couch,
            self.db,
            self.name,
            list(config.tubes),
            self.ready_set,
            wake=self.status.wake.set,
            stopping=self.status.stopping,
            stream_s=feed_wait_s * 12,
            longpoll_wait_s=feed_wait_s,
            error_wait_s=config.poll_interval_s,
        )
        self.delivery = Delivery(self.couch, config, self.status, spool)
        self.heartbeat = Heartbeat(
            self.couch, config, self.status, self.heartbeat_keepalive_s, self.version,
            keepalive_hint=lambda: self.ready_set.hub_keepalive_s,
        )  # fmt: skip
        self.slots = RunSlots(
            self.couch, config, self.status, self.delivery, rng=self.rng, start_run=start_run
        )
        self.claim_loop = ClaimLoop(
            self.couch,
            config,
            self.status,
            self.claimer,
            self.slots,
            self.delivery,
            self.heartbeat,
            rng=self.rng,
            on_drained=lambda: self.lifecycle.drained(),
            version=self.version,
        )
        self.lifecycle = Lifecycle(
            config,
            self.status,
            self.slots,
            self.delivery,
            self.heartbeat,
            loops=[
                ("claim", self.claim_loop.run),
                ("changes", self.feed.run),
                ("spool", self.delivery.run),
                ("heartbeat", self.heartbeat.run),
            ],
            version=self.version,
        )

    # ================================================================ observers

    def add_listener(self, listener: Listener) -> None:
        self.status.add_listener(listener)

    def remove_listener(self, listener: Listener) -> None:
        self.status.remove_listener(listener)

    # ================================================================ reading

    @property
    def state(self) -> EngineState:
        return self.status.state

    @property
    def why(self) -> str:
        return self.status.why

    @property
    def current(self) -> list[str]:
        return self.status.current()

    @property
    def totals(self) -> dict[str, int]:
        return self.status.totals

    @property
    def started_at(self) -> datetime | None:
        """Hub time of the first session this start accepted (the worker doc's)."""
        return self.status.started_at

    @started_at.setter
    def started_at(self, value: datetime | None) -> None:
        self.status.started_at = value

    @property
    def spool(self) -> Spool | None:
        return self.delivery.spool

    @property
    def claim_stats(self) -> ClaimStats:
        return self.claim_loop.claim_stats

    @property
    def heartbeats_written(self) -> int:
        return self.heartbeat.written

    @property
    def _runs(self) -> dict[str, Run]:
        # The bench (bench/workers/fleet_host.py) reads each run's claimed_at from here.
        return self.status.runs

    def run_info(self, occ_id: str) -> dict[str, Any] | None:
        """What the UI shows for one run; no I/O (hub time from the client's clock offset)."""
        return self.slots.info(occ_id)

    def worker_doc(self) -> dict[str, Any]:
        """The heartbeat's ``worker:{name}`` document (see :class:`Heartbeat`)."""
        return self.heartbeat.worker_doc()

    def enabled_kinds(self) -> list[str]:
        """The kinds this worker runs (for its worker doc)."""
        return enabled_kinds(self.config)

    # ================================================================ control

    def start(self) -> Engine:
        self.lifecycle.start()
        return self

    def pause(self, reason: str = "paused by the user") -> None:
        """Claim nothing more until :meth:`resume`; runs in progress finish."""
        self.lifecycle.pause(reason)

    def resume(self) -> None:
        self.lifecycle.resume()

    def drain(self) -> None:
        """Finish the runs in progress, claim no more, then stop (SIGTERM does this)."""
        self.lifecycle.drain()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop now: cancel runs in progress and hand their leases back."""
        self.lifecycle.stop(timeout)

    def cancel(self, occ_id: str, reason: str = "cancelled by the user") -> bool:
        """Stop one run now and hand its lease back (another worker may take it)."""
        return self.slots.cancel(occ_id, reason)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the engine has stopped (after drain() or stop()); True if it has."""
        return self.lifecycle.stopped.wait(timeout)


__all__ = [
    "Engine",
    "EngineEvent",
    "EngineLike",
    "EngineState",
    "Listener",
    "default_couch_factory",
    "script_specs",
]
