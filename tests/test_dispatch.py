"""The hub's dispatcher (hub/dispatch.py): pure planning, then the board on the real server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hub import provision
from hub.dispatch import Board, Dispatcher, rendezvous
from hub.protocol.board import BEAT_ID, LAZY_WRITE_S, WRITE_AHEAD_S, board_db, offer_doc_id
from hub.protocol.couch import CouchError
from hub.protocol.timefmt import to_wire

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


def occ(n: int, *, state: str = "ready", rev: int = 1, tube: str = "default",
        kind: str = "demo.sleep", not_before: datetime | None = None, lease: str | None = None,
        queue_at: datetime | None = None) -> dict[str, Any]:  # fmt: skip
    due = not_before or NOW - timedelta(seconds=100 - n)
    doc = {"_id": f"occ:task:acme:t:{n:04d}", "_rev": f"{rev}-x", "type": "occurrence",
           "state": state, "tube": tube, "kind": kind, "not_before": to_wire(due),
           "queue_at": to_wire(queue_at or due), "attempt": 0, "max_attempts": 3}  # fmt: skip
    if lease:
        doc["lease"] = {"worker": lease}
    return doc


def worker(name: str, *, slots: int = 1, seen: datetime = NOW, state: str = "running",
           tubes: tuple[str, ...] = ("default",), kinds: tuple[str, ...] = ()) -> dict:  # fmt: skip
    return {"_id": f"worker:{name}", "type": "worker", "name": name, "slots": slots,
            "state": state, "last_seen": to_wire(seen), "tubes": list(tubes),
            "kinds": list(kinds)}  # fmt: skip


def offered(plan: dict[str, list[dict]]) -> dict[str, list[str]]:
    return {w: sorted(d["_id"] for d in docs) for w, docs in plan.items()}


def test_each_ready_occurrence_goes_to_one_worker_up_to_its_free_slots():
    d = Dispatcher(prefetch=0)
    for name, slots in (("w1", 2), ("w2", 1), ("w3", 1)):
        d.observe(worker(name, slots=slots))
    for n in range(6):
        d.observe(occ(n))
    plan = offered(d.plan(NOW))
    given = [i for ids in plan.values() for i in ids]
    assert len(given) == len(set(given)) == 4  # 2 + 1 + 1 slots
    assert len(plan.get("w1", [])) <= 2 and all(len(plan[w]) <= 1 for w in ("w2", "w3"))
    # In turn order: the four earliest queue_at go first.
    assert sorted(given) == sorted(occ(n)["_id"] for n in range(4))
    assert d.plan(NOW) == {}  # nothing changed: nothing to write


def test_the_choice_is_the_rendezvous_winner_among_free_workers():
    d = Dispatcher(prefetch=0)
    for name in ("a", "b", "c", "d"):
        d.observe(worker(name, slots=10))
    docs = [occ(n) for n in range(20)]
    for doc in docs:
        d.observe(doc)
    plan = offered(d.plan(NOW))
    for doc in docs:
        best = max("abcd", key=lambda w: rendezvous(doc["_id"], w))
        assert doc["_id"] in plan[best]


def test_a_claim_frees_the_offer_and_a_finish_frees_the_slot():
    d = Dispatcher(prefetch=0)
    d.observe(worker("w1", slots=1))
    d.observe(occ(1))
    d.observe(occ(2))
    assert offered(d.plan(NOW)) == {"w1": [occ(1)["_id"]]}
    d.observe(occ(1, state="leased", rev=2, lease="w1"))
    # Slot busy: occ 2 waits. w1 claimed occ 1 itself, so its withdrawal is not worth a
    # board write (each wakes every worker's feed): it waits for the next one.
    assert d.plan(NOW) == {}
    d.observe(occ(1, state="done", rev=3))
    assert offered(d.plan(NOW)) == {"w1": [occ(2)["_id"]]}


def test_a_withdrawal_nobody_acts_on_waits_for_the_next_write_or_lazy_write_s():
    d = Dispatcher(prefetch=0)
    d.observe(worker("w1", slots=1))
    d.observe(occ(1))
    d.plan(NOW)
    d.observe(occ(1, state="leased", rev=2, lease="w1"))
    assert d.plan(NOW + timedelta(seconds=1)) == {}
    assert d.plan(NOW + timedelta(seconds=1 + LAZY_WRITE_S - 0.5)) == {}
    assert offered(d.plan(NOW + timedelta(seconds=1 + LAZY_WRITE_S))) == {"w1": []}


def test_an_offer_taken_by_someone_else_is_withdrawn_before_its_holder_would_try_it():
    d = Dispatcher(prefetch=0)
    d.observe(worker("w1", slots=1))
    d.observe(worker("w2", slots=1))
    soon = occ(1, not_before=NOW + timedelta(seconds=5))
    d.observe(soon)
    d.plan(NOW + timedelta(seconds=5))  # written (due within WRITE_AHEAD_S)
    holder = next(iter(d._offered_to.values()))
    other = "w2" if holder == "w1" else "w1"
    d.observe(occ(1, state="leased", rev=2, lease=other, not_before=NOW + timedelta(seconds=5)))
    assert offered(d.plan(NOW + timedelta(seconds=5))) == {holder: []}


def test_offers_made_ahead_are_gathered_until_one_must_reach_its_worker():
    d = Dispatcher(prefetch=0, lead_s=8.0)
    for name in ("a", "b", "c"):
        d.observe(worker(name, slots=2))
    d.observe(occ(1, not_before=NOW + timedelta(seconds=5)))
    assert d.plan(NOW) == {}  # offered, not written: due in 5 s
    d.observe(occ(2, not_before=NOW + timedelta(seconds=6)))
    assert d.plan(NOW + timedelta(seconds=1)) == {}
    at = NOW + timedelta(seconds=5 - WRITE_AHEAD_S)
    plan = offered(d.plan(at))  # the first must go out now: the second rides along
    assert sorted(i for ids in plan.values() for i in ids) == [occ(1)["_id"], occ(2)["_id"]]
    d.observe(occ(3))  # due already: at once
    assert occ(3)["_id"] in [i for ids in offered(d.plan(at)).values() for i in ids]


def test_a_busy_worker_holds_one_more_only_when_no_slot_is_free_anywhere():
    d = Dispatcher(prefetch=1)
    d.observe(worker("busy"))
    d.observe(occ(1, state="leased", rev=2, lease="busy"))
    d.observe(worker("idle"))
    d.observe(occ(2))
    assert offered(d.plan(NOW)) == {"idle": [occ(2)["_id"]]}  # a free slot first
    d.observe(occ(3))
    # No slot is free now: the next one waits at a busy worker, claimed when its run ends.
    plan = offered(d.plan(NOW))
    assert [i for ids in plan.values() for i in ids if i == occ(3)["_id"]] == [occ(3)["_id"]]
    assert d.plan(NOW) == {}
    d.observe(occ(4))  # the other worker's one more
    given = [i for ids in offered(d.plan(NOW)).values() for i in ids]
    assert occ(4)["_id"] in given
    d.observe(occ(5))
    assert d.plan(NOW) == {}  # each holds its slot plus one: nothing more to give
    # Its offer lapses while it is busy: no rest for that, it was never free to claim.
    holder = next(w for w, ids in plan.items() if occ(3)["_id"] in ids)
    d.observe(occ(2, state="leased", rev=2, lease="idle"))
    d.plan(NOW + timedelta(seconds=3))
    assert d.seats[holder].lapsed_at is None


def test_an_older_copy_does_not_bring_back_a_claimed_occurrence():
    d = Dispatcher(prefetch=0)
    d.observe(worker("w1"))
    d.observe(occ(1, state="leased", rev=2, lease="w2"))
    d.observe(occ(1, rev=1))  # a view read that raced the feed
    assert d.plan(NOW) == {}


def test_a_settled_conflict_frees_the_seat_of_the_claim_that_lost():
    """A CouchDB cluster took two claims of one revision; w2's got a 202 and it marked its
    branch abandoned, one revision further than w1's. The resolver keeps w1's and deletes
    w2's: the winner the feed shows next is of a lower generation than the one seen, and
    must still be taken, or w2's seat keeps a lease it does not hold and gets no offers."""
    d = Dispatcher(prefetch=0)
    d.observe(worker("w1", slots=1))
    d.observe(worker("w2", slots=1))
    d.observe(occ(1))
    abandoned = occ(1, state="leased", rev=3, lease="w2")
    abandoned["_conflicts"] = ["2-y"]
    d.observe(abandoned)
    d.observe(occ(1, state="leased", rev=2, lease="w1"))  # the winner once settled
    d.observe(occ(2))
    d.observe(occ(3))
    assert offered(d.plan(NOW)) == {"w2": [occ(2)["_id"]]}


def test_an_abandoned_claim_holds_no_slot():
    d = Dispatcher(prefetch=0)
    d.observe(worker("w1", slots=1))
    d.observe(occ(1))
    taken = occ(1, state="leased", rev=3, lease="w1")
    taken["lease"]["abandoned"] = True
    d.observe(taken)
    d.observe(occ(2))
    assert offered(d.plan(NOW)) == {"w1": [occ(2)["_id"]]}


def test_an_offer_that_lapses_goes_to_another_worker_and_its_worker_rests():
    d = Dispatcher(offer_s=2.0, prefetch=0)
    d.observe(worker("w1"))
    d.observe(worker("w2"))
    d.observe(occ(1))
    first = next(w for w, ids in offered(d.plan(NOW)).items() if ids)
    other = "w2" if first == "w1" else "w1"
    assert d.plan(NOW + timedelta(seconds=1)) == {}
    later = offered(d.plan(NOW + timedelta(seconds=2.5)))
    assert later == {first: [], other: [occ(1)["_id"]]} and d.lapsed == 1
    d.observe(occ(2))
    assert offered(d.plan(NOW + timedelta(seconds=3))) == {}  # `other` is busy, `first` rests
    d.observe(worker(first, seen=NOW + timedelta(seconds=4)))  # it beats: alive again
    assert offered(d.plan(NOW + timedelta(seconds=4))) == {first: [occ(2)["_id"]]}


def test_offline_paused_and_unsuitable_workers_get_nothing():
    d = Dispatcher(prefetch=0)
    d.observe(worker("old", seen=NOW - timedelta(minutes=5)))
    d.observe(worker("paused", state="paused"))
    d.observe(worker("other-tube", tubes=("gpu",)))
    d.observe(worker("http-only", kinds=("http.check",)))
    d.observe(occ(1))
    assert d.plan(NOW) == {}
    d.observe(worker("fit", kinds=("demo.sleep",)))
    assert offered(d.plan(NOW)) == {"fit": [occ(1)["_id"]]}


def test_paused_tubes_far_future_and_exhausted_occurrences_are_not_offered():
    d = Dispatcher(lead_s=8.0, prefetch=0)
    d.observe(worker("w1", slots=5, tubes=("default", "held")))
    d.observe(occ(1, tube="held"))
    d.observe(occ(2, not_before=NOW + timedelta(seconds=30)))
    d.observe({**occ(3), "attempt": 3})
    soon = occ(4, not_before=NOW + timedelta(seconds=5))
    d.observe(soon)
    d.paused_tubes = {"held"}
    assert d.plan(NOW) == {}  # offered ahead of its due time, written WRITE_AHEAD_S before
    at = NOW + timedelta(seconds=5 - WRITE_AHEAD_S)
    assert offered(d.plan(at)) == {"w1": [soon["_id"]]}
    # ... and its offer lapses only offer_s after its not_before, not after the offer.
    assert d.plan(NOW + timedelta(seconds=6)) == {}


def test_an_updated_ready_doc_is_offered_again_with_its_new_rev():
    d = Dispatcher(prefetch=0)
    d.observe(worker("w1"))
    d.observe(occ(1))
    d.plan(NOW)
    d.observe(occ(1, rev=2))  # e.g. the hub re-stamped it
    assert [doc["_rev"] for doc in d.plan(NOW)["w1"]] == ["2-x"]


# ---------------------------------------------------------------- the board, for real


def test_the_board_holds_offers_and_beat_and_only_the_hub_writes_it(farm):
    provision.ensure_board_db(farm.admin, farm.db)
    board = Board(farm.hub, farm.db)
    doc = occ(1)
    assert board.publish({"w1": [doc]}, NOW) == []
    stored = farm.worker("w1").get(board_db(farm.db), offer_doc_id("w1"))
    assert stored["offers"] == [doc] and stored["worker"] == "w1"
    assert farm.worker("w1").get(board_db(farm.db), BEAT_ID)["type"] == "beat"
    assert board.publish({"w1": []}, NOW) == []  # an update: the rev it keeps is right
    assert farm.hub.get(board_db(farm.db), offer_doc_id("w1"))["offers"] == []
    # A second hub writing the same doc (or a retried request whose first try landed): a
    # conflict, its revision learned and the doc written again at once, not a dispatch
    # later (its offer would reach the worker late).
    other = Board(farm.hub, farm.db)
    writes = other.writes
    assert other.publish({"w1": [doc, occ(2)]}, NOW) == []
    stored = farm.hub.get(board_db(farm.db), offer_doc_id("w1"))
    assert [o["_id"] for o in stored["offers"]] == [doc["_id"], occ(2)["_id"]]
    assert other.writes == writes + 2
    try:
        farm.worker("w2").put(board_db(farm.db), {"_id": offer_doc_id("w2"), "type": "offer",
                                                  "worker": "w2", "offers": [doc]})  # fmt: skip
    except CouchError as refused:
        assert refused.status in (401, 403)
    else:
        raise AssertionError("a worker wrote an offer to itself")


def test_a_missing_board_is_created_by_a_hub_that_can_or_named_once(farm, caplog):
    db = f"{farm.db}_noboard"
    doc = occ(1)
    board = Board(farm.hub, db)
    with caplog.at_level("ERROR", logger="couchfarm.dispatch"):
        assert board.publish({"w1": [doc]}, NOW) == ["w1"]
        assert board.publish({"w1": [doc]}, NOW) == ["w1"]
    missing = [r.getMessage() for r in caplog.records if "event=board_missing" in r.getMessage()]
    assert len(missing) == 1 and board_db(db) in missing[0] and "hub init" in missing[0]

    def create(url: str) -> bool:
        assert url == farm.hub.active.url
        provision.ensure_board_db(farm.admin, db)
        return True

    try:
        board = Board(farm.hub, db, on_missing=create)
        assert board.publish({"w1": [doc]}, NOW) == ["w1"]  # created; written at the next plan
        assert board.publish({"w1": [doc]}, NOW) == []
        assert farm.worker("w1").get(board_db(db), offer_doc_id("w1"))["offers"] == [doc]
    finally:
        farm.admin.delete_db(board_db(db))


def test_a_worker_that_keeps_letting_offers_lapse_rests_twice_as_long_each_time():
    d = Dispatcher(offer_s=2.0, prefetch=0)
    d.observe(worker("dead"))
    t = NOW
    rests = []
    for n in range(3):
        d.observe(occ(10 + n, not_before=t))
        assert offered(d.plan(t)) == {"dead": [occ(10 + n, not_before=t)["_id"]]}
        t += timedelta(seconds=2.5)
        d.plan(t)  # lapsed: withdrawn, and the worker rests
        d.observe(occ(10 + n, state="cancelled", rev=2, not_before=NOW))  # out of the way
        start = t
        while d.seats["dead"].lapsed_at is not None:
            t += timedelta(seconds=1)
            d.plan(t)
        rests.append((t - start).total_seconds())
    assert rests == [10.0, 20.0, 40.0]
    # A claim (it is alive after all) ends the doubling.
    d.observe(occ(20, state="leased", rev=2, lease="dead"))
    assert d.seats["dead"].lapses == 0


def test_the_beat_stretches_the_keep_alive_with_the_fleet_and_the_online_window_follows():
    from hub.protocol.board import KEEPALIVE_S, keepalive_for

    d = Dispatcher()
    for n in range(4):
        d.observe(worker(f"w{n}"))
    assert d.keepalive(NOW) == KEEPALIVE_S and d.online_s == 90.0
    for n in range(4, 200):
        d.observe(worker(f"w{n}"))
    assert d.keepalive(NOW) == keepalive_for(200) == 400.0
    assert d.online_s == 600.0  # 1.5 periods
    # The fleet shrinks: workers still on the long period must not look offline at once.
    for n in range(4, 200):
        d.seats.pop(f"w{n}")
    assert d.keepalive(NOW + timedelta(seconds=30)) == KEEPALIVE_S
    assert d.online_s == 600.0
    assert d.keepalive(NOW + timedelta(seconds=1000)) == KEEPALIVE_S and d.online_s == 90.0


def test_a_quorum_occurrence_is_offered_to_each_worker_without_a_slot_in_turn():
    """Decision 17: the hub offers a collecting quorum occurrence to a worker that has no
    slot of it yet; a worker running a slot counts it as a lease; a full quorum is off."""
    d = Dispatcher(prefetch=0)
    for name in ("w1", "w2", "w3"):
        d.observe(worker(name, slots=1))
    base = {**occ(1), "quorum": 2, "slots": {}}
    d.observe(base)
    [first] = offered(d.plan(NOW))
    slot = {"worker": first, "state": "leased", "claimed_at": to_wire(NOW),
            "expires_at": to_wire(NOW + timedelta(seconds=60))}  # fmt: skip
    d.observe({**base, "_rev": "2-x", "slots": {first: slot}})
    plan = offered(d.plan(NOW + timedelta(seconds=1)))
    second = [w for w, ids in plan.items() if ids]
    assert len(second) == 1 and second[0] != first  # the next worker, never the first again
    assert d.seats[first].free() == 0  # its running slot takes its one run slot
    full = {first: slot, second[0]: {**slot, "worker": second[0]}}
    d.observe({**base, "_rev": "3-x", "slots": full})
    assert base["_id"] not in d.ready
    assert all(not ids for ids in offered(d.plan(NOW + timedelta(seconds=2))).values())
    done = {name: {**s, "state": "done"} for name, s in full.items()}
    d.observe({**base, "_rev": "4-x", "slots": done})
    assert d.seats[first].free() == 1  # a slot with its result frees the worker
