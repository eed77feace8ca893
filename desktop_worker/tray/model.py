"""What the tray knows about the worker, kept on the GUI thread from the bridge's signals.

:class:`WorkerModel` holds the engine state and why, the runs in progress, the spool
counts and the event log, writes the local run history, and emits ``changed`` (coalesced
to at most a few per second) for the tray icon, the menu and the window to redraw.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal, Slot

from desktop_worker.tray.bridge import EngineBridge
from desktop_worker.tray.clock import Clock
from desktop_worker.tray.history import History
from desktop_worker.tray.icons import LABELS, TrayState

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_LIMIT = 2000
REPEAT_S = 60.0


@dataclass
class RunView:
    occ_id: str
    kind: str
    client: str
    started: float  # clock timestamp when the tray heard of it
    progress: tuple[float, float, str] | None = None

    @property
    def fraction(self) -> float | None:
        if not self.progress:
            return None
        num, den, _msg = self.progress
        if den <= 0:
            return None
        return max(0.0, min(1.0, num / den))

    @property
    def percent(self) -> int | None:
        fraction = self.fraction
        return None if fraction is None else round(fraction * 100)

    def elapsed(self, now: float) -> float:
        return max(0.0, now - self.started)

    def remaining(self, now: float, elapsed: float | None = None) -> float | None:
        """Linear estimate from progress so far; None until there is some."""
        fraction = self.fraction
        if not fraction:
            return None
        if elapsed is None:
            elapsed = self.elapsed(now)
        return max(0.0, elapsed / fraction - elapsed)

    def describe(self) -> str:
        percent = self.percent
        done = f"{percent} %" if percent is not None else "starting"
        return f"{self.kind} for {self.client}: {done}"


@dataclass(frozen=True)
class LogEntry:
    at: float
    level: str
    text: str

    def line(self) -> str:
        stamp = datetime.fromtimestamp(self.at).strftime("%Y-%m-%d %H:%M:%S")
        return f"{stamp} {self.level:<7} {self.text}"


def format_duration(seconds: float | None) -> str:
    """A duration for people: "350 ms", "4.2 s", "12 s", "1 min 05 s", "2 h 03 min". Most
    demo and check runs take under a second, which whole seconds showed as "0 s"."""
    if seconds is None:
        return "—"
    if seconds <= 0:
        return "0 s"
    if seconds < 0.9995:
        return f"{max(1, round(seconds * 1000))} ms"
    if seconds < 9.95:
        return f"{seconds:.1f} s"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


FAILED_STATUSES = {"failed", "retry", "buried", "lost", "rejected", "error"}


INSECURE_TLS_WARNING = (
    "Warning: TLS certificates are NOT verified (--insecure); anyone on the network "
    "could pose as the hub"
)


class WorkerModel(QObject):
    changed = Signal()
    logAdded = Signal(object)  # LogEntry

    _logRecord = Signal(str, str)  # from any thread, queued

    def __init__(
        self,
        bridge: EngineBridge,
        clock: Clock,
        history: History | None,
        *,
        snoozed: Any = None,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.bridge = bridge
        self.clock = clock
        self.history = history
        self._snoozed = snoozed or (lambda: False)
        self.engine_state = "stopped"
        self.why = ""
        self.runs: dict[str, RunView] = {}
        self.spool: dict[str, int] = {}
        self.log: deque[LogEntry] = deque(maxlen=LOG_LIMIT)
        self.finished_count = 0
        # Set when the worker was started with TLS verification turned off (--insecure).
        self.insecure_tls = False
        self._dirty = QTimer(self)
        self._dirty.setSingleShot(True)
        self._dirty.setInterval(200)
        self._dirty.timeout.connect(self.changed)
        self._logRecord.connect(self._on_log_record)
        bridge.stateChanged.connect(self._on_state)
        bridge.runStarted.connect(self._on_started)
        bridge.runProgress.connect(self._on_progress)
        bridge.runFinished.connect(self._on_finished)
        bridge.resultUploaded.connect(self._on_uploaded)
        bridge.resultDropped.connect(self._on_dropped)
        bridge.resultConfirmed.connect(self._on_confirmed)
        bridge.spoolChanged.connect(self._on_spool)
        bridge.commandFinished.connect(self._on_command)

    # ------------------------------------------------------------ derived

    @property
    def tray_state(self) -> TrayState:
        state = self.engine_state
        if state in ("working", "draining"):
            return TrayState.WORKING
        if state == "idle":
            return TrayState.IDLE
        if state == "paused":
            return TrayState.SNOOZED if self._snoozed() else TrayState.PAUSED
        if state == "error":
            return TrayState.ERROR
        return TrayState.OFFLINE  # offline, stopped

    def status_line(self) -> str:
        state, why = self.engine_state, self.why
        label = LABELS[self.tray_state]
        if state == "working":
            count = len(self.runs)
            return f"Working: {count} run{'s' if count != 1 else ''} in progress"
        if state == "idle":
            return "Idle: waiting for work"
        if state == "draining":
            return f"Finishing {len(self.runs)} run(s), then stopping"
        if state == "stopped":
            return "Stopped: the worker is not running"
        if state == "paused":
            return f"{label}: {why or 'paused'}"
        return f"{label}: {why or state}"

    def tooltip(self, name: str = "") -> str:
        title = f"Couchfarm worker {name}".strip()
        lines = [title, self.status_line()]
        if self.insecure_tls:
            lines.append(INSECURE_TLS_WARNING)
        for run in sorted(self.runs.values(), key=lambda r: r.started):
            lines.append(f"• {run.describe()}")
        pending = int(self.spool.get("pending") or 0)
        if pending:
            lines.append(f"{pending} result(s) waiting to reach the hub")
        if self.history is not None and self.history.problem:
            lines.append(self.history.problem)
        return "\n".join(lines)

    # ------------------------------------------------------------ log

    def add_log(self, level: str, text: str) -> LogEntry:
        now = self.clock.timestamp()
        if self.log:
            last = self.log[-1]
            if last.text == text and last.level == level and now - last.at < REPEAT_S:
                return last  # the same line again (a hub that stays down): say it once
        entry = LogEntry(now, level, text)
        self.log.append(entry)
        self.logAdded.emit(entry)
        return entry

    def log_from_any_thread(self, level: str, text: str) -> None:
        self._logRecord.emit(level, text)

    @Slot(str, str)
    def _on_log_record(self, level: str, text: str) -> None:
        self.add_log(level, text)

    def touch(self) -> None:
        if not self._dirty.isActive():
            self._dirty.start()

    # ------------------------------------------------------------ events

    @Slot(str, str)
    def _on_state(self, state: str, why: str) -> None:
        self.engine_state, self.why = state, why
        level = {"error": "ERROR", "offline": "WARNING"}.get(state, "INFO")
        self.add_log(level, f"state: {state}" + (f" ({why})" if why else ""))
        self.changed.emit()  # state changes redraw at once

    @Slot(str, str, str)
    def _on_started(self, occ_id: str, kind: str, client: str) -> None:
        now = self.clock.timestamp()
        self.runs[occ_id] = RunView(occ_id, kind, client, now)
        if self.history is not None:
            self.history.started(occ_id, kind, client, now)
        self.add_log("INFO", f"started {kind} for {client} ({occ_id})")
        self.changed.emit()

    @Slot(str, object)
    def _on_progress(self, occ_id: str, progress: Any) -> None:
        run = self.runs.get(occ_id)
        if run is not None and progress:
            run.progress = tuple(progress)
            self.touch()

    @Slot(str, str, str, str)
    def _on_finished(self, occ_id: str, kind: str, client: str, status: str) -> None:
        run = self.runs.pop(occ_id, None)
        kind = kind or (run.kind if run else "")
        client = client or (run.client if run else "")
        if self.history is not None:
            self.history.finished(occ_id, kind, client, status, self.clock.timestamp())
        self.finished_count += 1
        level = "INFO"
        if status in FAILED_STATUSES:
            level = "ERROR" if status == "buried" else "WARNING"
        self.add_log(level, f"{status}: {kind} for {client} ({occ_id})")
        self.changed.emit()

    @Slot(str, str)
    def _on_uploaded(self, occ_id: str, status: str) -> None:
        if self.history is not None:
            self.history.uploaded(occ_id, status)
        self.add_log("INFO", f"a spooled result reached the hub: {occ_id} ({status})")
        self.touch()

    @Slot(str, str)
    def _on_dropped(self, occ_id: str, why: str) -> None:
        self.add_log("WARNING", f"result for {occ_id} dropped: {why}")

    @Slot(str)
    def _on_confirmed(self, occ_id: str) -> None:
        self.add_log("DEBUG", f"result for {occ_id} confirmed on the standby")

    @Slot(object)
    def _on_spool(self, counts: Any) -> None:
        self.spool = dict(counts or {})
        self.touch()

    @Slot(str, object)
    def _on_command(self, command: str, error: Any) -> None:
        if error:
            self.add_log("ERROR", f"{command} failed: {error}")


class QtLogHandler(logging.Handler):
    """Worker log lines at WARNING and above go to the event log (from any thread)."""

    def __init__(self, model: WorkerModel) -> None:
        super().__init__(logging.WARNING)
        self.model = model

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = "ERROR" if record.levelno >= logging.ERROR else "WARNING"
            self.model.log_from_any_thread(level, record.getMessage())
        except RuntimeError:
            pass  # the model is gone
