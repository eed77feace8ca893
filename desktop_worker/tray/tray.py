"""The tray icon, its tooltip and its menu (rebuilt every time it opens).

Menu, top to bottom:

- the status line, with the reason when paused, offline or in error;
- the runs in progress, each a submenu with "Cancel (hand it back to the hub)";
- Pause for 1 hour · Pause until tomorrow · Pause until I resume · Resume;
- Open Couchfarm · Settings…;
- Quit. With runs in progress there are two, and each says what happens to them:
  "Quit when the N running jobs finish" (drain: results are delivered) and
  "Quit now, handing N running jobs back to the hub" (their leases are released).

The icon, the tooltip and the menu show one reading of the model (``shown_state``), taken
whenever the model changes and whenever the menu opens; a menu left open follows the
model too. It once said "Working: 1 run in progress" beside the idle icon.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QObject, Slot
from PySide6.QtGui import QAction, QIcon
from PySide6.QtWidgets import QMenu, QSystemTrayIcon

from desktop_worker.tray.icons import TrayState, icon, progress_ring
from desktop_worker.tray.model import WorkerModel
from desktop_worker.tray.pausing import PauseController, PauseMode

STATUS_MAX = 90


def elide(text: str, limit: int = STATUS_MAX) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class TrayController(QObject):
    def __init__(
        self,
        model: WorkerModel,
        pauses: PauseController,
        app: Any,
        *,
        worker_name: str = "",
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.model = model
        self.pauses = pauses
        self.app = app
        self.worker_name = worker_name
        self.icon = QSystemTrayIcon(self)
        self.menu = QMenu()
        self.menu.setObjectName("trayMenu")
        self.menu.aboutToShow.connect(self.rebuild_menu)
        self.icon.setContextMenu(self.menu)
        self.icon.activated.connect(self._on_activated)
        self.actions: dict[str, QAction] = {}
        self._submenus: list[QMenu] = []
        self._run_menus: dict[str, QMenu] = {}
        # What the open menu was built from: a change of it rebuilds the menu.
        self._menu_shape: tuple[Any, ...] = ()
        self.shown_state: TrayState = model.tray_state
        self.menu_builds = 0
        model.changed.connect(self.refresh)
        pauses.changed.connect(self.refresh)
        self.refresh()
        self.rebuild_menu()

    # ------------------------------------------------------------ icon and tooltip

    @property
    def state(self) -> TrayState:
        return self.shown_state

    @Slot()
    def refresh(self) -> None:
        """The model changed: icon and tooltip, and the menu if it is open."""
        self._show_state()
        if self.menu.isVisible():
            if self._shape() != self._menu_shape:
                self.rebuild_menu()
            else:
                self._update_open_menu()

    def _show_state(self) -> None:
        self.shown_state = self.model.tray_state
        self.icon.setIcon(icon(self.shown_state))
        self.icon.setToolTip(self.tooltip())

    def _shape(self) -> tuple[Any, ...]:
        pauses = self.pauses
        return (
            tuple(sorted(self.model.runs)),
            pauses.user.mode if pauses.user is not None else None,
            tuple(pauses.conditions.values()),
        )

    def _update_open_menu(self) -> None:
        """Texts and icons in place, so that an open submenu (Cancel) stays open."""
        status = self.actions.get("status")
        if status is not None:
            status.setText(elide(self.model.status_line()))
            status.setIcon(icon(self.shown_state))
            status.setToolTip(self.model.status_line())
        for occ_id, submenu in self._run_menus.items():
            run = self.model.runs.get(occ_id)
            if run is not None:
                submenu.setTitle(elide(run.describe(), 60))
                if run.fraction is not None:
                    submenu.setIcon(QIcon(progress_ring(run.fraction)))

    def tooltip(self) -> str:
        return self.model.tooltip(self.worker_name)

    def show(self) -> None:
        self.icon.show()

    def show_message(self, title: str, text: str, warning: bool = False) -> None:
        if not (QSystemTrayIcon.isSystemTrayAvailable() and self.icon.isVisible()):
            return
        icons = QSystemTrayIcon.MessageIcon
        kind = icons.Warning if warning else icons.Information
        self.icon.showMessage(title, text, kind, 10_000)

    @Slot(QSystemTrayIcon.ActivationReason)
    def _on_activated(self, reason: QSystemTrayIcon.ActivationReason) -> None:
        if reason in (
            QSystemTrayIcon.ActivationReason.Trigger,
            QSystemTrayIcon.ActivationReason.DoubleClick,
        ):
            self.app.open_window()

    # ------------------------------------------------------------ menu

    def _add(self, key: str, text: str, slot: Any = None, *, enabled: bool = True) -> QAction:
        action = QAction(text, self.menu)
        action.setEnabled(enabled)
        if slot is not None:
            action.triggered.connect(slot)
        self.menu.addAction(action)
        self.actions[key] = action
        return action

    @Slot()
    def rebuild_menu(self) -> None:
        """Called on every aboutToShow: the menu always shows the state of this moment."""
        self.menu_builds += 1
        self.menu.clear()
        for submenu in self._submenus:
            submenu.deleteLater()
        self._submenus = []
        self._run_menus = {}
        self.actions = {}
        model, pauses = self.model, self.pauses
        self._show_state()  # the icon shows what the menu is about to say
        self._menu_shape = self._shape()

        status = self._add("status", elide(model.status_line()), enabled=False)
        status.setIcon(icon(self.shown_state))
        status.setToolTip(model.status_line())
        self.menu.addSeparator()

        runs = sorted(model.runs.values(), key=lambda r: r.started)
        if runs:
            for run in runs:
                submenu = QMenu(elide(run.describe(), 60), self.menu)
                if run.fraction is not None:
                    submenu.setIcon(QIcon(progress_ring(run.fraction)))
                cancel = QAction("Cancel (hand it back to the hub)", submenu)
                cancel.triggered.connect(lambda _c=False, o=run.occ_id: self.app.cancel_run(o))
                submenu.addAction(cancel)
                self.menu.addMenu(submenu)
                self._submenus.append(submenu)
                self._run_menus[run.occ_id] = submenu
                self.actions[f"run:{run.occ_id}"] = submenu.menuAction()
                self.actions[f"cancel:{run.occ_id}"] = cancel
        else:
            self._add("no_runs", "No runs in progress", enabled=False)
        self.menu.addSeparator()

        mode = pauses.user.mode if pauses.user is not None else None
        for key, text, slot, pause_mode in (
            ("pause_hour", "Pause for 1 hour", pauses.pause_for_hour, PauseMode.HOUR),
            (
                "pause_tomorrow",
                "Pause until tomorrow",
                pauses.pause_until_tomorrow,
                PauseMode.TOMORROW,
            ),
            (
                "pause_forever",
                "Pause until I resume",
                pauses.pause_until_resumed,
                PauseMode.FOREVER,
            ),
        ):
            action = self._add(key, text, slot)
            action.setCheckable(True)
            action.setChecked(mode is pause_mode)
        resume_text = "Resume"
        if pauses.user is not None and pauses.conditions:
            resume_text = "Resume (still waiting: " + "; ".join(pauses.conditions.values()) + ")"
        self._add("resume", elide(resume_text), pauses.resume, enabled=pauses.user is not None)
        self.menu.addSeparator()

        self._add("open", "Open Couchfarm", self.app.open_window)
        self._add("settings", "Settings…", self.app.open_settings)
        self.menu.addSeparator()

        count = len(runs)
        if count:
            jobs = f"{count} running job{'s' if count != 1 else ''}"
            drain = "the running job finishes" if count == 1 else f"the {jobs} finish"
            self._add(
                "quit_drain",
                f"Quit when {drain} (results are delivered)",
                self.app.quit_drain,
            )
            self._add("quit_now", f"Quit now, handing {jobs} back to the hub", self.app.quit_now)
        else:
            self._add("quit", "Quit (no jobs running, nothing is handed back)", self.app.quit_now)

    def action_texts(self) -> list[str]:
        return [a.text() for a in self.menu.actions() if not a.isSeparator()]
