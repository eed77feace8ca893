"""The engine's lifecycle: start its threads, pause and resume, drain, stop.

Threads (all daemons; :meth:`Lifecycle.stop` ends them): ``claim`` (the claim loop),
``changes`` (the board feed, :mod:`desktop_worker.feed`), ``spool`` (delivery's upload and
confirmation loop) and ``heartbeat``; plus one slot thread per run. A failover needs no
step here: each thread follows the client to the server it uses now (the feed rebinds,
the heartbeat writes at once, the spool settles uploaded results against the survivor).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from desktop_worker.config import WorkerConfig
from desktop_worker.delivery import Delivery
from desktop_worker.heartbeat import Heartbeat
from desktop_worker.log import log_event
from desktop_worker.runs import RunSlots
from desktop_worker.status import EngineStatus
from hub.protocol.couch import redact_url
from hub.protocol.version import __version__


class Lifecycle:
    """Starts and stops the engine's threads; ``loops`` are (name, target) pairs."""

    def __init__(
        self,
        config: WorkerConfig,
        status: EngineStatus,
        slots: RunSlots,
        delivery: Delivery,
        heartbeat: Heartbeat,
        loops: list[tuple[str, Callable[[], None]]],
        version: str = __version__,
    ) -> None:
        self.config = config
        self.name = config.name
        self.status = status
        self.slots = slots
        self.delivery = delivery
        self.heartbeat = heartbeat
        self.loops = loops
        self.version = version
        self.stopped = threading.Event()  # set once fully stopped (wait() returns)
        self.stopped.set()
        self._shutting_down = False
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        status = self.status
        if not self.stopped.is_set():
            return
        status.stopping.clear()
        self.stopped.clear()
        status.is_stopped = False
        self._shutting_down = False
        status.draining = False
        status.started_at = None
        log_event(
            "worker_start",
            worker=self.name,
            version=self.version,
            hubs=",".join(redact_url(u) for u in self.config.hub_urls),
            db=self.config.db,
            tubes=",".join(self.config.tubes),
            slots=self.config.slots,
            k=self.config.claim_k,
        )
        self.delivery.open_spool()
        self.delivery.report_kept("spool_resumed")
        status.refresh()
        for name, target in self.loops:
            thread = threading.Thread(target=target, name=f"worker-{self.name}-{name}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def pause(self, reason: str) -> None:
        with self.status.lock:
            self.status.paused = reason or "paused"
        log_event("worker_pause", worker=self.name, why=reason)
        self.status.refresh()
        self.status.wake.set()

    def resume(self) -> None:
        with self.status.lock:
            self.status.paused = None
        log_event("worker_resume", worker=self.name)
        self.status.refresh()
        self.status.wake.set()

    def drain(self) -> None:
        with self.status.lock:
            if self.status.stopping.is_set():
                return
            self.status.draining = True
        log_event("worker_drain", worker=self.name, running=len(self.status.runs))
        self.status.refresh()
        self.status.wake.set()

    def stop(self, timeout: float) -> None:
        if self.stopped.is_set():
            return
        self.shutdown(cancel_runs=True, timeout=timeout)

    def drained(self) -> None:
        """The claim loop saw a draining engine with no run left."""
        self.shutdown(cancel_runs=False)

    def shutdown(self, *, cancel_runs: bool, timeout: float = 15.0) -> None:
        status = self.status
        with status.lock:
            runs = list(status.runs.values())
            already = self._shutting_down
            self._shutting_down = True
            status.stopping.set()
        if cancel_runs:
            for run in runs:
                run.cancel_reason = "worker stopping"
                run.cancel.set()
        if already:  # another thread is stopping the engine; wait for it
            self.stopped.wait(timeout)
            return
        status.wake.set()
        self.delivery.wake.set()
        self.heartbeat.wake.set()
        deadline = time.monotonic() + timeout
        self.slots.join(runs, deadline)
        for thread in self._threads:
            if thread is threading.current_thread() or thread.name.endswith("-changes"):
                continue  # a longpoll in flight ends on its own; it only reads
            thread.join(max(0.1, deadline - time.monotonic()))
        if self.delivery.spool is not None:
            self.delivery.upload_pending()  # last chance for anything still pending
        with status.lock:
            self._threads = []
            status.is_stopped = True
        status.refresh()
        if status.started_at is not None:
            self.heartbeat.write()  # 'stopped' is worth one write outside the rate limit
        self.delivery.report_kept("spool_kept")
        self.delivery.close()
        log_event("worker_stop", worker=self.name, **status.totals)
        self.stopped.set()


__all__ = ["Lifecycle"]
