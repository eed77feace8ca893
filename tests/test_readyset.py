"""The ready set: what a worker holds from its feed, and who goes first (pure, no server)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from desktop_worker import readyset
from desktop_worker.readyset import ReadySet
from hub.protocol.board import left_beat
from hub.protocol.timefmt import to_wire

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


def occ(
    n: int,
    *,
    state: str = "ready",
    rev: int = 1,
    tube: str = "default",
    kind: str = "demo.sleep",
    not_before: datetime | None = None,
    queue_at: datetime | None = None,
) -> dict[str, Any]:
    due = NOW - timedelta(seconds=1000 - n)
    return {
        "_id": f"occ:task:acme:t:{n:04d}",
        "_rev": f"{rev}-abc",
        "type": "occurrence",
        "state": state,
        "tube": tube,
        "kind": kind,
        "not_before": to_wire(not_before or due),
        "queue_at": to_wire(queue_at or due),
    }


def worker(name: str, *, seen: datetime = NOW, state: str = "running", tubes=("default",)):
    return {
        "type": "worker",
        "_id": f"worker:{name}",
        "name": name,
        "state": state,
        "last_seen": to_wire(seen),
        "tubes": list(tubes),
    }


def beat(at: datetime = NOW, every_s: float = 15.0) -> dict[str, Any]:
    return {"_id": "hub:dispatcher", "type": "beat", "at": to_wire(at), "every_s": every_s,
            "overdue_s": 8.0}  # fmt: skip


def polling(name: str = "w1", **kw: Any) -> ReadySet:
    """A worker whose board feed runs, with no hub dispatching (no beat): rows are taken
    in rendezvous turns, as a plain poller among peers would."""
    ready = ReadySet(name, ["default"], **kw)
    ready.feed_started()
    ready.refill("default", [], full_page=False, now_mono=0.0)
    return ready


def live(name: str = "w1", **kw: Any) -> ReadySet:
    """A worker whose board feed runs, with a hub dispatching (its beat is fresh)."""
    ready = ReadySet(name, ["default"], **kw)
    ready.feed_started()
    ready.apply_board(beat(), now_mono=0.0, server_now=NOW)
    ready.refill("default", [], full_page=False, now_mono=0.0)  # the first read: nothing
    return ready


def ids(docs: list[dict[str, Any]]) -> list[str]:
    return [d["_id"] for d in docs]


def test_a_ready_doc_from_the_feed_is_offered_and_its_claim_removes_it():
    ready = live()
    assert ready.apply(occ(1), now_mono=1.0) is True
    docs, wait = ready.candidates("default", NOW, 1.0, k=10)
    assert ids(docs) == [occ(1)["_id"]] and wait is None
    assert ready.apply(occ(1, state="leased", rev=2), now_mono=1.1) is False
    assert ready.candidates("default", NOW, 1.2, k=10) == ([], None)


def test_an_older_copy_never_brings_back_a_doc_seen_leased():
    ready = live()
    ready.apply(occ(1, state="leased", rev=2), now_mono=1.0)
    assert ready.apply(occ(1, rev=1), now_mono=1.1) is False  # a late feed row
    ready.refill("default", [occ(1, rev=1)], full_page=False, now_mono=1.2)  # a slow read
    assert ready.candidates("default", NOW, 1.3, k=10) == ([], None)
    assert ready.apply(occ(1, rev=3), now_mono=1.4) is True  # expired and ready again
    assert ids(ready.candidates("default", NOW, 1.5, k=10)[0]) == [occ(1)["_id"]]


def test_a_lost_claim_forgets_the_doc():
    ready = live()
    ready.apply(occ(1), now_mono=1.0)
    ready.forget(occ(1)["_id"], now_mono=1.1)
    assert ready.candidates("default", NOW, 1.2, k=10) == ([], None)
    ready.refill("default", [occ(1)], full_page=False, now_mono=1.3)  # the same revision
    assert ready.candidates("default", NOW, 1.4, k=10) == ([], None)


def test_other_tubes_and_kinds_are_not_held():
    ready = ReadySet("w1", ["default"], kinds=["demo.sleep"])
    ready.feed_started()
    assert ready.apply(occ(1, tube="gpu"), 1.0) is False
    assert ready.apply(occ(2, kind="script"), 1.0) is False
    assert ready.apply({"type": "task", "_id": "task:x"}, 1.0) is False
    assert ready.apply(None, 1.0) is False
    assert len(ready) == 0


def test_two_workers_agree_who_goes_first_and_the_other_waits_one_step():
    first_for = {"w1": 0, "w2": 0}
    for n in range(200):
        doc = occ(n)
        offers = {}
        for me, peer in (("w1", "w2"), ("w2", "w1")):
            ready = polling(me, stagger_s=0.15)
            ready.set_peers([worker(peer)])
            ready.apply(doc, now_mono=10.0)
            offers[me] = ready.candidates("default", NOW, 10.0, k=10)
        goes_now = [me for me, (docs, _) in offers.items() if docs]
        assert len(goes_now) == 1, offers  # exactly one takes it at once
        other = "w2" if goes_now[0] == "w1" else "w1"
        assert offers[other][1] is not None and abs(offers[other][1] - 0.15) < 1e-9
        first_for[goes_now[0]] += 1
    # Rendezvous hashing spreads the first turns evenly (binomial, p=0.5, n=200).
    assert 60 <= first_for["w1"] <= 140, first_for


def test_the_second_in_line_takes_it_when_its_turn_comes():
    for n in range(50):
        doc = occ(n)
        ready = live("w1", stagger_s=0.15)
        ready.set_peers([worker("w2")])
        ready.apply(doc, now_mono=10.0)
        docs, wait = ready.candidates("default", NOW, 10.0, k=10)
        if docs:
            continue  # w1 is first for this one
        assert wait is not None
        assert ids(ready.candidates("default", NOW, 10.0 + wait, k=10)[0]) == [doc["_id"]]
        return
    raise AssertionError("w1 was first for every occurrence")


def test_offline_paused_and_other_tube_workers_do_not_delay_anyone():
    ready = live("w1", stagger_s=0.15)
    ready.set_peers(
        [
            worker("gone", seen=NOW - timedelta(seconds=600)),
            worker("resting", state="paused"),
            worker("gpu", tubes=("gpu",)),
            worker("w1"),  # itself
        ]
    )
    for n in range(30):
        ready.apply(occ(n), now_mono=1.0)
    docs, wait = ready.candidates("default", NOW, 1.0, k=50)
    assert len(docs) == 30 and wait is None


def test_the_stagger_caps_at_max_rank():
    ready = polling("w1", stagger_s=0.1, max_rank=2)
    ready.set_peers([worker(f"p{i}") for i in range(20)])
    for n in range(40):
        ready.apply(occ(n), now_mono=5.0)
    docs, wait = ready.candidates("default", NOW, 5.0 + 0.2, k=100)
    assert len(docs) == 40 and wait is None  # nobody waits more than 2 steps


def test_an_occurrence_materialized_ahead_waits_for_its_due_time():
    due = NOW + timedelta(seconds=3)
    ready = live("w1", stagger_s=0.15)
    ready.set_peers([worker("w2")])
    doc = occ(1, not_before=due, queue_at=due)
    offer = {"_id": "offer:w1", "type": "offer", "worker": "w1", "offers": [doc]}
    assert ready.apply_board(offer, now_mono=0.0, server_now=NOW) is True
    assert ready.candidates("default", NOW, 0.0, k=10) == ([], None)
    assert ready.next_not_before("default", NOW) == due
    # Offered to this worker: claimed at its due time, no turns to wait for.
    at_due = NOW + timedelta(seconds=3)
    assert ready.candidates("default", at_due, 3.0, k=10) == ([doc], None)


def test_with_a_dispatcher_only_the_first_ranked_worker_rescues_an_overdue_row():
    doc = occ(1)  # due 999 s ago: long overdue
    waits = {}
    for me, peer in (("w1", "w2"), ("w2", "w1")):
        ready = live(me)
        ready.set_peers([worker(peer)])
        ready.refill("default", [doc], full_page=False, now_mono=10.0)
        waits[me] = ready.candidates("default", NOW, 10.0, k=10)
    goes_now = [me for me, (docs, _) in waits.items() if docs]
    assert len(goes_now) == 1
    other = "w2" if goes_now[0] == "w1" else "w1"
    assert waits[other][1] == pytest.approx(8.0)  # a whole overdue_s later


def test_with_a_dispatcher_a_row_not_offered_waits_until_overdue():
    due = NOW + timedelta(seconds=3)
    ready = live("w1", stagger_s=0.15)
    doc = occ(1, not_before=due, queue_at=due)
    ready.refill("default", [doc], full_page=False, now_mono=0.0)
    at_due = NOW + timedelta(seconds=3)
    docs, wait = ready.candidates("default", at_due, 3.0, k=10)
    assert docs == [] and wait == pytest.approx(8.0)  # its owner's turn: 8 s (overdue_s)
    late = at_due + timedelta(seconds=8)
    assert ready.candidates("default", late, 11.0, k=10) == ([doc], None)


def test_without_a_beat_rows_are_taken_in_turns_and_the_view_read_each_time():
    ready = ReadySet("w1", ["default"], stagger_s=0.15)
    ready.feed_started()
    ready.refill("default", [occ(1)], full_page=False, now_mono=0.0)
    assert ids(ready.candidates("default", NOW, 0.0, k=10)[0]) == [occ(1)["_id"]]
    assert ready.needs_read("default", 0.1, poll_s=300)  # no hub: only the view says


def test_an_offer_withdrawn_leaves_the_set_and_a_stale_beat_counts_for_nothing():
    ready = live()
    offer = {"_id": "offer:w1", "type": "offer", "worker": "w1", "offers": [occ(1), occ(2)]}
    ready.apply_board(offer, now_mono=1.0, server_now=NOW)
    assert len(ready) == 2
    ready.apply_board({**offer, "offers": [occ(2)]}, now_mono=1.1, server_now=NOW)
    assert ids(ready.candidates("default", NOW, 1.2, k=10)[0]) == [occ(2)["_id"]]
    assert ready.apply_board({**offer, "worker": "w2"}, now_mono=1.3, server_now=NOW) is False
    stale = ReadySet("w1", ["default"])
    stale.feed_started()
    stale.apply_board(beat(at=NOW - timedelta(minutes=5)), now_mono=0.0, server_now=NOW)
    assert not stale.dispatched(0.0)
    assert ready.dispatched(1.3)


def test_a_full_page_is_tried_at_once_its_own_rows_held_and_later_turns_hidden():
    ready = ReadySet("w1", ["default"])
    ready.feed_started()
    ready.apply_board(beat(), now_mono=0.0, server_now=NOW)
    assert ready.needs_read("default", 0.0, poll_s=300)  # the feed just started
    page = [occ(n) for n in range(3)]
    ready.apply(page[1] | {"_rev": "2-x", "state": "leased"}, now_mono=0.5)  # taken meanwhile
    tried = ready.refill("default", page, full_page=True, now_mono=1.0, server_now=NOW)
    assert sorted(ids(tried)) == sorted(ids([page[0], page[2]]))
    ready.apply(occ(50), now_mono=1.1)  # new, but later than rows the read did not show
    # Its own rows (no peers: all of them) are held; occ 50 comes after the page.
    held, _ = ready.candidates("default", NOW, 1.2, k=10)
    assert ids(held) == ids([page[0], page[2]])
    for doc in held:
        ready.forget(doc["_id"], 1.2)  # claimed
    assert ready.needs_read("default", 1.2, poll_s=300)  # there may be more: read
    ready.refill("default", [occ(4), occ(50)], full_page=False, now_mono=1.5)
    docs, _ = ready.candidates("default", NOW, 1.6, k=10)
    assert sorted(ids(docs)) == [occ(4)["_id"], occ(50)["_id"]]
    assert not ready.needs_read("default", 1.6, poll_s=300)
    assert ready.needs_read("default", 301.6, poll_s=300)  # the safety read


def test_a_full_page_comes_back_in_rendezvous_order_so_workers_spread_out():
    page = [occ(n) for n in range(32)]
    firsts = set()
    for me in (f"w{i}" for i in range(8)):
        ready = ReadySet(me, ["default"])
        ready.feed_started()
        ready.set_peers([worker(f"w{i}") for i in range(8)])
        tried = ready.refill("default", page, full_page=True, now_mono=1.0, server_now=NOW)
        firsts.add(tried[0]["_id"])
    assert len(firsts) == 8  # each worker's first try is a row whose first turn is its own


def test_turn_order_is_kept_within_what_is_held():
    ready = live("w1")
    later = occ(1, queue_at=NOW - timedelta(seconds=1))
    sooner = occ(2, queue_at=NOW - timedelta(seconds=50))
    ready.apply(later, 1.0)
    ready.apply(sooner, 1.0)
    assert ids(ready.candidates("default", NOW, 1.0, k=1)[0]) == [sooner["_id"]]


def test_without_a_feed_every_claim_reads_and_the_page_is_the_truth():
    ready = live()
    ready.apply(occ(1), 1.0)
    ready.feed_lost()
    assert len(ready) == 0
    assert ready.needs_read("default", 1.0, poll_s=300)
    ready.refill("default", [occ(2)], full_page=False, now_mono=2.0)
    ready.refill("default", [occ(3)], full_page=False, now_mono=3.0)  # 2 was taken meanwhile
    assert ids(ready.candidates("default", NOW, 3.0, k=10)[0]) == [occ(3)["_id"]]
    assert ready.needs_read("default", 3.0, poll_s=300)


def test_capacity_keeps_the_earliest_turns_and_asks_for_a_read():
    ready = live("w1", capacity=5)
    for n in range(10):
        ready.apply(occ(n), 1.0)
    assert len(ready) == 5
    docs, _ = ready.candidates("default", NOW, 1.0, k=10)
    assert sorted(ids(docs)) == [occ(n)["_id"] for n in range(5)]
    assert ready.needs_read("default", 1.0, poll_s=300)


def test_of_a_backlog_page_only_the_rows_this_worker_ranks_first_on_are_held():
    ready = ReadySet("w1", ["default"])
    ready.feed_started()
    ready.set_peers([worker("w2"), worker("w3")])
    page = [occ(n) for n in range(30)]
    tried = ready.refill("default", page, full_page=True, now_mono=1.0, server_now=NOW)
    assert sorted(ids(tried)) == sorted(ids(page))  # all tried at once, own rows first

    def rank(doc: dict[str, Any]) -> int:
        mine = readyset._score(doc["_id"], "w1")
        return sum(readyset._score(doc["_id"], p) < mine for p in ("w2", "w3"))

    own = [d for d in page if rank(d) == 0]
    assert 0 < len(own) < len(page)
    assert set(ids(tried[: len(own)])) == set(ids(own))
    held, wait = ready.candidates("default", NOW, 1.1, k=100)
    assert sorted(ids(held)) == sorted(ids(own)) and wait is None


def test_a_hub_that_left_the_server_stops_the_wait_for_offers_at_once():
    ready = live()
    assert ready.dispatched(1.0)  # the beat holds for three beats' time
    assert ready.apply_board(left_beat(NOW, "primary"), now_mono=1.0, server_now=NOW) is True
    assert not ready.dispatched(1.0)  # rows nobody offers are taken in turns again
    assert ready.needs_read("default", 1.0, poll_s=30.0)  # new work shows only in the view
    ready.apply_board(beat(), now_mono=2.0, server_now=NOW)  # a hub came (back) here
    assert ready.dispatched(2.0)


def test_a_dispatcher_that_falls_silent_sends_the_worker_back_to_the_view():
    ready = live()
    assert not ready.needs_read("default", 1.0, poll_s=30.0)  # offers will come
    silent = 3 * 15.0 + 1  # three beats missed
    assert ready.needs_read("default", silent, poll_s=30.0)


def test_the_hubs_beat_sets_the_keep_alive_and_how_long_peers_count_as_online():
    from datetime import UTC, datetime

    from hub.protocol.timefmt import to_wire as wire

    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    held = ReadySet("w1", ["default"])
    assert held.hub_keepalive_s is None and held.online_s == 90.0
    beat = {"_id": "hub:dispatcher", "type": "beat", "at": wire(now), "every_s": 15,
            "overdue_s": 8, "keepalive_s": 400.0, "online_s": 600.0}  # fmt: skip
    held.apply_board(beat, 0.0, now)
    assert held.hub_keepalive_s == 400.0 and held.online_s == 600.0
    held.apply_board({**beat, "keepalive_s": 60.0, "online_s": 30.0}, 1.0, now)
    assert held.hub_keepalive_s == 60.0 and held.online_s == 90.0  # never below its own


def test_a_page_of_its_own_bucket_is_held_whole_past_the_last_pages_horizon():
    ready = polling()
    for name in ("w2", "w3"):
        ready.apply(worker(name), now_mono=0.0)
    ready.refill("default", [occ(1), occ(2)], full_page=True, now_mono=1.0, server_now=NOW)
    # A bucket is in turn order on its own: its rows may come after the ready page's last.
    bucket = [occ(n) for n in (3, 40, 90)]
    seen_leased = occ(90) | {"_rev": "2-x", "state": "leased"}
    ready.apply(seen_leased, now_mono=1.5)  # claimed meanwhile, as the feed or a lost race said
    ready.hold("default", [*bucket, occ(7, tube="other")], now_mono=2.0)
    held, wait = ready.candidates("default", NOW, 2.1, k=10)
    # Every row of it, whoever ranks first on it by id (the bucket is this worker's share),
    # in turn order; not the one known taken, nor another tube's.
    assert ids(held)[-2:] == ids(bucket[:2]) and wait is None
    assert ready.needs_read("default", 2.1, poll_s=300)  # held rows are no complete view
