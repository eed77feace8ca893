"""A stand-in for :class:`desktop_worker.engine.Engine` with the same interface and events.

Tests (and the screenshot script) drive it by hand: ``begin_run``, ``progress``,
``finish_run``, ``set_offline``, ``set_error``. State follows the real engine's precedence
(:func:`desktop_worker.engine_api.derive_state`, the same function): stopped > error >
draining > paused > offline > working > idle. Events go to listeners on the calling
thread, as the real engine calls them on its own threads.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from desktop_worker.config import WorkerConfig
from desktop_worker.engine_api import (
    EngineEvent,
    EngineState,
    Listener,
    derive_state,
    worth_telling,
)


@dataclass
class FakeRun:
    occ_id: str
    kind: str
    client: str
    ttr: float
    started_at: datetime
    expires_at: datetime
    progress: tuple[float, float, str] | None = None


@dataclass
class FakeEngine:
    config: WorkerConfig = field(default_factory=lambda: WorkerConfig(name="fake"))
    now: Any = None  # callable returning an aware datetime (hub time); default: real UTC

    def __post_init__(self) -> None:
        self.name = self.config.name
        self.calls: list[tuple[str, Any]] = []
        self.totals = {"done": 0, "failed": 0, "lost": 0}
        self._listeners: list[Listener] = []
        self._lock = threading.RLock()
        self._runs: dict[str, FakeRun] = {}
        self._paused: str | None = None
        self._draining = False
        self._offline: str | None = None
        self._errors: dict[str, str] = {}
        self._stopped = True
        self._stopped_event = threading.Event()
        self._stopped_event.set()
        self._state = EngineState.STOPPED
        self._why = ""

    # ------------------------------------------------------------ the Engine interface

    @property
    def state(self) -> EngineState:
        return self._state

    @property
    def why(self) -> str:
        return self._why

    @property
    def current(self) -> list[str]:
        with self._lock:
            return sorted(self._runs)

    def add_listener(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def start(self) -> FakeEngine:
        self.calls.append(("start", None))
        self._stopped = False
        self._draining = False
        self._stopped_event.clear()
        self._refresh()
        return self

    def pause(self, reason: str = "paused by the user") -> None:
        self.calls.append(("pause", reason))
        self._paused = reason or "paused"
        self._refresh()

    def resume(self) -> None:
        self.calls.append(("resume", None))
        self._paused = None
        self._refresh()

    def drain(self) -> None:
        self.calls.append(("drain", None))
        self._draining = True
        self._refresh()
        self._maybe_drained()

    def stop(self, timeout: float = 15.0) -> None:
        self.calls.append(("stop", None))
        for occ_id in self.current:
            self.finish_run(occ_id, "released")
        self._stop_now()

    def wait(self, timeout: float | None = None) -> bool:
        return self._stopped_event.wait(timeout)

    def cancel(self, occ_id: str, reason: str = "cancelled by the user") -> bool:
        """Proposed engine hook: stop one run and hand its lease back."""
        self.calls.append(("cancel", occ_id))
        if occ_id not in self._runs:
            return False
        self.finish_run(occ_id, "released")
        return True

    def run_info(self, occ_id: str) -> dict[str, Any] | None:
        """Proposed engine hook: what the window shows about one run."""
        with self._lock:
            run = self._runs.get(occ_id)
            if run is None:
                return None
            return {
                "occ_id": run.occ_id,
                "kind": run.kind,
                "client": run.client,
                "started_at": run.started_at,
                "expires_at": run.expires_at,
                "progress": run.progress,
            }

    # ------------------------------------------------------------ driving it

    def _hub_now(self) -> datetime:
        return self.now() if self.now is not None else datetime.now(UTC)

    def emit(self, name: str, **fields: Any) -> None:
        event = EngineEvent(name, **fields)
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener(event)

    def begin_run(
        self, occ_id: str, kind: str = "demo.sleep", client: str = "acme", ttr: float = 60.0
    ) -> None:
        now = self._hub_now()
        with self._lock:
            self._runs[occ_id] = FakeRun(
                occ_id, kind, client, ttr, now, now + timedelta(seconds=ttr)
            )
        self._refresh()
        self.emit("run_started", occ_id=occ_id, kind=kind, client=client)

    def progress(self, occ_id: str, num: float, den: float, msg: str = "") -> None:
        with self._lock:
            run = self._runs.get(occ_id)
            if run is not None:
                run.progress = (float(num), float(den), msg)
                run.expires_at = self._hub_now() + timedelta(seconds=run.ttr)
        self.emit("run_progress", occ_id=occ_id, progress=(float(num), float(den), msg))

    def finish_run(self, occ_id: str, status: str = "done") -> None:
        with self._lock:
            run = self._runs.pop(occ_id, None)
        kind = run.kind if run else None
        client = run.client if run else None
        if status == "done":
            self.totals["done"] += 1
        elif status in ("failed", "retry", "buried"):
            self.totals["failed"] += 1
        elif status == "lost":
            self.totals["lost"] += 1
        self.emit("run_finished", occ_id=occ_id, kind=kind, client=client, status=status)
        self._refresh()
        self._maybe_drained()

    def set_offline(self, why: str | None) -> None:
        self._offline = why
        self._refresh()

    def set_error(self, source: str, why: str | None) -> None:
        if why is None:
            self._errors.pop(source, None)
        else:
            self._errors[source] = why
        self._refresh()

    def _maybe_drained(self) -> None:
        if self._draining and not self._runs and not self._stopped:
            self._stop_now()

    def _stop_now(self) -> None:
        self._stopped = True
        self._refresh()
        self._stopped_event.set()

    def _refresh(self) -> None:
        with self._lock:
            state, why = derive_state(
                stopped=self._stopped,
                errors=self._errors,
                draining=self._draining,
                paused=self._paused,
                offline=None if not self._offline else f"no hub server answers ({self._offline})",
                running=len(self._runs),
            )
            changed = worth_telling((self._state, self._why), (state, why))
            self._state, self._why = state, why
        if changed:
            self.emit("state_changed", state=state.value, why=why)
