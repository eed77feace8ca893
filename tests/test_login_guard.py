"""Portal logins cannot lock anyone out (hub.portal.login_guard), against the real server.

What reaches CouchDB is counted by wrapping the portal's own ``POST /_session`` check; on
CouchDB 3 the last test also relies on its real lockout (``[chttpd_auth_lockout]``).
"""

from __future__ import annotations

import hashlib

import pytest
from fastapi.testclient import TestClient

import hub.portal.app as portal_app
from hub.portal.app import create_app
from hub.portal.login_guard import LoginGuard, password_matches
from hub.portal.security import couch_authenticator
from hub.service import FarmService

SECRET = "test-secret-key-for-the-login-guard-0123456789"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def couch_asked(monkeypatch) -> dict[str, list[bool]]:
    """Every password the portal sends to CouchDB, per user: True when CouchDB accepted."""
    asked: dict[str, list[bool]] = {}

    def counting(couch):
        check = couch_authenticator(couch)

        def wrapped(name: str, password: str):
            ctx = check(name, password)
            asked.setdefault(name, []).append(ctx is not None)
            return ctx

        return wrapped

    monkeypatch.setattr(portal_app, "couch_authenticator", counting)
    return asked


def _post(app, address: str, user: str, password: str):
    client = TestClient(app, client=(address, 1))
    return client.post("/login", data={"username": user, "password": password})


# ---------------------------------------------------------------- hashes


def _pbkdf2_doc(password: str, prf: str, iterations: int, length: int) -> dict:
    salt = "5a1t" * 8
    key = hashlib.pbkdf2_hmac(prf, password.encode(), salt.encode(), iterations, length)
    return {"password_scheme": "pbkdf2", "pbkdf2_prf": prf, "salt": salt,
            "iterations": iterations, "derived_key": key.hex()}  # fmt: skip


@pytest.mark.parametrize(("prf", "length"), [("sha1", 20), ("sha256", 32)])
def test_pbkdf2_hashes_of_both_servers_are_checked(prf, length):
    doc = _pbkdf2_doc("right horse", prf, 50, length)
    assert password_matches(doc, "right horse") is True
    assert password_matches(doc, "wrong horse") is False
    assert password_matches({k: v for k, v in doc.items() if k != "pbkdf2_prf"} | {
        "derived_key": _pbkdf2_doc("x", "sha1", 50, 20)["derived_key"]}, "x") is True  # fmt: skip


def test_the_simple_scheme_and_unknown_hashes():
    salt = "abc123"
    doc = {"password_scheme": "simple", "salt": salt,
           "password_sha": hashlib.sha1(b"pw" + salt.encode()).hexdigest()}  # fmt: skip
    assert password_matches(doc, "pw") is True
    assert password_matches(doc, "pw2") is False
    # Not yet hashed, an unknown scheme, a broken key: no verdict, so nobody is refused
    # or let in on a guess.
    assert password_matches({"password": "pw", "salt": "x"}, "pw") is None
    assert password_matches({"password_scheme": "bcrypt", "salt": "x"}, "pw") is None
    assert password_matches({**_pbkdf2_doc("a", "sha1", 5, 20), "derived_key": "zz"}, "a") is None
    assert password_matches({**_pbkdf2_doc("a", "md5", 5, 16)}, "a") is None


def test_the_guards_budget_and_known_passwords_are_per_user_and_expire():
    clock = FakeClock()
    guard = LoginGuard(couch_failures=2, couch_window=300, clock=clock)
    assert guard.check("acme", "x").action == "ask_couch"
    guard.couch_accepted("acme", "the-real-one")
    guard.couch_refused("acme")
    guard.couch_refused("acme")
    held = guard.check("acme", "another-guess")
    assert held.action == "refuse" and 1 <= held.retry_after <= 300
    assert "300 seconds" in held.message or str(held.retry_after) in held.message
    assert guard.check("acme", "the-real-one").action == "ask_couch"
    assert guard.check("globex", "anything").action == "ask_couch"
    clock.now += 300
    assert guard.check("acme", "another-guess").action == "ask_couch"


# ---------------------------------------------------------------- through the portal


def test_thirty_wrong_passwords_lock_out_only_the_guesser(farm, couch_asked):
    """Checked against _users first (the hub's server-admin connection): the guesser's
    wrong passwords never reach CouchDB, and the owner logs in from elsewhere at once."""
    app = create_app(FarmService(farm.hub, farm.db), farm.hub, secret_key=SECRET,
                     clock=FakeClock(), users_reader=farm.admin)  # fmt: skip
    answers = [_post(app, "203.0.113.7", "acme", f"guess-{n}") for n in range(30)]
    codes = [reply.status_code for reply in answers]
    assert codes[:5] == [401] * 5 and set(codes[5:]) == {429}, codes
    limited = answers[-1]
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert "from your address" in limited.json()["detail"]
    assert couch_asked.get("acme", []) == []

    owner = _post(app, "198.51.100.20", "acme", farm.passwords["acme"])
    assert owner.status_code == 200, owner.text
    assert couch_asked["acme"] == [True]


def test_guesses_from_many_addresses_never_reach_couchdb_with_a_users_reader(farm, couch_asked):
    app = create_app(FarmService(farm.hub, farm.db), farm.hub, secret_key=SECRET,
                     clock=FakeClock(), users_reader=farm.admin)  # fmt: skip
    for n in range(20):
        assert _post(app, f"192.0.2.{n}", "globex", "nope").status_code == 401
    assert _post(app, "unknown-user-address", "nobody-here", "x").status_code == 401
    assert couch_asked == {}
    assert _post(app, "192.0.2.200", "globex", farm.passwords["globex"]).status_code == 200


def test_without_a_users_reader_couchdb_sees_fewer_failures_than_its_threshold(farm, couch_asked):
    clock = FakeClock()
    app = create_app(FarmService(farm.hub, farm.db), farm.hub, secret_key=SECRET, clock=clock)
    # The owner has logged in through this portal before.
    assert _post(app, "198.51.100.1", "acme", farm.passwords["acme"]).status_code == 200
    codes = [_post(app, f"192.0.2.{n}", "acme", "wrong").status_code for n in range(30)]
    assert codes[:2] == [401, 401] and set(codes[2:]) == {429}, codes
    assert couch_asked["acme"] == [True, False, False]  # 2 failures: under CouchDB's 5
    held = _post(app, "192.0.2.99", "acme", "wrong")
    assert "too many failed logins" in held.json()["detail"]
    # The password that worked here before still does, from anywhere, at once.
    assert _post(app, "198.51.100.2", "acme", farm.passwords["acme"]).status_code == 200
    # Someone who never logged in here waits out CouchDB's window, no longer.
    for n in range(3):
        _post(app, f"192.0.2.{100 + n}", "globex", "wrong")
    assert _post(app, "198.51.100.3", "globex", farm.passwords["globex"]).status_code == 429
    clock.now += 311
    assert _post(app, "198.51.100.3", "globex", farm.passwords["globex"]).status_code == 200
    assert couch_asked["globex"].count(False) == 2


@pytest.mark.needs_couchdb
def test_couchdbs_own_lockout_never_fires_because_of_the_portal(farm, couch_asked):
    """CouchDB 3 locks (peer, user) after 5 failures; the portal's one address must never
    get there, with or without the users reader."""
    if farm.server.is_pouchdb:
        pytest.skip("PouchDB Server has no login lockout")
    for reader in (farm.admin, None):
        app = create_app(FarmService(farm.hub, farm.db), farm.hub, secret_key=SECRET,
                         clock=FakeClock(), users_reader=reader)  # fmt: skip
        for n in range(30):
            _post(app, f"203.0.113.{n % 3}", "globex", f"guess-{n}")
        owner = _post(app, "198.51.100.50", "globex", farm.passwords["globex"])
        assert owner.status_code in (200, 429), owner.text
        # CouchDB itself still lets the owner in from the portal's address.
        assert (
            farm.server.as_user("globex", farm.passwords["globex"])
            .request("GET", "/_session")
            .body["userCtx"]["name"]
            == "globex"
        )
