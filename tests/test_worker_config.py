"""Worker settings: TOML file, flag overrides, password resolution, clear errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from desktop_worker import config as cfg
from desktop_worker.config import ConfigError, WorkerConfig, build_config, resolve_password


def _no_keyring(name: str) -> None:
    return None


def write(tmp_path: Path, text: str, name: str = "worker.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_and_password_never_in_repr():
    config = WorkerConfig(hub_urls=["http://127.0.0.1:5984"], name="pc1", password="s3cret-pw")
    assert config.tubes == ["default"] and config.slots == 1 and config.verify is True
    assert config.allow_private_network is False and config.kinds is None
    assert "s3cret-pw" not in repr(config) and "s3cret-pw" not in str(config)
    assert config.resolved_spool_path.name == "spool-pc1.sqlite3"
    assert config.has_standby is False
    config.validate()


def test_toml_then_flags_override(tmp_path):
    path = write(
        tmp_path,
        """
hub_urls = ["https://a.example:6984", "https://b.example:6984"]
name = "pc1"
tubes = "default, windows"
slots = 2
kinds = ["demo.sleep", "http.check"]
claim_k = 3
verify_tls = true

[scripts]
backup = "/opt/backup.py"
report = { path = "/opt/report.sh", interpreter = ["/bin/bash"] }

[limits]
timeout_s = 30
memory_mb = 256
""",
    )
    config, source = build_config(
        path,
        {"slots": 4, "tubes": None, "allow_private_network": True},
        environ={"COUCHFARM_WORKER_PASSWORD": "from-env"},
        keyring_lookup=_no_keyring,
    )
    assert config.hub_urls == ["https://a.example:6984", "https://b.example:6984"]
    assert config.has_standby
    assert config.tubes == ["default", "windows"]  # None flag = not given: file value stays
    assert config.slots == 4 and config.allow_private_network is True
    assert config.kinds == ["demo.sleep", "http.check"] and config.claim_k == 3
    assert config.run_timeout_s == 30 and config.memory_mb == 256
    assert config.scripts["backup"] == "/opt/backup.py"
    assert config.password == "from-env" and "environment" in source


def test_worker_table_is_accepted(tmp_path):
    path = write(tmp_path, '[worker]\nhub_urls = "http://h:5984"\nname = "pc2"\n')
    config, _ = build_config(path, need_password=False, keyring_lookup=_no_keyring, environ={})
    assert config.hub_urls == ["http://h:5984"] and config.name == "pc2"


def test_unknown_keys_and_passwords_in_the_file_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown setting.*colour"):
        build_config(write(tmp_path, 'name = "a"\ncolour = "red"\n'), need_password=False)
    with pytest.raises(ConfigError, match="does not belong in the config file"):
        build_config(write(tmp_path, 'name = "a"\npassword = "x"\n'), need_password=False)
    with pytest.raises(ConfigError, match="not valid TOML"):
        build_config(write(tmp_path, "name = \n"), need_password=False)
    with pytest.raises(ConfigError, match="does not exist"):
        build_config(tmp_path / "missing.toml")


def test_password_order_keyring_then_file_then_environment(tmp_path):
    secret_file = write(tmp_path, "from-file\n", "pw")
    env = {"COUCHFARM_WORKER_PASSWORD": "from-env"}
    from_keyring = resolve_password(
        "pc1", str(secret_file), environ=env, keyring_lookup=lambda name: "kr"
    )
    assert from_keyring == ("kr", "keyring")
    assert resolve_password("pc1", str(secret_file), environ=env, keyring_lookup=_no_keyring) == (
        "from-file",
        f"file {secret_file}",
    )
    assert resolve_password("pc1", None, environ=env, keyring_lookup=_no_keyring)[0] == "from-env"
    assert resolve_password("pc1", None, environ={}, keyring_lookup=_no_keyring) == (None, "none")


def test_keyring_without_a_backend_is_not_an_error(monkeypatch):
    import keyring
    from keyring.errors import NoKeyringError

    def broken(service: str, name: str) -> str:
        raise NoKeyringError("no backend")

    monkeypatch.setattr(keyring, "get_password", broken)
    assert cfg.keyring_password("pc1") is None

    def crashing(service: str, name: str) -> str:
        raise RuntimeError("dbus went away")

    monkeypatch.setattr(keyring, "get_password", crashing)
    assert cfg.keyring_password("pc1") is None


def test_missing_things_are_named(tmp_path):
    with pytest.raises(ConfigError) as err:
        build_config(None, {"name": "pc1"}, environ={}, keyring_lookup=_no_keyring)
    message = str(err.value)
    assert "no hub URL" in message and "--hub" in message
    assert "no password for worker 'pc1'" in message
    assert "keyring" in message and "--password-file" in message
    assert "COUCHFARM_WORKER_PASSWORD" in message
    with pytest.raises(ConfigError, match="no worker name"):
        build_config(None, {"hub_urls": ["http://h"]}, need_password=False)
    with pytest.raises(ConfigError, match=r"password file .* does not exist"):
        build_config(
            None,
            {"hub_urls": ["http://h"], "name": "pc1", "password_file": str(tmp_path / "nope")},
            environ={},
            keyring_lookup=_no_keyring,
        )
    with pytest.raises(ConfigError, match="is empty"):
        build_config(
            None,
            {"hub_urls": ["http://h"], "name": "pc1", "password_file": str(write(tmp_path, ""))},
            environ={},
            keyring_lookup=_no_keyring,
        )


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"name": "Bad Name"}, "worker name 'Bad Name'"),
        ({"hub_urls": ["ftp://h"]}, "must start with http"),
        ({"tubes": ["UPPER"]}, "tube 'UPPER'"),
        ({"slots": 0}, "slots must be 1..256"),
        ({"claim_k": 0}, "claim_k must be"),
        ({"claim_ahead": -1}, "claim_ahead must be 0..64"),
        ({"claim_ahead": 100}, "claim_ahead must be 0..64"),
        ({"touch_at": 0.95}, "touch_at"),
        ({"kinds": ["Not A Kind"]}, "kind 'Not A Kind'"),
        ({"slots": "two"}, "slots must be an integer"),
        ({"scripts": {"x": {"interpreter": ["sh"]}}}, "script 'x' needs a path"),
        ({"cpu_cap_percent": 0}, "cpu_cap_percent must be 1..100"),
        ({"cpu_cap_percent": 150}, "cpu_cap_percent must be 1..100"),
        ({"bandwidth_cap_kbps": -1}, "bandwidth_cap_kbps must be 0"),
        ({"bandwidth_cap_kbps": 1.5}, "bandwidth_cap_kbps must be an integer"),
    ],
)
def test_bad_values_are_explained(overrides, words):
    base = {"hub_urls": ["http://h:5984"], "name": "pc1"}
    with pytest.raises(ConfigError, match=words):
        build_config(None, {**base, **overrides}, need_password=False, keyring_lookup=_no_keyring)


def test_tls_settings(tmp_path):
    bundle = write(tmp_path, "-----BEGIN CERTIFICATE-----\n", "ca.pem")
    assert WorkerConfig(verify_tls=False).verify is False
    assert WorkerConfig(ca_bundle=str(bundle)).verify == str(bundle)
    with pytest.raises(ConfigError, match="ca_bundle"):
        WorkerConfig(hub_urls=["https://h"], name="a", ca_bundle=str(tmp_path / "no.pem")).validate(
            need_password=False
        )


@pytest.mark.parametrize(
    ("platform", "env", "expected"),
    [
        (
            "win32",
            {"LOCALAPPDATA": "C:/Users/u/AppData/Local"},
            "C:/Users/u/AppData/Local/Couchfarm",
        ),
        ("linux", {"XDG_DATA_HOME": "/data/u"}, "/data/u/couchfarm"),
    ],
)
def test_default_spool_lives_in_the_user_data_dir(monkeypatch, platform, env, expected):
    monkeypatch.setattr(sys, "platform", platform)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert cfg.default_spool_path("pc1") == Path(expected) / "spool-pc1.sqlite3"
    monkeypatch.setattr(sys, "platform", "darwin")
    assert "Application Support" in str(cfg.default_data_dir())


def test_caps_come_from_the_file_and_reach_the_run_limits(tmp_path):
    from desktop_worker.runner import limits_from_config

    path = write(
        tmp_path,
        'hub_urls = ["http://h:5984"]\nname = "pc1"\nslots = 2\n'
        "cpu_cap_percent = 25\nbandwidth_cap_kbps = 100\n",
    )
    config, _ = build_config(path, need_password=False, keyring_lookup=_no_keyring)
    assert (config.cpu_cap_percent, config.bandwidth_cap_kbps) == (25, 100)
    limits = limits_from_config(config)
    assert limits.cpu_cap_percent == 25
    assert limits.bandwidth_bps == 100 * 1024 // 2  # the cap is shared by the two slots
    uncapped = limits_from_config(WorkerConfig())
    assert (uncapped.cpu_cap_percent, uncapped.bandwidth_bps) == (100, 0)
