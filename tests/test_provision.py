"""`hub init`, users and the demo, against the real server."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys

import pytest

from hub import cli, designdocs, provision


@pytest.fixture()
def admin_env(couch_server, monkeypatch):
    monkeypatch.setenv("COUCHFARM_URL", couch_server.url)
    monkeypatch.setenv("COUCHFARM_USER", couch_server.admin_user)
    monkeypatch.setenv("COUCHFARM_PASSWORD", couch_server.admin_password)
    return couch_server


def test_init_twice_changes_nothing_the_second_time(admin_env, capsys):
    db = f"farm_init_{secrets.token_hex(3)}"
    assert cli.main(["init", "--db", db, "--hub-user", f"hub_{db}"]) == 0
    first = capsys.readouterr().out
    assert "created" in first and "password (shown once)" in first
    assert cli.main(["init", "--db", db, "--hub-user", f"hub_{db}"]) == 0
    second = capsys.readouterr().out
    assert "0 change(s)" in second
    assert "password" not in second
    admin = admin_env.admin()
    assert admin.get_security(db)["members"]["roles"] == ["farm_admin", "farm_worker"]
    assert provision.user_roles(admin, f"hub_{db}") == ["farm_admin"]


def test_changed_design_doc_is_pushed_and_reported(couch_server, tmp_path):
    admin = couch_server.admin()
    db = f"farm_ddoc_{secrets.token_hex(3)}"
    admin.create_db(db)
    root = tmp_path / "design_docs"
    shutil.copytree(designdocs.DESIGN_ROOT, root)
    assert designdocs.push(admin, db, "claim", root).action == "created"
    assert designdocs.push(admin, db, "claim", root).action == "unchanged"
    map_js = root / "claim" / "views" / "ready" / "map.js"
    map_js.write_text(map_js.read_text().replace("null", "1"))
    report = designdocs.push(admin, db, "claim", root)
    assert (report.action, report.changed) == ("updated", ["views.ready"])


def test_design_doc_functions_compile_on_the_server(farm):
    """Query every view once: a syntax error would surface as a compilation error."""
    for ddoc in designdocs.LIVE_DDOCS:
        for view in designdocs.load(ddoc)["views"]:
            farm.hub.view(farm.db, ddoc, view, limit=1)


def test_init_moves_the_claim_views_out_of_an_older_farm_design_doc(couch_server):
    """A database from before decision 19 holds the claim path's views in _design/farm:
    ``hub init`` creates _design/claim and drops them from _design/farm, and both serve."""
    admin = couch_server.admin()
    db = f"farm_move_{secrets.token_hex(3)}"
    admin.create_db(db)
    claim_views = designdocs.load(designdocs.CLAIM_DDOC)["views"]
    old = designdocs.load(designdocs.FARM_DDOC)
    old["views"] = {**old["views"], **claim_views}
    admin.put(db, old)
    report, _ = provision.init(admin, db, now=admin.now(), hub_user="")
    pushes = [line for line in report.lines if "/_design/" in line]
    assert pushes[0].startswith(f"{db}/_design/claim: created")  # before farm drops them
    assert pushes[1].startswith(f"{db}/_design/farm: updated")
    farm_views = admin.get(db, "_design/farm")["views"]
    assert not set(claim_views) & set(farm_views)
    assert set(admin.get(db, "_design/claim")["views"]) == set(claim_views)
    assert admin.view(db, "claim", "ready", limit=0)["total_rows"] == 0
    assert admin.view(db, "farm", "leases_by_expiry", limit=0)["total_rows"] == 0


def test_worker_add_generates_a_password_once(admin_env, capsys):
    name = f"wk{secrets.token_hex(3)}"
    assert cli.main(["worker", "add", name]) == 0
    out = capsys.readouterr().out
    password = out.split("password (shown once): ")[1].strip()
    assert len(password) >= 20
    session = admin_env.as_user(name, password).session()
    assert session["userCtx"]["roles"] == ["farm_worker"]
    assert cli.main(["worker", "add", name]) == 2
    assert "already exists" in capsys.readouterr().err


def test_client_add_with_password_file(admin_env, tmp_path, capsys):
    name = f"cl{secrets.token_hex(3)}"
    secret = tmp_path / "pw"
    secret.write_text("correct horse battery\n")
    assert cli.main(["client", "add", name, "--password-from", str(secret)]) == 0
    assert "shown once" not in capsys.readouterr().out
    roles = admin_env.as_user(name, "correct horse battery").session()["userCtx"]["roles"]
    assert roles == [f"client:{name}"]


def test_wrong_admin_password_gives_a_clear_error(couch_server, monkeypatch, capsys):
    monkeypatch.setenv("COUCHFARM_URL", couch_server.url)
    monkeypatch.setenv("COUCHFARM_USER", couch_server.admin_user)
    monkeypatch.setenv("COUCHFARM_PASSWORD", "wrong")
    # init asks for a server admin: COUCHDB_* wins where set (a suite run on a real CouchDB).
    monkeypatch.setenv("COUCHDB_USER", couch_server.admin_user)
    monkeypatch.setenv("COUCHDB_PASSWORD", "wrong")
    never = f"farm_never_{secrets.token_hex(3)}"
    assert cli.main(["init", "--db", never]) == 1
    err = capsys.readouterr().err
    assert "401" in err and "wrong user name or password" in err
    assert never not in couch_server.admin().all_dbs()


def test_missing_url_names_the_setting(monkeypatch, capsys):
    for var in ("COUCHFARM_URL", "COUCHDB_URL"):
        monkeypatch.delenv(var, raising=False)
    assert cli.main(["init"]) == 2
    assert "COUCHFARM_URL" in capsys.readouterr().err


def test_demo_starts_and_prints_where_everything_is(couch_server, standby_server, repo_root):
    env = {
        **os.environ,
        "COUCHDB_URL": couch_server.url,
        "COUCHDB_STANDBY_URL": standby_server.url,
        "COUCHDB_USER": couch_server.admin_user,
        "COUCHDB_PASSWORD": couch_server.admin_password,
    }
    if standby_server.admin_password != couch_server.admin_password:
        pytest.skip("the demo uses one admin password for both servers")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "hub.demo",
            "--seconds",
            "12",
            "--db",
            "farm_demo_smoke",
            "--portal-port",
            "-1",
        ],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert f"{couch_server.url}/_utils" in run.stdout
    assert "demo-worker" in run.stdout
    # hub serve ran and materialized the demo task (every 10 s) within those seconds.
    assert "client demo:" in run.stdout, run.stdout
