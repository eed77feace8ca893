"""The results feed (hub/results_feed.py, /api/results and /api/results/stream) against the
real server: pages since a cursor, long-poll, the NDJSON stream, and isolation: one client
never sees another's results, whatever cursor it sends."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from hub import archiver, provision
from hub.portal.app import create_app
from hub.protocol import states
from hub.protocol.names import results_db
from hub.results_feed import Cursor, CursorError, is_clients_result, open_months
from hub.service import FarmService, build_task
from tests.test_portal import login

EVERY = {"kind": "demo.sleep", "input": {"ms": 1}, "schedule": {"every": 60}}


def test_open_months_and_cursors():
    assert open_months(datetime(2026, 1, 15, tzinfo=UTC)) == ["2025_12", "2026_01"]
    cursor = Cursor((("2026_01", "12-abc"), ("2025_12", "3")))
    assert Cursor.decode(cursor.encode()).get("2026_01") == "12-abc"
    for bad in ("nonsense", "e30", "W10"):  # not base64 JSON, {} is fine, [] is not
        if bad == "e30":
            assert Cursor.decode(bad).positions == ()
            continue
        with pytest.raises(CursorError, match=r"^since: "):
            Cursor.decode(bad)
    doc = {"_id": "res:occ:task:acme:p:20261201T000000Z", "type": "result", "client": "acme"}
    assert is_clients_result(doc, "acme")
    assert not is_clients_result(doc, "globex")
    assert not is_clients_result({**doc, "client": "globex"}, "globex")  # the id says acme


@pytest.fixture(scope="module")
def service(farm) -> FarmService:
    return FarmService(farm.hub, farm.db)


@pytest.fixture(scope="module")
def app(farm, service):
    return create_app(service, farm.hub, secret_key="results-feed-secret-0123456789abcdef")


@pytest.fixture(scope="module")
def acme(app, farm) -> TestClient:
    return login(app, "acme", farm.passwords["acme"])


@pytest.fixture(scope="module")
def globex(app, farm) -> TestClient:
    return login(app, "globex", farm.passwords["globex"])


def archive_runs(farm, client: str, slug: str, dues: list[datetime]) -> list[str]:
    """Runs of client/slug, ended ok, stored through the archiver's own write."""
    task = build_task(client, slug, EVERY, dues[0] - timedelta(minutes=1))
    if farm.hub.get_or_none(farm.db, task.id) is None:
        farm.hub.put(farm.db, task.to_doc())
    by_month: dict[str, list] = {}
    for due in dues:
        occ = states.materialize(task, due, due)
        leased = states.claim(occ, "w1", due + timedelta(seconds=1))
        started = due + timedelta(seconds=1)
        done = states.finish(
            leased, "w1", due + timedelta(seconds=2), started_at=started, output={"n": 1}
        )
        by_month.setdefault(results_db(farm.db, due), []).append(done)
    ids = []
    for month_db, occs in by_month.items():
        provision.ensure_results_db(farm.admin, month_db)
        docs = [archiver.to_result(o).to_doc() for o in occs]
        archiver.store_results(farm.hub, month_db, docs, farm.now())
        ids += [d["_id"] for d in docs]
    return ids


def test_pages_since_a_cursor_and_isolation(farm, acme, globex):
    now = farm.now().replace(microsecond=0)
    mine = archive_runs(farm, "acme", "feed", [now - timedelta(minutes=k) for k in range(5, 0, -1)])
    theirs = archive_runs(farm, "globex", "secret", [now - timedelta(minutes=k) for k in (3, 2)])
    # The feed follows _changes: one _bulk_docs need not land in input order (POUCHDB),
    # so the pages are judged as a split of the five, each result exactly once.
    first = acme.get("/api/results", params={"limit": 3}).json()
    paged = [r["id"] for r in first["results"]]
    assert len(paged) == 3 and set(paged) <= set(mine) and first["more"] is True
    rest = acme.get("/api/results", params={"since": first["next"], "limit": 100}).json()
    paged += [r["id"] for r in rest["results"]]
    assert sorted(paged) == sorted(mine) and len(rest["results"]) == 2
    assert rest["more"] is False
    assert all(r["client"] == "acme" and "_rev" not in r for r in rest["results"])
    assert rest["results"][0]["status"] == "ok" and "output" in rest["results"][0]
    # Nothing new: an empty page, and the same place.
    empty = acme.get("/api/results", params={"since": rest["next"]}).json()
    assert empty["results"] == []
    # globex sees only its own, also when it replays acme's cursor.
    seen = globex.get("/api/results").json()
    assert sorted(r["id"] for r in seen["results"]) == sorted(theirs)
    replay = globex.get("/api/results", params={"since": first["next"]}).json()
    assert all(r["client"] == "globex" for r in replay["results"])
    assert not {r["id"] for r in replay["results"]} & set(mine)
    bad = acme.get("/api/results", params={"since": "garbage!"})
    assert bad.status_code == 400 and bad.json()["problems"][0].startswith("since: ")


def test_long_poll_returns_when_a_result_arrives(farm, acme):
    start = acme.get("/api/results", params={"since": "now"}).json()
    assert start["results"] == []
    now = farm.now().replace(microsecond=0)
    later = threading.Timer(
        1.0, archive_runs, (farm, "acme", "poll", [now - timedelta(seconds=30)])
    )
    later.start()
    began = time.monotonic()
    page = acme.get("/api/results", params={"since": start["next"], "wait": 15}).json()
    later.join()
    assert [r["task"] for r in page["results"]] == ["task:acme:poll"]
    assert time.monotonic() - began < 12


def test_the_stream_sends_ndjson_results_and_cursors(farm, acme, globex):
    start = acme.get("/api/results", params={"since": "now"}).json()["next"]
    now = farm.now().replace(microsecond=0)
    ids = archive_runs(
        farm, "acme", "streamed", [now - timedelta(seconds=50), now - timedelta(seconds=40)]
    )
    archive_runs(farm, "globex", "hidden", [now - timedelta(seconds=45)])
    with acme.stream("GET", "/api/results/stream", params={"since": start, "seconds": 1}) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in reply.iter_lines() if line.strip()]
    results = [line["result"] for line in lines if "result" in line]
    assert sorted(r["id"] for r in results) == sorted(ids)  # each once; one bulk write
    assert "next" in lines[-1]
    with globex.stream(
        "GET", "/api/results/stream", params={"since": start, "seconds": 1}
    ) as reply:
        theirs = [json.loads(line) for line in reply.iter_lines() if line.strip()]
    assert all(line["result"]["client"] == "globex" for line in theirs if "result" in line)
