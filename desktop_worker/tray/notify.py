"""Desktop notifications (``QSystemTrayIcon.showMessage``), sent sparingly:

- **hub connection lost**: once per outage. An outage ends only after the worker has been
  connected again for ``OUTAGE_RESET_S``; a hub that flaps every 30 s is one outage;
- **a job was buried** (its last attempt failed on this worker);
- **the worker's allow-list changed** (allowed kinds or scripts, from the settings or an
  edit of the config file);
- **an error state** (wrong password, spool unwritable), once per distinct reason;
- the first time the window is closed: the app keeps running in the tray.

Every message is also kept in ``sent`` (tests and the event log read it).
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QObject, Signal

from desktop_worker.tray.clock import Clock

OUTAGE_RESET_S = 120.0
Show = Callable[[str, str, bool], None]


class Notifier(QObject):
    notified = Signal(str, str)

    def __init__(self, clock: Clock, show: Show | None = None, parent: QObject | None = None):
        super().__init__(parent)
        self.clock = clock
        self.show = show
        self.sent: list[tuple[str, str]] = []
        self._in_outage = False
        self._online_since: float | None = None
        self._last_error = ""

    def notify(self, title: str, text: str, warning: bool = False) -> None:
        self.sent.append((title, text))
        if self.show is not None:
            self.show(title, text, warning)
        self.notified.emit(title, text)

    # ------------------------------------------------------------ rules

    def on_state(self, state: str, why: str) -> None:
        now = self.clock.timestamp()
        if state == "offline":
            if (
                self._in_outage
                and self._online_since is not None
                and now - self._online_since >= OUTAGE_RESET_S
            ):
                self._in_outage = False  # it had been back long enough: a new outage
            self._online_since = None
            if not self._in_outage:
                self._in_outage = True
                self.notify("Couchfarm: hub connection lost", why or "no hub server answers", True)
        elif state in ("idle", "working") and self._in_outage and self._online_since is None:
            self._online_since = now
        if state == "error":
            if why != self._last_error:
                self._last_error = why
                self.notify("Couchfarm cannot work", why or "unknown error", True)
        elif state in ("idle", "working"):
            self._last_error = ""

    def on_run_finished(self, occ_id: str, kind: str, client: str, status: str) -> None:
        if status == "buried":
            self.notify(
                "Couchfarm: a job was buried",
                f"{kind} for {client} failed its last attempt and was set aside ({occ_id}).",
                True,
            )

    def on_allow_list(
        self,
        old: tuple[tuple[str, ...] | None, tuple[str, ...]],
        new: tuple[tuple[str, ...] | None, tuple[str, ...]],
    ) -> None:
        if old == new:
            return
        kinds, scripts = new
        kinds_text = "all built-in kinds" if kinds is None else (", ".join(kinds) or "none")
        scripts_text = ", ".join(scripts) or "none"
        self.notify(
            "Couchfarm: allowed work updated",
            f"Kinds: {kinds_text}. Scripts: {scripts_text}.",
        )
