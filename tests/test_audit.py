"""``hub audit``: the comparison as pure functions, and the command against two real servers."""

from __future__ import annotations

import json
import secrets
import socket
from datetime import timedelta

import pytest

from hub import archiver, audit, cli, provision, replication
from hub.audit import DocRevs, Finding
from hub.protocol import states
from hub.protocol.model import Occurrence, Task, task_id
from hub.protocol.names import results_db
from hub.protocol.timefmt import from_wire, to_wire

# ---------------------------------------------------------------- pure functions


def test_compare_sorts_ids_into_missing_differs_and_conflicts():
    primary = {
        "same": DocRevs("2-a"),
        "only_p": DocRevs("1-a"),
        "deleted_on_s": DocRevs("1-a"),
        "newer_on_s": DocRevs("1-a"),
        "conflicted": DocRevs("1-b", conflicts=("1-a",)),
        "deleted_both": DocRevs("2-a", deleted=True),
        "deleted_p_absent_s": DocRevs("2-a", deleted=True),
        "hub:probe:primary": DocRevs("7-a"),
        "_design/farm": DocRevs("1-a"),
    }
    standby = {
        "same": DocRevs("2-a"),
        "deleted_on_s": DocRevs("2-b", deleted=True),
        "newer_on_s": DocRevs("2-b"),
        "conflicted": DocRevs("1-b"),
        "deleted_both": DocRevs("3-c", deleted=True),
        "hub:probe:primary": DocRevs("6-a"),
        "_design/farm": DocRevs("1-b"),
    }
    diff = audit.compare(primary, standby)
    assert diff.missing == ["deleted_on_s", "only_p"]
    assert diff.differs == ["_design/farm", "newer_on_s"]
    assert diff.conflicts == ["conflicted"]


def test_ignored_documents_are_local_docs_and_the_probes():
    assert audit.ignored("_local/x")
    assert audit.ignored("hub:probe:standby")
    assert audit.ignored(replication.PROBE_ID)
    assert not audit.ignored("hub:policy")
    assert not audit.ignored("_design/farm")


def test_a_changes_row_gives_the_winner_unless_several_leaves_are_live():
    one = {"id": "a", "changes": [{"rev": "1-x"}]}
    assert audit.from_change(one) == DocRevs("1-x")
    gone = {"id": "a", "changes": [{"rev": "1-x"}], "deleted": True}
    assert audit.from_change(gone) == DocRevs("1-x", deleted=True)
    # Every leaf deleted: CouchDB's order, highest position then highest hash.
    dead = {"id": "a", "changes": [{"rev": "2-a"}, {"rev": "10-a"}, {"rev": "10-b"}],
            "deleted": True}  # fmt: skip
    assert audit.from_change(dead) == DocRevs("10-b", deleted=True)
    assert audit.from_change({"id": "a", "changes": [{"rev": "1-x"}, {"rev": "1-y"}]}) is None


def test_an_all_docs_row_gives_winner_deletion_and_conflicts():
    row = {"id": "c", "value": {"rev": "1-b"}, "doc": {"_id": "c", "_conflicts": ["1-a"]}}
    assert audit.from_all_docs_row(row) == DocRevs("1-b", conflicts=("1-a",))
    gone = {"id": "b", "value": {"rev": "2-c", "deleted": True}, "doc": None}
    assert audit.from_all_docs_row(gone) == DocRevs("2-c", deleted=True)
    assert audit.from_all_docs_row({"key": "z", "error": "not_found"}) is None


def _run(worker: str, finished: str) -> dict:
    return {"worker": worker, "started_at": "2027-01-01T00:00:00.000Z", "finished_at": finished,
            "status": "ok", "attempt": 1}  # fmt: skip


def test_outcome_is_the_run_for_done_and_the_state_otherwise():
    done = {"type": "occurrence", "state": "done", "result": _run("w1", "2027-01-01T00:00:01.000Z")}
    result = {"type": "result", "state": "done", **_run("w1", "2027-01-01T00:00:01.000Z")}
    assert audit.outcome(done) == audit.outcome(result)
    assert audit.outcome(done) == ("done", "w1", "2027-01-01T00:00:00.000Z",
                                   "2027-01-01T00:00:01.000Z")  # fmt: skip
    assert audit.outcome({"type": "result", "state": "missed", "status": "missed"}) == ("missed",)
    assert audit.outcome({"type": "occurrence", "state": "leased"}) is None
    assert audit.outcome({"type": "tally", "state": "done"}) is None
    assert audit.outcome(None) is None


def test_two_results_are_final_records_that_disagree():
    run_a = ("done", "w1", "s", "f1")
    run_b = ("done", "w2", "s", "f2")
    found = audit.two_results({
        "occ:agree": [("primary farm", run_a), ("standby farm_results_2027_01", run_a)],
        "occ:two_runs": [("primary farm", run_a), ("standby farm_results_2027_01", run_b)],
        "occ:missed_and_done": [("primary farm_results_2027_01", ("missed",)),
                                ("standby farm", run_a)],
    })  # fmt: skip
    assert [f.id for f in found] == ["occ:missed_and_done", "occ:two_runs"]
    assert "primary farm_results_2027_01: missed" in found[0].detail
    assert "standby farm: done by w1" in found[0].detail


def test_only_occurrences_recorded_in_two_places_are_read():
    live, m1, m2 = "farm", "farm_results_2027_01", "farm_results_2027_02"
    maps = {
        live: {
            "primary": {"occ:a": DocRevs("3-a"), "occ:b": DocRevs("3-a"), "occ:e": DocRevs("1-a")},
            "standby": {"occ:b": DocRevs("3-a"), "occ:c": DocRevs("2-a"), "occ:e": DocRevs("2-b")},
        },
        m1: {
            "primary": {"res:occ:a": DocRevs("1-a"), "res:occ:d": DocRevs("1-a")},
            "standby": {
                "res:occ:d": DocRevs("1-b"),
                "res:occ:f": DocRevs("1-a"),
                "tally:task:x:y": DocRevs("5-a"),
            },
        },
        m2: {"primary": {"res:occ:f": DocRevs("1-a")}, "standby": {}},
    }
    # a: live and archived; d: archived on both with different revisions; e: live on both,
    # different revisions; f: archived in two months. b (same revision on both) and c
    # (one place) cannot hold two results.
    assert audit.result_candidates(live, maps) == {"occ:a", "occ:d", "occ:e", "occ:f"}


def test_the_report_groups_findings_with_counts():
    report = audit.AuditReport("farm", "http://p", "http://s",
                               {"farm": {"primary": 3, "standby": 2}})  # fmt: skip
    assert report.clean and report.lines()[-1] == "clean: the servers agree"
    report.findings += [
        Finding("missing", "farm", "task:acme:x", "1-a", "absent"),
        Finding("two_results", "", "occ:x", "", "", "primary farm: missed; standby farm: done"),
    ]
    lines = report.lines()
    assert "documents missing on one server: 1" in lines
    assert "  farm task:acme:x: primary 1-a; standby absent" in lines
    assert lines[-1] == "NOT CLEAN: 1 missing, 1 two_results"
    assert report.as_dict()["counts"]["missing"] == 1 and not report.as_dict()["clean"]


# ---------------------------------------------------------------- against the servers


def _task(slug: str, now) -> Task:
    stamp = to_wire(now)
    return Task(_id=task_id("acme", slug), client="acme", slug=slug, kind="demo.sleep",
                schedule={"every": 60}, ttr=30, created_at=stamp, updated_at=stamp)  # fmt: skip


@pytest.fixture()
def pair(farm_on_both):
    """One farm on both servers, copied once to the standby so they start out equal (not
    replicating, so each test can set them apart). It holds a ready occurrence and a done
    one that is archived and still live (as the archiver keeps each task's newest): one
    result in four places, which is not two results."""
    db, primary, standby = farm_on_both("farm_audit")
    admin = primary.couch()
    now = admin.now().replace(microsecond=0)
    task = _task("steady", now)
    admin.put(db, task.to_doc())
    admin.put(db, states.materialize(task, now - timedelta(minutes=5), now).to_doc())
    done = states.claim(states.materialize(task, now - timedelta(minutes=6), now), "w1", now)
    done = done.model_copy(update={"rev": admin.put(db, done.to_doc())})
    done = states.finish(done, "w1", now, started_at=now, output={})
    done = done.model_copy(update={"rev": admin.put(db, done.to_doc())})
    month = _month(db, primary, standby, done)
    archiver.store_results(admin, month, [archiver.to_result(done).to_doc()], now)
    for name in (db, month):
        replication.replicate_once(primary, standby, name)
    return db, primary, standby


def _month(db: str, primary, standby, occ: Occurrence) -> str:
    """The occurrence's results database, made on both servers if its month is new."""
    month = results_db(db, from_wire(occ.due_at))
    for end in (primary, standby):
        provision.ensure_results_db(end.couch(), month)
    return month


def _hub_audit(db, primary, standby, tmp_path, *extra: str) -> int:
    secret = tmp_path / "admin.pw"
    secret.write_text(primary.password)
    return cli.main(["audit", "--db", db, "--primary", primary.url, "--standby", standby.url,
                     "--user", primary.user, "--password-file", str(secret), *extra])  # fmt: skip


def _findings(db, primary, standby, tmp_path, capsys) -> list[dict]:
    capsys.readouterr()
    assert _hub_audit(db, primary, standby, tmp_path, "--json") == 1
    return json.loads(capsys.readouterr().out)["findings"]


def test_a_clean_pair_passes(pair, tmp_path, capsys):
    db, primary, standby = pair
    assert _hub_audit(db, primary, standby, tmp_path) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert out.strip().endswith("clean: the servers agree")
    assert "2 database(s)" in out
    # Small pages read the same answer.
    report = audit.audit(primary.couch(), standby.couch(), db, page=2)
    assert report.clean and report.databases[db]["primary"] == report.databases[db]["standby"]


def test_a_document_on_one_side_only_is_reported(pair, tmp_path, capsys):
    db, primary, standby = pair
    now = primary.couch().now()
    primary.couch().put(db, _task("lonely", now).to_doc())
    # A probe written on one side only is expected, and not reported.
    replication.write_probe(standby.couch(), db, "standby")
    assert _hub_audit(db, primary, standby, tmp_path) == 1
    out = capsys.readouterr().out
    assert "documents missing on one server: 1" in out
    assert f"{db} task:acme:lonely: primary 1-" in out and "; standby absent" in out
    assert out.strip().endswith("NOT CLEAN: 1 missing")


def test_a_different_winning_revision_is_reported_with_each_sides_state(pair, tmp_path, capsys):
    db, primary, standby = pair
    s_admin = standby.couch()
    now = s_admin.now()
    rows = s_admin.all_docs(db, startkey="occ:", endkey="occ;", include_docs=True)
    occ = next(Occurrence.from_doc(r["doc"]) for r in rows if r["doc"]["state"] == "ready")
    claimed = states.claim(occ, "w1", now)
    claimed = claimed.model_copy(update={"rev": s_admin.put(db, claimed.to_doc())})
    s_admin.put(db, states.finish(claimed, "w1", now, started_at=now, output={}).to_doc())
    findings = _findings(db, primary, standby, tmp_path, capsys)
    assert [(f["kind"], f["id"]) for f in findings] == [("differs", occ.id)]
    assert findings[0]["primary"] == f"{occ.rev} ready"
    assert findings[0]["standby"].startswith("3-") and "done by w1" in findings[0]["standby"]


def test_a_conflicted_document_is_reported(pair, tmp_path, capsys):
    db, primary, standby = pair
    doc_id = "task:acme:forked"
    branches = [{"_id": doc_id, "_rev": f"1-{secrets.token_hex(16)}", "updated_at": at}
                for at in ("2027-01-01T00:00:00.000Z", "2027-01-02T00:00:00.000Z")]  # fmt: skip
    for end in (primary, standby):  # the same two branches on both: only the conflict
        end.couch().bulk_docs(db, branches, new_edits=False)
    findings = _findings(db, primary, standby, tmp_path, capsys)
    assert [(f["kind"], f["id"]) for f in findings] == [("conflict", doc_id)]
    loser = min(b["_rev"] for b in branches)
    assert f"(conflicts: {loser})" in findings[0]["primary"]
    assert f"(conflicts: {loser})" in findings[0]["standby"]


def test_an_occurrence_with_two_results_is_reported(pair, tmp_path, capsys):
    """The primary holds the occurrence done by w1 and not archived yet; the standby ran
    it again (w2) and archived that run: two results for one occurrence."""
    db, primary, standby = pair
    p_admin, s_admin = primary.couch(), standby.couch()
    now = p_admin.now().replace(microsecond=0)
    task = _task("twice", now)
    occ = states.materialize(task, now - timedelta(minutes=1), now)
    p_admin.put(db, occ.to_doc())
    replication.replicate_once(primary, standby, db)
    occ = Occurrence.from_doc(p_admin.get(db, occ.id))
    results = {}
    for couch, worker, at in ((p_admin, "w1", now), (s_admin, "w2", now + timedelta(seconds=3))):
        claimed = states.claim(occ, worker, at)
        claimed = claimed.model_copy(update={"rev": couch.put(db, claimed.to_doc())})
        done = states.finish(claimed, worker, at, started_at=at, output={"by": worker})
        couch.put(db, done.to_doc())
        results[worker] = done
    month = _month(db, primary, standby, occ)
    archiver.store_results(s_admin, month, [archiver.to_result(results["w2"]).to_doc()], now)
    gone = s_admin.get(db, occ.id)
    s_admin.delete(db, occ.id, gone["_rev"])  # archived and removed, as the archiver does
    findings = _findings(db, primary, standby, tmp_path, capsys)
    double = [f for f in findings if f["kind"] == "two_results"]
    assert [f["id"] for f in double] == [occ.id]
    assert f"primary {db}: done by w1" in double[0]["detail"]
    assert f"standby {month}: done by w2" in double[0]["detail"]
    # The copies that differ are listed too: the live occurrence, the result, the tally.
    missing = {(f["db"], f["id"]) for f in findings if f["kind"] == "missing"}
    assert (db, occ.id) in missing and (month, f"res:{occ.id}") in missing


def test_a_database_on_one_side_only_is_reported(pair, tmp_path, capsys):
    db, primary, standby = pair
    extra = f"{db}_results_1999_01"
    primary.couch().create_db(extra)
    try:
        primary.couch().put(extra, {"_id": "note", "text": "only here"})
        findings = _findings(db, primary, standby, tmp_path, capsys)
        assert findings == [
            {"kind": "database", "db": extra, "id": "", "primary": "1 document(s)",
             "standby": "absent", "detail": ""}
        ]  # fmt: skip
    finally:
        primary.couch().delete_db(extra)


def test_usage_and_connection_errors_exit_2_naming_the_server(pair, tmp_path, capsys):
    db, primary, standby = pair
    assert cli.main(["audit", "--db", db, "--primary", primary.url]) == 2
    assert "give both --primary URL and --standby URL" in capsys.readouterr().err
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{free.getsockname()[1]}"
    gone = replication.Endpoint(dead, standby.user, standby.password, "standby")
    assert _hub_audit(db, primary, gone, tmp_path) == 2
    err = capsys.readouterr().err
    assert f"the standby ({dead})" in err, err
    wrong = replication.Endpoint(primary.url, primary.user, "not-the-password", "primary")
    secret = tmp_path / "wrong.pw"
    secret.write_text(wrong.password)
    assert cli.main(["audit", "--db", db, "--primary", primary.url, "--standby", standby.url,
                     "--user", primary.user, "--password-file", str(secret)]) == 2  # fmt: skip
    assert f"the primary ({primary.url}) refused" in capsys.readouterr().err
