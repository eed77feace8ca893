"""The main window: what runs now, what ran, the event log and statistics.

Closing it only hides it (the app stays in the tray); the first time, the app says so.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal, Slot
from PySide6.QtGui import QCloseEvent, QGuiApplication
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMainWindow,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from desktop_worker.tray.chart import BarChart, RateChart
from desktop_worker.tray.history import stats_days
from desktop_worker.tray.icons import icon
from desktop_worker.tray.model import LEVELS, LogEntry, WorkerModel, format_duration

RUN_COLUMNS = ("Kind", "Client", "Progress", "Step", "Elapsed", "Remaining", "Lease until", "")
HISTORY_COLUMNS = ("Finished", "Kind", "Client", "Status", "Duration", "Occurrence")
LEVEL_FILTERS = (
    ("Everything", "DEBUG"),
    ("Info and above", "INFO"),
    ("Warnings and errors", "WARNING"),
    ("Errors only", "ERROR"),
)


class MainWindow(QMainWindow):
    cancelRequested = Signal(str)
    closedToTray = Signal()

    def __init__(
        self,
        model: WorkerModel,
        *,
        run_info: Callable[[str], dict[str, Any] | None],
        worker_name: str = "",
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.model = model
        self.run_info = run_info
        self.setWindowTitle(f"Couchfarm worker {worker_name}".strip())
        self.resize(860, 520)
        self.really_close = False

        central = QWidget()
        layout = QVBoxLayout(central)
        header = QHBoxLayout()
        self.state_icon = QLabel()
        self.state_icon.setFixedSize(28, 28)
        self.status = QLabel()
        self.status.setObjectName("status")
        self.status.setWordWrap(True)
        font = self.status.font()
        font.setPointSizeF(font.pointSizeF() * 1.15)
        self.status.setFont(font)
        self.totals = QLabel()
        self.totals.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        header.addWidget(self.state_icon)
        header.addWidget(self.status, 1)
        header.addWidget(self.totals)
        layout.addLayout(header)

        self.tabs = QTabWidget()
        layout.addWidget(self.tabs, 1)
        self.setCentralWidget(central)

        # now
        self.runs_table = self._table(RUN_COLUMNS, "runs")
        self.runs_table.horizontalHeader().setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        self.no_runs = QLabel("No runs in progress.")
        now_tab = QWidget()
        now_layout = QVBoxLayout(now_tab)
        now_layout.addWidget(self.runs_table)
        now_layout.addWidget(self.no_runs)
        self.tabs.addTab(now_tab, "Now")

        # history
        self.history_table = self._table(HISTORY_COLUMNS, "history")
        self.history_table.horizontalHeader().setSectionResizeMode(
            5, QHeaderView.ResizeMode.Stretch
        )
        self.tabs.addTab(self.history_table, "History")

        # log
        log_tab = QWidget()
        log_layout = QVBoxLayout(log_tab)
        bar = QHBoxLayout()
        self.level_filter = QComboBox()
        self.level_filter.setObjectName("levelFilter")
        for label, level in LEVEL_FILTERS:
            self.level_filter.addItem(label, level)
        self.level_filter.setCurrentIndex(1)
        self.level_filter.currentIndexChanged.connect(self.refresh_log)
        self.copy_button = QPushButton("Copy to clipboard")
        self.copy_button.setObjectName("copyLog")
        self.copy_button.clicked.connect(self.copy_log)
        bar.addWidget(QLabel("Show:"))
        bar.addWidget(self.level_filter)
        bar.addStretch(1)
        bar.addWidget(self.copy_button)
        log_layout.addLayout(bar)
        self.log_view = QPlainTextEdit()
        self.log_view.setObjectName("log")
        self.log_view.setReadOnly(True)
        self.log_view.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.log_view.setMaximumBlockCount(5000)
        log_layout.addWidget(self.log_view)
        self.tabs.addTab(log_tab, "Log")

        # statistics
        stats_tab = QWidget()
        stats_layout = QVBoxLayout(stats_tab)
        self.stats_summary = QLabel()
        self.stats_summary.setObjectName("statsSummary")
        self.per_hour = BarChart("Completed runs per hour, last 7 days")
        self.success = RateChart("Success rate per day, last 7 days")
        stats_layout.addWidget(self.stats_summary)
        stats_layout.addWidget(self.per_hour, 3)
        stats_layout.addWidget(self.success, 2)
        self.tabs.addTab(stats_tab, "Statistics")
        self.tabs.currentChanged.connect(lambda _i: self.refresh())

        self._seen_finished = -1
        self.ticker = QTimer(self)
        self.ticker.setInterval(1000)
        self.ticker.timeout.connect(self.refresh_runs)
        model.changed.connect(self.refresh)
        model.logAdded.connect(self._append_log)
        self.refresh()
        self.refresh_log()

    @staticmethod
    def _table(columns: tuple[str, ...], name: str) -> QTableWidget:
        table = QTableWidget(0, len(columns))
        table.setObjectName(name)
        table.setHorizontalHeaderLabels(list(columns))
        table.verticalHeader().setVisible(False)
        table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        return table

    # ------------------------------------------------------------ refresh

    @Slot()
    def refresh(self) -> None:
        model = self.model
        self.state_icon.setPixmap(icon(model.tray_state).pixmap(28, 28))
        self.status.setText(model.status_line())
        totals = model.bridge.snapshot().get("totals") or {}
        pending = int(model.spool.get("pending") or 0)
        parts = [f"this session: done {totals.get('done', 0)}", f"failed {totals.get('failed', 0)}"]
        if pending:
            parts.append(f"{pending} to upload")
        self.totals.setText(" · ".join(parts))
        self.refresh_runs()
        if model.runs and self.isVisible():
            self.ticker.start()
        else:
            self.ticker.stop()
        if self._seen_finished != model.finished_count:
            self._seen_finished = model.finished_count
            self.refresh_history()
            self.refresh_stats()
        elif self.tabs.currentIndex() == 3:
            self.refresh_stats()

    @Slot()
    def refresh_runs(self) -> None:
        runs = sorted(self.model.runs.values(), key=lambda r: r.started)
        table = self.runs_table
        now = self.model.clock.timestamp()
        if table.rowCount() != len(runs):
            table.setRowCount(len(runs))
        for row, run in enumerate(runs):
            info = self.run_info(run.occ_id) or {}
            # the engine's own start time (hub clock) when it has one, else when we heard
            elapsed = info.get("elapsed_s")
            if elapsed is None:
                elapsed = run.elapsed(now)
            lease_left = info.get("lease_left_s")
            if lease_left is None:
                lease = "—"
            elif lease_left <= 0:
                lease = "expired"
            else:
                deadline = self.model.clock.now() + timedelta(seconds=lease_left)
                lease = f"{deadline:%H:%M:%S} (in {format_duration(lease_left)})"
            cells = (
                run.kind,
                run.client,
                None,
                (run.progress[2] if run.progress else "") or "",
                format_duration(elapsed),
                format_duration(run.remaining(now, elapsed)),
                lease,
            )
            for column, text in enumerate(cells):
                if text is None:
                    continue
                item = table.item(row, column)
                if item is None:
                    item = QTableWidgetItem()
                    table.setItem(row, column, item)
                item.setText(text)
                item.setData(Qt.ItemDataRole.UserRole, run.occ_id)
            bar = table.cellWidget(row, 2)
            if not isinstance(bar, QProgressBar):
                bar = QProgressBar()
                bar.setRange(0, 1000)
                bar.setAlignment(Qt.AlignmentFlag.AlignCenter)
                table.setCellWidget(row, 2, bar)
            fraction = run.fraction
            if fraction is None:
                bar.setRange(0, 0)  # busy
                bar.setFormat("starting")
            else:
                bar.setRange(0, 1000)
                bar.setValue(round(fraction * 1000))
                bar.setFormat(f"{fraction * 100:.0f} %")
            button = table.cellWidget(row, 7)
            if not isinstance(button, QPushButton) or button.property("occ") != run.occ_id:
                button = QPushButton("Cancel")
                button.setToolTip("Stop this run and hand it back to the hub")
                button.setProperty("occ", run.occ_id)
                button.clicked.connect(lambda _c=False, o=run.occ_id: self.cancelRequested.emit(o))
                table.setCellWidget(row, 7, button)
        self.no_runs.setVisible(not runs)

    def run_rows(self) -> list[list[str]]:
        """The Now table as text (tests and screenshots)."""
        out = []
        for row in range(self.runs_table.rowCount()):
            cells = []
            for column in range(len(RUN_COLUMNS) - 1):
                if column == 2:
                    bar = self.runs_table.cellWidget(row, 2)
                    cells.append(bar.text() if isinstance(bar, QProgressBar) else "")
                else:
                    item = self.runs_table.item(row, column)
                    cells.append(item.text() if item else "")
            out.append(cells)
        return out

    @Slot()
    def refresh_history(self) -> None:
        history = self.model.history
        rows = history.recent(300) if history is not None else []
        table = self.history_table
        table.setRowCount(len(rows))
        for row, entry in enumerate(rows):
            stamp = entry.finished or entry.started
            when = datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S") if stamp else "—"
            cells = (
                when,
                entry.kind,
                entry.client,
                entry.status,
                format_duration(entry.duration),
                entry.occ_id,
            )
            for column, text in enumerate(cells):
                table.setItem(row, column, QTableWidgetItem(text))

    def history_rows(self) -> list[list[str]]:
        table = self.history_table
        return [
            [
                (cell.text() if (cell := table.item(r, c)) else "")
                for c in range(table.columnCount())
            ]
            for r in range(table.rowCount())
        ]

    @Slot()
    def refresh_stats(self) -> None:
        history = self.model.history
        now = self.model.clock.now()
        days = stats_days(now)
        per_hour = history.completed_per_hour(now) if history is not None else [0] * 24 * 7
        per_day = history.success_per_day(now) if history is not None else [(0, 0)] * 7
        names = [f"{day:%a %d}" for day in days]
        self.per_hour.set_data(
            [float(v) for v in per_hour], [(i * 24, name) for i, name in enumerate(names)]
        )
        self.success.set_data(
            [(ok / total) if total else None for ok, total in per_day], list(enumerate(names))
        )
        done = sum(per_hour)
        decided = sum(total for _ok, total in per_day)
        succeeded = sum(ok for ok, _total in per_day)
        rate = f"{succeeded / decided * 100:.1f} %" if decided else "—"
        self.stats_summary.setText(
            f"Last 7 days on this computer: {done} completed runs, success rate {rate} "
            f"({succeeded} of {decided} decided runs)."
        )

    # ------------------------------------------------------------ log

    def _visible(self, entry: LogEntry) -> bool:
        threshold = self.level_filter.currentData() or "INFO"
        return LEVELS.index(entry.level) >= LEVELS.index(threshold)

    @Slot(object)
    def _append_log(self, entry: LogEntry) -> None:
        if self._visible(entry):
            self.log_view.appendPlainText(entry.line())

    @Slot()
    def refresh_log(self) -> None:
        lines = [entry.line() for entry in self.model.log if self._visible(entry)]
        self.log_view.setPlainText("\n".join(lines))

    @Slot()
    def copy_log(self) -> None:
        QGuiApplication.clipboard().setText(self.log_view.toPlainText())

    # ------------------------------------------------------------ showing and closing

    def bring_to_front(self) -> None:
        self.show()
        self.setWindowState(
            (self.windowState() & ~Qt.WindowState.WindowMinimized) | Qt.WindowState.WindowActive
        )
        self.raise_()
        self.activateWindow()
        self.refresh()

    def showEvent(self, event: Any) -> None:
        super().showEvent(event)
        self.refresh()

    def closeEvent(self, event: QCloseEvent) -> None:
        if self.really_close:
            event.accept()
            return
        event.ignore()
        self.hide()
        self.ticker.stop()
        self.closedToTray.emit()
