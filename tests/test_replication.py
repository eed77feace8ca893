"""Replication, conflict resolution and recovery between two real servers."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import timedelta

import pytest

from hub import provision, replication, resolver
from hub.devserver import DevServer
from hub.dispatch import Board
from hub.protocol import states
from hub.protocol.board import BEAT_ID, LEFT_FOR, board_db
from hub.protocol.couch import Couch, CouchError
from hub.protocol.model import Occurrence, Task, task_id
from hub.protocol.names import WORKER_ROLE, results_db
from hub.protocol.timefmt import to_wire
from hub.serve import Hub, HubConfig
from tests import waiting


def wait_for(check: Callable[[], object], timeout: float = 30.0, what: str = "") -> object:
    return waiting.wait_for(check, timeout, what, every=0.3)  # replication: seconds, not ms


@pytest.fixture()
def pair(farm_on_both):
    """A fresh farm database on both servers, not yet replicating."""
    return farm_on_both("farm_repl")


def _occurrence(now) -> Occurrence:
    stamp = to_wire(now)
    task = Task(_id=task_id("acme", "split"), client="acme", slug="split", kind="demo.sleep",
                schedule={"every": 60}, created_at=stamp, updated_at=stamp)  # fmt: skip
    return states.materialize(task, now.replace(microsecond=0), now)


def test_split_brain_conflict_converges_after_reconnect(pair, passwords):
    db, primary, standby = pair
    p_admin, s_admin = primary.couch(), standby.couch()
    now = p_admin.now()
    occ = _occurrence(now)
    p_admin.put(db, occ.to_doc())
    replication.replicate_once(primary, standby, db)
    base = Occurrence.from_doc(p_admin.get(db, occ.id))
    # Cut apart: w1 claims on the primary, w2 claims and finishes on the standby.
    w1 = primary.couch().__class__(primary.url, "w1", passwords["w1"])
    w2 = standby.couch().__class__(standby.url, "w2", passwords["w2"])
    w1.put(db, states.claim(base, "w1", now).to_doc())
    later = now + timedelta(seconds=2)
    claimed = states.claim(base, "w2", later)
    rev = w2.put(db, claimed.to_doc())
    w2.put(db, states.finish(claimed.model_copy(update={"rev": rev}), "w2", later,
                             started_at=later, output={"side": "standby"}).to_doc())  # fmt: skip
    # Reconnect.
    replication.setup(primary, standby, db)
    wait_for(lambda: p_admin.get(db, occ.id, conflicts="true").get("_conflicts"),
             what="the conflict to reach the primary")  # fmt: skip
    resolved, _seq = resolver.resolve_all(p_admin, db)
    assert resolved == 1

    def converged() -> bool:
        a = p_admin.get(db, occ.id, conflicts="true")
        b = s_admin.get(db, occ.id, conflicts="true")
        return a["_rev"] == b["_rev"] and not a.get("_conflicts") and not b.get("_conflicts")

    wait_for(converged, what="both copies to converge")
    final = p_admin.get(db, occ.id)
    assert final["state"] == "done" and final["result"]["worker"] == "w2"


def test_split_brain_two_results_the_first_finished_wins_on_both(pair, passwords):
    """Cut apart, the occurrence runs on both sides; the later finish is on the primary.
    After reconnecting, the resolver keeps the standby's earlier result on both copies, and
    logs the dropped one."""
    db, primary, standby = pair
    p_admin, s_admin = primary.couch(), standby.couch()
    now = p_admin.now().replace(microsecond=0)
    occ = _occurrence(now)
    p_admin.put(db, occ.to_doc())
    replication.replicate_once(primary, standby, db)
    base = Occurrence.from_doc(p_admin.get(db, occ.id))
    for url, worker, finish in ((primary.url, "w1", 5), (standby.url, "w2", 2)):
        couch = p_admin.__class__(url, worker, passwords[worker])
        claimed = states.claim(base, worker, now)
        claimed = claimed.model_copy(update={"rev": couch.put(db, claimed.to_doc())})
        couch.put(db, states.finish(claimed, worker, now + timedelta(seconds=finish),
                                    started_at=now, output={"by": worker}).to_doc())  # fmt: skip
    replication.setup(primary, standby, db)
    wait_for(lambda: p_admin.get(db, occ.id, conflicts="true").get("_conflicts"),
             what="the conflict to reach the primary")  # fmt: skip
    resolver.resolve_all(p_admin, db)

    def converged() -> bool:
        a = p_admin.get(db, occ.id, conflicts="true")
        b = s_admin.get(db, occ.id, conflicts="true")
        return a["_rev"] == b["_rev"] and not a.get("_conflicts") and not b.get("_conflicts")

    wait_for(converged, what="both copies to converge")
    for couch in (p_admin, s_admin):
        assert couch.get(db, occ.id)["result"]["worker"] == "w2"


def test_resolver_rules():
    base = {"_id": "occ:task:a:b:20270101T000000Z"}

    def at(second: int) -> str:
        return f"2027-01-01T00:00:{second:02d}.000Z"

    leased_early = {**base, "_rev": "2-a", "state": "leased", "lease": {"claimed_at": at(1)}}
    leased_late = {**base, "_rev": "2-b", "state": "leased", "lease": {"claimed_at": at(5)}}
    done_late = {**base, "_rev": "3-c", "state": "done", "result": {"finished_at": at(9)}}
    done_early = {**base, "_rev": "3-d", "state": "done", "result": {"finished_at": at(7)}}
    assert resolver.choose([leased_early, leased_late])["_rev"] == "2-b"
    assert resolver.choose([leased_late, done_late])["_rev"] == "3-c"
    assert resolver.choose([done_late, done_early])["_rev"] == "3-d"
    task = {"_id": "task:a:b"}
    older = {**task, "_rev": "1-x", "updated_at": "2027-01-01T00:00:00.000Z"}
    newer = {**task, "_rev": "1-y", "updated_at": "2027-01-02T00:00:00.000Z"}
    assert resolver.choose([newer, older])["_rev"] == "1-y"
    errors = resolver.merged_errors([
        {"errors": [{"attempt": 1, "at": "2027-01-01T00:00:01.000Z", "error": "a"}]},
        {"errors": [{"attempt": 1, "at": "2027-01-01T00:00:01.000Z", "error": "a"},
                    {"attempt": 2, "at": "2027-01-01T00:00:02.000Z", "error": "b"}]},
    ])  # fmt: skip
    assert [e["error"] for e in errors] == ["a", "b"]
    # Users: the last edit wins; without stamps, CouchDB's own order (10- is after 9-).
    user = {"_id": "org.couchdb.user:w1"}
    edited = {**user, "_rev": "2-a", "updated_at": "2027-01-02T00:00:00.000Z"}
    assert resolver.choose([edited, {**user, "_rev": "9-f"}])["_rev"] == "2-a"
    assert resolver.choose([{**user, "_rev": "9-f"}, {**user, "_rev": "10-a"}])["_rev"] == "10-a"


def test_a_link_is_unhealthy_when_its_replication_is_not_running():
    def link(**fields) -> replication.LinkHealth:
        return replication.LinkHealth("farm", "primary", "standby", 0, 0.2, **fields)

    assert link(state="running").healthy and link(state="triggered").healthy
    assert link(state="unknown").healthy  # a non-admin cannot tell
    for state in ("crashing", "failed", "error", "missing"):
        assert not link(state=state).healthy
    assert not link(state="running", error="unreachable").healthy
    slow = replication.LinkHealth("farm", "primary", "standby", 0, 31.0, "running")
    assert not slow.healthy


def test_a_conflicted_user_is_settled_and_can_log_in_again(pair, passwords):
    """Salted password hashes make the same user written on both servers two branches once
    ``_users`` replicates; CouchDB (and PouchDB Server, with its validation fixed) then
    refuses that user's logins until an admin command settles it: the latest edit wins.
    The second branch is written directly (``new_edits=false``), as replication would,
    so the session's standing replications need not be cut."""
    db, primary, standby = pair
    admin = primary.couch()
    name, donor = f"u{secrets.token_hex(3)}", f"d{secrets.token_hex(3)}"
    provision.add_user(admin, name, [WORKER_ROLE], "first-pass")
    provision.add_user(admin, donor, [WORKER_ROLE], "second-pass")
    user_doc = provision.user_doc_id(name)
    hashed = admin.get("_users", provision.user_doc_id(donor))
    # CouchDB 3.4+ hashes with PBKDF2-SHA256 and says so in pbkdf2_prf; without it the
    # key would be checked as SHA-1 (PouchDB writes no pbkdf2_prf: SHA-1).
    hash_keys = ("iterations", "password_scheme", "salt", "derived_key", "pbkdf2_prf")
    branch = {key: hashed[key] for key in hash_keys if key in hashed}
    branch |= {"_id": user_doc, "_rev": f"1-{secrets.token_hex(16)}", "name": name,
               "type": "user", "roles": [WORKER_ROLE],
               "updated_at": to_wire(admin.now() + timedelta(seconds=1))}  # fmt: skip
    admin.request("POST", "/_users/_bulk_docs", body={"docs": [branch], "new_edits": False})
    assert admin.get("_users", user_doc, conflicts="true").get("_conflicts")
    with pytest.raises(CouchError):
        Couch(primary.url, name, "second-pass", retries=0).db_info(db)
    # The admin commands copy and settle (the standby got both branches too).
    lines = replication.copy_users(primary, standby)
    assert lines and "1 conflicted user document(s) settled" in lines[0]
    for end in (primary, standby):
        doc = end.couch().get("_users", user_doc, conflicts="true")
        assert not doc.get("_conflicts")
        assert Couch(end.url, name, "second-pass").db_info(db)["db_name"] == db
    assert provision.user_roles(admin, donor) == [WORKER_ROLE]
    donor_doc = admin.get("_users", provision.user_doc_id(donor))
    admin.delete("_users", donor_doc["_id"], donor_doc["_rev"])


def test_setup_is_idempotent_and_health_reports_lag(pair, passwords):
    db, primary, standby = pair
    first = replication.setup(primary, standby, db)
    assert any("created" in line for line in first)
    assert all("exists" in line for line in replication.setup(primary, standby, db))
    p_admin, s_admin = primary.couch(), standby.couch()
    # Written twice: an update must replicate, not only a new document (PouchDB Server's
    # validation used to drop every replicated revision of a document the target had).
    for _ in range(2):
        replication.write_probe(p_admin, db, "primary")
        written = p_admin.get(db, "hub:probe:primary")["_rev"]
        wait_for(lambda rev=written: (s_admin.get_or_none(db, "hub:probe:primary") or {})
                 .get("_rev") == rev, what="the latest probe on the standby")  # fmt: skip
    health = replication.status(p_admin, s_admin, db)
    forward = health.links[0]
    assert forward.error is None and forward.lag_seconds is not None and forward.lag_seconds < 5
    assert forward.healthy
    # Every farm database's replication is reported, both ways: to the hub the live one and
    # this month's results; to a server admin also _users, with the replications' states.
    month = results_db(db, p_admin.now())
    provision.ensure_results_db(p_admin, month)
    replication.setup(primary, standby, db)
    wait_for(lambda: s_admin.get_or_none(month, "_design/results") is not None, what="month")
    hub = Couch([primary.url, standby.url], "hub", passwords["hub"])
    as_hub = replication.status(hub.for_server(0), hub.for_server(1), db)
    assert [(link.db, link.source) for link in as_hub.links] == [
        (db, "primary"), (db, "standby"), (month, "primary"), (month, "standby")]  # fmt: skip
    assert all(link.error is None for link in as_hub.links), as_hub.as_dict()
    as_admin = replication.status(p_admin, s_admin, db, admin=True)
    assert {link.db for link in as_admin.links} == {"_users", db, month}

    def states_known() -> bool:  # a replication just (re)created has no state for a moment
        links = replication.status(p_admin, s_admin, db, admin=True).links
        return all(link.state not in ("unknown", "unreachable") for link in links)

    wait_for(states_known, what="every replication's state")

    # The hub's hourly pass adds only what is missing: a replication pointing elsewhere is
    # reported and kept; `hub replication setup` (replace) puts it back. Last: on PouchDB
    # a doc re-created with its old source and target is never started again.
    doc_id = replication.replication_id(db, primary, standby)
    current = p_admin.get("_replicator", doc_id)
    p_admin.delete("_replicator", doc_id, current["_rev"])
    elsewhere = {"_id": doc_id, "source": primary.db_spec(db),
                 "target": standby.db_spec(f"{db}_x"), "continuous": True}  # fmt: skip
    p_admin.put("_replicator", elsewhere)
    kept = replication.setup(primary, standby, db, replace=False)
    assert any(line.startswith(f"{doc_id}: points elsewhere") for line in kept), kept
    assert p_admin.get("_replicator", doc_id)["target"] == elsewhere["target"]
    assert f"{doc_id}: created" in replication.setup(primary, standby, db)
    assert p_admin.get("_replicator", doc_id)["target"] == standby.db_spec(db)


def test_recover_rebuilds_a_primary_from_the_standby(pair, tmp_path, standby_server):
    db, _primary, standby = pair
    s_admin = standby.couch()
    docs = [{"_id": f"hub:doc:{n}", "type": "hub", "n": n} for n in range(40)]
    s_admin.bulk_docs(db, docs)
    fresh = DevServer(tmp_path / "new-primary", admin_password=standby_server.admin_password)
    fresh.start()
    # Not named "primary": recovering would re-point the session standby's own replications
    # to this short-lived server (on PouchDB a re-pointed-back doc never starts again).
    target = replication.Endpoint(fresh.url, "admin", standby_server.admin_password, "rebuilt")
    try:
        report = replication.recover(standby, target, db, sample=20)
        assert report.ok, report.lines
        new = target.couch()
        assert new.db_info(db)["doc_count"] == s_admin.db_info(db)["doc_count"]
        assert new.get_security(db)["members"]["roles"] == ["farm_admin", "farm_worker"]
        assert new.get("_users", "org.couchdb.user:w1")["roles"] == ["farm_worker"]
        assert any("match" in line for line in report.lines)
        # The board does not replicate: recover makes it, or the hub's offers fail there.
        assert new.get_security(board_db(db))["members"]["roles"]
        assert new.get_or_none(board_db(db), "_design/board") is not None
    finally:
        replication.retire(target, standby, replication.farm_databases(s_admin, db))
        fresh.stop()


def test_hub_rebuilds_its_schedule_from_the_server_it_fails_over_to(pair, passwords):
    """A batch the primary took just before it died, never replicated, is written again on
    the standby: the hub reloads its schedule from the server it moved to."""
    db, primary, standby = pair
    hub_couch = Couch([primary.url, standby.url], "hub", passwords["hub"])
    now = hub_couch.now().replace(microsecond=0)
    # Created just after a minute three minutes back: exactly three every-60-s fires are due.
    stamp = to_wire(now.replace(second=0) - timedelta(minutes=3) + timedelta(seconds=1))
    task = Task(_id=task_id("acme", "switch"), client="acme", slug="switch",
                kind="demo.sleep", schedule={"every": 60}, misfire="run_all",
                created_at=stamp, updated_at=stamp)  # fmt: skip
    for end in (primary, standby):
        Couch(end.url, end.user, end.password).put(db, task.to_doc())
    hub = Hub(hub_couch, HubConfig(db=db, materialize_ahead=None), clock=lambda: now)
    hub.load()
    assert hub.materialize() == 3  # written on the primary only (no replication here)

    def occurrence_ids(end: replication.Endpoint) -> list[str]:
        rows = Couch(end.url, end.user, end.password).all_docs(
            db, startkey="occ:", endkey="occ:\ufff0"
        )
        return [row["id"] for row in rows]

    on_primary = occurrence_ids(primary)
    assert len(on_primary) == 3 and occurrence_ids(standby) == []
    hub_couch._fail_over_from(0)  # what the dead primary does to the hub's client
    assert hub.materialize() == 3
    assert occurrence_ids(standby) == on_primary


def test_a_hub_that_moves_leaves_a_note_on_the_board_it_left(pair, passwords):
    """Workers still on the server the hub left learn it from their board feed at once,
    instead of waiting for offers for three beats and for their own fail-back period."""
    db, primary, standby = pair
    for end in (primary, standby):
        provision.ensure_board_db(end.couch(), db)
    hub_couch = Couch([primary.url, standby.url], "hub", passwords["hub"], retries=0)
    board = Board(hub_couch, db)
    now = hub_couch.now()
    assert board.publish({}, now) == []  # the beat, on the primary

    def beat_on(end: replication.Endpoint) -> dict | None:
        return end.couch().get_or_none(board_db(db), BEAT_ID)

    hub_couch._fail_over_from(0)
    assert board.publish({}, now) == []  # the beat on the standby, and the note left behind
    moved = waiting.wait_for(lambda: (beat_on(primary) or {}).get(LEFT_FOR), 10, "the note")
    assert moved == hub_couch.servers[1].label
    assert not (beat_on(standby) or {}).get(LEFT_FOR)
    hub_couch.fail_back_soon()
    hub_couch.session()  # no home database: the primary answering is enough to go back
    assert hub_couch.on_primary
    assert board.publish({}, now) == []
    assert waiting.wait_for(lambda: (beat_on(standby) or {}).get(LEFT_FOR), 10, "the note")
    assert not (beat_on(primary) or {}).get(LEFT_FOR)  # the fresh beat replaced the note


def test_the_hub_creates_new_months_with_replications_and_retires_old_ones(pair, passwords):
    db, primary, standby = pair
    p_admin, s_admin = primary.couch(), standby.couch()
    expired = f"{db}_results_2020_01"
    for admin in (p_admin, s_admin):
        provision.ensure_results_db(admin, expired)
    replication.setup(primary, standby, db)
    assert p_admin.get_or_none("_replicator", replication.replication_id(expired, primary,
                                                                          standby))  # fmt: skip
    admin = Couch([primary.url, standby.url], primary.user, primary.password)
    hub = Hub(Couch([primary.url, standby.url], "hub", passwords["hub"]), HubConfig(db=db),
              admin=admin, replication_ends=(primary, standby))  # fmt: skip
    now = hub.now()
    next_month = results_db(db, now + timedelta(days=32))

    assert hub.retention() == [expired]
    for couch in (p_admin, s_admin):
        assert expired not in couch.all_dbs()
        assert couch.get_security(next_month)["members"]["roles"]  # not replicated: set on both
    for source, target, couch in ((primary, standby, p_admin), (standby, primary, s_admin)):
        assert couch.get_or_none("_replicator", replication.replication_id(next_month, source,
                                                                            target))  # fmt: skip
        retired = replication.replication_id(expired, source, target)
        assert couch.get_or_none("_replicator", retired) is None
    health = hub.watch_replication()  # with server-admin credentials: states, every db
    assert health is not None and {link.db for link in health.links} >= {"_users", db,
                                                                          next_month}  # fmt: skip
    assert all(link.error is None for link in health.links), health.as_dict()
    p_admin.put(next_month, {"_id": "res:probe", "type": "probe"})
    wait_for(lambda: s_admin.get_or_none(next_month, "res:probe") is not None,
             what="a document in the new month on the standby")  # fmt: skip


def test_a_replication_re_created_or_restarted_runs_again(pair):
    """Every ``_replicator`` document written here carries a new ``generation``: PouchDB
    Server never starts a document whose body equals one it ran before (the docs of
    POUCHDB_DIFFERENCES), so without it a link retired and set up again, or restarted,
    would look configured and never run. ``setup`` stays idempotent (source and target
    decide), and a restart keeps what the document points at."""
    db, primary, standby = pair
    p_admin, s_admin = primary.couch(), standby.couch()
    doc_id = replication.replication_id(db, primary, standby)

    def arrives(n: int) -> None:
        p_admin.put(db, {"_id": f"hub:gen:{n}", "type": "hub"})
        wait_for(lambda: s_admin.get_or_none(db, f"hub:gen:{n}"), what=f"doc {n} on standby")

    replication.setup(primary, standby, db)
    first = p_admin.get("_replicator", doc_id)
    arrives(1)
    assert all("exists" in line for line in replication.setup(primary, standby, db))
    assert p_admin.get("_replicator", doc_id)[replication.GENERATION] == first["generation"]
    # Retired and set up again: the same source and target, a new generation, and it runs.
    replication.retire(primary, standby, [db])
    assert f"{doc_id}: created" in replication.setup(primary, standby, db)
    again = p_admin.get("_replicator", doc_id)
    assert again["generation"] > first["generation"]
    assert (again["source"], again["target"]) == (first["source"], first["target"])
    arrives(2)
    # Restarted (what the watch and `hub recover` do): replaced, still pointing the same way.
    assert replication.restart(p_admin, doc_id)
    restarted = p_admin.get("_replicator", doc_id)
    assert restarted["generation"] > again["generation"] and restarted["_rev"] != again["_rev"]
    assert (restarted["source"], restarted["target"]) == (first["source"], first["target"])
    arrives(3)
    assert not replication.restart(p_admin, replication.replication_id(db, "nowhere", "x"))
