"""hub.protocol.couch against the real test server: typed errors, bulk order, failover, clock."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from hub.devserver import free_port
from hub.protocol.couch import (
    Conflict,
    Couch,
    Forbidden,
    NotFound,
    ServerClock,
    Unauthorized,
    Unavailable,
    redact_url,
    split_credentials,
)
from tests.servers import fault_servers


@pytest.fixture(scope="module")
def scratch(couch_server):
    admin = couch_server.admin()
    name = f"scratch_{int(time.time() * 1000)}"
    admin.create_db(name)
    yield admin, name
    admin.delete_db(name)


def test_put_conflict_and_not_found_are_typed(scratch):
    couch, db = scratch
    rev = couch.put(db, {"_id": "a:1", "v": 1})
    with pytest.raises(Conflict) as conflict:
        couch.put(db, {"_id": "a:1", "v": 2})
    assert conflict.value.status == 409 and not conflict.value.retried
    couch.put(db, {"_id": "a:1", "_rev": rev, "v": 2})
    with pytest.raises(NotFound):
        couch.get(db, "missing")
    assert couch.get_or_none(db, "missing") is None


def test_conflict_is_never_retried(scratch):
    couch, db = scratch
    couch.put(db, {"_id": "once"})
    before = couch.requests_sent
    with pytest.raises(Conflict):
        couch.put(db, {"_id": "once"})
    assert couch.requests_sent == before + 1


def test_bulk_docs_rows_come_back_in_input_order(scratch):
    couch, db = scratch
    couch.put(db, {"_id": "bulk:exists"})
    ids = [f"bulk:{n:03d}" for n in range(30)]
    docs = (
        [{"_id": i} for i in ids[:15]] + [{"_id": "bulk:exists"}] + [{"_id": i} for i in ids[15:]]
    )
    rows = couch.bulk_docs(db, docs)
    assert [row["id"] for row in rows] == [d["_id"] for d in docs]
    assert rows[15]["error"] == "conflict"
    assert all("rev" in row for i, row in enumerate(rows) if i != 15)


def test_wrong_password_is_unauthorized_with_reason(couch_server):
    couch = couch_server.as_user(couch_server.admin_user, "not-the-password", retries=0)
    with pytest.raises(Unauthorized) as err:
        couch.session()
    assert "401" in str(err.value)


def test_dead_server_fails_over_to_the_next(couch_server):
    dead = f"http://127.0.0.1:{free_port()}"
    couch = Couch(
        [dead, couch_server.url],
        couch_server.admin_user,
        couch_server.admin_password,
        retries=1,
        backoff_base=0.01,
    )
    started = time.monotonic()
    assert "_admin" in couch.session()["userCtx"]["roles"]
    assert time.monotonic() - started < 15
    assert couch.active.url == couch_server.url and couch.failovers == 1


def test_all_servers_dead_raises_unavailable():
    couch = Couch([f"http://127.0.0.1:{free_port()}"], retries=1, backoff_base=0.01)
    with pytest.raises(Unavailable) as err:
        couch.all_dbs()
    assert "127.0.0.1" in str(err.value)


def _fault_primary(couch_server, tmp_path):
    """The primary these tests stop: a PouchDB Server of their own, or on a real CouchDB
    the dedicated one of tests/servers.py (never the suite's COUCHDB_URL)."""
    return fault_servers(
        tmp_path, "primary", real=couch_server.dev is None,
        admin_password=couch_server.admin_password,
    )  # fmt: skip


def test_fail_back_to_primary_when_it_returns(couch_server, tmp_path):
    with _fault_primary(couch_server, tmp_path) as [primary]:
        couch = Couch(
            [primary.url, couch_server.url],
            couch_server.admin_user,
            couch_server.admin_password,
            retries=0,
            fail_back_after=0.5,
        )
        assert couch.on_primary and couch.all_dbs()
        primary.stop()
        couch.all_dbs()
        assert not couch.on_primary
        primary.start()  # the same data, on the same address
        time.sleep(0.6)
        couch.all_dbs()
        assert couch.on_primary


def test_forbidden_is_typed(couch_server, scratch):
    _admin, db = scratch
    admin = couch_server.admin()
    admin.put_security(
        db,
        {
            "admins": {"names": [], "roles": ["nobody"]},
            "members": {"names": [], "roles": ["nobody"]},
        },
    )
    anon = couch_server.as_user(None, None, retries=0)
    with pytest.raises((Unauthorized, Forbidden)):
        anon.get(db, "a:1")
    admin.put_security(db, {})


def test_longpoll_returns_soon_after_a_write(scratch):
    couch, db = scratch
    seq = couch.update_seq(db)
    threading.Timer(0.5, lambda: couch.put(db, {"_id": f"late:{time.time()}"})).start()
    started = time.monotonic()
    results, new_seq = couch.changes(db, since=seq, feed="longpoll", wait=10)
    assert results and new_seq != seq
    assert time.monotonic() - started < 5


def test_longpoll_wait_is_bounded_with_no_change(scratch):
    couch, db = scratch
    started = time.monotonic()
    results, _seq = couch.changes(db, since=couch.update_seq(db), feed="longpoll", wait=1)
    assert results == []
    assert time.monotonic() - started < 12  # heartbeat granularity on PouchDB is ~6 s


def test_server_clock_narrows_to_the_second_boundary():
    clock = ServerClock()
    true_offset = 3600.25  # the server runs an hour and a quarter second ahead
    for local in (1000.0, 1000.3, 1000.6, 1000.8, 1001.1):
        server_now = local + true_offset
        header = format_datetime(datetime.fromtimestamp(int(server_now), UTC), usegmt=True)
        clock.observe(header, local - 0.01, local + 0.01)
    assert abs(clock.offset - true_offset) < 0.1
    assert clock.uncertainty < 0.15
    assert abs(clock.now(local_time=5000.0).timestamp() - (5000.0 + true_offset)) < 0.1


def test_server_clock_restarts_after_a_jump():
    clock = ServerClock()
    clock.observe("Sun, 22 Nov 2026 06:00:00 GMT", 1000.0, 1000.1)
    clock.observe("Sun, 22 Nov 2026 09:00:00 GMT", 1001.0, 1001.1)
    assert clock.offset > datetime(2026, 11, 22, 8, 59, tzinfo=UTC).timestamp() - 1001.1


def test_live_server_clock_matches_local_clock_here(couch_server):
    couch = couch_server.admin()
    for _ in range(3):
        couch.all_dbs()
    assert abs((couch.now() - datetime.now(UTC)).total_seconds()) < 1.5


def test_credentials_never_show_in_labels():
    bare, user, password = split_credentials("https://bob:s%40cret@db.example:6984/")
    assert (bare, user, password) == ("https://db.example:6984", "bob", "s@cret")
    assert "cret" not in redact_url("https://bob:s%40cret@db.example:6984/")


def test_fail_back_waits_until_the_primary_has_caught_up(couch_server, tmp_path):
    """A primary rebuilt empty answers '/' long before its data is back: no fail-back yet.
    (Empty of ``db``: a name new to both servers, so a persistent primary needs no wipe.)"""
    admin_user, admin_pw = couch_server.admin_user, couch_server.admin_password
    db = f"home_{int(time.time() * 1000)}"
    backup = couch_server.admin()
    backup.create_db(db)
    backup.bulk_docs(db, [{"_id": f"d{n}"} for n in range(50)])
    try:
        with _fault_primary(couch_server, tmp_path) as [primary]:
            fresh = Couch(primary.url, admin_user, admin_pw)
            try:
                couch = Couch([primary.url, couch_server.url], admin_user, admin_pw,
                              retries=0, fail_back_after=0.2, home_db=db)  # fmt: skip
                primary.stop()
                couch.all_dbs()
                assert not couch.on_primary
                primary.start()  # back, but without db
                time.sleep(0.3)
                couch.all_dbs()
                assert not couch.on_primary
                fresh.create_db(db)
                fresh.bulk_docs(db, [{"_id": f"d{n}"} for n in range(50)])
                time.sleep(0.3)
                couch.all_dbs()
                assert couch.on_primary
            finally:
                if primary.persistent:
                    primary.close()  # running, so that db can be dropped
                    fresh.delete_db(db)
    finally:
        backup.delete_db(db)


def test_fail_back_soon_checks_the_primary_at_the_next_request(couch_server, standby_server):
    couch = Couch([couch_server.url, standby_server.url], couch_server.admin_user,
                  couch_server.admin_password, retries=0, fail_back_after=3600)  # fmt: skip
    couch._fail_over_from(0)  # as a dead primary would
    couch.all_dbs()
    assert not couch.on_primary  # an hour before it looks again by itself
    couch.fail_back_soon()
    couch.all_dbs()
    assert couch.on_primary
