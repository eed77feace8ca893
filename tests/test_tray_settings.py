"""desktop_worker/tray/settings.py: the settings dialog, each field round-tripped.

Driven by a FakeEngine on a FakeClock (tests/tray_harness.py); Qt runs offscreen. The real
engine inside the app is in tests/test_tray_integration.py.
"""

from __future__ import annotations

import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from desktop_worker.tray.diagnose import Diagnosis
from desktop_worker.tray.settings import SettingsDialog
from desktop_worker.tray.store import FIELDS, SecretStore, SettingsStore
from tests.tray_harness import (
    SAMPLES,
    Harness,
    MemoryKeyring,
    NoKeyring,
)

pytest_plugins = ["tests.tray_fixtures"]


def test_every_field_has_a_sample() -> None:
    assert set(SAMPLES) == {f.key for f in FIELDS}
    for f in FIELDS:
        assert f.label and f.help and f.section


@pytest.mark.parametrize(
    ("key", "use_keyring"),
    [(f.key, True) for f in FIELDS] + [("password", False)],
    ids=[f.key for f in FIELDS] + ["password-without-keyring"],
)
def test_each_setting_round_trips_through_the_dialog_and_files(
    qtbot: Any, tmp_path: Path, key: str, use_keyring: bool
) -> None:
    backend = MemoryKeyring() if use_keyring else NoKeyring()
    secrets = SecretStore(tmp_path / "data", backend=backend)
    store = SettingsStore(
        tmp_path / "cfg" / "worker.toml", data_dir=tmp_path / "data", secrets=secrets
    )
    base = {**store.load(), "hub_urls": ["http://127.0.0.1:5984"], "name": "w1", "password": "p"}
    store.save(base)
    dialog = SettingsDialog(store.load(), kinds=["dns.resolve", "http.check", "tcp.connect"])
    qtbot.addWidget(dialog)
    dialog.editors[key].set(SAMPLES[key])
    with qtbot.waitSignal(dialog.saved) as saved:
        dialog.accept()
    store.save(saved.args[0])

    again = SettingsStore(
        tmp_path / "cfg" / "worker.toml",
        data_dir=tmp_path / "data",
        secrets=SecretStore(tmp_path / "data", backend=backend),
    )
    loaded = again.load()
    assert loaded[key] == SAMPLES[key]
    reopened = SettingsDialog(loaded, kinds=["dns.resolve", "http.check", "tcp.connect"])
    qtbot.addWidget(reopened)
    assert reopened.editors[key].get() == SAMPLES[key]
    text = (tmp_path / "cfg" / "worker.toml").read_text()
    assert "s3cret" not in text  # never in the settings file
    if key == "password":
        name = loaded["name"]
        if use_keyring:
            assert backend.store[("couchfarm", name)] == "s3cret pass"
            assert "password_file" not in text
        else:
            file = tmp_path / "data" / f"password-{name}"
            assert file.read_text().strip() == "s3cret pass"
            assert stat.S_IMODE(file.stat().st_mode) == 0o600
            assert "no OS keyring" in secrets.where(name)
    # the engine reads the same file
    config = again.worker_config()
    if hasattr(config, key):
        assert getattr(config, key) == SAMPLES[key]


def test_settings_refuse_bad_values(qtbot: Any, tmp_path: Path) -> None:
    dialog = SettingsDialog(
        {"hub_urls": ["ftp://x"], "name": "Bad Name", "password": "p"}, kinds=["http.check"]
    )
    qtbot.addWidget(dialog)
    dialog.editors["hours"].set({"wed": "17:00-09:00"})
    saved: list[Any] = []
    dialog.saved.connect(saved.append)
    dialog.accept()
    assert saved == []
    problems = dialog.problems.text()
    assert "must start with http" in problems and "Bad Name" in problems
    assert "Wednesday" in problems


def test_settings_dialog_test_connection_runs_off_the_gui_thread(qtbot: Any) -> None:
    threads: list[str] = []

    def tester(urls: Any, name: str, password: str, **_kw: Any) -> Diagnosis:
        threads.append(threading.current_thread().name)
        return Diagnosis(False, "dns", "DNS: the name 'nohub.invalid' does not resolve")

    dialog = SettingsDialog(
        {"hub_urls": ["http://nohub.invalid:5984"], "name": "w1", "password": "p"},
        tester=tester,
        kinds=[],
        idle_detector="X11 (xprintidle)",
    )
    qtbot.addWidget(dialog)
    with qtbot.waitSignal(dialog.connection.finished):
        dialog.test_button.click()
    assert threads == ["tray-test-connection"]
    assert dialog.diagnosis.text() == "✘ DNS: the name 'nohub.invalid' does not resolve"
    assert dialog.idle_label.text() == "Idle detector: X11 (xprintidle)"


def test_saving_settings_restarts_the_engine_and_notifies_the_allow_list(
    tray: Harness, qtbot: Any
) -> None:
    values = {**tray.app.store.load(), **tray.app.values}
    values.update(kinds=["http.check"], scripts={"backup": "/bin/backup"}, slots=2)
    tray.app.apply_settings(values)
    notes = [m for t, m in tray.app.notifier.sent if "allowed work" in t]
    assert notes == ["Kinds: http.check. Scripts: backup."]
    qtbot.waitUntil(lambda: len(tray.engines) == 2 and tray.engine.state == "idle", timeout=3000)
    assert tray.engines[0].state == "stopped"  # drained, then replaced
    assert tray.engine.config.slots == 2 and tray.engine.config.kinds == ["http.check"]


def test_an_edited_config_file_notifies_the_allow_list(tray: Harness, qtbot: Any) -> None:
    store = tray.app.store
    store.save({**store.load(), **tray.app.values})
    tray.app._note_own_write()
    tray.app.values = store.load()
    text = store.config_path.read_text() + 'kinds = ["dns.resolve"]\n'
    store.config_path.write_text(text)
    qtbot.waitUntil(
        lambda: any("allowed work" in t for t, _m in tray.app.notifier.sent), timeout=5000
    )
    assert tray.app.notifier.sent[-1][1] == "Kinds: dns.resolve. Scripts: none."
