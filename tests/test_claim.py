"""The claim protocol: unit tests on a fake view, and a real race on the test server."""

from __future__ import annotations

import random
import secrets
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from desktop_worker.claim import Claimer
from hub import provision
from hub.protocol import states
from hub.protocol.buckets import READY_BUCKETS, bucket_order, ready_bucket
from hub.protocol.couch import Conflict, Couch, Forbidden, NotFound, Written
from hub.protocol.model import Occurrence, Task, task_id
from hub.protocol.names import CLAIM_DDOC, WORKER_ROLE
from hub.protocol.timefmt import to_wire
from tests import cluster

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def task(slug: str = "t", tube: str = "default", kind: str = "demo.sleep") -> Task:
    stamp = to_wire(NOW)
    return Task(
        _id=task_id("acme", slug),
        client="acme",
        slug=slug,
        kind=kind,
        input={"ms": 0},
        schedule={"every": 60},
        tube=tube,
        created_at=stamp,
        updated_at=stamp,
    )


def ready(n: int, **kwargs: Any) -> Occurrence:
    occ = states.materialize(task(**kwargs), NOW - timedelta(minutes=100 - n), NOW)
    return occ.model_copy(update={"rev": f"1-{n}"})


class FakeCouch:
    """Just enough of hub.protocol.couch.Couch for the claim logic: a view, PUT with rev, GET."""

    def __init__(self, docs: list[dict[str, Any]]) -> None:
        self.docs = {d["_id"]: d for d in docs}
        self.view_rows = [
            {"id": d["_id"], "key": ["default", d["queue_at"]], "doc": d} for d in docs
        ]
        self.puts: list[str] = []
        self.gets: list[str] = []
        self.fail_put: dict[str, Exception] = {}
        self.view_params: list[dict[str, Any]] = []
        self.bulks: list[list[str]] = []
        self.accepted: set[str] = set()  # claims of these ids are answered 202 Accepted
        self.fetched: list[list[str]] = []

    def now(self) -> datetime:
        return NOW

    def view(self, db: str, ddoc: str, view: str, **params: Any) -> dict[str, Any]:
        self.view_params.append(params)
        # Every view the claim path reads lives in _design/claim (decision 19): a read of
        # _design/farm would bring the hub's 14 views up to date on every claim.
        assert ddoc == CLAIM_DDOC, f"{view} is read from _design/{ddoc}, not _design/claim"
        if view == "workers_by_last_seen":
            return {"rows": []}
        ready = [r for r in self.view_rows if self.docs[r["id"]]["state"] == "ready"]
        if view == "ready_buckets":  # as design_docs/claim/views/ready_buckets/map.js keys it
            tube, bucket = params["startkey"]
            rows = sorted(
                ({"id": r["id"], "key": [tube, ready_bucket(r["id"]), r["key"][1]], "doc":
                  self.docs[r["id"]]} for r in ready if ready_bucket(r["id"]) == bucket),
                key=lambda r: r["key"],
            )  # fmt: skip
            skip = params.get("skip", 0)
            return {"rows": rows[skip : skip + params["limit"]]}
        start = params.get("startkey") or []
        if len(start) == 2:  # a page further down: rows from that key on
            ready = [r for r in ready if r["key"] >= start]
        rows = ready[: params["limit"]]
        if not params.get("include_docs"):
            rows = [{"id": r["id"], "key": r["key"]} for r in rows]
        return {"rows": rows}

    def all_docs(self, db: str, *, keys: list[str], include_docs: bool) -> list[dict[str, Any]]:
        self.fetched.append(list(keys))
        return [{"id": k, "key": k, "doc": self.docs[k]} for k in keys if k in self.docs]

    def majority(self, db: str) -> int:
        return 2  # as on a 3-copy cluster

    def put_counted(self, db: str, doc: dict[str, Any], **params: Any) -> Written:
        rev = self.put(db, doc)
        return Written(rev=rev, quorum=doc["_id"] not in self.accepted)

    def put(self, db: str, doc: dict[str, Any], **params: Any) -> str:
        self.puts.append(doc["_id"])
        if doc["_id"] in self.fail_put:
            raise self.fail_put[doc["_id"]]
        current = self.docs[doc["_id"]]
        if current.get("_rev") != doc.get("_rev"):
            raise Conflict("409")
        rev = f"{int(doc['_rev'].split('-')[0]) + 1}-x"
        self.docs[doc["_id"]] = {**doc, "_rev": rev}
        return rev

    def bulk_docs(self, db: str, docs: list[dict[str, Any]], **params: Any) -> list[dict[str, Any]]:
        self.bulks.append([doc["_id"] for doc in docs])
        rows: list[dict[str, Any]] = []
        for doc in docs:
            try:
                accepted = {"accepted": True} if doc["_id"] in self.accepted else {}
                rows.append({"id": doc["_id"], "rev": self.put(db, doc), **accepted})
            except Conflict:
                rows.append(
                    {"id": doc["_id"], "error": "conflict", "reason": "Document update conflict."}
                )
        return rows

    def get(self, db: str, doc_id: str) -> dict[str, Any]:
        self.gets.append(doc_id)
        if doc_id not in self.docs:
            raise NotFound("404")
        return self.docs[doc_id]


def claimer(couch: FakeCouch, **kwargs: Any) -> Claimer:
    kwargs.setdefault("rng", random.Random(7))
    return Claimer(couch, "farm", "w1", ["default"], sleep=lambda s: None, **kwargs)  # type: ignore[arg-type]


def test_reads_the_tube_range_with_docs_and_a_few_more_than_k():
    couch = FakeCouch([ready(n).to_doc() for n in range(20)])
    result = claimer(couch, k=5).claim(1)
    assert len(result.won) == 1 and result.candidates == 5
    params = couch.view_params[0]
    assert params["startkey"] == ["default"] and params["endkey"] == ["default", {}]
    assert params["include_docs"] is True and params["limit"] > 5
    won = result.won[0]
    assert won.state == "leased" and won.lease.worker == "w1" and won.attempt == 1
    assert won.rev == couch.docs[won.id]["_rev"]


def test_picks_at_random_among_the_first_k_only():
    docs = [ready(n).to_doc() for n in range(20)]
    first_five = {d["_id"] for d in docs[:5]}
    picked = Counter()
    for seed in range(60):
        couch = FakeCouch([dict(d) for d in docs])
        result = claimer(couch, k=5, rng=random.Random(seed)).claim(1)
        picked[result.won[0].id] += 1
    assert set(picked) == first_five  # never beyond K, and not always the first
    assert len(picked) == 5


def test_skips_rows_not_claimable_as_seen():
    future = ready(1).model_copy(update={"not_before": to_wire(NOW + timedelta(minutes=5))})
    leased = states.claim(ready(2), "w2", NOW).model_copy(update={"rev": "2-a"})
    other_kind = ready(3, slug="dns", kind="dns.resolve")
    used_up = ready(4).model_copy(update={"attempt": 3})
    good = ready(5)
    docs = [d.to_doc() for d in (future, leased, other_kind, used_up, good)]
    couch = FakeCouch(docs)
    result = claimer(couch, k=5, kinds=["demo.sleep"]).claim(3)
    assert [o.id for o in result.won] == [good.id]
    assert result.next_not_before == NOW + timedelta(minutes=5)
    assert couch.puts == [good.id]


def test_conflict_moves_to_the_next_candidate_without_a_get():
    docs = [ready(n).to_doc() for n in range(3)]
    couch = FakeCouch(docs)
    for d in docs[:2]:
        couch.fail_put[d["_id"]] = Conflict("409")
    result = claimer(couch, k=3).claim(1)
    assert [o.id for o in result.won] == [docs[2]["_id"]]
    assert couch.gets == []  # never re-GET and lock whatever comes back
    assert result.stats.conflicts == len(couch.puts) - 1
    assert couch.puts[-1] == docs[2]["_id"]


def test_a_forbidden_claim_is_a_lost_race_too():
    docs = [ready(n).to_doc() for n in range(2)]
    couch = FakeCouch(docs)
    couch.fail_put[docs[0]["_id"]] = Forbidden("403", reason="leased by w2")
    couch.fail_put[docs[1]["_id"]] = Forbidden("403", reason="leased by w3")
    result = claimer(couch, k=2, max_rounds=2).claim(1)
    assert result.won == [] and result.contended and result.stats.refused == 4


def test_every_candidate_lost_backs_off_and_reads_again():
    docs = [ready(n).to_doc() for n in range(2)]
    couch = FakeCouch(docs)
    for d in docs:
        couch.fail_put[d["_id"]] = Conflict("409")
    sleeps: list[float] = []
    c = Claimer(couch, "farm", "w1", ["default"], k=2, max_rounds=3, sleep=sleeps.append)  # type: ignore[arg-type]
    result = c.claim(1)
    assert result.won == [] and result.contended
    assert len(couch.view_params) == 3 and len(sleeps) == 3
    assert all(0 <= s <= 1.0 for s in sleeps)


def test_retried_conflict_that_was_our_own_write_is_won():
    occ = ready(1)
    couch = FakeCouch([occ.to_doc()])

    def put_succeeds_then_409(db: str, doc: dict[str, Any]) -> str:
        couch.docs[doc["_id"]] = {**doc, "_rev": "2-ours"}  # the first send got through
        raise Conflict("409", retried=True)

    couch.put = put_succeeds_then_409  # type: ignore[method-assign]
    result = claimer(couch, k=1).claim(1)
    assert [o.id for o in result.won] == [occ.id]
    assert result.won[0].rev == "2-ours" and result.stats.retried_wins == 1


def test_retried_conflict_that_someone_else_won_is_not_ours():
    occ = ready(1)
    couch = FakeCouch([occ.to_doc()])

    def other_won(db: str, doc: dict[str, Any]) -> str:
        couch.docs[doc["_id"]] = {
            **states.claim(occ, "w2", NOW).to_doc(),
            "_rev": "2-theirs",
        }
        raise Conflict("409", retried=True)

    couch.put = other_won  # type: ignore[method-assign]
    result = claimer(couch, k=1, max_rounds=1).claim(1)
    assert result.won == [] and couch.gets == [occ.id]


def test_several_slots_claim_several_from_one_read():
    couch = FakeCouch([ready(n).to_doc() for n in range(10)])
    result = claimer(couch, k=3).claim(4)
    assert len(result.won) == 4 and len({o.id for o in result.won}) == 4
    assert len(couch.view_params) == 1
    # One _bulk_docs for the four claims, each doc with the _rev it was read with.
    assert couch.bulks == [[o.id for o in result.won]]
    assert all(couch.docs[o.id]["state"] == "leased" for o in result.won)


def test_a_batch_claim_keeps_the_rows_it_won_and_counts_the_ones_it_lost():
    docs = [ready(n).to_doc() for n in range(4)]
    couch = FakeCouch(docs)
    taken = dict(docs[1], _rev="2-someone")  # another worker won this one meanwhile
    couch.docs[taken["_id"]] = taken
    result = claimer(couch, k=4).claim(4)
    assert sorted(o.id for o in result.won) == sorted(d["_id"] for d in docs if d is not docs[1])
    assert result.stats.conflicts == 1 and result.stats.wins == 3


def test_in_a_backlog_a_worker_reads_ids_and_fetches_only_its_own_rows():
    from desktop_worker import readyset as readyset_module
    from desktop_worker.readyset import ReadySet

    couch = FakeCouch([ready(n).to_doc() for n in range(60)])
    held = ReadySet("w1", ["default"])
    held.feed_started()
    held.set_peers([{"name": p, "state": "running", "last_seen": to_wire(NOW),
                     "tubes": ["default"]} for p in ("w2", "w3")])  # fmt: skip
    c = claimer(couch, k=3, ready_set=held)
    first = c.claim(1)  # the first read: docs included; a full page, so a backlog
    assert len(first.won) == 1 and couch.view_params[-1].get("include_docs")
    no_buckets(c)  # (the ready buckets, read first, are tested below)
    reads = len(couch.view_params)
    won = [occ.id for occ in first.won]
    for _ in range(3):
        won += [occ.id for occ in c.claim(1).won]
    assert len(won) == 4 and len(set(won)) == 4
    # Later reads: ids only, then the docs of this worker's own rows, and those are held.
    assert all(not p.get("include_docs") for p in couch.view_params[reads:])
    for fetched in couch.fetched:
        for occ_id in fetched:
            mine = readyset_module._score(occ_id, "w1")
            assert all(readyset_module._score(occ_id, p) > mine for p in ("w2", "w3"))
    assert len(couch.fetched) <= 2  # own rows held: no read per claim


def no_buckets(c: Claimer, tube: str = "default") -> None:
    c._empty_buckets.update((tube, b, skip) for b in range(READY_BUCKETS) for skip in (0, 16))


def running(*names: str) -> list[dict[str, Any]]:
    return [{"name": n, "state": "running", "last_seen": to_wire(NOW), "tubes": ["default"]}
            for n in names]  # fmt: skip


def backlog_claimer(couch: FakeCouch, name: str, peers: list[str], **kwargs: Any) -> Claimer:
    from desktop_worker.readyset import ReadySet

    held = ReadySet(name, ["default"])
    held.feed_started()
    held.set_peers(running(*peers))
    return Claimer(couch, "farm", name, ["default"], k=3, rng=random.Random(name),  # type: ignore[arg-type]
                   sleep=lambda s: None, ready_set=held, **kwargs)  # fmt: skip


def test_bucket_owners_split_every_bucket_once_and_evenly():
    for count in (1, 3, 16, 100):
        names = [f"w{i}" for i in range(count)]
        owned = {name: bucket_order("default", name, names) for name in names}
        buckets = [b for own, _ in owned.values() for b in own]
        assert sorted(buckets) == list(range(READY_BUCKETS))  # each owned by one worker
        sizes = [len(own) for own, _ in owned.values()]
        assert max(sizes) <= -(-READY_BUCKETS // count)
        for own, others in owned.values():
            assert sorted(own + others) == list(range(READY_BUCKETS))
    # Another tube: other owners (a worker is not the first for every tube's bucket 0).
    names = [f"w{i}" for i in range(16)]
    by_tube = {t: [bucket_order(t, n, names)[0] for n in names] for t in ("a", "b")}
    assert by_tube["a"] != by_tube["b"]


def test_ready_bucket_is_the_views_hash():
    # The same figures node gives for the view's JavaScript (FNV-1a over UTF-16 units).
    assert ready_bucket("occ:task:acme:t:20261201T000100Z") == 49
    assert ready_bucket("a") == 32 and ready_bucket("") == 25
    assert ready_bucket("\u00e9\U0001f600x") == 5  # a surrogate pair: two code units


@pytest.mark.parametrize("workers", [2, 4, 16])
def test_in_a_backlog_a_worker_reads_only_its_own_buckets_whatever_the_fleet(workers):
    names = [f"w{i}" for i in range(1, workers + 1)]
    couch = FakeCouch([ready(n).to_doc() for n in range(-3000, 100)])  # all due
    c = backlog_claimer(couch, "w1", names[1:])
    own, _ = bucket_order("default", "w1", names)
    c.claim(1)  # the first read (the ready view, docs included): a full page, a backlog
    couch.view_params.clear()
    before = len(couch.puts)
    won: list[str] = []
    stats = []
    for _ in range(12):  # (fewer claims than its own buckets hold at 16 workers)
        result = c.claim(1, ahead=8)
        won += [o.id for o in result.won]
        stats.append(result.stats)
    assert len(won) >= 12 and len(set(won)) == len(won)
    assert all(ready_bucket(i) in own for i in won)  # only its own buckets
    pages = [p for p in couch.view_params if isinstance(p["startkey"], list)]  # (not peers)
    assert all(p["startkey"][1] in own and not p.get("skip") for p in pages)
    rows = sum(s.rows_read for s in stats)
    assert sum(s.bucket_pages for s in stats) == len(pages)
    assert rows <= 2 * len(won)  # what it reads is what it claims, at 2 or 16 workers
    assert len(couch.puts) - before == len(won)  # no lost race
    assert sum(s.batches for s in stats) <= len(won) / 8 + 1


def test_a_worker_whose_buckets_are_empty_takes_over_rows_past_the_owners_page():
    names = ["w1", "w2", "w3", "w4"]
    couch = FakeCouch([ready(n).to_doc() for n in range(-1500, 100)])
    own, others = bucket_order("default", "w1", names)
    for occ_id, doc in couch.docs.items():  # w1 was fast: its buckets are done
        if ready_bucket(occ_id) in own:
            couch.docs[occ_id] = dict(doc, state="leased", _rev="2-w1")
    heads = {}  # each bucket's first rows: what its owner reads and holds
    for b in others:
        rows = couch.view(
            "farm", CLAIM_DDOC, "ready_buckets", startkey=["default", b], limit=16, skip=0
        )["rows"]
        heads[b] = {r["id"] for r in rows}
    c = backlog_claimer(couch, "w1", names[1:])
    first = c.claim(1)  # the first read: a full page, then a page of another's bucket
    result = c.claim(1, ahead=8)
    won = first.won + result.won
    assert len(won) >= 2 and first.stats.conflicts == result.stats.conflicts == 0
    assert all(ready_bucket(o.id) not in own for o in won)
    assert not any(o.id in heads[ready_bucket(o.id)] for o in won)
    assert first.stats.stolen_pages >= 1


def test_a_backlog_shallower_than_a_page_per_bucket_is_read_by_the_ready_views_pages():
    couch = FakeCouch([ready(n).to_doc() for n in range(40)])  # a page (20) is full
    c = backlog_claimer(couch, "w1", [])
    first = c.claim(1, ahead=4)  # a bucket page of a row or two: too shallow for buckets
    assert first.won and first.stats.bucket_pages >= 1
    second = c.claim(1, ahead=4)
    assert len(second.won) == 5 and second.stats.bucket_pages == 0  # a page of ids, held
    assert second.stats.id_pages == 1


def test_ready_buckets_drained_fall_back_to_the_ready_view_and_end_the_backlog():
    couch = FakeCouch([ready(n).to_doc() for n in range(100)])  # more than a page of 36
    clock = [0.0]
    c = backlog_claimer(couch, "w1", ["w2"], monotonic=lambda: clock[0])
    won: list[str] = []
    for _ in range(200):  # w2 never comes: w1 takes its rows too, after their turn
        result = c.claim(1, ahead=8)
        won += [o.id for o in result.won]
        clock[0] += 1.0
        if len(won) == len(couch.docs):
            break
    assert sorted(won) == sorted(couch.docs)
    assert not c.in_backlog()  # the ready view's page was no longer full


def test_empty_tube_is_not_contended():
    result = claimer(FakeCouch([]), k=3).claim(1)
    assert result.won == [] and not result.contended and result.candidates == 0


# ------------------------------------------------------------------ against the server


def test_claim_race_leases_each_occurrence_exactly_once(farm):
    racers = [f"race{i}" for i in range(6)]
    secret = {name: secrets.token_urlsafe(12) for name in racers}
    for name in racers:
        provision.add_user(farm.admin, name, [WORKER_ROLE], secret[name], replace=True)
    now = farm.now().replace(microsecond=0)
    t = task("race", tube="race")
    farm.hub.put(farm.db, t.to_doc())
    docs = [states.materialize(t, now - timedelta(minutes=n + 1), now).to_doc() for n in range(60)]
    assert all("error" not in row for row in farm.hub.bulk_docs(farm.db, docs))

    won: dict[str, list[str]] = {name: [] for name in racers}
    barrier = threading.Barrier(len(racers))

    def race(name: str) -> None:
        couch = Couch(farm.server.url, name, secret[name])
        c = Claimer(couch, farm.db, name, ["race"], k=3, rng=random.Random(name))
        barrier.wait()
        while True:
            result = c.claim(1)
            won[name].extend(o.id for o in result.won)
            if not result.won and not result.contended and result.candidates == 0:
                return

    threads = [threading.Thread(target=race, args=(name,)) for name in racers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    claimed = [occ for ids in won.values() for occ in ids]
    # On a CouchDB cluster two claims of one revision can both be taken, each by some
    # copies; the one short of a majority is abandoned (never won), and the hub's resolver
    # settles the document, as `hub serve` does, once the copies know of both branches.
    # On one server this finds nothing.
    cluster.settle(farm.hub, farm.db, [d["_id"] for d in docs])
    requeued = [d["_id"] for d in docs if d["_id"] not in claimed]
    assert all(farm.hub.get(farm.db, i)["state"] == "ready" for i in requeued)
    on_cluster = farm.hub.majority(farm.db) > 1
    assert len(requeued) <= (len(docs) // 10 if on_cluster else 0)  # every claim abandoned
    assert sorted(claimed + requeued) == sorted(d["_id"] for d in docs)  # all, none twice
    assert len(claimed) == len(set(claimed))
    assert sum(1 for ids in won.values() if ids) >= 2  # it was a race
    stored = {
        row["id"]: row["doc"] for row in farm.hub.all_docs(farm.db, keys=claimed, include_docs=True)
    }
    for name, ids in won.items():
        for occ_id in ids:
            assert stored[occ_id]["state"] == "leased"
            assert stored[occ_id]["lease"]["worker"] == name and stored[occ_id]["attempt"] == 1


def test_ready_buckets_race_leases_each_occurrence_once_with_few_lost_races(farm):
    """A backlog with no hub: workers with ready sets claim from their own buckets (the
    ready_buckets view, keyed as hub.protocol.buckets computes), 9 per _bulk_docs."""
    from desktop_worker.readyset import ReadySet

    racers = [f"bucket{i}" for i in range(4)]
    secret = {name: secrets.token_urlsafe(12) for name in racers}
    for name in racers:
        provision.add_user(farm.admin, name, [WORKER_ROLE], secret[name], replace=True)
    now = farm.now().replace(microsecond=0)
    t = task("buckets", tube="buckets")
    farm.hub.put(farm.db, t.to_doc())
    docs = [states.materialize(t, now - timedelta(minutes=n + 1), now).to_doc() for n in range(300)]
    assert all("error" not in row for row in farm.hub.bulk_docs(farm.db, docs))
    rows = farm.hub.view(farm.db, CLAIM_DDOC, "ready_buckets", startkey=["buckets"],
                         endkey=["buckets", {}])["rows"]  # fmt: skip
    assert sorted(r["id"] for r in rows) == sorted(d["_id"] for d in docs)
    assert all(r["key"][1] == ready_bucket(r["id"]) for r in rows)  # the view's hash
    peers = [{"name": n, "state": "running", "last_seen": to_wire(now), "tubes": ["buckets"]}
             for n in racers]  # fmt: skip
    won: dict[str, list[str]] = {name: [] for name in racers}
    stats = {name: [] for name in racers}
    barrier = threading.Barrier(len(racers))

    def race(name: str) -> None:
        couch = Couch(farm.server.url, name, secret[name])
        held = ReadySet(name, ["buckets"])
        held.feed_started()
        held.set_peers(peers)
        c = Claimer(couch, farm.db, name, ["buckets"], k=3, rng=random.Random(name),
                    ready_set=held)  # fmt: skip
        c._peers_at = float("inf")  # the peers above, not read from worker docs
        barrier.wait()
        for _ in range(400):
            result = c.claim(1, 8 if c.in_backlog() else 0)
            won[name].extend(o.id for o in result.won)
            stats[name].append(result.stats)
            if not result.won and result.retry_in is not None:
                time.sleep(result.retry_in)
            elif not result.won and not result.contended and result.candidates == 0:
                return

    threads = [threading.Thread(target=race, args=(name,)) for name in racers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    claimed = [occ for ids in won.values() for occ in ids]
    cluster.settle(farm.hub, farm.db, [d["_id"] for d in docs])
    on_cluster = farm.hub.majority(farm.db) > 1
    if not on_cluster:
        assert sorted(claimed) == sorted(d["_id"] for d in docs)  # all, none twice
    assert len(claimed) == len(set(claimed))
    every = [s for name in racers for s in stats[name]]
    writes = sum(s.puts for s in every)
    assert sum(s.bucket_pages for s in every) > 0
    assert sum(s.lost_races for s in every) <= 0.15 * writes  # the target


def test_future_not_before_is_left_alone_on_the_server(farm):
    now = farm.now().replace(microsecond=0)
    t = task("later", tube="later")
    occ = states.materialize(t, now, now, not_before=now + timedelta(hours=1))
    farm.hub.put(farm.db, occ.to_doc())
    result = Claimer(farm.worker("w1"), farm.db, "w1", ["later"], k=3).claim(1)
    assert result.won == [] and result.next_not_before == now + timedelta(hours=1)
    assert farm.hub.get(farm.db, occ.id)["state"] == "ready"


@pytest.mark.parametrize("slots", [1, 2])
def test_a_claim_a_cluster_took_on_fewer_copies_than_a_majority_is_abandoned_not_run(slots):
    """202 Accepted: another claim of the same revision holds the majority of the copies
    and will run; ours is marked abandoned on its own branch and never returned as won."""
    docs = [ready(n).to_doc() for n in range(slots)]
    couch = FakeCouch(docs)
    couch.accepted = {docs[0]["_id"]}
    result = claimer(couch, k=4).claim(slots)
    assert [o.id for o in result.won] == [d["_id"] for d in docs[1:]]
    assert result.stats.abandoned == 1 and result.stats.wins == slots - 1
    stored = couch.docs[docs[0]["_id"]]
    assert stored["state"] == "leased" and stored["lease"]["abandoned"] is True


def test_claims_ahead_ride_in_the_first_batch_and_never_cost_a_request_of_their_own():
    docs = [ready(n).to_doc() for n in range(10)]
    couch = FakeCouch(docs)
    result = claimer(couch, k=3).claim(1, ahead=3)
    assert len(result.won) == 4 and couch.bulks == [[o.id for o in result.won]]
    assert couch.puts == [o.id for o in result.won] and result.stats.batches == 1
    # A batch that loses every row but one is not topped up with single PUTs for the
    # claims ahead: one slot is free, one was won.
    couch = FakeCouch(docs)
    for doc in docs[1:4]:
        couch.docs[doc["_id"]] = dict(doc, _rev="2-someone")
    result = claimer(couch, k=3).claim(1, ahead=3)
    assert [o.id for o in result.won] == [docs[0]["_id"]] or len(result.won) == 1
    assert len(couch.bulks) == 1 and len(couch.puts) == 4  # the batch only
    # A batch that loses every row falls back to single PUTs for the free slot only.
    couch = FakeCouch(docs)
    stale = {doc["_id"] for doc in docs[:6]}
    for doc in docs[:6]:
        couch.docs[doc["_id"]] = dict(doc, _rev="2-someone")
    result = claimer(couch, k=10, rng=random.Random(3)).claim(1, ahead=3)
    assert len(result.won) == 1 and len(couch.bulks) == 1
    batch, singles = couch.puts[:4], couch.puts[4:]
    assert batch == couch.bulks[0]
    if any(i not in stale for i in batch):
        assert singles == []
    else:
        assert singles[-1] == result.won[0].id and all(i in stale for i in singles[:-1])


def test_a_worker_with_none_of_its_rows_left_on_a_page_reads_further_not_others_rows():
    from desktop_worker import readyset as readyset_module
    from desktop_worker.readyset import ReadySet

    peers = ("w2", "w3")
    couch = FakeCouch([ready(n).to_doc() for n in range(-100, 100)])  # all due
    held = ReadySet("w1", ["default"])
    held.feed_started()
    held.set_peers([{"name": p, "state": "running", "last_seen": to_wire(NOW),
                     "tubes": ["default"]} for p in peers])  # fmt: skip

    def mine(occ_id: str) -> bool:
        score = readyset_module._score(occ_id, "w1")
        return all(readyset_module._score(occ_id, p) > score for p in peers)

    c = claimer(couch, k=3, ready_set=held)
    c.claim(1)  # first read (docs included): a full page, so a backlog from now on
    limit = couch.view_params[-1]["limit"]
    # Everything of w1's on the first page is taken (w1 was faster than its peers).
    first_page = [r["id"] for r in couch.view_rows if couch.docs[r["id"]]["state"] == "ready"]
    for occ_id in first_page[: 2 * limit]:  # so the page read next holds none of its rows
        if mine(occ_id):
            couch.docs[occ_id] = dict(couch.docs[occ_id], state="leased", _rev="2-w1")
    held.feed_started()  # forget what it held
    c._backlog["default"] = True
    no_buckets(c)  # every ready bucket found empty: the ready view's pages are next
    result = c.claim(1, ahead=3)
    assert result.won and all(mine(o.id) for o in result.won)  # its own, further down
    assert result.stats.conflicts == 0
    assert any(len(p.get("startkey") or []) == 2 for p in couch.view_params)


def test_without_a_dispatcher_rows_another_worker_went_first_on_are_checked_before_a_try():
    from desktop_worker import readyset as readyset_module
    from desktop_worker.readyset import ReadySet

    couch = FakeCouch([ready(n).to_doc() for n in range(12)])  # less than a page
    held = ReadySet("w1", ["default"])
    held.feed_started()
    held.set_peers([{"name": "w2", "state": "running", "last_seen": to_wire(NOW),
                     "tubes": ["default"]}])  # fmt: skip
    clock = [0.0]
    c = claimer(couch, k=3, ready_set=held, monotonic=lambda: clock[0])
    won = [o.id for o in c.claim(1).won]  # the first read: everything ready is held
    theirs = [
        d for d in couch.docs.values()
        if readyset_module._score(d["_id"], "w2") < readyset_module._score(d["_id"], "w1")
    ]  # fmt: skip
    assert theirs and won
    for doc in theirs:  # w2 took every row where it goes first (we hear nothing of it)
        couch.docs[doc["_id"]] = dict(doc, state="leased", _rev="2-w2")
    clock[0] = 5.0  # long past w2's turn: w1 may try its rows now
    stats = []
    for _ in range(20):
        result = c.claim(1)
        stats.append(result.stats)
        won += [o.id for o in result.won]
        clock[0] += 1.0
    assert len(won) == 12 - len(theirs) and len(set(won)) == len(won)
    assert sum(s.conflicts for s in stats) == 0  # a check instead of a lost race per row
