"""EngineBridge: the one place where the tray touches the engine.

- **Events in.** The bridge subscribes a listener to the engine. The engine calls it on its
  own threads; the listener only emits ``_incoming``, which is connected with
  ``Qt.QueuedConnection``, so :meth:`_dispatch` always runs on the GUI thread and re-emits
  the event as a typed Qt signal (``stateChanged``, ``runStarted``...). Widgets never see
  an engine thread.
- **Commands out.** The slots (``pause``, ``resume``, ``drain``, ``cancel``, ``stop``,
  ``start``, ``restart``) run the engine call on one worker thread (a single-thread
  executor keeps them in order); each ends with ``commandFinished(name, error)``. The GUI
  thread never blocks on the engine or the network.
- **Replaceable engine.** Anything with the Engine interface
  (:class:`desktop_worker.engine_api.EngineLike`) works: the real
  :class:`desktop_worker.engine.Engine` or :class:`desktop_worker.tray.fake.FakeEngine`.

The engine hooks the tray needs beyond start/stop/pause/resume/drain are
``cancel(occ_id, reason)`` and ``run_info(occ_id)`` (both read or set memory only).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal, Slot

from desktop_worker.engine_api import EngineEvent, EngineLike
from desktop_worker.log import log_event

EngineFactory = Callable[[Any], EngineLike]


class EngineBridge(QObject):
    eventReceived = Signal(object)  # every EngineEvent, after the typed signal
    stateChanged = Signal(str, str)  # state, why
    runStarted = Signal(str, str, str)  # occ_id, kind, client
    runProgress = Signal(str, object)  # occ_id, (num, den, msg)
    runFinished = Signal(str, str, str, str)  # occ_id, kind, client, status
    resultUploaded = Signal(str, str)  # occ_id, status
    resultDropped = Signal(str, str)  # occ_id, why
    resultConfirmed = Signal(str)  # occ_id
    spoolChanged = Signal(object)  # {"pending": n, "uploaded": n}
    heartbeat = Signal(object)  # {"state": ...}
    commandFinished = Signal(str, object)  # command, error text or None
    engineChanged = Signal()

    _incoming = Signal(object)
    _engineSwapped = Signal(object)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._engine: EngineLike | None = None
        self._pause_reason: str | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tray-engine")
        self._last: Future[Any] | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._incoming.connect(self._dispatch, Qt.ConnectionType.QueuedConnection)
        self._engineSwapped.connect(self._on_swapped, Qt.ConnectionType.QueuedConnection)

    # ------------------------------------------------------------ engine

    @property
    def engine(self) -> EngineLike | None:
        return self._engine

    @property
    def pause_reason(self) -> str | None:
        """The pause the tray wants (applied to every engine it starts)."""
        return self._pause_reason

    def _listen(self, event: EngineEvent) -> None:  # engine threads
        try:
            self._incoming.emit(event)
        except RuntimeError:  # the bridge is gone (app quitting)
            pass

    def _attach(self, engine: EngineLike | None) -> None:  # worker thread
        old = self._engine
        if old is not None and old is not engine:
            old.remove_listener(self._listen)
        self._engine = engine
        if engine is not None:
            engine.add_listener(self._listen)
        self._engineSwapped.emit(engine)

    @Slot(object)
    def _on_swapped(self, _engine: EngineLike | None) -> None:
        self.engineChanged.emit()

    def attach(self, engine: EngineLike | None) -> None:
        """Use an engine that already exists (tests); events start flowing now."""
        self._attach(engine)

    # ------------------------------------------------------------ events

    @Slot(object)
    def _dispatch(self, event: EngineEvent) -> None:  # GUI thread
        name = event.name
        if name == "state_changed":
            self.stateChanged.emit(event.state or "", event.why or "")
        elif name == "run_started":
            self.runStarted.emit(event.occ_id or "", event.kind or "", event.client or "")
        elif name == "run_progress":
            self.runProgress.emit(event.occ_id or "", event.progress)
        elif name == "run_finished":
            self.runFinished.emit(
                event.occ_id or "", event.kind or "", event.client or "", event.status or ""
            )
        elif name == "result_uploaded":
            self.resultUploaded.emit(event.occ_id or "", event.status or "")
        elif name == "result_dropped":
            self.resultDropped.emit(event.occ_id or "", event.why or "")
        elif name == "result_confirmed":
            self.resultConfirmed.emit(event.occ_id or "")
        elif name == "spool_changed":
            self.spoolChanged.emit(dict(event.detail or {}))
        elif name == "heartbeat":
            self.heartbeat.emit(dict(event.detail or {}))
        self.eventReceived.emit(event)

    def inject(self, event: EngineEvent) -> None:
        """Deliver an event as if the engine had sent it (the bridge's own notices)."""
        self._listen(event)

    # ------------------------------------------------------------ commands (worker thread)

    def _submit(self, name: str, call: Callable[[], Any]) -> Future[Any] | None:
        if self._closed:
            return None

        def job() -> Any:
            error: str | None = None
            result: Any = None
            try:
                result = call()
            except Exception as exc:  # reported, never raised into Qt
                error = f"{type(exc).__name__}: {exc}"
                log_event("tray_command_failed", 30, command=name, error=error)
            try:
                self.commandFinished.emit(name, error)
            except RuntimeError:
                pass
            return result

        with self._lock:
            future = self._executor.submit(job)
            self._last = future
        return future

    def _with_engine(self, name: str, call: Callable[[EngineLike], Any]) -> Future[Any] | None:
        def run() -> Any:
            engine = self._engine
            if engine is None:
                return None
            return call(engine)

        return self._submit(name, run)

    def start(self, factory: EngineFactory, config: Any) -> Future[Any] | None:
        """Build an engine with ``factory(config)`` and start it, paused if the tray is."""

        def run() -> EngineLike:
            try:
                engine = factory(config)
            except Exception as exc:
                self._engine = None
                self.inject(
                    EngineEvent(
                        "state_changed", state="error", why=f"the worker cannot start: {exc}"
                    )
                )
                raise
            self._attach(engine)
            if self._pause_reason:
                engine.pause(self._pause_reason)
            engine.start()
            return engine

        return self._submit("start", run)

    def restart(self, factory: EngineFactory, config: Any, *, release: bool = False) -> None:
        """New settings: drain (or stop, handing runs back) the engine, then start anew.

        Waiting for the runs to finish happens on a thread of its own, so pause, resume
        and cancel still reach the old engine meanwhile.
        """

        def run() -> None:
            old = self._engine
            if old is None:
                self.start(factory, config)
                return
            if release:
                old.stop()
                self.start(factory, config)
                return
            old.drain()

            def then_start() -> None:
                old.wait()
                if not self._closed:
                    self.start(factory, config)

            threading.Thread(target=then_start, name="tray-restart", daemon=True).start()

        self._submit("stop" if release else "drain", run)

    @Slot(str)
    def pause(self, reason: str) -> Future[Any] | None:
        self._pause_reason = reason
        return self._with_engine("pause", lambda engine: engine.pause(reason))

    @Slot()
    def resume(self) -> Future[Any] | None:
        self._pause_reason = None
        return self._with_engine("resume", lambda engine: engine.resume())

    @Slot()
    def drain(self) -> Future[Any] | None:
        return self._with_engine("drain", lambda engine: engine.drain())

    @Slot()
    def stop(self) -> Future[Any] | None:
        return self._with_engine("stop", lambda engine: engine.stop())

    @Slot(str)
    def cancel(self, occ_id: str) -> Future[Any] | None:
        return self._with_engine("cancel", lambda engine: cancel_run(engine, occ_id))

    def wait_idle(self, timeout: float | None = 10.0) -> bool:
        """Block until every command sent so far has run (tests, quitting)."""
        with self._lock:
            last = self._last
        if last is None:
            return True
        try:
            last.result(timeout)
        except Exception:
            return last.done()
        return True

    def close(self) -> None:
        """Stop listening and let the worker thread end (the engine is left as it is)."""
        self._closed = True
        engine = self._engine
        if engine is not None:
            engine.remove_listener(self._listen)
        self._executor.shutdown(wait=False, cancel_futures=False)

    # ------------------------------------------------------------ reading (no I/O)

    def snapshot(self) -> dict[str, Any]:
        engine = self._engine
        if engine is None:
            return {"state": "stopped", "why": "", "current": [], "totals": {}}
        return {
            "state": str(getattr(engine.state, "value", engine.state)),
            "why": engine.why,
            "current": list(engine.current),
            "totals": dict(getattr(engine, "totals", {}) or {}),
        }

    def run_info(self, occ_id: str) -> dict[str, Any] | None:
        engine = self._engine
        if engine is None:
            return None
        return run_info(engine, occ_id)


# ---------------------------------------------------------------- engine hooks


def hub_now(engine: EngineLike) -> datetime:
    """The engine's hub time (in memory: the client's clock offset), else UTC now."""
    fake = getattr(engine, "_hub_now", None)
    if callable(fake):
        return fake()
    couch = getattr(engine, "couch", None)
    if couch is not None:
        try:
            return couch.now()
        except Exception:
            pass
    return datetime.now(UTC)


def cancel_run(engine: EngineLike, occ_id: str, reason: str = "cancelled by the user") -> bool:
    """Cancel one run; the engine releases its lease, so it goes back to the hub."""
    hook = getattr(engine, "cancel", None)
    if not callable(hook):
        log_event("tray_cancel_unsupported", 30, occ=occ_id)
        return False
    return bool(hook(occ_id, reason))


def run_info(engine: EngineLike, occ_id: str) -> dict[str, Any] | None:
    """kind, client, started_at, expires_at, lease_left_s, elapsed_s, progress of one run."""
    hook = getattr(engine, "run_info", None)
    if not callable(hook):
        return None
    info = hook(occ_id)
    if info is None:
        return None
    info = dict(info)
    now = hub_now(engine)
    if info.get("expires_at") is not None and info.get("lease_left_s") is None:
        info["lease_left_s"] = (info["expires_at"] - now).total_seconds()
    if info.get("started_at") is not None and info.get("elapsed_s") is None:
        info["elapsed_s"] = max(0.0, (now - info["started_at"]).total_seconds())
    return info
