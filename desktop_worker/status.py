"""The engine's shared state, behind one lock, and the listeners that hear about it.

Every collaborator of :class:`desktop_worker.engine.Engine` (claim loop, runs, delivery,
heartbeat, lifecycle) reads and sets the same few facts: paused, draining, the error
sources, offline, stopped, the runs in progress and the totals. :class:`EngineStatus`
holds them, derives the engine's state from them (:func:`derive_state`), and tells the
listeners and the heartbeat when it changes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from desktop_worker.engine_api import (
    EngineEvent,
    EngineState,
    Listener,
    derive_state,
    worth_telling,
)
from desktop_worker.log import log_event

if TYPE_CHECKING:
    from desktop_worker.runs import Run

LOG_WARNING = logging.WARNING

# What the worker doc calls each engine state (every other state is "running").
DOC_STATE = {
    EngineState.STOPPED: "stopped",
    EngineState.PAUSED: "paused",
    EngineState.ERROR: "paused",
    EngineState.DRAINING: "draining",
}


def doc_state(state: EngineState) -> str:
    return DOC_STATE.get(state, "running")


def _nothing() -> None:
    pass


class EngineStatus:
    """The facts the engine's threads share, and the state derived from them.

    ``lock`` guards every field. ``stopping`` is set while the engine stops; ``wake`` wakes
    the claim loop (something may be claimable). ``on_doc_state_change`` is called, under
    the lock, when the state the worker doc shows changes; ``on_change`` after any
    ``state_changed`` event (the heartbeat hooks both).
    """

    def __init__(self, name: str, slots: int) -> None:
        self.name = name
        self.slots = slots
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.listeners: list[Listener] = []
        self.runs: dict[str, Run] = {}
        self.totals = {"done": 0, "failed": 0, "lost": 0}
        self.paused: str | None = None
        self.draining = False
        self.errors: dict[str, str] = {}
        self.offline: str | None = None
        self.is_stopped = True
        self.state = EngineState.STOPPED
        self.why = ""
        self.started_at: datetime | None = None  # hub time of the first accepted session
        self.on_doc_state_change: Callable[[], None] = _nothing
        self.on_change: Callable[[], None] = _nothing

    # ------------------------------------------------------------ listeners

    def add_listener(self, listener: Listener) -> None:
        with self.lock:
            self.listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with self.lock:
            if listener in self.listeners:
                self.listeners.remove(listener)

    def emit(self, name: str, **fields: Any) -> None:
        event = EngineEvent(name, **fields)
        with self.lock:
            listeners = list(self.listeners)
        for listener in listeners:
            try:
                listener(event)
            except Exception as exc:  # a broken observer must not break the engine
                log_event("listener_error", LOG_WARNING, listener=repr(listener), error=str(exc))

    # ------------------------------------------------------------ state

    def current(self) -> list[str]:
        with self.lock:
            return sorted(self.runs)

    def refresh(self) -> None:
        with self.lock:
            state, why = derive_state(
                stopped=self.is_stopped,
                errors=self.errors,
                draining=self.draining,
                paused=self.paused,
                offline=self.offline,
                running=len(self.runs),
            )
            changed = worth_telling((self.state, self.why), (state, why))
            # Only what the hub acts on makes the worker doc worth a write before its
            # keep-alive: running, paused, draining, stopped. Idle <-> working and the
            # totals are not (the hub sees leases on its feed): a write per run cost every
            # fleet one request per occurrence.
            if doc_state(state) != doc_state(self.state):
                self.on_doc_state_change()
            self.state, self.why = state, why
        if changed:
            log_event("state_changed", worker=self.name, state=state.value, why=why or None)
            self.emit("state_changed", state=state.value, why=why)
            self.on_change()

    def set_error(self, source: str, message: str | None) -> None:
        with self.lock:
            if message is None:
                if self.errors.pop(source, None) is None:
                    return
            else:
                if self.errors.get(source) == message:
                    return
                self.errors[source] = message
        if message:
            log_event("worker_error", LOG_WARNING, worker=self.name, source=source, why=message)
        self.refresh()

    def set_offline(self, error: Exception | None) -> None:
        with self.lock:
            if error is None:
                if self.offline is None:
                    return
                self.offline = None
            else:
                if self.offline is not None:
                    return
                self.offline = f"no hub server answers ({error})"
        self.refresh()

    def may_claim(self) -> bool:
        with self.lock:
            return (
                not self.stopping.is_set()
                and not self.draining
                and not self.paused
                and not self.errors
                and len(self.runs) < self.slots
            )

    def count(self, what: str) -> None:
        with self.lock:
            self.totals[what] += 1


__all__ = ["DOC_STATE", "EngineStatus", "doc_state"]
