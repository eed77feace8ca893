"""The settings dialog, rendered from the declarative table in :mod:`.store`.

Each field type has one editor (``make_editor``); the dialog lays the editors out by
section, shows each field's help, and adds what a field cannot say by itself: where the
password is kept, which idle detector is active, where start-at-login is recorded, and
the "Test connection" button (run on a worker thread; the answer names what failed).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal, Slot
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from desktop_worker.tray.conditions import WEEKDAY_NAMES, WEEKDAYS
from desktop_worker.tray.diagnose import Diagnosis, test_connection
from desktop_worker.tray.store import (
    FIELDS,
    SECTIONS,
    Field,
    check_values,
    scripts_from_text,
    scripts_to_text,
)


def known_kinds() -> list[str]:
    kinds: set[str] = set()
    try:
        from desktop_worker.handlers import builtin_kinds, load_plugins

        kinds.update(builtin_kinds())
        kinds.update(load_plugins())
    except Exception:
        pass
    return sorted(kinds)


# ---------------------------------------------------------------- editors


class Editor:
    """One field's widget: ``get()`` returns the stored form, ``set()`` shows it."""

    def __init__(self, field: Field, widget: QWidget) -> None:
        self.field = field
        self.widget = widget

    def get(self) -> Any:
        raise NotImplementedError

    def set(self, value: Any) -> None:
        raise NotImplementedError


class TextEditor(Editor):
    def __init__(self, field: Field, password: bool = False) -> None:
        edit = QLineEdit()
        if password:
            edit.setEchoMode(QLineEdit.EchoMode.Password)
        super().__init__(field, edit)
        self.edit = edit

    def get(self) -> str:
        return self.edit.text().strip()

    def set(self, value: Any) -> None:
        self.edit.setText(str(value or ""))


class ListEditor(Editor):
    def __init__(self, field: Field) -> None:
        edit = QLineEdit()
        super().__init__(field, edit)
        self.edit = edit

    def get(self) -> list[str]:
        return [part.strip() for part in self.edit.text().split(",") if part.strip()]

    def set(self, value: Any) -> None:
        self.edit.setText(", ".join(value or []))


class UrlsEditor(Editor):
    def __init__(self, field: Field) -> None:
        edit = QPlainTextEdit()
        edit.setTabChangesFocus(True)
        edit.setFixedHeight(60)
        edit.setPlaceholderText("https://hub.example.org:6984\nhttps://standby.example.org:6984")
        super().__init__(field, edit)
        self.edit = edit

    def get(self) -> list[str]:
        text = self.edit.toPlainText().replace(",", "\n")
        return [line.strip() for line in text.splitlines() if line.strip()]

    def set(self, value: Any) -> None:
        self.edit.setPlainText("\n".join(value or []))


class IntEditor(Editor):
    def __init__(self, field: Field) -> None:
        spin = QSpinBox()
        spin.setRange(field.minimum or 0, field.maximum if field.maximum is not None else 10**9)
        super().__init__(field, spin)
        self.spin = spin

    def get(self) -> int:
        return int(self.spin.value())

    def set(self, value: Any) -> None:
        self.spin.setValue(int(value if value is not None else self.field.default))


class BoolEditor(Editor):
    def __init__(self, field: Field) -> None:
        box = QCheckBox()
        super().__init__(field, box)
        self.box = box

    def get(self) -> bool:
        return self.box.isChecked()

    def set(self, value: Any) -> None:
        self.box.setChecked(bool(value))


class KindsEditor(Editor):
    """A tick box per kind; all ticked is stored as None (every built-in kind)."""

    def __init__(self, field: Field, kinds: list[str]) -> None:
        box = QWidget()
        self.grid = QGridLayout(box)
        self.grid.setContentsMargins(0, 0, 0, 0)
        super().__init__(field, box)
        self.boxes: dict[str, QCheckBox] = {}
        for kind in kinds:
            self._add(kind)

    def _add(self, kind: str) -> QCheckBox:
        check = QCheckBox(kind)
        check.setChecked(True)
        index = len(self.boxes)
        self.grid.addWidget(check, index // 3, index % 3)
        self.boxes[kind] = check
        return check

    def get(self) -> list[str] | None:
        chosen = [kind for kind, box in self.boxes.items() if box.isChecked()]
        if len(chosen) == len(self.boxes):
            return None
        return sorted(chosen)

    def set(self, value: Any) -> None:
        for kind in value or []:
            if kind not in self.boxes:
                self._add(kind)
        for kind, box in self.boxes.items():
            box.setChecked(value is None or kind in value)


class ScriptsEditor(Editor):
    def __init__(self, field: Field) -> None:
        edit = QPlainTextEdit()
        edit.setTabChangesFocus(True)
        edit.setFixedHeight(70)
        edit.setPlaceholderText("backup = /home/me/bin/backup.sh")
        super().__init__(field, edit)
        self.edit = edit

    def get(self) -> dict[str, str]:
        return scripts_from_text(self.edit.toPlainText())

    def set(self, value: Any) -> None:
        self.edit.setPlainText(scripts_to_text(value or {}))


class HoursEditor(Editor):
    def __init__(self, field: Field) -> None:
        box = QWidget()
        grid = QGridLayout(box)
        grid.setContentsMargins(0, 0, 0, 0)
        super().__init__(field, box)
        self.edits: dict[str, QLineEdit] = {}
        for row, day in enumerate(WEEKDAYS):
            edit = QLineEdit()
            edit.setPlaceholderText("all day")
            grid.addWidget(QLabel(WEEKDAY_NAMES[day]), row, 0)
            grid.addWidget(edit, row, 1)
            self.edits[day] = edit

    def get(self) -> dict[str, str]:
        return {day: e.text().strip() for day, e in self.edits.items() if e.text().strip()}

    def set(self, value: Any) -> None:
        for day, edit in self.edits.items():
            edit.setText(str((value or {}).get(day, "")))


def make_editor(field: Field, kinds: list[str] | None = None) -> Editor:
    if field.type == "text":
        return TextEditor(field)
    if field.type == "password":
        return TextEditor(field, password=True)
    if field.type == "urls":
        return UrlsEditor(field)
    if field.type == "list":
        return ListEditor(field)
    if field.type == "int":
        return IntEditor(field)
    if field.type == "bool":
        return BoolEditor(field)
    if field.type == "kinds":
        return KindsEditor(field, kinds if kinds is not None else known_kinds())
    if field.type == "scripts":
        return ScriptsEditor(field)
    if field.type == "hours":
        return HoursEditor(field)
    raise ValueError(f"no editor for field type {field.type!r}")


# ---------------------------------------------------------------- background test


Tester = Callable[..., Diagnosis]


class ConnectionTester(QObject):
    """Runs ``test_connection`` on a worker thread; ``finished`` comes on the GUI thread."""

    finished = Signal(object)  # Diagnosis
    _done = Signal(object)

    def __init__(self, tester: Tester = test_connection, parent: QObject | None = None):
        super().__init__(parent)
        self.tester = tester
        self.running = False
        self._done.connect(self._on_done, Qt.ConnectionType.QueuedConnection)

    def start(self, urls: list[str], name: str, password: str, db: str = "farm") -> None:
        self.running = True

        def work() -> None:
            try:
                result = self.tester(urls, name, password, db=db)
            except Exception as exc:  # the tester must answer, whatever happens
                result = Diagnosis(False, "error", f"the test itself failed: {exc}")
            try:
                self._done.emit(result)
            except RuntimeError:
                pass

        threading.Thread(target=work, name="tray-test-connection", daemon=True).start()

    @Slot(object)
    def _on_done(self, result: Diagnosis) -> None:
        self.running = False
        self.finished.emit(result)


def describe(diagnosis: Diagnosis) -> str:
    if diagnosis.ok:
        return "✔ Connection works: " + diagnosis.message
    return "✘ " + diagnosis.message


# ---------------------------------------------------------------- the dialog


class SettingsDialog(QDialog):
    saved = Signal(dict)

    def __init__(
        self,
        values: Mapping[str, Any],
        *,
        password_where: Callable[[str], str] = lambda _name: "",
        idle_detector: str = "",
        power_method: str = "",
        autostart_where: str = "",
        tester: Tester = test_connection,
        kinds: list[str] | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Couchfarm settings")
        self.setMinimumSize(600, 560)
        self._original = dict(values)
        self.editors: dict[str, Editor] = {}
        self.connection = ConnectionTester(tester, self)
        self.connection.finished.connect(self._on_diagnosis)
        self.last_diagnosis: Diagnosis | None = None

        layout = QVBoxLayout(self)
        self.tabs = QTabWidget()
        layout.addWidget(self.tabs)
        forms: dict[str, QFormLayout] = {}
        for section in SECTIONS:
            page = QWidget()
            form = QFormLayout(page)
            form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
            scroll = QScrollArea()
            scroll.setWidgetResizable(True)
            scroll.setWidget(page)
            scroll.setFrameShape(QScrollArea.Shape.NoFrame)
            self.tabs.addTab(scroll, section)
            forms[section] = form
        for field in FIELDS:
            editor = make_editor(field, kinds)
            editor.widget.setObjectName(f"field_{field.key}")
            editor.widget.setToolTip(field.help)
            self.editors[field.key] = editor
            holder = QWidget()
            holder.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)
            column = QVBoxLayout(holder)
            column.setContentsMargins(0, 0, 0, 0)
            column.setSpacing(2)
            column.addWidget(editor.widget)
            help_label = QLabel(field.help)
            help_label.setWordWrap(True)
            help_label.setStyleSheet("color: palette(placeholder-text); font-size: small;")
            column.addWidget(help_label)
            forms[field.section].addRow(field.label, holder)

        # Hub: where the password lives, and the connection test
        self.password_where = QLabel(password_where(str(values.get("name") or "")))
        self.password_where.setObjectName("passwordWhere")
        self.password_where.setWordWrap(True)
        forms["Hub"].addRow("", self.password_where)
        test_row = QHBoxLayout()
        self.test_button = QPushButton("Test connection")
        self.test_button.setObjectName("testConnection")
        self.test_button.clicked.connect(self.test_connection)
        test_row.addWidget(self.test_button)
        test_row.addStretch(1)
        forms["Hub"].addRow("", self._wrap(test_row))
        self.diagnosis = QLabel("")
        self.diagnosis.setObjectName("diagnosis")
        self.diagnosis.setWordWrap(True)
        self.diagnosis.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        forms["Hub"].addRow("", self.diagnosis)
        # When: which detectors are active
        self.idle_label = QLabel(f"Idle detector: {idle_detector or 'not available'}")
        self.idle_label.setObjectName("idleDetector")
        forms["When"].addRow("", self.idle_label)
        self.power_label = QLabel(f"Battery status: {power_method or 'not available'}")
        forms["When"].addRow("", self.power_label)
        if autostart_where:
            where = QLabel(f"Recorded in: {autostart_where}")
            where.setWordWrap(True)
            forms["System"].addRow("", where)

        self.problems = QLabel("")
        self.problems.setObjectName("problems")
        self.problems.setWordWrap(True)
        self.problems.setStyleSheet("color: #d3302f;")
        layout.addWidget(self.problems)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.buttons = buttons
        self.set_values(values)

    @staticmethod
    def _wrap(layout: QHBoxLayout) -> QWidget:
        widget = QWidget()
        layout.setContentsMargins(0, 0, 0, 0)
        widget.setLayout(layout)
        return widget

    def set_values(self, values: Mapping[str, Any]) -> None:
        for key, editor in self.editors.items():
            editor.set(values.get(key, editor.field.default))

    def values(self) -> dict[str, Any]:
        """The edited values; raises ValueError for text that cannot be read (scripts)."""
        return {key: editor.get() for key, editor in self.editors.items()}

    def problems_now(self) -> list[str]:
        try:
            values = self.values()
        except ValueError as exc:
            return [f"Allowed scripts: {exc}"]
        return check_values(values)

    @Slot()
    def test_connection(self) -> None:
        try:
            values = self.values()
        except ValueError as exc:
            self.diagnosis.setText(f"✘ {exc}")
            return
        self.test_button.setEnabled(False)
        self.diagnosis.setText("Testing…")
        self.connection.start(
            values["hub_urls"], values["name"], values["password"], values.get("db") or "farm"
        )

    @Slot(object)
    def _on_diagnosis(self, diagnosis: Diagnosis) -> None:
        self.last_diagnosis = diagnosis
        self.test_button.setEnabled(True)
        self.diagnosis.setText(describe(diagnosis))

    def accept(self) -> None:
        problems = self.problems_now()
        if problems:
            self.problems.setText("Please fix: " + "; ".join(problems))
            return
        self.problems.setText("")
        self.saved.emit(self.values())
        super().accept()
