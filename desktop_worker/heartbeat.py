"""The heartbeat: the worker's ``worker:{name}`` document on the hub.

The hub's dispatcher offers work only to workers whose doc is fresh (decision 12), so the
doc is written when the state the hub acts on changes (running, paused, draining,
stopped), every ``keepalive_s`` as a keep-alive (longer when the hub's beat asks for a
longer one: a large fleet's keep-alives are stretched so that together they stay cheap,
hub/protocol/board.py), and right after a failover (the hub
there knows us only from our doc). Never more than one write per
``heartbeat_interval_s``; never per run (the hub sees leases on its feed).
"""

from __future__ import annotations

import logging
import platform
import threading
import time
from collections.abc import Callable
from typing import Any

from desktop_worker.config import WorkerConfig
from desktop_worker.log import log_event
from desktop_worker.status import EngineStatus, doc_state
from hub.protocol.couch import Conflict, Couch, CouchError, Unavailable
from hub.protocol.model import WorkerTotals, worker_id
from hub.protocol.timefmt import to_wire
from hub.protocol.version import __version__

LOG_WARNING = logging.WARNING

# The counters a worker document carries (done, failed, lost): the model's fields, read
# without building its validator.
WORKER_TOTALS = tuple(WorkerTotals.model_fields)


def enabled_kinds(config: WorkerConfig) -> list[str]:
    """The kinds this worker runs (for its worker doc)."""
    try:
        # Not through the runner: importing it (multiprocessing, handlers) costs an idle
        # tray about 1 MB before any run.
        from desktop_worker.handlers import runnable_kinds

        allowed = None if config.kinds is None else frozenset(config.kinds)
        return runnable_kinds(allowed, bool(config.scripts))[:100]
    except Exception:
        return list(config.kinds or [])[:100]


class Heartbeat:
    """Writes ``worker:{name}``; :meth:`run` is its thread. ``dirty`` asks for a write as
    soon as the rate limit allows; ``wake`` cuts a wait short."""

    def __init__(
        self,
        couch: Couch,
        config: WorkerConfig,
        status: EngineStatus,
        keepalive_s: float,
        version: str = __version__,
        keepalive_hint: Callable[[], float | None] | None = None,
    ) -> None:
        self.couch = couch
        self.config = config
        self.db = config.db
        self.name = config.name
        self.status = status
        self.keepalive_s = keepalive_s
        self.keepalive_hint = keepalive_hint
        self.version = version
        self.wake = threading.Event()
        self.dirty = True
        self.rev: str | None = None
        self.written = 0
        self._last = float("-inf")  # monotonic time of the last worker-doc write
        self._server = ""  # the server the last one went to
        self._doc_kinds: list[str] | None = None
        status.on_doc_state_change = self.mark_dirty
        status.on_change = self.wake.set

    def mark_dirty(self) -> None:
        self.dirty = True

    def run(self) -> None:
        """At most one write per interval: sooner after a state change, else a keep-alive."""
        interval = self.config.heartbeat_interval_s
        while not self.status.stopping.is_set():
            keepalive = self.period()
            since = time.monotonic() - self._last
            ready = self.status.started_at is not None
            # After a failover the hub there knows us only from our doc: say we are here
            # now, or its dispatcher offers us nothing until the next keep-alive.
            moved = ready and self._server not in ("", self.couch.active.url)
            if moved or (ready and since >= interval and (self.dirty or since >= keepalive)):
                self.write()
                continue
            if not ready:
                wait = interval
            elif since < interval:
                wait = interval - since
            else:
                wait = keepalive - since
            self.wake.wait(max(0.05, min(wait, 1.0)))  # 1 s: notice a failover soon
            self.wake.clear()

    def period(self) -> float:
        """The keep-alive period: ours, or the hub's when it asks for a longer one."""
        hint = self.keepalive_hint() if self.keepalive_hint is not None else None
        return max(self.keepalive_s, hint or 0.0)

    def worker_doc(self) -> dict[str, Any]:
        """The heartbeat's ``worker:{name}`` document, in ``WorkerDoc.to_doc()``'s shape.

        Written as a plain dict, not through the ``WorkerDoc`` model: building a pydantic
        validator the first time costs about 2 MB, and the heartbeat is the only model an
        idle worker would build (docs/TRAY.md, "Numbers"). Every value comes from the
        validated config or the engine itself, cut to ``WorkerDoc``'s limits here; the
        server's ``validate_doc_update`` checks the document on every write, and
        ``tests/test_worker_doc.py`` holds this shape to the model.
        """
        with self.status.lock:
            state = doc_state(self.status.state)
            current = sorted(self.status.runs)[:256]
            totals = {key: int(self.status.totals.get(key, 0)) for key in WORKER_TOTALS}
        now = self.couch.now()
        doc: dict[str, Any] = {"_id": worker_id(self.name)}
        if self.rev:
            doc["_rev"] = self.rev
        doc.update(
            type="worker",
            name=self.name,
            version=self.version[:40],
            os=platform.platform()[:100],
            tubes=list(self.config.tubes),
            kinds=self._kinds_for_doc(),
            slots=self.config.slots,
            state=state,
            last_seen=to_wire(now),
            started_at=to_wire(self.status.started_at or now),
            current=current,
            totals=totals,
        )
        return doc

    def _kinds_for_doc(self) -> list[str]:
        if self._doc_kinds is None:
            self._doc_kinds = enabled_kinds(self.config)
        return self._doc_kinds

    def write(self) -> bool:
        self.dirty = False
        self._last = time.monotonic()
        self._server = self.couch.active.url
        doc = self.worker_doc()
        try:
            try:
                self.rev = self.couch.put(self.db, doc)
            except Conflict:
                current = self.couch.get_or_none(self.db, doc["_id"])
                doc.pop("_rev", None)
                if current is not None:
                    doc["_rev"] = current["_rev"]
                self.rev = self.couch.put(self.db, doc)
        except Unavailable as exc:
            self.dirty = True
            self.status.set_offline(exc)
            return False
        except CouchError as exc:
            self.dirty = True
            log_event("heartbeat_failed", LOG_WARNING, worker=self.name, error=str(exc))
            return False
        self.written += 1
        log_event("heartbeat", worker=self.name, state=doc["state"], running=len(doc["current"]))
        self.status.emit("heartbeat", detail={"state": doc["state"]})
        return True


__all__ = ["WORKER_TOTALS", "Heartbeat", "enabled_kinds"]
