"""The client portal against the real test server: login, sessions, CSRF, rate limits, API
tokens, isolation between clients, dashboard figures, history, export, the task form."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from hub import archiver, provision
from hub.portal.app import PortalSettings, create_app
from hub.portal.forms import field_of
from hub.portal.security import RateLimiter, token_hash
from hub.protocol import states
from hub.protocol.model import Occurrence, Progress, WorkerDoc, occurrence_id, worker_id
from hub.protocol.names import results_db
from hub.protocol.timefmt import from_wire, to_wire
from hub.service import FarmService, build_task

SECRET = "test-secret-key-for-the-portal-0123456789"
EVERY = {"kind": "demo.sleep", "input": {"ms": 10}, "schedule": {"every": 60}}


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def service(farm) -> FarmService:
    return FarmService(farm.hub, farm.db)


@pytest.fixture(scope="module")
def app(farm, service):
    return create_app(service, farm.hub, secret_key=SECRET)


def login(app, user: str, password: str, **kwargs) -> TestClient:
    client = TestClient(app, **kwargs)
    reply = client.post("/login", data={"username": user, "password": password})
    assert reply.status_code == 200, reply.text
    client.headers["X-CSRF-Token"] = reply.json()["csrf_token"]
    return client


@pytest.fixture(scope="module")
def acme(app, farm) -> TestClient:
    return login(app, "acme", farm.passwords["acme"])


@pytest.fixture(scope="module")
def globex(app, farm) -> TestClient:
    return login(app, "globex", farm.passwords["globex"])


@pytest.fixture(scope="module")
def operator(app, farm) -> TestClient:
    return login(app, "hub", farm.passwords["hub"])


@pytest.fixture(scope="module")
def world(farm, service):
    """acme/ping: created 60 days ago, with archived results in older months and live
    occurrences in every state; acme/quiet with nothing; globex/gtask."""
    now = farm.now().replace(microsecond=0)
    ping = build_task("acme", "ping", EVERY, now - timedelta(days=60))
    farm.hub.put(farm.db, ping.to_doc())
    service.add_task("acme", "quiet", {**EVERY, "schedule": {"every": 3600}})
    service.add_task("globex", "gtask", EVERY)

    def born(due, state=states.State.READY):
        return states.materialize(ping, due, due, state=state)

    def ran_ok(due):
        started = due + timedelta(seconds=1)
        leased = states.claim(born(due), "w1", started)
        return states.finish(
            leased, "w1", due + timedelta(seconds=3), started_at=started, output={"n": 1}
        )

    def ran_failed(due, permanent=True):
        leased = states.claim(born(due), "w1", due + timedelta(seconds=1))
        return states.fail(leased, "w1", due + timedelta(seconds=2), error="boom", permanent=True)

    old = now - timedelta(days=45)
    recent = now - timedelta(hours=3)
    archived = [ran_ok(old + timedelta(minutes=k)) for k in range(3)]
    archived += [ran_failed(old + timedelta(minutes=3)), born(old + timedelta(minutes=4), "missed")]
    archived += [ran_ok(recent + timedelta(minutes=k)) for k in range(5)]
    archived += [ran_failed(recent + timedelta(minutes=5))]

    def ago(minutes):
        return now - timedelta(minutes=minutes)

    buried = born(ago(5))
    buried = buried.model_copy(update={"max_attempts": 1})
    buried = states.fail(states.claim(buried, "w2", ago(5)), "w2", ago(4), error="kaput")
    leased = states.claim(born(ago(8)), "w3", now)
    leased = states.touch(leased, "w3", now, Progress(num=3, den=10, msg="step 3 of 10"))
    live = {
        "L1": ran_ok(ago(2)),
        "L2": ran_ok(ago(3)),
        "L3": ran_failed(ago(4)),
        "L4": buried,
        "L5": born(ago(6), "missed"),
        "L6": born(ago(7), "skipped"),
        "L7": born(ago(1)),
        "L8": leased,
    }
    for occ in live.values():
        farm.hub.put(farm.db, occ.to_doc())
    by_month: dict[str, list] = {}
    for occ in [*archived, live["L1"]]:  # L1 is both archived and still live (kept)
        by_month.setdefault(results_db(farm.db, from_wire(occ.due_at)), []).append(occ)
    for month_db, occs in by_month.items():
        provision.ensure_results_db(farm.admin, month_db)
        # Through the archiver's own write, so the month's tallies count them.
        docs = [archiver.to_result(o).to_doc() for o in occs]
        rows = archiver.store_results(farm.hub, month_db, docs, now)
        assert all("rev" in row for row in rows), rows
    globex_occ = states.materialize(service.get_task("globex", "gtask"), ago(1), ago(1))
    farm.hub.put(farm.db, globex_occ.to_doc())
    return {"now": now, "ping": ping, "live": live, "archived": archived, "globex": globex_occ}


# ---------------------------------------------------------------- login, sessions, CSRF


def test_login_sets_a_hardened_session_cookie(app, farm):
    client = TestClient(app)
    reply = client.post("/login", data={"username": "acme", "password": farm.passwords["acme"]})
    assert reply.status_code == 200
    assert reply.json()["client"] == "acme" and reply.json()["admin"] is False
    cookie = reply.headers["set-cookie"]
    assert "cf_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "Secure" not in cookie  # plain http here
    secure = TestClient(app, base_url="https://testserver").post(
        "/login", data={"username": "acme", "password": farm.passwords["acme"]}
    )
    assert "Secure" in secure.headers["set-cookie"]
    assert client.get("/api/me").json() == {
        "user": "acme", "client": "acme", "admin": False, "via": "session",
    }  # fmt: skip
    setting = create_app(
        FarmService(farm.hub, farm.db), farm.hub, secret_key=SECRET,
        settings=PortalSettings(secret_key=SECRET, secure_cookies=True),
    )  # fmt: skip
    forced = TestClient(setting).post(
        "/login", data={"username": "acme", "password": farm.passwords["acme"]}
    )
    assert "Secure" in forced.headers["set-cookie"]


def test_security_headers_on_every_page(app):
    reply = TestClient(app).get("/login")
    assert reply.status_code == 200
    assert "script-src 'self'" in reply.headers["content-security-policy"]
    assert reply.headers["x-frame-options"] == "DENY"
    assert reply.headers["x-content-type-options"] == "nosniff"


def test_wrong_password_and_unknown_users_are_refused(app, farm):
    refused = [("acme", "wrong"), ("nobody", "x"), ("a:b", "x"), ("", ""),
               ('"acme"', "x"), ("{a}", "y")]  # fmt: skip
    for n, (user, password) in enumerate(refused):
        # A fresh address each time, so the login rate limit does not answer instead.
        client = TestClient(app, client=(f"10.0.1.{n}", 1))
        reply = client.post("/login", data={"username": user, "password": password})
        assert reply.status_code == 401, (user, reply.text)
        assert reply.json()["detail"] == "name or password is incorrect"
        assert client.get("/api/me").status_code == 401


def test_worker_users_have_no_portal_access(app, farm):
    reply = TestClient(app).post(
        "/login", data={"username": "w1", "password": farm.passwords["w1"]}
    )
    assert reply.status_code == 403


def test_pages_redirect_to_login_and_back(app, farm):
    client = TestClient(app, follow_redirects=False)
    reply = client.get("/tasks/ping", headers={"Accept": "text/html"})
    assert reply.status_code == 303 and reply.headers["location"] == "/login?next=%2Ftasks%2Fping"
    page = client.get("/login?next=/tasks/ping", headers={"Accept": "text/html"})
    nonce = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    done = client.post(
        "/login",
        data={"username": "acme", "password": farm.passwords["acme"], "csrf_token": nonce,
              "next": "/tasks/ping"},
        headers={"Accept": "text/html", "Origin": "http://testserver"},
    )  # fmt: skip
    assert done.status_code == 303 and done.headers["location"] == "/tasks/ping"
    # Only local paths are followed after login.
    page = client.get("/login", headers={"Accept": "text/html"})
    nonce = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    evil = client.post(
        "/login",
        data={"username": "acme", "password": farm.passwords["acme"], "csrf_token": nonce,
              "next": "//evil.example/x"},
        headers={"Accept": "text/html"},
    )  # fmt: skip
    assert evil.headers["location"] == "/"


def test_the_login_form_cannot_be_forged_from_another_site(app, farm):
    client = TestClient(app)
    data = {"username": "acme", "password": farm.passwords["acme"]}
    foreign = client.post("/login", data=data, headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 403
    # A browser (it sends Origin or Sec-Fetch-Site) must bring the form's token.
    no_token = client.post("/login", data=data, headers={"Sec-Fetch-Site": "same-origin"})
    assert no_token.status_code == 403
    bad_token = client.post("/login", data={**data, "csrf_token": "guess"})
    assert bad_token.status_code == 403


def test_logout_ends_the_session_even_for_a_copied_cookie(app, farm):
    client = login(app, "acme", farm.passwords["acme"])
    stolen = client.cookies.get("cf_session")
    assert client.post("/logout").status_code == 200
    assert client.get("/api/me").status_code == 401
    thief = TestClient(app, cookies={"cf_session": stolen})
    assert thief.get("/api/me").status_code == 401


@pytest.mark.parametrize("change", ["password", "deleted", "role removed", "nothing"])
def test_a_session_is_rechecked_against_couchdb_within_a_minute(farm, service, change):
    """A change in CouchDB's _users ends an open portal session at the next recheck."""
    clock = FakeClock()
    app = create_app(service, farm.hub, secret_key=SECRET, clock=clock)
    name, password = f"carol-{change.replace(' ', '-')}", "first-password-123"
    provision.add_user(farm.admin, name, ["client:acme"], password, replace=True)
    client = TestClient(app)
    reply = client.post("/login", data={"username": name, "password": password})
    assert reply.status_code == 200, reply.text
    assert client.get("/api/me").json()["user"] == name
    user_doc = farm.admin.get("_users", f"org.couchdb.user:{name}")
    if change == "password":
        provision.add_user(farm.admin, name, ["client:acme"], "second-password-456", replace=True)
    elif change == "deleted":
        farm.admin.delete("_users", user_doc["_id"], user_doc["_rev"])
    elif change == "role removed":
        farm.admin.put("_users", {**user_doc, "roles": ["farm_worker"]})
    # Within the recheck interval the session is taken on trust (bounded staleness)...
    clock.now += 59
    assert client.get("/api/me").status_code == 200
    # ... and past it CouchDB is asked again.
    clock.now += 2
    expected = 200 if change == "nothing" else 401
    assert client.get("/api/me").status_code == expected
    clock.now += 61  # a refreshed check lasts another interval; an ended one stays ended
    assert client.get("/api/me").status_code == expected
    if change == "password":
        again = client.post("/login", data={"username": name, "password": "second-password-456"})
        assert again.status_code == 200
        assert client.get("/api/me").status_code == 200


def test_a_restarted_portal_asks_for_a_new_login(farm, service):
    """The CouchDB session a portal session is rechecked with lives in the process."""
    first = create_app(service, farm.hub, secret_key=SECRET)
    client = login(first, "acme", farm.passwords["acme"])
    second = create_app(service, farm.hub, secret_key=SECRET)
    moved = TestClient(second, cookies={"cf_session": client.cookies.get("cf_session")})
    assert moved.get("/api/me").status_code == 401


def test_a_tampered_cookie_is_ignored(app, acme):
    cookie = acme.cookies.get("cf_session")
    forged = cookie.replace(cookie[10], "A" if cookie[10] != "A" else "B", 1)
    assert TestClient(app, cookies={"cf_session": forged}).get("/api/me").status_code == 401
    other_key = create_app(acme.app.state.data.service, lambda u, p: None, secret_key="x" * 32)
    assert TestClient(other_key, cookies={"cf_session": cookie}).get("/api/me").status_code == 401


def test_changes_need_the_csrf_token(app, farm, world):
    client = login(app, "acme", farm.passwords["acme"])
    token = client.headers.pop("X-CSRF-Token")
    assert client.post("/api/tasks/quiet/pause").status_code == 403
    wrong = client.post("/api/tasks/quiet/pause", headers={"X-CSRF-Token": "nope"})
    assert wrong.status_code == 403
    form = client.post("/tasks/quiet/do/pause", data={"csrf_token": "nope"})
    assert form.status_code == 403
    foreign = client.post(
        "/api/tasks/quiet/pause",
        headers={"X-CSRF-Token": token, "Origin": "https://evil.example"},
    )
    assert foreign.status_code == 403
    ok = client.post("/api/tasks/quiet/pause", headers={"X-CSRF-Token": token})
    assert ok.status_code == 200 and ok.json()["paused"] is True
    ok = client.post("/tasks/quiet/do/resume", data={"csrf_token": token}, follow_redirects=False)
    assert ok.status_code == 303
    assert client.get("/api/tasks/quiet").json()["paused"] is False


# ---------------------------------------------------------------- rate limiting


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_failed_logins_are_rate_limited_per_ip(farm, service):
    clock = FakeClock()
    app = create_app(service, farm.hub, secret_key=SECRET, clock=clock)
    client = TestClient(app, client=("192.0.2.1", 1))
    for i in range(5):
        reply = client.post("/login", data={"username": f"guess{i}", "password": "x"})
        assert reply.status_code == 401
    limited = client.post("/login", data={"username": "acme", "password": farm.passwords["acme"]})
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    other_ip = TestClient(app, client=("192.0.2.2", 1))
    assert (
        other_ip.post(
            "/login", data={"username": "acme", "password": farm.passwords["acme"]}
        ).status_code
        == 200
    )
    clock.now += 61
    assert (
        client.post(
            "/login", data={"username": "acme", "password": farm.passwords["acme"]}
        ).status_code
        == 200
    )


def test_rate_limiter_window():
    clock = FakeClock()
    limiter = RateLimiter(limit=2, window=10, clock=clock)
    limiter.fail("k")
    clock.now += 5
    limiter.fail("k")
    assert limiter.retry_after("k") == 5
    clock.now += 5.5
    assert limiter.retry_after("k") is None


# ---------------------------------------------------------------- API tokens


def test_api_tokens_are_stored_hashed_and_can_be_revoked(app, farm, acme, globex, world):
    created = acme.post("/api/tokens", json={"name": "nightly"})
    assert created.status_code == 201
    token = created.json()["token"]
    token_id = created.json()["id"]
    assert token.startswith("cft_") and token_id == token_hash(token)
    stored = farm.admin.get(farm.db, f"hub:token:{token_id}")
    assert token not in json.dumps(stored) and stored["scope"] == "client:acme"
    listed = acme.get("/api/tokens").json()["tokens"]
    assert [t["name"] for t in listed] == ["nightly"] and "token" not in listed[0]
    assert globex.get("/api/tokens").json()["tokens"] == []

    script = TestClient(app, headers={"Authorization": f"Bearer {token}"})
    assert script.get("/api/me").json()["via"] == "token"
    assert [t["name"] for t in script.get("/api/tasks").json()["tasks"]] == ["ping", "quiet"]
    # A bearer request needs no CSRF token: browsers never send it on their own.
    assert script.post("/api/tasks/quiet/pause").status_code == 200
    assert script.post("/api/tasks/quiet/resume").status_code == 200

    assert globex.delete(f"/api/tokens/{token_id}").status_code == 404
    assert acme.delete("/api/tokens/not-a-hash").status_code == 404
    assert acme.delete(f"/api/tokens/{token_id}").status_code == 200
    assert script.get("/api/me").status_code == 401
    bogus = TestClient(app, headers={"Authorization": "Bearer cft_made_up"})
    assert bogus.get("/api/tasks").status_code == 401


def test_token_page_shows_the_secret_once(acme):
    page = acme.post("/tokens", data={"name": "from the page"}, headers={"Accept": "text/html"})
    assert page.status_code == 200
    secret = re.search(r'<pre class="token" id="new-token">(cft_[^<]+)</pre>', page.text).group(1)
    again = acme.get("/tokens", headers={"Accept": "text/html"})
    assert secret not in again.text and "from the page" in again.text
    token_id = token_hash(secret)
    gone = acme.post(f"/tokens/{token_id}/revoke", follow_redirects=False)
    assert gone.status_code == 303


# ---------------------------------------------------------------- isolation


def test_a_client_sees_nothing_of_another_client(app, farm, acme, globex, world):
    """Every page and API call, with acme's names and ids, answers globex 404."""
    occ = world["live"]["L1"].id
    archived = world["archived"][0].id
    targets = [
        ("GET", "/api/tasks/ping"),
        ("GET", "/api/tasks/task:acme:ping"),
        ("GET", "/api/tasks/ping/occurrences"),
        ("GET", f"/api/tasks/ping/occurrences/{occ}"),
        ("GET", f"/api/tasks/gtask/occurrences/{occ}"),
        ("GET", f"/api/tasks/gtask/occurrences/{archived}"),
        ("GET", "/api/tasks/ping/results.csv"),
        ("GET", "/api/tasks/ping/results.jsonl"),
        ("GET", "/api/tasks/ping/series"),
        ("PATCH", "/api/tasks/ping"),
        ("DELETE", "/api/tasks/ping"),
        ("POST", "/api/tasks/ping/pause"),
        ("POST", "/api/tasks/ping/resume"),
        ("POST", "/api/tasks/ping/run-now"),
        ("POST", "/api/tasks/ping/kick"),
        ("POST", f"/api/tasks/ping/occurrences/{occ}/cancel"),
        ("POST", f"/api/tasks/gtask/occurrences/{occ}/cancel"),
        ("GET", "/tasks/ping"),
        ("GET", "/tasks/ping/edit"),
        ("POST", "/tasks/ping/edit"),
        ("GET", f"/tasks/ping/occurrences/{occ}"),
        ("POST", "/tasks/ping/do/pause"),
        ("POST", "/tasks/ping/do/delete"),
        ("GET", "/api/ops"),
        ("GET", "/ops"),
    ]
    for method, path in targets:
        for params in ({}, {"client": "acme"}):
            kwargs = {"json": {}} if method == "PATCH" else {}
            reply = globex.request(method, path, params=params, **kwargs)
            assert reply.status_code == 404, (method, path, params, reply.status_code)
            assert "acme" not in reply.text.replace("task:acme:ping", ""), (path, reply.text)
    listed = globex.get("/api/tasks", params={"client": "acme"}).json()
    assert [t["name"] for t in listed["tasks"]] == ["gtask"]
    assert "ping" not in globex.get("/", headers={"Accept": "text/html"}).text
    # And acme's things are untouched.
    task = acme.get("/api/tasks/ping").json()
    assert task["paused"] is False
    assert farm.admin.get(farm.db, occ)["state"] == "done"
    # Creating a task with another client's name makes the caller's own task.
    made = globex.post("/api/tasks", json={"name": "ping", **EVERY})
    assert made.status_code == 201 and made.json()["client"] == "globex"
    assert acme.get("/api/tasks/ping").json()["client"] == "acme"
    assert globex.delete("/api/tasks/ping").status_code == 200


def test_operators_act_for_a_named_client(operator, world):
    assert operator.get("/api/me").json()["admin"] is True
    assert operator.get("/api/tasks").status_code == 400
    names = [t["name"] for t in operator.get("/api/tasks?client=acme").json()["tasks"]]
    assert names == ["ping", "quiet"]
    assert operator.get("/api/tasks/ping?client=acme").json()["client"] == "acme"
    assert operator.get("/api/tasks/ping?client=globex").status_code == 404
    page = operator.get("/", headers={"Accept": "text/html"})
    assert "acme" in page.text and "globex" in page.text


# ---------------------------------------------------------------- dashboard


def test_dashboard_counts_from_live_and_archived_results(acme, world):
    board = acme.get("/api/tasks").json()
    ping = next(t for t in board["tasks"] if t["name"] == "ping")
    assert ping["counts"] == {
        "ready": 1, "leased": 1, "done": 10, "failed": 3, "buried": 1, "missed": 2, "skipped": 1,
    }  # fmt: skip
    assert ping["ok"] == 10 and ping["error"] == 3
    assert ping["success_rate"] == round(10 / 13, 4)
    assert ping["last"]["status"] == "ok"
    assert ping["last"]["occurrence"] == world["live"]["L1"].id
    assert ping["next_due"] > board["at"]
    quiet = next(t for t in board["tasks"] if t["name"] == "quiet")
    assert quiet["success_rate"] is None and quiet["last"] is None
    assert board["totals"]["done"] == 10 and board["totals"]["tasks"] == 2


def test_dashboard_page_renders_with_polling_hook(acme, world):
    page = acme.get("/", headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert 'data-poll="/api/tasks"' in page.text and 'data-task="ping"' in page.text
    assert "76.9%" in page.text  # 10 of 13


# ---------------------------------------------------------------- task page, history


def test_history_merges_live_and_archive_newest_first(acme, world):
    first = acme.get("/api/tasks/ping/occurrences", params={"limit": 7}).json()
    rows = first["occurrences"]
    assert len(rows) == 7
    assert [r["due_at"] for r in rows] == sorted((r["due_at"] for r in rows), reverse=True)
    seen = [r["id"] for r in rows]
    cursor = first["next_before"]
    while cursor:
        page = acme.get("/api/tasks/ping/occurrences", params={"limit": 7, "before": cursor}).json()
        seen += [r["id"] for r in page["occurrences"]]
        cursor = page["next_before"]
    assert len(seen) == len(set(seen)) == 19
    l1 = [r for r in rows if r["id"] == world["live"]["L1"].id]
    assert l1 and l1[0]["source"] == "archive" and l1[0]["duration_ms"] == 2000


def test_history_filters_by_state_and_time(acme, world):
    failed = acme.get("/api/tasks/ping/occurrences", params={"state": "failed"}).json()
    assert len(failed["occurrences"]) == 3
    assert {r["error"] for r in failed["occurrences"]} == {"boom"}
    since = to_wire(world["now"] - timedelta(days=1))
    recent = acme.get("/api/tasks/ping/occurrences", params={"since": since}).json()
    assert len(recent["occurrences"]) == 14  # 6 archived today + 8 live
    assert acme.get("/api/tasks/ping/occurrences?state=bogus").status_code == 400
    assert acme.get("/api/tasks/ping/occurrences?since=yesterday").status_code == 400


def test_task_page_shows_progress_errors_and_plot_hook(acme, world):
    page = acme.get("/tasks/ping", headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert "step 3 of 10" in page.text and '<progress max="10" value="3">' in page.text
    assert "kaput" in page.text  # the buried run's error
    assert 'data-series="/api/tasks/ping/series"' in page.text
    series = acme.get(
        "/api/tasks/ping/series",
        params={"since": to_wire(world["now"] - timedelta(hours=4)), "buckets": 24},
    ).json()
    runs = sum(p["runs"] for p in series["points"])
    assert runs == 6 + 2 + 1  # today's archived + L1..L3 (ran); L1 counted once
    assert all(p["duration_ms"] == 2000 for p in series["points"])


def test_task_plot_starts_at_the_first_run(acme, world):
    page = acme.get("/tasks/ping", headers={"Accept": "text/html"}).text
    first = world["archived"][0].due_at  # the oldest run, 45 days ago
    assert f'data-first-run="{first}"' in page
    assert '<option value="first" selected>since the first run</option>' in page
    quiet = acme.get("/tasks/quiet", headers={"Accept": "text/html"}).text
    assert "data-first-run" not in quiet  # no runs yet: the plot's script falls back


def test_dashboard_activity_counts_runs_per_hour(acme, operator, world):
    activity = acme.get("/api/activity").json()
    points = activity["points"]
    # 24 hours asked; the runs began 3 hours ago, so the empty hours before are trimmed
    # down to the six the plot always shows.
    assert activity["bucket_seconds"] == 3600 and len(points) == 6
    assert [p["t"] for p in points] == sorted(p["t"] for p in points)
    # In the last day: 6 archived (5 ok, 1 failed) and L1..L3 live (L1 also archived: once).
    assert sum(p["runs"] for p in points) == 9
    assert sum(p["ok"] for p in points) == 7
    for p in points:
        assert p["success_rate"] == (round(p["ok"] / p["runs"], 4) if p["runs"] else None)
    # The same runs as the task's own plot over that window.
    series = acme.get(
        "/api/tasks/ping/series", params={"since": activity["since"], "until": activity["until"]}
    ).json()
    assert sum(p["runs"] for p in series["points"]) == 9
    # A short window keeps at least six hours; operators name the client.
    assert len(acme.get("/api/activity", params={"hours": 2}).json()["points"]) == 2
    assert operator.get("/api/activity").status_code == 400
    assert operator.get("/api/activity", params={"client": "acme"}).json() == activity
    assert acme.get("/api/activity", params={"hours": 0}).status_code == 422
    page = acme.get("/", headers={"Accept": "text/html"}).text
    assert 'data-activity="/api/activity?hours=24"' in page


def test_occurrence_page_explains_live_and_archived(acme, world):
    live = acme.get(
        f"/tasks/ping/occurrences/{world['live']['L2'].id}", headers={"Accept": "text/html"}
    ).text
    assert 'id="occ-source" title="Live: this run is still' in live
    assert 'id="source-legend">Live: this run is still' in live
    old = world["archived"][0].id
    archived = acme.get(f"/tasks/ping/occurrences/{old}", headers={"Accept": "text/html"}).text
    assert 'id="source-legend">Archived: this run has ended' in archived


def test_occurrence_page_shows_live_and_archived_results(acme, world):
    live = acme.get(f"/tasks/ping/occurrences/{world['live']['L2'].id}")
    assert live.status_code == 200 and "&#34;n&#34;: 1" in live.text
    old = world["archived"][0].id
    archived = acme.get(f"/api/tasks/ping/occurrences/{old}").json()
    assert archived["source"] == "archive" and archived["result"]["output"] == {"n": 1}
    page = acme.get(f"/tasks/ping/occurrences/{old}", headers={"Accept": "text/html"})
    assert "archived" in page.text
    assert acme.get("/api/tasks/ping/occurrences/occ:task:acme:ping:x").status_code == 404
    assert acme.get("/api/tasks/quiet/occurrences/" + old).status_code == 404


# ---------------------------------------------------------------- export


def test_csv_and_jsonl_exports_are_complete_ordered_and_paged(app, farm, acme, world):
    data = app.state.data
    before = farm.hub.requests_sent
    data.page = 4  # force many small view requests
    try:
        reply = acme.get("/api/tasks/ping/results.csv")
        sent = farm.hub.requests_sent - before
        lines = acme.get("/api/tasks/ping/results.jsonl").text.splitlines()
    finally:
        data.page = 500
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/csv")
    assert "attachment" in reply.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(reply.text)))
    assert len(rows) == 19 and sent >= 19 // 4
    assert [r["due_at"] for r in rows] == sorted(r["due_at"] for r in rows)
    assert len({r["occurrence"] for r in rows}) == 19
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 10 and json.loads(ok[0]["output"]) == {"n": 1}
    records = [json.loads(line) for line in lines]
    assert [r["occurrence"] for r in records] == [r["occurrence"] for r in rows]
    since = to_wire(world["now"] - timedelta(days=1))
    recent = acme.get("/api/tasks/ping/results.csv", params={"since": since}).text
    assert len(recent.strip().splitlines()) == 1 + 14


def test_csv_cells_cannot_smuggle_formulas():
    from hub.portal.app import csv_lines

    row = {k: None for k in ("id", "due_at", "state", "status", "attempt", "worker")}
    row |= {"id": "x", "started_at": None, "finished_at": None, "duration_ms": None,
            "latency_ms": None, "error": "=HYPERLINK(\"http://evil\")", "output": None}  # fmt: skip
    text = "".join(csv_lines(iter([row])))
    assert "'=HYPERLINK" in text


# ---------------------------------------------------------------- the task form


def _field_block(html: str, name: str) -> str:
    start = html.index(f'name="{name}"')
    end = html.find('<div class="field', start)
    return html[start:end]


def test_form_labels_inputs_with_their_schema_titles(acme):
    page = acme.get("/tasks/new", headers={"Accept": "text/html"}).text
    for label in ("Timeout (seconds)", "Expected HTTP status", "HTTP method", "URL",
                  "Duration (milliseconds)", "Record type"):  # fmt: skip
        assert f"{label}</label>" in page or f"{label} <span" in page, label
    assert ">timeout s<" not in page and ">expect status<" not in page


def test_form_shows_each_problem_beside_its_field_then_accepts_the_fix(acme, world):
    form = {
        "name": "homepage", "kind": "http.check", "in:http.check:url": "ftp://nope",
        "in:http.check:timeout_s": "999", "schedule_mode": "every", "schedule.every": "60",
        "schedule.tz": "Mars/Olympus", "priority": "-3", "tube": "default",
        "overlap": "skip", "misfire": "run_latest",
    }  # fmt: skip
    reply = acme.post("/tasks/new", data=form, headers={"Accept": "text/html"})
    assert reply.status_code == 400
    html = reply.text
    assert 'data-for="input.url"' in _field_block(html, "in:http.check:url")
    assert "is not an http(s) URL" in _field_block(html, "in:http.check:url")
    assert 'data-for="input.timeout_s"' in _field_block(html, "in:http.check:timeout_s")
    assert 'data-for="schedule.tz"' in _field_block(html, "schedule.tz")
    assert 'data-for="priority"' in _field_block(html, "priority")
    assert 'value="ftp://nope"' in html  # what was typed is kept
    fixed = {**form, "in:http.check:url": "https://example.org/", "in:http.check:timeout_s": "5",
             "schedule.tz": "Europe/Amsterdam", "priority": "10"}  # fmt: skip
    done = acme.post("/tasks/new", data=fixed, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/tasks/homepage?done=created"
    task = acme.get("/api/tasks/homepage").json()
    assert task["input"] == {"url": "https://example.org/", "timeout_s": 5}
    assert task["schedule"]["tz"] == "Europe/Amsterdam" and task["priority"] == 10
    again = acme.post("/tasks/new", data=fixed, headers={"Accept": "text/html"})
    assert again.status_code == 400 and 'data-for="name"' in _field_block(again.text, "name")


def test_edit_form_round_trips_a_task(acme, world):
    page = acme.get("/tasks/quiet/edit", headers={"Accept": "text/html"})
    assert page.status_code == 200 and 'name="in:demo.sleep:ms" value="10"' in page.text
    values = {
        "kind": "demo.sleep", "in:demo.sleep:ms": "25", "schedule_mode": "cron",
        "schedule.cron": "0 9 * * 1-5", "schedule.tz": "Europe/Amsterdam",
        "schedule.start": "2030-01-01T00:00", "ttr": "120",
    }  # fmt: skip
    saved = acme.post("/tasks/quiet/edit", data=values, follow_redirects=False)
    assert saved.status_code == 303, saved.text
    task = acme.get("/api/tasks/quiet").json()
    assert task["schedule"]["cron"] == "0 9 * * 1-5" and task["ttr"] == 120
    assert task["schedule"]["start"] == "2029-12-31T23:00:00.000Z"  # 00:00 in Amsterdam
    assert task["next_due"].startswith("2030-01-01T08:00")


@pytest.mark.parametrize(
    ("problem", "field"),
    [
        ("input.url: 'x' is not an http(s) URL", "input.url"),
        ("input.headers.X-A: must not contain line breaks", "input.headers"),
        ("input.expect_status[0]: 7 is below the minimum 100", "input.expect_status"),
        ("input: missing required field 'url'", "input.url"),
        ("schedule: at: not an ISO-8601 timestamp: 'x'", "schedule.at"),
        ("schedule.every: 5 seconds is below the hub's minimum", "schedule.every"),
        ("schedule: give exactly one of 'every'", "schedule"),
        ("priority: Input should be greater than or equal to 0 (got -1)", "priority"),
        ("backoff.base: Input should be greater than 0", "backoff.base"),
        ("slug: String should match pattern", "slug"),
        ("something happened", ""),
    ],
)
def test_problems_map_to_form_fields(problem, field):
    assert field_of(problem) == field


def test_schedule_preview_in_the_clients_time_zone(acme):
    reply = acme.post(
        "/api/schedule/preview",
        json={"schedule": {"cron": "30 9 * * *", "tz": "America/New_York"}, "count": 5},
    )
    assert reply.status_code == 200
    body = reply.json()
    assert len(body["fires"]) == 5 and all("09:30:00 E" in local for local in body["local"])
    bad = acme.post("/api/schedule/preview", json={"schedule": {"every": 1}})
    assert bad.status_code == 400 and bad.json()["problems"][0].startswith("schedule.every")
    none = acme.post("/api/schedule/preview", json={"schedule": {}})
    assert none.status_code == 400 and "exactly one" in none.json()["problems"][0]


# ---------------------------------------------------------------- task actions


def test_task_life_through_the_api(farm, acme, world):
    made = acme.post("/api/tasks", json={"name": "life", **EVERY, "priority": 5})
    assert made.status_code == 201 and made.json()["priority"] == 5
    assert acme.post("/api/tasks", json={"name": "life", **EVERY}).status_code == 409
    assert acme.patch("/api/tasks/life", json={"ttr": 30}).json()["ttr"] == 30
    assert acme.post("/api/tasks/life/pause").json()["paused"] is True
    assert acme.post("/api/tasks/life/resume").json()["paused"] is False
    run = acme.post("/api/tasks/life/run-now")
    assert run.status_code == 201 and run.json()["state"] == "ready"
    cancel = acme.post(f"/api/tasks/life/occurrences/{run.json()['occurrence']}/cancel")
    assert cancel.json()["state"] == "cancelled"
    assert acme.post("/api/tasks/life/kick").json() == {"kicked": 0}
    assert acme.delete("/api/tasks/life").json()["deleted"] == "life"
    assert acme.get("/api/tasks/life").status_code == 404


def test_kick_puts_buried_runs_back(farm, acme, world):
    buried = world["live"]["L4"].id
    page = acme.post("/tasks/ping/do/kick", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/tasks/ping?done=kick"
    assert farm.admin.get(farm.db, buried)["state"] == "ready"


# ---------------------------------------------------------------- errors


def test_errors_are_json_with_problems_and_never_tracebacks(app, acme, service, monkeypatch):
    bad = acme.post("/api/tasks", json={"name": "x", **EVERY, "colour": "red"})
    assert bad.status_code == 422 and any("colour" in p for p in bad.json()["problems"])
    wrong = acme.post("/api/tasks", json={"name": "x", **EVERY, "priority": "high"})
    assert wrong.status_code == 422 and wrong.json()["problems"][0].startswith("priority")
    long_name = acme.post("/api/tasks", json={"name": "x" * 5000, **EVERY})
    assert long_name.status_code == 422
    service_says = acme.post("/api/tasks", json={"name": "x", **EVERY, "input": {"ms": "x"}})
    assert service_says.status_code == 400
    assert service_says.json()["problems"] == ["input.ms: expected an integer, got a string 'x'"]
    huge = acme.post(
        "/api/tasks", content=b'{"name": "' + b"x" * 70_000 + b'"}',
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    assert huge.status_code == 413
    nested = acme.post(
        "/api/tasks", content=b"[" * 30_000 + b"]" * 30_000,
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    assert 400 <= nested.status_code < 500
    garbage = acme.post(
        "/api/tasks", content=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert garbage.status_code == 422

    def explode(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(service, "list_tasks", explode)
    crash = TestClient(app, raise_server_exceptions=False, cookies=acme.cookies)
    reply = crash.get("/api/tasks")
    assert reply.status_code == 500
    assert reply.json()["detail"].startswith("internal error")
    assert "secret internals" not in reply.text and "Traceback" not in reply.text


def test_html_errors_render_a_page(acme):
    reply = acme.get("/tasks/no-such-task", headers={"Accept": "text/html"})
    assert reply.status_code == 404 and "<h1>Not found</h1>" in reply.text


# ---------------------------------------------------------------- ops


def test_ops_page_for_operators_only(app, farm, operator, acme, world, service):
    now = farm.now()
    worker = WorkerDoc(
        _id=worker_id("w1"), name="w1", version="0.1.0", os="Windows 11",
        last_seen=to_wire(now), started_at=to_wire(now), current=[world["live"]["L8"].id],
    )  # fmt: skip
    farm.hub.put(farm.db, worker.to_doc())
    buried = Occurrence.from_doc(farm.admin.get(farm.db, world["live"]["L4"].id))
    if buried.state != states.State.BURIED:  # the kick test may have run first
        claimed = states.claim(buried.model_copy(update={"attempt": 0}), "w2", now)
        failed = states.fail(
            claimed.model_copy(update={"max_attempts": 1}), "w2", now, error="kaput"
        )
        farm.hub.put(farm.db, failed.to_doc())
    ops = operator.get("/api/ops").json()
    assert [w["name"] for w in ops["workers"]] == ["w1"] and ops["workers"][0]["online"]
    assert ops["by_tube"]["default"]["leased"] >= 1
    assert any(b["occurrence"] == world["live"]["L4"].id for b in ops["buried"])
    assert ops["replication"] == {"configured": False}
    assert ops["fauxton"].endswith("/_utils/")
    page = operator.get("/ops", headers={"Accept": "text/html"})
    assert page.status_code == 200 and "Windows 11" in page.text and "Not configured" in page.text
    assert acme.get("/api/ops").status_code == 404

    healthy = {"at": "x", "links": [{"db": farm.db, "source": "primary", "target": "standby",
               "lag_docs": 0, "lag_seconds": 0.5, "state": "running", "error": None,
               "healthy": True}]}  # fmt: skip
    for status, words in ((lambda: healthy, "running"), (_broken, "could not read")):
        ops_app = create_app(service, farm.hub, secret_key=SECRET, replication_status=status)
        client = login(ops_app, "hub", farm.passwords["hub"])
        assert words in client.get("/ops", headers={"Accept": "text/html"}).text


def test_replication_with_unknown_states_is_never_called_healthy(farm, service):
    def link(state, healthy=True, lag=0.2):
        return {"db": farm.db, "source": "primary", "target": "standby", "lag_docs": 0,
                "lag_seconds": lag, "state": state, "error": None, "healthy": healthy}  # fmt: skip

    cases = (
        ([link("running"), link("running")], "yes"),
        ([link("running"), link("unknown")], "unknown"),
        ([link("unknown"), link("crashing", healthy=False)], "no"),
    )
    for links, overall in cases:
        status = {"at": "x", "links": links, "states_readable": False}
        ops_app = create_app(
            service, farm.hub, secret_key=SECRET, replication_status=lambda s=status: s
        )
        client = login(ops_app, "hub", farm.passwords["hub"])
        replication = client.get("/api/ops").json()["replication"]
        assert replication["healthy"] == overall
        verdicts = [row["verdict"] for row in replication["links"]]
        assert verdicts == [{"running": "yes", "unknown": "unknown"}.get(r["state"], "no")
                            for r in links]  # fmt: skip
        page = client.get("/ops", headers={"Accept": "text/html"}).text
        if overall == "unknown":
            assert "hub serve --admin-password-file" in page
            assert '<span class="status status-ok">yes</span>' in page  # the running one
        assert ("healthy</span> every replication" in page) == (overall == "yes")


def test_a_client_opening_ops_gets_a_page_with_the_navigation(acme):
    page = acme.get("/ops", headers={"Accept": "text/html"})
    assert page.status_code == 403
    assert "operators only" in page.text and 'href="/tokens"' in page.text
    assert acme.get("/ops").status_code == 404  # the API's answer stays "not found"


def _broken():
    raise RuntimeError("no standby")


# ---------------------------------------------------------------- inside hub serve


def test_start_portal_serves_on_a_thread_and_stops(farm):
    import httpx

    from hub.portal.server import start_portal
    from hub.serve import Hub, HubConfig

    hub = Hub(farm.hub, HubConfig(db=farm.db))
    portal = start_portal(hub, "127.0.0.1", 0)
    try:
        assert httpx.get(f"{portal.url}/login", timeout=5).status_code == 200
        reply = httpx.post(
            f"{portal.url}/login",
            data={"username": "acme", "password": farm.passwords["acme"]},
            timeout=10,
        )
        assert reply.status_code == 200 and reply.json()["client"] == "acme"
    finally:
        portal.stop()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{portal.url}/login", timeout=2)


def test_dashboard_ignores_a_kept_copy_only_once(service, farm, world):
    """The archiver's kept occurrence (L1) is counted once, not twice."""
    from hub.portal.data import PortalData

    data = PortalData(service)
    board = data.dashboard("acme")
    ping = next(t for t in board["tasks"] if t["name"] == "ping")
    assert ping["counts"]["done"] == 10
    assert occurrence_id("task:acme:ping", from_wire(world["live"]["L1"].due_at)) == (
        world["live"]["L1"].id
    )


def test_dashboard_without_permission_to_list_databases(service, farm, world, monkeypatch):
    """CouchDB 3 lets only server admins read /_all_dbs: month names are computed instead."""
    from hub.portal.data import PortalData
    from hub.protocol.couch import Forbidden

    def refuse():
        raise Forbidden("GET /_all_dbs: 403", status=403)

    monkeypatch.setattr(farm.hub, "all_dbs", refuse)
    data = PortalData(service)
    assert data.existing_results_dbs() is None
    ping = next(t for t in data.dashboard("acme")["tasks"] if t["name"] == "ping")
    assert ping["counts"]["done"] == 10 and ping["counts"]["failed"] == 3
    lo, hi = "1970-01-01T00:00:00.000Z", "9999-12-31T23:59:59.999Z"
    rows = list(data.merged(service.get_task("acme", "ping"), lo, hi, descending=False))
    assert len(rows) == 19


# ---------------------------------------------------------------- backfill


def past_minutes(farm, minutes: int) -> tuple[str, str]:
    end = farm.now().replace(second=0, microsecond=0) - timedelta(minutes=1)
    return to_wire(end - timedelta(minutes=minutes - 1)), to_wire(end)


def test_backfill_api_creates_the_missing_runs_once(farm, acme, service):
    service.add_task("acme", "filler", EVERY)
    start, end = past_minutes(farm, 4)
    body = {"from": start, "to": end}
    first = acme.post("/api/tasks/filler/backfill", json=body)
    assert first.status_code == 200, first.text
    made = first.json()
    assert (made["created"], made["existed"], made["overlap"]) == (4, 0, "allow")
    assert made["task"] == "filler" and len(made["occurrences"]) == 4
    docs = [farm.admin.get(farm.db, occ) for occ in made["occurrences"]]
    assert {d["state"] for d in docs} == {"ready"}
    assert [d["due_at"] for d in docs] == [
        to_wire(from_wire(start) + timedelta(minutes=k)) for k in range(4)
    ]
    again = acme.post("/api/tasks/filler/backfill", json={**body, "overlap": "queue"}).json()
    assert (again["created"], again["existed"], again["occurrences"]) == (0, 4, [])
    # A wider range creates only what is still missing, queued one at a time.
    wider = acme.post(
        "/api/tasks/filler/backfill",
        json={"from": to_wire(from_wire(start) - timedelta(minutes=2)), "to": end,
              "overlap": "queue"},
    ).json()  # fmt: skip
    assert (wider["created"], wider["existed"]) == (2, 4)
    assert {farm.admin.get(farm.db, o)["state"] for o in wider["occurrences"]} == {"scheduled"}


def test_bad_backfills_are_4xx_naming_the_field(farm, acme, service):
    service.add_task("acme", "unfilled", EVERY)
    now = farm.now()
    start, end = past_minutes(farm, 3)
    cases = [
        ({"from": start, "to": to_wire(now + timedelta(hours=1))}, 400, "to: "),
        ({"from": end, "to": start}, 400, "from: "),
        ({"from": to_wire(now - timedelta(days=3)), "to": end}, 400, "to: "),
        ({"from": "yesterday", "to": end}, 400, "from: "),
        ({"from": "0001-01-01T00:00:00+05:00", "to": end}, 400, "from: "),
        ({"from": "1900-01-01T00:00:00Z", "to": end}, 400, "from: "),
        ({"from": start, "to": end, "overlap": "skip"}, 422, "overlap: "),
        ({"to": end}, 422, "from: "),
        ({"from": start, "to": end, "extra": 1}, 422, "extra: "),
    ]
    for body, status, field in cases:
        reply = acme.post("/api/tasks/unfilled/backfill", json=body)
        assert reply.status_code == status, (body, reply.text)
        problems = reply.json()["problems"]
        assert problems and problems[0].startswith(field), (body, problems)
    too_many = acme.post(
        "/api/tasks/unfilled/backfill", json={"from": to_wire(now - timedelta(days=3)), "to": end}
    )
    assert "MAX_BACKFILL_RUNS" in too_many.json()["detail"]
    missing = acme.post("/api/tasks/nosuch/backfill", json={"from": start, "to": end})
    assert missing.status_code == 404
    assert acme.get("/api/tasks/unfilled/occurrences").json()["occurrences"] == []


def test_another_client_cannot_backfill_this_clients_task(farm, acme, globex, service):
    service.add_task("acme", "mine", EVERY)
    start, end = past_minutes(farm, 2)
    for params in ({}, {"client": "acme"}):
        reply = globex.post(
            "/api/tasks/mine/backfill", params=params, json={"from": start, "to": end}
        )
        assert reply.status_code == 404, reply.text
        assert "acme" not in reply.text
        form = globex.post(
            "/tasks/mine/backfill", params=params, data={"from": start, "to": end},
            headers={"Accept": "text/html"},
        )  # fmt: skip
        assert form.status_code == 404
    assert acme.get("/api/tasks/mine/occurrences").json()["occurrences"] == []


def test_backfill_form_shows_the_result_or_the_field_at_fault(app, farm, service):
    service.add_task("acme", "formfill", EVERY)
    client = login(app, "acme", farm.passwords["acme"])
    token = client.headers.pop("X-CSRF-Token")
    html = {"Accept": "text/html"}
    page = client.get("/tasks/formfill", headers=html)
    assert page.status_code == 200 and 'id="backfill-form"' in page.text
    assert re.search(r'id="backfill-form".*?name="csrf_token" value="([^"]+)"', page.text, re.S)
    start, end = past_minutes(farm, 3)
    data = {"from": start, "to": end, "overlap": "queue", "csrf_token": token}
    refused = client.post("/tasks/formfill/backfill", data={**data, "csrf_token": "nope"})
    assert refused.status_code == 403
    done = client.post("/tasks/formfill/backfill", data=data, headers=html)
    assert done.status_code == 200, done.text
    assert re.search(r"3 runs created, 0 already existed", done.text)
    assert 'value="queue" selected' in done.text
    again = client.post("/tasks/formfill/backfill", data=data, headers=html)
    assert "0 runs created, 3 already existed" in again.text
    future = to_wire(farm.now() + timedelta(hours=1))
    bad = client.post("/tasks/formfill/backfill", data={**data, "to": future}, headers=html)
    assert bad.status_code == 400
    errors = re.search(r'id="backfill-errors">(.*?)</div>', bad.text, re.S).group(1)
    assert "to: " in errors and "in the future" in errors
    assert f'value="{future}"' in bad.text  # the form keeps what was typed
    empty = client.post("/tasks/formfill/backfill", data={"csrf_token": token}, headers=html)
    assert empty.status_code == 400 and "from: " in empty.text
