"""Wiring: ``build_app`` puts the pieces together (tests call it with a FakeEngine and a
FakeClock); ``main`` is what ``desktop-worker`` runs without ``--headless``.

    engine ──events──▶ EngineBridge ──Qt signals──▶ WorkerModel ──changed──▶ tray, window
       ▲                  │ (queued to the GUI thread)      └──▶ History (SQLite), Notifier
       └──commands────────┘ (one worker thread)
    PauseController ──pause(reason)/resume──▶ EngineBridge
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from PySide6.QtCore import QFileSystemWatcher, QObject, QTimer, Slot
from PySide6.QtWidgets import QApplication, QMessageBox, QSystemTrayIcon

from desktop_worker.config import ConfigError, WorkerConfig, default_data_dir
from desktop_worker.log import log_event
from desktop_worker.tray import autostart, lean
from desktop_worker.tray.bridge import EngineBridge, EngineFactory
from desktop_worker.tray.clock import Clock, SystemClock
from desktop_worker.tray.conditions import IdleDetector, Power, idle_detector, power_state
from desktop_worker.tray.diagnose import test_connection
from desktop_worker.tray.history import History
from desktop_worker.tray.model import INSECURE_TLS_WARNING, QtLogHandler, WorkerModel
from desktop_worker.tray.notify import Notifier
from desktop_worker.tray.pausing import PauseController
from desktop_worker.tray.store import ENGINE_KEYS, FIELDS, SettingsStore, allow_list
from desktop_worker.tray.tray import TrayController

if TYPE_CHECKING:  # the window, dialogs and QtNetwork load only when first needed
    from desktop_worker.tray.settings import SettingsDialog, Tester
    from desktop_worker.tray.single import SingleInstance
    from desktop_worker.tray.window import MainWindow
else:
    Tester = Any

CONFIG_KEYS = [f.key for f in FIELDS if f.store == "worker"]


def trim_memory() -> None:
    """Give freed heap and shiboken's cached sources back to the OS (see lean.py)."""
    lean.trim()


def default_engine_factory(config: WorkerConfig) -> Any:
    from desktop_worker.engine import Engine

    return Engine(config, start_run=capped_runs(config))


def capped_runs(config: WorkerConfig) -> Callable[..., Any]:
    """The engine's ``start_run`` with the owner's CPU and bandwidth caps from ``config``.

    The engine builds each run's Limits without the caps; this puts them in. The runner
    (and its handlers) is imported at the first run, not while the tray idles.
    """

    def start_run(kind: str, input: dict, limits: Any, policy: Any) -> Any:
        from desktop_worker import runner

        return runner.capped_start_run(config)(kind, input, limits, policy)

    return start_run


class TrayApp(QObject):
    """The running tray app. Its methods are what the menu and the window call."""

    def __init__(
        self,
        config: WorkerConfig,
        engine_factory: EngineFactory,
        clock: Clock,
        *,
        store: SettingsStore,
        overrides: Mapping[str, Any] | None = None,
        tester: Tester = test_connection,
        idle: IdleDetector | None = None,
        power: Callable[[], Power] = power_state,
        single: SingleInstance | None = None,
        quit_app: Callable[[], None] | None = None,
        autostart_env: Mapping[str, str] | None = None,
        tick_ms: int = 15_000,
    ) -> None:
        super().__init__()
        self.config = config
        self.engine_factory = engine_factory
        self.clock = clock
        self.store = store
        self.overrides = dict(overrides or {})
        self.tester = tester
        self.idle = idle if idle is not None else idle_detector()
        self.power = power
        self.single = single
        self.quit_app = quit_app or QApplication.quit
        self.autostart_env = autostart_env
        self.quitting: str | None = None
        self.exited = False
        self.settings_dialog: SettingsDialog | None = None

        self.values = self._initial_values()
        self.bridge = EngineBridge(self)
        name = config.name or "worker"
        self.history = History(store.data_dir / f"history-{name}.sqlite3")
        self.history.prune(clock.timestamp())
        self.pauses = PauseController(
            clock,
            self._apply_pause,
            lambda: self.values,
            idle=self.idle,
            power=power,
            persist=self._persist_pause,
            tick_ms=tick_ms,
            parent=self,
        )
        self.model = WorkerModel(
            self.bridge, clock, self.history, snoozed=lambda: self.pauses.snoozed, parent=self
        )
        if not config.verify_tls:
            self.model.insecure_tls = True
            self.model.add_log("WARNING", INSECURE_TLS_WARNING)
        self.tray = TrayController(self.model, self.pauses, self, worker_name=config.name)
        self.notifier = Notifier(clock, self.tray.show_message, self)
        self._window: MainWindow | None = None
        self.bridge.stateChanged.connect(self.notifier.on_state)
        self.bridge.stateChanged.connect(self._on_state)
        self.bridge.runFinished.connect(self.notifier.on_run_finished)
        self.bridge.commandFinished.connect(self._on_command)
        self.notifier.notified.connect(lambda t, m: self.model.add_log("INFO", f"notice: {t}: {m}"))
        self.pauses.changed.connect(self.model.changed)
        if single is not None:
            single.activated.connect(self.open_window)
        self.log_handler = QtLogHandler(self.model)
        logging.getLogger("couchfarm").addHandler(self.log_handler)
        self.watcher = QFileSystemWatcher(self)
        self._watch_config()
        self.watcher.fileChanged.connect(self._on_config_file_changed)
        self._own_write: float | None = None

    @property
    def window(self) -> MainWindow:
        """The main window, built the first time it is needed (an idle tray has none)."""
        if self._window is None:
            from desktop_worker.tray.window import MainWindow

            self._window = MainWindow(
                self.model, run_info=self.bridge.run_info, worker_name=self.config.name
            )
            self._window.cancelRequested.connect(self.cancel_run)
            self._window.closedToTray.connect(self._on_window_closed)
        return self._window

    def _initial_values(self) -> dict[str, Any]:
        values = self.store.load()
        if not self.store.exists:  # nothing saved yet: show what the engine was given
            for key in (*CONFIG_KEYS, "password"):
                if hasattr(self.config, key):
                    values[key] = getattr(self.config, key)
        return values

    # ------------------------------------------------------------ life

    def start(self) -> TrayApp:
        self.pauses.restore(self.store.state("pause"))
        self.bridge.start(self.engine_factory, self.config)
        self.tray.show()
        QTimer.singleShot(15_000, trim_memory)  # start-up garbage back to the system
        return self

    def _apply_pause(self, reason: str | None) -> None:
        if reason:
            self.bridge.pause(reason)
        else:
            self.bridge.resume()

    def _persist_pause(self, data: dict[str, str] | None) -> None:
        try:
            self.store.set_state("pause", data)
        except (OSError, ConfigError) as exc:
            self.model.add_log("WARNING", f"the pause could not be remembered: {exc}")

    # ------------------------------------------------------------ actions (menu, window)

    @Slot()
    def open_window(self) -> None:
        self.window.bring_to_front()

    @Slot(str)
    def cancel_run(self, occ_id: str) -> None:
        run = self.model.runs.get(occ_id)
        what = f"{run.kind} for {run.client}" if run else occ_id
        self.model.add_log("INFO", f"cancelling {what}: it goes back to the hub")
        self.bridge.cancel(occ_id)

    @Slot()
    def open_settings(self) -> SettingsDialog:
        if self.settings_dialog is not None and self.settings_dialog.isVisible():
            self.settings_dialog.raise_()
            self.settings_dialog.activateWindow()
            return self.settings_dialog
        from desktop_worker.tray.settings import SettingsDialog

        dialog = SettingsDialog(
            self.store.load() if self.store.exists else self.values,
            password_where=self.store.secrets.where,
            idle_detector=self.idle.name,
            power_method=self.power().method,
            autostart_where=str(autostart.desktop_file(self.autostart_env))
            if sys.platform.startswith("linux")
            else "",
            tester=self.tester,
        )
        dialog.saved.connect(self.apply_settings)
        self.settings_dialog = dialog
        dialog.show()
        dialog.raise_()
        return dialog

    @Slot(dict)
    def apply_settings(self, new: dict[str, Any]) -> None:
        old = dict(self.values)
        try:
            self.store.save(new)
            self._note_own_write()
            self.values = self.store.load()
        except (OSError, ConfigError) as exc:
            self.model.add_log("ERROR", f"the settings could not be saved: {exc}")
            self.notifier.notify("Couchfarm: settings not saved", str(exc), True)
            return
        self.model.add_log("INFO", f"settings saved to {self.store.config_path}")
        if bool(new.get("start_at_login")) != autostart.is_start_at_login(
            environ=self.autostart_env
        ):
            try:
                where = autostart.set_start_at_login(
                    bool(new.get("start_at_login")), environ=self.autostart_env
                )
                self.model.add_log("INFO", f"start at login recorded in {where}")
            except OSError as exc:
                self.model.add_log("ERROR", f"start at login could not be changed: {exc}")
        self.notifier.on_allow_list(allow_list(old), allow_list(self.values))
        self.pauses.check()
        if any(old.get(k) != self.values.get(k) for k in ENGINE_KEYS):
            self._restart_engine("the settings changed")

    def _restart_engine(self, why: str) -> None:
        try:
            config = self.store.worker_config(self.overrides)
        except ConfigError as exc:
            self.model.add_log("ERROR", f"the worker cannot use these settings: {exc}")
            return
        self.config = config
        running = len(self.model.runs)
        note = f" after the {running} running job(s) finish" if running else ""
        self.model.add_log("INFO", f"{why}: the worker restarts{note}")
        self.bridge.restart(self.engine_factory, config)

    # ------------------------------------------------------------ the config file

    def _watch_config(self) -> None:
        path = str(self.store.config_path)
        if Path(path).exists() and path not in self.watcher.files():
            self.watcher.addPath(path)

    def _note_own_write(self) -> None:
        with contextlib.suppress(OSError):
            self._own_write = self.store.config_path.stat().st_mtime
        self._watch_config()

    @Slot(str)
    def _on_config_file_changed(self, _path: str) -> None:
        self._watch_config()  # editors that replace the file drop it from the watcher
        try:
            mtime = self.store.config_path.stat().st_mtime
        except OSError:
            return
        if mtime == self._own_write:
            return
        self._own_write = mtime
        self.reload_config_file()

    def reload_config_file(self) -> None:
        """The worker's file was edited outside the app: notify and apply."""
        old = dict(self.values)
        try:
            self.values = self.store.load()
        except ConfigError as exc:
            self.model.add_log("ERROR", f"the settings file cannot be read: {exc}")
            return
        self.model.add_log("INFO", f"{self.store.config_path} changed on disk")
        self.notifier.on_allow_list(allow_list(old), allow_list(self.values))
        if any(old.get(k) != self.values.get(k) for k in ENGINE_KEYS):
            self._restart_engine("the settings file changed")

    # ------------------------------------------------------------ window

    @Slot()
    def _on_window_closed(self) -> None:
        QTimer.singleShot(2_000, trim_memory)
        if self.store.state("close_notice_shown"):
            return
        self.notifier.notify(
            "Couchfarm is still running",
            "It keeps working in the system tray. Right-click the tray icon to pause, "
            "open the window again or quit.",
        )
        with contextlib.suppress(OSError, ConfigError):
            self.store.set_state("close_notice_shown", True)

    # ------------------------------------------------------------ quitting

    @Slot()
    def quit_drain(self) -> None:
        """Quit once the runs in progress have finished and delivered their results."""
        self.quitting = "drain"
        self.model.add_log("INFO", "quitting when the running jobs finish")
        if self.bridge.engine is None or self.model.engine_state == "stopped":
            self._finish_quit()
            return
        self.bridge.drain()

    @Slot()
    def quit_now(self) -> None:
        """Quit now: running jobs are cancelled and handed back to the hub."""
        self.quitting = "now"
        self.model.add_log("INFO", "quitting now; running jobs go back to the hub")
        if self.bridge.engine is None:
            self._finish_quit()
            return
        self.bridge.stop()

    @Slot(str, str)
    def _on_state(self, state: str, _why: str) -> None:
        if state == "stopped" and self.quitting:
            self._finish_quit()

    @Slot(str, object)
    def _on_command(self, command: str, _error: Any) -> None:
        if command == "stop" and self.quitting == "now":
            self._finish_quit()

    def _finish_quit(self) -> None:
        if self.exited:
            return
        self.exited = True
        self.shutdown()
        self.quit_app()

    def shutdown(self) -> None:
        """Let go of everything (the engine must already be stopped or be left running)."""
        logging.getLogger("couchfarm").removeHandler(self.log_handler)
        self.pauses.timer.stop()
        self.tray.icon.hide()
        if self._window is not None:
            self._window.really_close = True
            self._window.close()
        if self.settings_dialog is not None:
            self.settings_dialog.close()
        self.bridge.close()
        self.history.close()
        if self.single is not None:
            self.single.close()


def build_app(
    config: WorkerConfig,
    engine_factory: EngineFactory,
    clock: Clock | None = None,
    *,
    store: SettingsStore | None = None,
    data_dir: Path | None = None,
    start: bool = True,
    **kwargs: Any,
) -> TrayApp:
    """The whole tray app around ``engine_factory(config)``; tests pass a FakeEngine."""
    if store is None:
        base = Path(data_dir) if data_dir is not None else None
        store = SettingsStore(base / "worker.toml", data_dir=base) if base else SettingsStore()
    app = TrayApp(config, engine_factory, clock or SystemClock(), store=store, **kwargs)
    if start:
        app.start()
    return app


# ---------------------------------------------------------------- main


def _parse(argv: Sequence[str] | None) -> tuple[Any, dict[str, Any]]:
    from desktop_worker import cli

    args, _unknown = cli.parser().parse_known_args(argv)
    return args, cli.overrides_from(args)


def run_wizard(store: SettingsStore, tester: Tester = test_connection) -> bool:
    from desktop_worker.tray.wizard import FirstRunWizard

    wizard = FirstRunWizard(tester=tester, password_where=store.secrets.where)
    saved: dict[str, Any] = {}

    def save(values: dict[str, Any]) -> None:
        current = store.load() if store.exists else {}
        current.update(values)
        store.save(current)
        saved.update(values)
        if values.get("start_at_login"):
            with contextlib.suppress(OSError):
                autostart.set_start_at_login(True)

    wizard.completed.connect(save)
    return bool(wizard.exec()) and bool(saved)


def main(argv: Sequence[str] | None = None) -> int:
    """The tray app. Takes the same flags as ``desktop-worker`` (``--config``, ``--hub``...)."""
    from desktop_worker.log import setup_logging

    args, overrides = _parse(list(argv) if argv is not None else sys.argv[1:])
    setup_logging(args.log_level)
    import PySide6

    if PySide6.__version__ == "6.12.0":
        log_event(
            "tray_qt_warning",
            30,
            why="PySide6 6.12.0 loses a reference on every slot call and crashes long-running "
            "apps; install pyside6-essentials 6.11.x",
        )
    qt_app = cast(
        "QApplication",
        QApplication.instance() or QApplication([sys.argv[0] if sys.argv else "couchfarm"]),
    )
    qt_app.setApplicationName("Couchfarm")
    qt_app.setQuitOnLastWindowClosed(False)

    from desktop_worker.tray.single import SingleInstance

    single = SingleInstance()
    if not single.claim():
        print("desktop-worker: Couchfarm is already running; its window was brought to the front")
        return 0

    store = SettingsStore(Path(args.config) if args.config else None)
    try:
        config = store.worker_config(overrides)
    except ConfigError as first_problem:
        log_event("tray_setup_needed", why=str(first_problem))
        try:
            if not run_wizard(store):
                return 1
            config = store.worker_config(overrides)
        except ConfigError as exc:
            QMessageBox.critical(None, "Couchfarm", f"The worker cannot start:\n\n{exc}")
            return 2

    app = build_app(
        config,
        default_engine_factory,
        SystemClock(),
        store=store,
        overrides=overrides,
        single=single,
        start=True,
    )
    if not QSystemTrayIcon.isSystemTrayAvailable():
        app.model.add_log("WARNING", "no system tray on this desktop: the window stays open")
        app.open_window()
    code = qt_app.exec()
    if not app.exited:  # the session ended under us: hand runs back
        engine = app.bridge.engine
        if engine is not None:
            with contextlib.suppress(Exception):
                engine.stop()
        app.shutdown()
    return int(code)


__all__ = ["TrayApp", "build_app", "default_data_dir", "main"]
