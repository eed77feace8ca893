"""desktop_worker/tray/wizard.py: the first-run wizard.

Driven by a FakeEngine on a FakeClock (tests/tray_harness.py); Qt runs offscreen. The real
engine inside the app is in tests/test_tray_integration.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtWidgets import QApplication, QWizard

from desktop_worker.tray.store import SecretStore, SettingsStore
from desktop_worker.tray.wizard import FirstRunWizard
from tests.tray_harness import (
    MemoryKeyring,
    failing_tester,
    ok_tester,
)

pytest_plugins = ["tests.tray_fixtures"]


def _fill_wizard(wizard: FirstRunWizard) -> None:
    wizard.hub_page.urls.setText("https://hub.example.org:6984, https://standby.example.org:6984")
    assert wizard.currentPage().isComplete()
    wizard.next()
    assert not wizard.currentPage().isComplete()
    wizard.worker_page.name.setText("kitchen-pc")
    wizard.worker_page.password.setText("secret")
    assert wizard.currentPage().isComplete()


def test_first_run_wizard(qtbot: Any) -> None:
    wizard = FirstRunWizard(tester=ok_tester, password_where=lambda n: f"keyring for {n}")
    qtbot.addWidget(wizard)
    wizard.show()
    wizard.hub_page.urls.setText("not a url")
    assert not wizard.currentPage().isComplete()
    _fill_wizard(wizard)
    assert wizard.worker_page.where.text() == "keyring for kitchen-pc"
    with qtbot.waitSignal(wizard.test_page.connection.finished):
        wizard.next()  # the test starts by itself
    assert wizard.test_page.label.text().startswith("✔ Connection works")
    assert wizard.currentPage().isComplete()
    wizard.next()
    assert wizard.currentPage() is wizard.done_page
    assert "kitchen-pc" in wizard.done_page.summary.text()
    wizard.done_page.start_at_login.setChecked(True)
    with qtbot.waitSignal(wizard.completed) as done:
        wizard.button(QWizard.WizardButton.FinishButton).click()
    assert done.args[0] == {
        "hub_urls": ["https://hub.example.org:6984", "https://standby.example.org:6984"],
        "name": "kitchen-pc",
        "password": "secret",
        "start_at_login": True,
    }


def test_first_run_wizard_failed_test_needs_save_anyway(qtbot: Any) -> None:
    wizard = FirstRunWizard(tester=failing_tester)
    qtbot.addWidget(wizard)
    wizard.show()
    _fill_wizard(wizard)
    with qtbot.waitSignal(wizard.test_page.connection.finished):
        wizard.next()
    assert "wrong password" in wizard.test_page.label.text()
    assert not wizard.currentPage().isComplete()
    wizard.test_page.anyway.setChecked(True)
    assert wizard.currentPage().isComplete()


def test_run_wizard_saves_settings_the_engine_can_use(qtbot: Any, tmp_path: Path) -> None:
    from PySide6.QtCore import QTimer

    from desktop_worker.tray.app import run_wizard

    store = SettingsStore(
        tmp_path / "worker.toml",
        data_dir=tmp_path,
        secrets=SecretStore(tmp_path, backend=MemoryKeyring()),
    )
    steps: list[str] = []

    def drive() -> None:  # runs inside the wizard's modal exec()
        wizard = QApplication.activeModalWidget()
        if not isinstance(wizard, FirstRunWizard):
            QTimer.singleShot(20, drive)
            return
        if not steps:
            wizard.hub_page.urls.setText("http://127.0.0.1:5984")
            wizard.next()
            wizard.worker_page.name.setText("w2")
            wizard.worker_page.password.setText("pw2")
            wizard.next()
            steps.append("filled")
        if wizard.test_page.result is None:
            QTimer.singleShot(20, drive)
            return
        wizard.next()
        wizard.button(QWizard.WizardButton.FinishButton).click()
        steps.append("finished")

    QTimer.singleShot(0, drive)
    assert run_wizard(store, tester=ok_tester)
    assert steps == ["filled", "finished"]
    config = store.worker_config()
    assert (config.hub_urls, config.name, config.password) == (
        ["http://127.0.0.1:5984"],
        "w2",
        "pw2",
    )


def test_wizard_values_saved_make_a_working_config(tmp_path: Path) -> None:
    store = SettingsStore(
        tmp_path / "worker.toml",
        data_dir=tmp_path,
        secrets=SecretStore(tmp_path, backend=MemoryKeyring()),
    )
    store.save({"hub_urls": ["http://127.0.0.1:5984"], "name": "w1", "password": "pw"})
    config = store.worker_config()
    assert config.hub_urls == ["http://127.0.0.1:5984"] and config.password == "pw"
