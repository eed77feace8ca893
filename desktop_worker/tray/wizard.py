"""First run: hub URL, worker name and password, a connection test, done.

The test starts by itself when its page opens (on a worker thread) and says exactly what
failed. Finishing is allowed after a failed test only when the user ticks "Save anyway"
(a hub that is down today is no reason to lose what was typed).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import Signal, Slot
from PySide6.QtWidgets import (
    QCheckBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWizard,
    QWizardPage,
)

from desktop_worker.tray.diagnose import Diagnosis, test_connection
from desktop_worker.tray.settings import ConnectionTester, Tester, describe
from hub.protocol.model import NAME_PATTERN


def split_urls(text: str) -> list[str]:
    return [part.strip() for part in text.replace("\n", ",").split(",") if part.strip()]


class HubPage(QWizardPage):
    def __init__(self) -> None:
        super().__init__()
        self.setTitle("Where is your hub?")
        self.setSubTitle(
            "The address of the hub's database server, as your hub's operator gave it. "
            "Add the standby after a comma if there is one."
        )
        layout = QFormLayout(self)
        self.urls = QLineEdit()
        self.urls.setObjectName("wizard_hub_urls")
        self.urls.setPlaceholderText(
            "https://hub.example.org:6984, https://standby.example.org:6984"
        )
        layout.addRow("Hub URL(s):", self.urls)
        self.hint = QLabel("")
        self.hint.setWordWrap(True)
        layout.addRow("", self.hint)
        self.urls.textChanged.connect(self._changed)

    def _changed(self) -> None:
        bad = [u for u in split_urls(self.urls.text()) if not re.match(r"^https?://[^/\s]+", u)]
        self.hint.setText(f"Not a http(s) URL: {', '.join(bad)}" if bad else "")
        self.completeChanged.emit()

    def isComplete(self) -> bool:
        urls = split_urls(self.urls.text())
        return bool(urls) and all(re.match(r"^https?://[^/\s]+", u) for u in urls)


class WorkerPage(QWizardPage):
    def __init__(self, password_where: Callable[[str], str]) -> None:
        super().__init__()
        self.setTitle("Who is this worker?")
        self.setSubTitle("The worker name and password your hub's operator created for this PC.")
        self._where = password_where
        layout = QFormLayout(self)
        self.name = QLineEdit()
        self.name.setObjectName("wizard_name")
        self.password = QLineEdit()
        self.password.setObjectName("wizard_password")
        self.password.setEchoMode(QLineEdit.EchoMode.Password)
        layout.addRow("Worker name:", self.name)
        layout.addRow("Password:", self.password)
        self.where = QLabel("")
        self.where.setWordWrap(True)
        layout.addRow("", self.where)
        self.name.textChanged.connect(self._changed)
        self.password.textChanged.connect(self._changed)

    def _changed(self) -> None:
        self.where.setText(self._where(self.name.text().strip()))
        self.completeChanged.emit()

    def isComplete(self) -> bool:
        return bool(re.fullmatch(NAME_PATTERN, self.name.text().strip()) and self.password.text())


class TestPage(QWizardPage):
    def __init__(self, tester: Tester) -> None:
        super().__init__()
        self.setTitle("Testing the connection")
        self.connection = ConnectionTester(tester, self)
        self.connection.finished.connect(self._on_result)
        self.result: Diagnosis | None = None
        layout = QVBoxLayout(self)
        self.label = QLabel("")
        self.label.setObjectName("wizard_diagnosis")
        self.label.setWordWrap(True)
        self.again = QPushButton("Test again")
        self.again.clicked.connect(self.run_test)
        self.anyway = QCheckBox("Save anyway (the worker keeps trying and shows what is wrong)")
        self.anyway.setObjectName("wizard_anyway")
        self.anyway.toggled.connect(self.completeChanged)
        layout.addWidget(self.label)
        layout.addWidget(self.again)
        layout.addWidget(self.anyway)
        layout.addStretch(1)

    def initializePage(self) -> None:
        self.run_test()

    @Slot()
    def run_test(self) -> None:
        wizard: Any = self.wizard()
        values = wizard.values()
        self.result = None
        self.anyway.setVisible(False)
        self.again.setEnabled(False)
        self.label.setText("Testing…")
        self.completeChanged.emit()
        self.connection.start(values["hub_urls"], values["name"], values["password"])

    @Slot(object)
    def _on_result(self, result: Diagnosis) -> None:
        self.result = result
        self.again.setEnabled(True)
        self.label.setText(describe(result))
        self.anyway.setVisible(not result.ok)
        self.completeChanged.emit()

    def isComplete(self) -> bool:
        if self.result is None:
            return False
        return self.result.ok or self.anyway.isChecked()


class DonePage(QWizardPage):
    def __init__(self) -> None:
        super().__init__()
        self.setTitle("Done")
        layout = QVBoxLayout(self)
        self.summary = QLabel("")
        self.summary.setObjectName("wizard_summary")
        self.summary.setWordWrap(True)
        self.start_at_login = QCheckBox("Start Couchfarm when I log in")
        self.start_at_login.setObjectName("wizard_start_at_login")
        layout.addWidget(self.summary)
        layout.addWidget(self.start_at_login)
        layout.addStretch(1)

    def initializePage(self) -> None:
        wizard: Any = self.wizard()
        values = wizard.values()
        self.summary.setText(
            f"Worker {values['name']} will take work from {', '.join(values['hub_urls'])}.\n"
            "Couchfarm lives in the system tray: right-click its icon to pause, resume or "
            "open the window. Settings can be changed there at any time."
        )


class FirstRunWizard(QWizard):
    completed = Signal(dict)

    def __init__(
        self,
        *,
        tester: Tester = test_connection,
        password_where: Callable[[str], str] = lambda _name: "",
        parent: Any = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Set up Couchfarm")
        self.setOption(QWizard.WizardOption.NoBackButtonOnLastPage, True)
        self.hub_page = HubPage()
        self.worker_page = WorkerPage(password_where)
        self.test_page = TestPage(tester)
        self.done_page = DonePage()
        for page in (self.hub_page, self.worker_page, self.test_page, self.done_page):
            self.addPage(page)

    def values(self) -> dict[str, Any]:
        return {
            "hub_urls": split_urls(self.hub_page.urls.text()),
            "name": self.worker_page.name.text().strip(),
            "password": self.worker_page.password.text(),
            "start_at_login": self.done_page.start_at_login.isChecked(),
        }

    def accept(self) -> None:
        self.completed.emit(self.values())
        super().accept()
