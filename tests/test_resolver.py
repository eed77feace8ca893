"""First finished wins: the resolver's order, the one worker move that applies it, and the
spool confirmation that puts a 201'd result back on a survivor (two real servers)."""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from desktop_worker.confirm import Confirmer
from desktop_worker.spool import Spool
from hub import replication, resolver
from hub.protocol import states
from hub.protocol.couch import Couch, CouchError
from hub.protocol.model import Occurrence, Task, task_id
from hub.protocol.timefmt import to_wire


def _at(second: int) -> str:
    return f"2027-01-01T00:00:{second:02d}.000Z"


def _run(worker: str, finished: int, started: int = 0, attempt: int = 1) -> dict:
    return {"worker": worker, "attempt": attempt, "started_at": _at(started),
            "finished_at": _at(finished), "status": "ok"}  # fmt: skip


def test_first_finished_is_one_total_order():
    assert resolver.finished_first(_run("w2", 5), _run("w1", 6))
    assert not resolver.finished_first(_run("w1", 6), _run("w2", 5))
    # Same millisecond: the worker's name settles it, the same way on every copy.
    assert resolver.finished_first(_run("w1", 5), _run("w2", 5))
    assert not resolver.finished_first(_run("w1", 5), _run("w1", 5))
    assert resolver.finished_first(_run("w9", 59), None)  # any result before none
    # The same run, renumbered by a rescue, is still the same run; another start is not.
    assert resolver.same_run(_run("w1", 5, attempt=1), _run("w1", 5, attempt=2))
    assert not resolver.same_run(_run("w1", 5, started=1), _run("w1", 5, started=2))
    base = {"_id": "occ:task:a:b:20270101T000000Z", "state": "done"}
    leaves = [{**base, "_rev": "4-a", "result": _run("w2", 5)},
              {**base, "_rev": "4-b", "result": _run("w1", 5)},
              {**base, "_rev": "4-c", "result": _run("w0", 7)}]  # fmt: skip
    assert resolver.choose(leaves)["_rev"] == "4-b"
    assert resolver.choose(list(reversed(leaves)))["_rev"] == "4-b"
    archived = [{"_id": "res:x", "_rev": "1-a", **_run("w3", 8)},
                {"_id": "res:x", "_rev": "1-b", **_run("w2", 8)}]  # fmt: skip
    assert resolver.choose(archived)["_rev"] == "1-b"


# ------------------------------------------------------------------ on real servers


def _task(slug: str, now) -> Task:
    stamp = to_wire(now)
    return Task(_id=task_id("acme", slug), client="acme", slug=slug, kind="demo.sleep",
                schedule={"every": 60}, ttr=30, created_at=stamp, updated_at=stamp)  # fmt: skip


def _finished(occ: Occurrence, couch: Couch, db: str, worker: str, finish_at) -> dict:
    """Claim and finish ``occ`` as ``worker`` on ``couch``; the run ends at ``finish_at``."""
    now = couch.now()
    claimed = states.claim(occ, worker, now)
    claimed = claimed.model_copy(update={"rev": couch.put(db, claimed.to_doc())})
    done = states.finish(claimed, worker, now, started_at=finish_at - timedelta(seconds=1),
                         output={})  # fmt: skip
    doc = done.to_doc()
    doc["result"]["finished_at"] = to_wire(finish_at)
    doc["_rev"] = couch.put(db, doc)
    return doc


def test_a_worker_may_put_back_only_its_own_earlier_result(farm):
    now = farm.now().replace(microsecond=0)
    occ = states.materialize(_task(f"sup{secrets.token_hex(3)}", now), now, now)
    farm.hub.put(farm.db, occ.to_doc())
    w1, w2, w3 = (farm.worker(n, retries=0) for n in ("w1", "w2", "w3"))
    stored = _finished(Occurrence.from_doc(farm.admin.get(farm.db, occ.id)), w2, farm.db, "w2",
                       now)  # fmt: skip
    was = stored["result"]

    def put_back(couch: Couch, **changes) -> None:
        result = {**was, "worker": "w1", **changes.pop("result", {})}
        couch.put(farm.db, {**stored, "result": result, "updated_at": to_wire(farm.now()),
                            **changes})  # fmt: skip

    earlier = {"started_at": to_wire(now - timedelta(seconds=3)),
               "finished_at": to_wire(now - timedelta(seconds=2))}  # fmt: skip
    refused = [
        (w1, {"result": {"finished_at": to_wire(now + timedelta(seconds=1))}}),  # later
        (w1, {"result": {**earlier, "started_at": to_wire(now)}}),  # started after it ended
        (w3, {"result": {"worker": "w3"}}),  # same millisecond, but "w3" sorts after "w2"
        (w3, {"result": earlier}),  # a result in someone else's name
        (w1, {"result": {**earlier, "attempt": 2}}),  # an attempt the occurrence never had
        (w1, {"result": earlier, "priority": 0}),  # anything else changed
        (w1, {"result": earlier, "state": "ready"}),
        (w1, {"result": {"finished_at": to_wire(now + timedelta(hours=1))}}),
    ]
    for couch, changes in refused:
        with pytest.raises(CouchError) as no:
            put_back(couch, **changes)
        assert no.value.status == 403, (changes, no.value)
        assert farm.admin.get(farm.db, occ.id)["result"] == was
    put_back(w1, result=earlier)
    kept = farm.admin.get(farm.db, occ.id)
    assert (
        kept["result"]["worker"] == "w1" and kept["result"]["finished_at"] == earlier["finished_at"]
    )
    assert {k: v for k, v in kept.items() if k not in ("_rev", "result", "updated_at")} == {
        k: v for k, v in stored.items() if k not in ("_rev", "result", "updated_at")
    }
    # The later result cannot come back over the earlier one.
    with pytest.raises(CouchError) as no:
        w2.put(farm.db, {**kept, "result": was, "updated_at": to_wire(farm.now())})
    assert no.value.status == 403


@pytest.fixture()
def split(farm_on_both):
    """The same farm database on two servers, with validation, and not replicating: what a
    primary that died before replicating leaves behind."""
    return farm_on_both("farm_split")


def _occurrence_on_both(db: str, primary, standby, passwords) -> Occurrence:
    hub = Couch(primary.url, "hub", passwords["hub"])
    now = hub.now().replace(microsecond=0)
    # Due two seconds back: claims stamped by another client's clock estimate are past it.
    occ = states.materialize(
        _task(f"sp{secrets.token_hex(3)}", now), now - timedelta(seconds=2), now
    )
    hub.put(db, occ.to_doc())
    replication.replicate_once(primary, standby, db)
    return Occurrence.from_doc(hub.get(db, occ.id))


def _spooled(tmp: Path, name: str, doc: dict, server: int) -> Spool:
    spool = Spool(tmp / f"{name}.sqlite3")
    seq = spool.add(doc, op="finish", worker=name, attempt=doc["attempt"],
                    claimed_at=doc["result"]["started_at"])  # fmt: skip
    spool.mark_uploaded(seq, server)
    return spool


def _confirmer(name: str, primary, standby, db, passwords, spool, events) -> Confirmer:
    couch = Couch([primary.url, standby.url], name, passwords[name], retries=0)
    return Confirmer(couch, db, name, spool, lambda event, **f: events.append((event, f)))


def test_spool_confirmation_puts_the_first_finished_result_back(split, passwords, tmp_path, caplog):
    """w1 got a 201 on the primary, which never replicated it; the occurrence ran again on
    the standby (w2, finished later). w1's confirmation puts its result back there, and
    w2's confirmation finds the earlier one and logs its own as superseded."""
    caplog.set_level(logging.INFO, logger="couchfarm.worker")
    db, primary, standby = split
    occ = _occurrence_on_both(db, primary, standby, passwords)
    on_p = Couch(primary.url, "w1", passwords["w1"])
    on_s = Couch(standby.url, "w2", passwords["w2"])
    t1 = on_p.now().replace(microsecond=0) - timedelta(seconds=5)
    ours = _finished(occ, on_p, db, "w1", t1)
    theirs = _finished(occ, on_s, db, "w2", t1 + timedelta(seconds=2))
    events: list = []
    spool1 = _spooled(tmp_path, "w1", ours, 0)
    w1 = _confirmer("w1", primary, standby, db, passwords, spool1, events)
    assert not w1.run()  # put back on the standby; now waits to be seen on the primary
    on_standby = standby.couch().get(db, occ.id)
    assert on_standby["result"] == ours["result"]
    assert "event=result_replaced" in caplog.text and "dropped_worker=w2" in caplog.text
    [entry] = spool1.awaiting_confirmation()
    assert entry.uploaded_to == 1
    assert w1.run() and spool1.counts()["uploaded"] == 0  # the primary has it: confirmed
    assert ("result_confirmed", {"occ_id": occ.id}) in events

    spool2 = _spooled(tmp_path, "w2", theirs, 1)
    w2 = _confirmer("w2", primary, standby, db, passwords, spool2, events)
    assert w2.run() and spool2.counts()["uploaded"] == 0
    assert f"event=result_superseded occ={occ.id}" in caplog.text
    assert events[-1][0] == "result_dropped" and "finished first" in events[-1][1]["why"]


def test_rescue_after_failover_keeps_the_run_times_and_waits_for_another_lease(
    split, passwords, tmp_path, caplog
):
    """The claim never replicated: the standby holds the occurrence ready, then leased by
    someone else. After failing over, w1 waits for their lease, and puts its own earlier
    result back once theirs lands; on a ready copy it claims and finishes with its run's
    own start and finish times."""
    caplog.set_level(logging.INFO, logger="couchfarm.worker")
    db, primary, standby = split
    events: list = []
    # 1. Ready on the survivor: claim, finish, keep the times.
    occ = _occurrence_on_both(db, primary, standby, passwords)
    t1 = primary.couch().now().replace(microsecond=0) - timedelta(seconds=3)
    ours = _finished(occ, Couch(primary.url, "w1", passwords["w1"]), db, "w1", t1)
    spool = _spooled(tmp_path, "w1", ours, 0)
    w1 = _confirmer("w1", primary, standby, db, passwords, spool, events)
    w1.couch._active = 1  # failed over: the primary "died" after its 201
    w1.run()
    rescued = standby.couch().get(db, occ.id)
    assert rescued["state"] == "done" and rescued["result"]["worker"] == "w1"
    assert rescued["result"]["finished_at"] == ours["result"]["finished_at"]
    assert rescued["result"]["started_at"] == ours["result"]["started_at"]
    assert "event=result_rescued" in caplog.text
    assert spool.awaiting_confirmation()[0].uploaded_to == 1

    # 2. Leased by w2 on the survivor: wait; w2 finishes later; w1's result replaces it.
    occ2 = _occurrence_on_both(db, primary, standby, passwords)
    ours2 = _finished(occ2, Couch(primary.url, "w1", passwords["w1"]), db, "w1", t1)
    spool2 = _spooled(tmp_path, "w1b", ours2, 0)
    w1b = _confirmer("w1", primary, standby, db, passwords, spool2, events)
    w1b.couch._active = 1
    on_s = Couch(standby.url, "w2", passwords["w2"])
    leased = states.claim(occ2, "w2", on_s.now())
    leased = leased.model_copy(update={"rev": on_s.put(db, leased.to_doc())})
    w1b.run()
    assert standby.couch().get(db, occ2.id)["lease"]["worker"] == "w2"  # theirs: waited
    done = states.finish(leased, "w2", on_s.now(), started_at=on_s.now(), output={})
    on_s.put(db, done.to_doc())
    w1b.run()
    final = standby.couch().get(db, occ2.id)
    assert final["result"]["worker"] == "w1"
    assert final["result"]["finished_at"] == ours2["result"]["finished_at"]


def test_choose_agrees_with_result_order_when_one_worker_name_prefixes_another():
    docs = [{"_id": "res:occ:x", "_rev": f"2-{w}", **_run(w, 5)} for w in ("w10", "w1", "w1a")]
    winner = resolver.choose(docs)
    assert winner["worker"] == min(("w10", "w1", "w1a")) == "w1"
    occs = [
        {"_id": "occ:x", "_rev": f"3-{w}", "state": "done", "result": _run(w, 5)}
        for w in ("w10", "w1")
    ]
    assert resolver.choose(occs)["result"]["worker"] == "w1"


def test_two_accepted_claims_the_later_is_kept_and_the_other_worker_learns_at_its_touch(
    split, passwords
):
    """What a CouchDB cluster can do under quorum writes, made here with two servers: both
    claims accepted. The resolver keeps the later claim and deletes the other branch; the
    losing worker's next touch carries a revision that is no longer a live leaf, so it is
    refused: 409 on CouchDB, 403 on PouchDB Server (which validates first), both of which
    the engine's ``_touch`` takes as the lease lost. The winner touches on."""
    db, primary, standby = split
    occ = _occurrence_on_both(db, primary, standby, passwords)
    on_p = Couch(primary.url, "w1", passwords["w1"])
    on_s = Couch(standby.url, "w2", passwords["w2"])
    now = on_p.now()
    mine = states.claim(occ, "w1", now)
    mine = mine.model_copy(update={"rev": on_p.put(db, mine.to_doc())})
    theirs = states.claim(occ, "w2", now + timedelta(seconds=1))
    theirs = theirs.model_copy(update={"rev": on_s.put(db, theirs.to_doc())})
    for source, target in ((standby, primary), (primary, standby)):
        replication.replicate_once(source, target, db)
    conflicted = primary.couch().get(db, occ.id, conflicts="true")
    assert conflicted.get("_conflicts"), "both claims should stand as two branches"

    settled = resolver.resolve(primary.couch(), db, conflicted)
    assert settled is not None and settled.kept == theirs.rev and settled.deleted == [mine.rev]
    with pytest.raises(CouchError) as refused:
        on_p.put(db, states.touch(mine, "w1", on_p.now(), None).to_doc())
    assert refused.value.status in (409, 403)
    touched = states.touch(theirs, "w2", on_p.now(), None)
    assert Couch(primary.url, "w2", passwords["w2"]).put(db, touched.to_doc())


def test_a_losing_leaf_changed_meanwhile_is_reported_only_when_it_is_still_live(
    couch_server, caplog
):
    """Between reading the leaves and deleting the losers, replication may bring another
    server's deletion of one (harmless) or a new revision on it (still in conflict)."""
    admin = couch_server.admin()
    db = f"resolve_race_{secrets.token_hex(3)}"
    admin.create_db(db)
    caplog.set_level(logging.INFO, logger="couchfarm.resolver")
    try:
        for meanwhile, reported in (("deleted", False), ("edited", True)):
            doc_id = f"task:acme:{meanwhile}"
            stamps = ("2027-01-01T00:00:00.000Z", "2027-01-02T00:00:00.000Z")
            branches = [{"_id": doc_id, "_rev": f"1-{secrets.token_hex(16)}", "updated_at": at}
                        for at in stamps]  # fmt: skip
            admin.bulk_docs(db, branches, new_edits=False)
            loser = branches[0]["_rev"]
            other = couch_server.admin()
            real_bulk_docs = admin.bulk_docs

            def racing(db_name, docs, *, loser=loser, meanwhile=meanwhile, other=other,
                       real=real_bulk_docs, **kw):  # fmt: skip
                change = {"_deleted": True} if meanwhile == "deleted" else {"edited": True}
                other.bulk_docs(db_name, [{"_id": docs[0]["_id"], "_rev": loser, **change}])
                return real(db_name, docs, **kw)

            admin.bulk_docs = racing
            caplog.clear()
            doc = admin.get(db, doc_id, conflicts="true")
            assert resolver.resolve(admin, db, doc) is not None
            admin.bulk_docs = real_bulk_docs
            assert ("event=resolve_incomplete" in caplog.text) is reported, caplog.text
            left = admin.get(db, doc_id, conflicts="true").get("_conflicts")
            assert bool(left) is reported
    finally:
        admin.delete_db(db)


def test_every_pair_of_states_has_one_winner_whatever_the_order():
    """One total order of the states: two servers that ended one occurrence differently
    settle it the same way, for every combination (done beats all; a run's outcome beats a
    decision not to run; a client's cancel beats the hub's own policies)."""
    ranks = [states.PROGRESS_RANK[s] for s in states.State]
    assert len(set(ranks)) == len(ranks)
    order = sorted(states.State, key=states.PROGRESS_RANK.__getitem__, reverse=True)
    assert [s.value for s in order[:6]] == [
        "done", "inconclusive", "failed", "cancelled", "skipped", "missed"
    ]  # fmt: skip
    base = {"_id": "occ:task:a:b:20270101T000000Z", "updated_at": _at(1)}
    for i, a in enumerate(order):
        for b in order[i + 1 :]:
            # the loser carries the later edit and the larger revision: rank still decides
            leaves = [{**base, "_rev": "2-a", "state": a.value},
                      {**base, "_rev": "9-z", "state": b.value, "updated_at": _at(9)}]  # fmt: skip
            assert resolver.choose(leaves)["state"] == a.value, (a, b)
            assert resolver.choose(leaves[::-1])["state"] == a.value, (a, b)


def _ended_on_standby(occ: Occurrence, standby, db: str, how: str) -> None:
    """The survivor's hub ends its copy without a result, as its own policies would."""
    admin = standby.couch()
    current = Occurrence.from_doc(admin.get(db, occ.id))
    now = admin.now()
    if how == "missed":
        ended = states.miss(
            current, now, "coalesced: a newer run fell due before a worker was free"
        )
    elif how == "skipped":
        ended = states.skip(current, now, "overlap: skip")
    elif how == "cancelled":
        ended = states.cancel(current, now, "cancelled by acme")
    else:
        ended = states.bury(current, now, "kicked out")
    admin.put(db, ended.to_doc())


@pytest.mark.parametrize("how", ["missed", "skipped", "cancelled", "buried"])
def test_a_result_the_lost_server_acknowledged_is_restored_over_the_survivors_policy(
    split, passwords, tmp_path, caplog, how
):
    """The primary gave w1 a 201 and died before replicating; the standby's hub meanwhile
    ended the occurrence without a result. w1's spool puts its run back (done beats every
    other state, the resolver's rule) and keeps it until the next server has it too."""
    caplog.set_level(logging.INFO, logger="couchfarm.worker")
    db, primary, standby = split
    occ = _occurrence_on_both(db, primary, standby, passwords)
    t1 = primary.couch().now().replace(microsecond=0) - timedelta(seconds=3)
    ours = _finished(occ, Couch(primary.url, "w1", passwords["w1"]), db, "w1", t1)
    _ended_on_standby(occ, standby, db, how)
    spool = _spooled(tmp_path, "w1", ours, 0)
    events: list = []
    w1 = _confirmer("w1", primary, standby, db, passwords, spool, events)
    w1.couch._active = 1  # failed over after the primary's 201
    assert not w1.run()  # restored, not confirmed: the entry stays in the spool
    kept = standby.couch().get(db, occ.id)
    assert kept["state"] == "done"
    assert {k: kept["result"][k] for k in ("worker", "started_at", "finished_at")} == {
        k: ours["result"][k] for k in ("worker", "started_at", "finished_at")
    }
    assert kept["reason"].startswith(f"restored: w1's run finished before this copy ended {how}")
    assert f"event=result_restored occ={occ.id}" in caplog.text and f"over={how}" in caplog.text
    [entry] = spool.awaiting_confirmation()
    assert entry.uploaded_to == 1
    assert not [e for e in events if e[0] == "result_dropped"]


def test_a_restore_is_only_for_the_writers_own_recent_run(split, passwords):
    db, primary, standby = split
    occ = _occurrence_on_both(db, primary, standby, passwords)
    _ended_on_standby(occ, standby, db, "missed")
    missed = Occurrence.from_doc(standby.couch().get(db, occ.id))
    on_s = {w: Couch(standby.url, w, passwords[w]) for w in ("w1", "w2")}
    now = on_s["w1"].now().replace(microsecond=0)

    def run(worker: str, finished) -> dict:
        return {"status": "ok", "worker": worker, "attempt": 1,
                "started_at": to_wire(finished - timedelta(seconds=1)),
                "finished_at": to_wire(finished), "output": {}}  # fmt: skip

    def restored(result: dict, **changes) -> dict:
        doc = states.restore(missed, result, now).to_doc()
        return {**doc, **changes}

    refused = [
        ("w1", restored(run("w2", now - timedelta(seconds=5)))),  # someone else's run
        ("w1", restored(run("w1", now - timedelta(minutes=31)))),  # outside the window
        ("w1", restored(run("w1", now - timedelta(seconds=5)), priority=1)),  # other fields
        ("w1", restored(run("w1", now - timedelta(seconds=5)), attempt=5)),
    ]
    for worker, doc in refused:
        with pytest.raises(CouchError) as no:
            on_s[worker].put(db, doc)
        assert no.value.status == 403, (doc, no.value)
        assert standby.couch().get(db, occ.id)["state"] == "missed"
    on_s["w1"].put(db, restored(run("w1", now - timedelta(seconds=5))))
    assert standby.couch().get(db, occ.id)["state"] == "done"
    with pytest.raises(states.InvalidTransition):
        states.restore(Occurrence.from_doc(standby.couch().get(db, occ.id)), run("w1", now), now)


@pytest.mark.parametrize("abandoned", [("w2",), ("w1", "w2")])
def test_an_abandoned_claim_loses_and_every_claim_abandoned_is_ready_again(
    split, passwords, abandoned
):
    """A cluster answers 202 to a claim that reached fewer copies than a majority, and the
    worker marks it abandoned (desktop_worker/claim.py). The resolver keeps the claim that
    runs, even when the abandoned one is later; when every claim was abandoned, nobody
    runs it, so the hub puts it back to ready with its attempt given back."""
    db, primary, standby = split
    occ = _occurrence_on_both(db, primary, standby, passwords)
    on = {"w1": Couch(primary.url, "w1", passwords["w1"]),
          "w2": Couch(standby.url, "w2", passwords["w2"])}  # fmt: skip
    now = on["w1"].now()
    for offset, worker in enumerate(("w1", "w2")):
        claimed = states.claim(occ, worker, now + timedelta(seconds=offset))
        claimed = claimed.model_copy(update={"rev": on[worker].put(db, claimed.to_doc())})
        if worker in abandoned:
            on[worker].put(db, states.abandon(claimed, worker, on[worker].now()).to_doc())
    for source, target in ((standby, primary), (primary, standby)):
        replication.replicate_once(source, target, db)
    conflicted = primary.couch().get(db, occ.id, conflicts="true")
    assert conflicted.get("_conflicts")
    assert resolver.resolve(primary.couch(), db, conflicted) is not None
    kept = primary.couch().get(db, occ.id, conflicts="true")
    assert not kept.get("_conflicts")
    if abandoned == ("w2",):
        assert kept["state"] == "leased" and kept["lease"]["worker"] == "w1"
        assert "abandoned" not in kept["lease"]
    else:
        assert kept["state"] == "ready" and kept["attempt"] == 0 and "lease" not in kept
        assert kept["reason"] == "claim abandoned: requeued"


def test_an_abandoned_claim_cannot_finish(farm):
    now = farm.now().replace(microsecond=0)
    occ = states.materialize(
        _task(f"ab{secrets.token_hex(3)}", now), now - timedelta(seconds=2), now
    )
    farm.hub.put(farm.db, occ.to_doc())
    w1 = farm.worker("w1")
    claimed = states.claim(Occurrence.from_doc(farm.hub.get(farm.db, occ.id)), "w1", w1.now())
    claimed = claimed.model_copy(update={"rev": w1.put(farm.db, claimed.to_doc())})
    gone = states.abandon(claimed, "w1", w1.now())
    gone = gone.model_copy(update={"rev": w1.put(farm.db, gone.to_doc())})
    with pytest.raises(CouchError) as refused:
        w1.put(
            farm.db, states.finish(gone, "w1", w1.now(), started_at=w1.now(), output={}).to_doc()
        )
    assert refused.value.status == 403 and "abandoned" in str(refused.value)
    assert farm.hub.get(farm.db, occ.id)["lease"]["abandoned"] is True
    # and it stays abandoned: a touch cannot take the mark away
    unmarked = states.touch(gone, "w1", w1.now()).to_doc()
    unmarked["lease"].pop("abandoned")
    with pytest.raises(CouchError) as kept:
        w1.put(farm.db, unmarked)
    assert kept.value.status == 403


def test_abandon_only_by_the_holder_and_a_requeue_only_of_an_abandoned_claim():
    now = datetime(2027, 1, 1, tzinfo=UTC)
    occ = states.claim(states.materialize(_task("ab", now), now, now), "w1", now)
    with pytest.raises(states.InvalidTransition):
        states.abandon(occ, "w2", now)
    with pytest.raises(states.InvalidTransition):
        states.requeue_abandoned(occ, now)
    gone = states.abandon(occ, "w1", now)
    assert gone.lease is not None and gone.lease.abandoned is True
    assert gone.lease.expires_at == occ.lease.expires_at  # the reaper's clock is unchanged
    back = states.requeue_abandoned(gone, now)
    assert back.state == "ready" and back.attempt == 0 and back.lease is None


def test_a_claim_abandoned_with_no_other_claim_is_ready_again_at_the_next_reap(farm):
    """A cluster can answer 202 to a claim no other write competed with (a copy slow or
    down): the worker abandons it, nobody runs it, and without a conflict nothing but the
    lease's expiry would bring it back. The hub's feed sees it, and a reap once it is
    ABANDONED_GRACE_S old reads every copy and requeues it; `hub resolve` (resolve_all)
    does the same."""
    from hub import serve
    from hub.serve import Hub, HubConfig

    now = farm.now().replace(microsecond=0)
    w1 = farm.worker("w1")

    def abandoned_claim() -> str:
        occ = states.materialize(
            _task(f"lone{secrets.token_hex(3)}", now), now - timedelta(seconds=2), now
        )
        farm.hub.put(farm.db, occ.to_doc())
        claimed = states.claim(Occurrence.from_doc(farm.hub.get(farm.db, occ.id)), "w1", w1.now())
        claimed = claimed.model_copy(update={"rev": w1.put(farm.db, claimed.to_doc())})
        w1.put(farm.db, states.abandon(claimed, "w1", w1.now()).to_doc())
        return occ.id

    def assert_requeued(occ_id: str) -> None:
        stored = farm.hub.get(farm.db, occ_id)
        assert stored["state"] == "ready" and stored.get("lease") is None
        assert stored["attempt"] == 0 and stored["reason"] == "claim abandoned: requeued"

    hub = Hub(farm.hub, HubConfig(db=farm.db))
    hub.load()
    by_hub = abandoned_claim()
    for _ in range(50):  # the feed may hand the rows over in more than one call
        hub.follow_once(wait=0.2)
        if by_hub in hub._lone_abandoned:
            break
    assert by_hub in hub._lone_abandoned  # noted from the feed, not yet touched
    hub.reap()  # too young: a winning claim could still be on its way to every copy
    assert farm.hub.get(farm.db, by_hub)["lease"]["abandoned"] is True
    hub._lone_abandoned[by_hub] -= serve.ABANDONED_GRACE_S  # as if the grace had passed
    hub.reap()
    assert_requeued(by_hub)
    assert by_hub not in hub._lone_abandoned

    by_resolve_all = abandoned_claim()
    resolved, _ = resolver.resolve_all(farm.hub, farm.db)
    assert resolved >= 1  # the farm is shared: other tests' abandoned claims count too
    assert_requeued(by_resolve_all)

    # a claim that is not abandoned is never requeued
    occ = states.materialize(_task(f"held{secrets.token_hex(3)}", now), now, now)
    farm.hub.put(farm.db, occ.to_doc())
    held = states.claim(Occurrence.from_doc(farm.hub.get(farm.db, occ.id)), "w1", w1.now())
    w1.put(farm.db, held.to_doc())
    assert resolver.requeue_lone_abandoned(farm.hub, farm.db, occ.id) is True
    assert farm.hub.get(farm.db, occ.id)["state"] == "leased"
