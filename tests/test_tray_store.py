"""desktop_worker/tray/store.py: the settings files and the keyring.

Driven by a FakeEngine on a FakeClock (tests/tray_harness.py); Qt runs offscreen. The real
engine inside the app is in tests/test_tray_integration.py.
"""

from __future__ import annotations

from pathlib import Path

from desktop_worker.tray.store import SecretStore, SettingsStore, dumps_toml
from tests.tray_harness import (
    SAMPLES,
    MemoryKeyring,
    NoKeyring,
)

pytest_plugins = ["tests.tray_fixtures"]


def test_worker_file_stays_readable_by_the_headless_worker(tmp_path: Path) -> None:
    from desktop_worker.config import load_toml

    store = SettingsStore(
        tmp_path / "worker.toml",
        data_dir=tmp_path,
        secrets=SecretStore(tmp_path, backend=MemoryKeyring()),
    )
    store.save({**store.load(), **SAMPLES})
    loaded = load_toml(tmp_path / "worker.toml")  # refuses unknown keys
    assert loaded["slots"] == 3 and loaded["scripts"]["backup"] == "/home/me/bin/backup.sh"
    assert "idle_minutes" not in loaded and "password" not in loaded


def test_script_tables_keep_their_extra_keys(tmp_path: Path) -> None:
    path = tmp_path / "worker.toml"
    path.write_text(
        dumps_toml(
            {
                "hub_urls": ["http://h:1"],
                "name": "w1",
                "scripts": {"s": {"path": "/x.sh", "interpreter": ["/bin/sh"]}},
            }
        )
    )
    store = SettingsStore(path, data_dir=tmp_path, secrets=SecretStore(tmp_path, NoKeyring()))
    values = store.load()
    store.save({**values, "slots": 2})
    assert SettingsStore(path, data_dir=tmp_path, secrets=store.secrets).load()["scripts"] == {
        "s": {"path": "/x.sh", "interpreter": ["/bin/sh"]}
    }


def test_caps_an_older_tray_kept_in_tray_toml_still_apply_and_move(tmp_path: Path) -> None:
    # Before WorkerConfig had the caps, the tray stored them in tray.toml [settings].
    (tmp_path / "worker.toml").write_text('hub_urls = ["http://127.0.0.1:5984"]\nname = "w1"\n')
    (tmp_path / "tray.toml").write_text(
        "[settings]\ncpu_cap_percent = 30\nbandwidth_cap_kbps = 512\nidle_minutes = 5\n"
    )
    store = SettingsStore(
        tmp_path / "worker.toml", data_dir=tmp_path, secrets=SecretStore(tmp_path, MemoryKeyring())
    )
    assert (store.load()["cpu_cap_percent"], store.load()["bandwidth_cap_kbps"]) == (30, 512)
    config = store.worker_config(need_password=False)
    assert (config.cpu_cap_percent, config.bandwidth_cap_kbps) == (30, 512)
    store.save({**store.load(), "password": "p"})
    assert "cpu_cap_percent = 30" in (tmp_path / "worker.toml").read_text()
    tray_text = (tmp_path / "tray.toml").read_text()
    assert "cpu_cap_percent" not in tray_text and "idle_minutes = 5" in tray_text
    assert store.worker_config().bandwidth_cap_kbps == 512
