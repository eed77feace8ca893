"""Where the hub's commands find CouchDB and who they are (hub/settings.py)."""

from __future__ import annotations

import pytest

from hub.settings import SettingsError, connection

DEMO_EXPORTS = {
    "COUCHFARM_URL": "http://127.0.0.1:15984,http://127.0.0.1:15985",
    "COUCHFARM_USER": "hub",
    "COUCHFARM_PASSWORD": "demo-hub",
    "COUCHDB_USER": "admin",
    "COUCHDB_PASSWORD": "demo-admin",
}


@pytest.fixture
def env(monkeypatch):
    for name in (*DEMO_EXPORTS, "COUCHFARM_PASSWORD_FILE", "COUCHFARM_DB", "COUCHDB_URL"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_admin_work_uses_the_server_admin_when_both_pairs_are_exported(env):
    for name, value in DEMO_EXPORTS.items():
        env.setenv(name, value)
    admin = connection(admin=True)
    assert (admin.user, admin.password) == ("admin", "demo-admin")
    assert admin.urls == ["http://127.0.0.1:15984", "http://127.0.0.1:15985"]
    hub = connection()
    assert (hub.user, hub.password) == ("hub", "demo-hub")


def test_an_explicit_user_still_decides_admin_work(env, tmp_path):
    for name, value in DEMO_EXPORTS.items():
        env.setenv(name, value)
    secret = tmp_path / "pw"
    secret.write_text("other\n")
    chosen = connection(user="ops", password_file=str(secret), admin=True)
    assert (chosen.user, chosen.password) == ("ops", "other")


def test_admin_work_without_the_server_admin_pair_uses_the_farm_settings(env):
    env.setenv("COUCHFARM_URL", "http://127.0.0.1:5984")
    env.setenv("COUCHFARM_USER", "hub")
    env.setenv("COUCHFARM_PASSWORD", "x")
    env.setenv("COUCHDB_USER", "admin")  # no password for it: not a usable pair
    admin = connection(admin=True)
    assert (admin.user, admin.password) == ("hub", "x")


def test_no_url_names_the_setting(env):
    with pytest.raises(SettingsError, match="COUCHFARM_URL"):
        connection()
