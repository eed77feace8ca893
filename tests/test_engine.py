"""The headless engine against the real test server: claim, lease, run, report, spool.

Each test serves its own tube, so occurrences of one test are never claimed by another's
engine. Runs are real ``demo.sleep`` runs in child processes (desktop_worker.runner).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from desktop_worker.config import WorkerConfig
from desktop_worker.engine import Engine, EngineEvent, EngineState
from desktop_worker.spool import Spool
from hub import provision, replication
from hub.dispatch import Dispatcher, rendezvous
from hub.protocol import states
from hub.protocol.couch import Couch
from hub.protocol.model import Backoff, Occurrence, Result, Task, result_id, task_id, worker_id
from hub.protocol.names import ADMIN_ROLE, WORKER_ROLE, results_db
from hub.protocol.timefmt import from_wire, to_wire
from hub.serve import Hub, HubConfig
from tests import cluster
from tests.servers import ControlledServer, fault_servers
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ helpers


class Recorder:
    """Collects engine events; lets a test wait for one."""

    def __init__(self) -> None:
        self.events: list[EngineEvent] = []
        self.times: dict[int, float] = {}  # id(event) -> time.monotonic() when it came
        self._cond = threading.Condition()

    def __call__(self, event: EngineEvent) -> None:
        with self._cond:
            self.events.append(event)
            self.times[id(event)] = time.monotonic()
            self._cond.notify_all()

    def at(self, event: EngineEvent) -> float:
        return self.times[id(event)]

    def named(self, name: str, **match: Any) -> list[EngineEvent]:
        with self._cond:
            return [
                e
                for e in self.events
                if e.name == name and all(getattr(e, k) == v for k, v in match.items())
            ]

    def wait(self, name: str, timeout: float = 20.0, **match: Any) -> EngineEvent:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [
                    e
                    for e in self.events
                    if e.name == name and all(getattr(e, k) == v for k, v in match.items())
                ]
                if found:
                    return found[0]
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [(e.name, e.occ_id, e.status, e.state) for e in self.events]
                    raise AssertionError(f"no {name} {match} within {timeout} s; saw {seen}")
                self._cond.wait(left)


def seed(
    hub: Couch,
    db: str,
    slug: str,
    tube: str,
    count: int = 1,
    *,
    ms: int = 100,
    ttr: int = 30,
    fail_rate: float = 0.0,
    input: dict[str, Any] | None = None,
    backoff: Backoff | None = None,
    max_attempts: int = 3,
) -> list[str]:
    """A task in ``tube`` and ``count`` ready occurrences of it, due in the past second(s)."""
    now = hub.now().replace(microsecond=0)
    stamp = to_wire(now)
    task = Task(
        _id=task_id("acme", slug),
        client="acme",
        slug=slug,
        kind="demo.sleep",
        input=input if input is not None else {"ms": ms, "fail_rate": fail_rate},
        schedule={"every": 60},
        tube=tube,
        ttr=ttr,
        max_attempts=max_attempts,
        backoff=backoff or Backoff(),
        created_at=stamp,
        updated_at=stamp,
    )
    existing = hub.get_or_none(db, task.id)
    if existing is None:
        hub.put(db, task.to_doc())
    docs = [
        states.materialize(task, now - timedelta(seconds=n + 1), now).to_doc() for n in range(count)
    ]
    rows = hub.bulk_docs(db, docs)
    assert all("error" not in row for row in rows), rows
    return [d["_id"] for d in docs]


def docs_of(couch: Couch, db: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    rows = couch.all_docs(db, keys=ids, include_docs=True)
    return {row["key"]: row.get("doc") for row in rows}


def config_for(
    url: str | list[str], name: str, password: str, db: str, tube: str, tmp: Path, **kw: Any
) -> WorkerConfig:
    kw.setdefault("spool_retry_s", 0.3)
    kw.setdefault("standby_check_s", 0.3)
    kw.setdefault("spool_path", tmp / f"spool-{name}-{tube}.sqlite3")
    return WorkerConfig(
        hub_urls=[url] if isinstance(url, str) else list(url),
        name=name,
        password=password,
        db=db,
        tubes=[tube],
        **kw,
    )


@pytest.fixture
def make_engine(farm, tmp_path) -> Iterator[Callable[..., tuple[Engine, Recorder]]]:
    made: list[Engine] = []

    def make(
        name: str,
        tube: str,
        *,
        urls: str | list[str] | None = None,
        engine_kwargs: dict[str, Any] | None = None,
        start: bool = True,
        **config: Any,
    ) -> tuple[Engine, Recorder]:
        cfg = config_for(
            urls or farm.server.url,
            name,
            farm.passwords[name],
            farm.db,
            tube,
            tmp_path,
            **config,
        )
        engine = Engine(cfg, **(engine_kwargs or {}))
        recorder = Recorder()
        engine.add_listener(recorder)
        made.append(engine)
        if start:
            engine.start()
        return engine, recorder

    yield make
    for engine in made:
        engine.stop(timeout=10)


@pytest.fixture
def dispatching(farm) -> Iterator[Hub]:
    """The hub's dispatcher as ``hub serve`` runs it (follow the live database, offer to
    workers on the board), without its materializer: these tests seed by hand."""
    hub = Hub(farm.hub, HubConfig(db=farm.db))
    # Offers lapse only after 10 s here: a loaded test machine must not turn a slow
    # worker's offer into a second worker's race.
    hub.dispatcher = Dispatcher(offer_s=10.0)
    hub.load()

    def follow() -> None:
        while not hub._stop.is_set():
            try:
                hub.follow_stream(max_s=2.0)
            except Exception:  # a test server hiccup: follow again, as hub serve does
                hub._stop.wait(0.2)

    def dispatch() -> None:
        while not hub._stop.is_set():
            try:
                hub.dispatch()
            except Exception:
                pass
            hub._stop.wait(0.05)

    threads = [threading.Thread(target=t, daemon=True) for t in (follow, dispatch)]
    for thread in threads:
        thread.start()
    yield hub
    hub._stop.set()
    for thread in threads:
        thread.join(5)


def near(stamp: str, reference, seconds: float = 10.0) -> bool:
    return abs((from_wire(stamp) - reference).total_seconds()) <= seconds


# ------------------------------------------------------------------ end to end


def test_three_engines_run_each_occurrence_exactly_once(farm, make_engine):
    ids = seed(farm.hub, farm.db, "e2e", "e2e", 20, ms=50)
    engines = [make_engine(name, "e2e", slots=2) for name in ("w1", "w2", "w3")]
    on_cluster = farm.hub.majority(farm.db) > 1

    def all_done() -> bool:
        if on_cluster:
            # No hub runs here: settle what its resolver would (two claims a cluster both
            # took, or a claim it took on too few copies and that nobody runs).
            cluster.settle(farm.hub, farm.db, ids)
        docs = docs_of(farm.hub, farm.db, ids)
        return all(d and d["state"] == "done" for d in docs.values())

    wait_for(all_done, timeout=60, every=0.3)
    docs = docs_of(farm.hub, farm.db, ids)
    for doc in docs.values():
        assert doc["attempt"] == 1 and doc["result"]["attempt"] == 1  # claimed exactly once
        assert doc["result"]["worker"] in ("w1", "w2", "w3")
        assert doc["result"]["output"] == {"slept_ms": 50}
        assert doc["result"]["started_at"] <= doc["result"]["finished_at"]
    started = [e.occ_id for _, rec in engines for e in rec.named("run_started")]
    assert sorted(started) == sorted(ids)  # each ran once, on exactly one engine
    wait_for(lambda: sum(e.totals["done"] for e, _ in engines) == 20, timeout=5)
    for engine, rec in engines:
        done_here = [e.occ_id for e in rec.named("run_finished", status="done")]
        assert all(docs[i]["result"]["worker"] == engine.name for i in done_here)
        assert engine.totals["lost"] == 0
        assert engine.spool is not None and engine.spool.counts()["pending"] == 0


def test_a_new_occurrence_starts_within_a_second_through_the_changes_feed(
    farm, make_engine, dispatching
):
    _engine, rec = make_engine("w1", "feed", poll_interval_s=30)
    rec.wait("state_changed", state="idle")
    time.sleep(1.0)  # let the watcher settle on its longpoll; the claim loop sleeps 30 s
    [occ_id] = seed(farm.hub, farm.db, "feed", "feed", 1, ms=10)
    written = time.monotonic()
    started = rec.wait("run_started", occ_id=occ_id, timeout=5)
    assert rec.at(started) - written < 1.5  # the claim loop alone would sleep 30 s
    rec.wait("run_finished", occ_id=occ_id, status="done", timeout=15)


def test_a_new_occurrence_is_claimed_from_the_feed_without_reading_the_view(
    farm, make_engine, dispatching
):
    engine, rec = make_engine("w1", "nofeedread", poll_interval_s=30)
    rec.wait("state_changed", state="idle")
    wait_for(lambda: engine.claim_stats.view_reads >= 1 and engine.ready_set.live, timeout=10)
    # The hub's beat reached the engine's board feed: from here on it waits for offers. (On a
    # loaded server the beat can come after the first read, and the engine rightly reads the
    # view at its next wake-up until then.)
    wait_for(lambda: engine.ready_set.dispatched(time.monotonic()), timeout=30)
    time.sleep(0.5)
    reads = engine.claim_stats.view_reads
    ids = seed(farm.hub, farm.db, "nofeedread", "nofeedread", 3, ms=10)
    for occ_id in ids:
        rec.wait("run_finished", occ_id=occ_id, status="done", timeout=15)
    # The hub's offers carried each doc and its _rev: the claims needed no view read.
    assert engine.claim_stats.view_reads == reads
    assert engine.claim_stats.wins >= 3


def test_idle_engines_get_offers_instead_of_racing(farm, make_engine, dispatching):
    """Two idle engines, occurrences arriving one at a time: the hub offers each to the
    engine that ranks first for it, and nobody races for it."""
    engines = [make_engine(name, "turns", poll_interval_s=30) for name in ("w1", "w2")]
    for _engine, rec in engines:
        rec.wait("state_changed", state="idle")
    wait_for(lambda: {"w1", "w2"} <= set(dispatching.dispatcher.seats), timeout=40)
    ids: list[str] = []
    for _ in range(10):
        ids += seed(farm.hub, farm.db, "turns", "turns", 1, ms=10)
        time.sleep(1.05)  # seed() names occurrences by the second
    for occ_id in ids:
        wait_for(lambda i=occ_id: any(r.named("run_finished", occ_id=i) for _, r in engines))
    first_choice = 0
    for occ_id in ids:
        [ran_on] = [e.name for e, r in engines if r.named("run_started", occ_id=occ_id)]
        first_choice += ran_on == max(("w1", "w2"), key=lambda w: rendezvous(occ_id, w))
    # Racing would give about half (P(>= 9 of 10) = 1 %); offers give all.
    assert first_choice >= 9, first_choice
    # At most one: an engine that reads the view before its board feed has brought the
    # hub's beat takes rows in turns, as without a hub (seen once on a loaded CouchDB).
    assert sum(e.claim_stats.lost_races for e, _ in engines) <= 1


# ------------------------------------------------------------------ leases


def test_lease_lost_on_touch_cancels_the_run_and_drops_the_result(farm, make_engine):
    [occ_id] = seed(farm.hub, farm.db, "lost-touch", "losttouch", 1, ms=8000, ttr=2)
    engine, rec = make_engine("w1", "losttouch")
    rec.wait("run_started", occ_id=occ_id, timeout=10)
    began = time.monotonic()
    leased = Occurrence.from_doc(farm.hub.get(farm.db, occ_id))
    assert leased.lease is not None and leased.lease.worker == "w1"
    farm.hub.put(farm.db, states.cancel(leased, farm.now(), "cancelled by a test").to_doc())
    finished = rec.wait("run_finished", occ_id=occ_id, timeout=10)
    assert finished.status == "lost"
    assert time.monotonic() - began < 5  # the 8 s run was stopped at the touch (~1 s)
    assert engine.totals["lost"] == 1 and engine.totals["done"] == 0
    doc = farm.hub.get(farm.db, occ_id)
    assert doc["state"] == "cancelled" and "result" not in doc
    assert engine.spool.counts() == {"pending": 0, "uploaded": 0}


def test_lease_lost_before_finish_drops_the_result(farm, make_engine):
    [occ_id] = seed(farm.hub, farm.db, "lost-finish", "lostfinish", 1, ms=1500, ttr=60)
    engine, rec = make_engine("w2", "lostfinish")
    rec.wait("run_started", occ_id=occ_id, timeout=10)
    leased = Occurrence.from_doc(farm.hub.get(farm.db, occ_id))
    farm.hub.put(farm.db, states.cancel(leased, farm.now(), "replaced").to_doc())
    assert rec.wait("run_finished", occ_id=occ_id, timeout=15).status == "lost"
    assert engine.totals["lost"] == 1
    assert farm.hub.get(farm.db, occ_id)["state"] == "cancelled"
    assert engine.spool.counts() == {"pending": 0, "uploaded": 0}


def test_touch_carries_progress_and_only_after_half_the_ttr(farm, make_engine):
    [long_id] = seed(farm.hub, farm.db, "touchy", "touchy", 1, ms=2600, ttr=2)
    _engine, rec = make_engine("w3", "touchy")
    started = rec.wait("run_started", occ_id=long_id, timeout=10)
    first = farm.hub.get(farm.db, long_id)
    claimed_expiry = first["lease"]["expires_at"]

    def touched_doc() -> dict[str, Any] | None:
        doc = farm.hub.get(farm.db, long_id)
        if doc["state"] == "leased" and doc["lease"]["expires_at"] != claimed_expiry:
            return doc
        return None

    touched = wait_for(touched_doc, timeout=10, every=0.05)
    assert touched["lease"]["claimed_at"] == first["lease"]["claimed_at"]
    finished = rec.wait("run_finished", occ_id=long_id, status="done", timeout=15)
    done = farm.hub.get(farm.db, long_id)
    touches = int(done["_rev"].split("-")[0]) - 3  # 1 create, 2 claim, last finish
    lasted = rec.at(finished) - rec.at(started)
    assert 1 <= touches <= lasted / 1.0 + 1  # every ~1 s (half of ttr=2), not every poll
    assert done["progress"]["den"] == 2600  # touches carry the run's progress
    assert rec.named("run_progress", occ_id=long_id)


def test_short_runs_never_touch(farm, make_engine):
    [occ_id] = seed(farm.hub, farm.db, "short", "short", 1, ms=10, ttr=60)
    _engine, rec = make_engine("w1", "short")
    rec.wait("run_finished", occ_id=occ_id, status="done", timeout=15)
    assert farm.hub.get(farm.db, occ_id)["_rev"].startswith("3-")  # create, claim, finish


def test_skewed_local_clock_still_writes_hub_time(farm, make_engine):
    """The PC's clock is 3 hours fast; every time the engine writes is the server's."""
    skew = 3 * 3600.0
    [occ_id] = seed(farm.hub, farm.db, "skew", "skew", 1, ms=1800, ttr=2)
    engine, rec = make_engine(
        "w2", "skew", engine_kwargs={"local_clock": lambda: time.time() + skew}
    )
    rec.wait("run_started", occ_id=occ_id, timeout=10)
    assert abs((engine.couch.now() - farm.now()).total_seconds()) < 2.5
    leased = farm.hub.get(farm.db, occ_id)
    assert near(leased["lease"]["claimed_at"], farm.now())
    assert near(leased["lease"]["expires_at"], farm.now())
    rec.wait("run_finished", occ_id=occ_id, status="done", timeout=15)
    done = farm.hub.get(farm.db, occ_id)
    now = farm.now()
    for stamp in (done["result"]["started_at"], done["result"]["finished_at"], done["updated_at"]):
        assert near(stamp, now), stamp
    assert int(done["_rev"].split("-")[0]) >= 4  # it touched (at hub time) on the way
    wait_for(lambda: engine.heartbeats_written >= 1, timeout=5)
    worker = farm.hub.get(farm.db, worker_id("w2"))
    assert near(worker["last_seen"], now) and near(worker["started_at"], now, 60)


def test_engine_code_never_reads_the_local_wall_clock():
    for name in ("engine.py", "claim.py"):
        source = (REPO / "desktop_worker" / name).read_text()
        assert not re.search(r"datetime\.now\(|utcnow\(|time\.time\(\)", source), name


# ------------------------------------------------------------------ failures


def test_failed_run_is_retried_after_the_tasks_backoff(farm, make_engine):
    backoff = Backoff(base=100, factor=2, max=1000, jitter=0.1)
    [occ_id] = seed(farm.hub, farm.db, "flaky", "flaky", 1, ms=0, fail_rate=1.0, backoff=backoff)
    engine, rec = make_engine("w3", "flaky")
    assert rec.wait("run_finished", occ_id=occ_id, timeout=15).status == "retry"
    doc = farm.hub.get(farm.db, occ_id)
    assert doc["state"] == "scheduled" and doc["errors"][-1]["worker"] == "w3"
    assert "on purpose" in doc["errors"][-1]["error"]
    delay = (from_wire(doc["not_before"]) - from_wire(doc["errors"][-1]["at"])).total_seconds()
    assert 89 <= delay <= 111  # the task's backoff, not the default 10 s
    assert engine.totals["failed"] == 1


def test_permanent_failure_fails_the_occurrence(farm, make_engine):
    [occ_id] = seed(farm.hub, farm.db, "badinput", "badinput", 1, input={"ms": -5})
    _engine, rec = make_engine("w1", "badinput")
    assert rec.wait("run_finished", occ_id=occ_id, timeout=15).status == "failed"
    doc = farm.hub.get(farm.db, occ_id)
    assert doc["state"] == "failed" and "invalid input" in doc["reason"]


# ------------------------------------------------------------------ control


def test_pause_and_resume(farm, make_engine):
    engine, rec = make_engine("w2", "pause")
    rec.wait("state_changed", state="idle")
    engine.pause("owner is gaming")
    assert engine.state == EngineState.PAUSED and engine.why == "owner is gaming"
    [occ_id] = seed(farm.hub, farm.db, "pause", "pause", 1, ms=10)
    time.sleep(1.5)
    assert farm.hub.get(farm.db, occ_id)["state"] == "ready"
    engine.resume()
    rec.wait("run_finished", occ_id=occ_id, status="done", timeout=15)
    assert [e.state for e in rec.named("state_changed")][:3] == ["idle", "paused", "idle"]


def test_drain_finishes_the_current_run_and_claims_no_more(farm, make_engine):
    [first] = seed(farm.hub, farm.db, "drain", "drain", 1, ms=1500)
    engine, rec = make_engine("w3", "drain")
    rec.wait("run_started", occ_id=first, timeout=10)
    engine.drain()
    assert engine.state == EngineState.DRAINING
    [second] = seed(farm.hub, farm.db, "drain2", "drain", 1, ms=10)
    assert engine.wait(20)
    assert engine.state == EngineState.STOPPED
    assert farm.hub.get(farm.db, first)["state"] == "done"
    assert farm.hub.get(farm.db, second)["state"] == "ready"
    assert farm.hub.get(farm.db, worker_id("w3"))["state"] == "stopped"


def test_stop_hands_running_leases_back(farm, make_engine):
    [occ_id] = seed(farm.hub, farm.db, "stopme", "stopme", 1, ms=20000)
    engine, rec = make_engine("w1", "stopme")
    rec.wait("run_started", occ_id=occ_id, timeout=10)
    began = time.monotonic()
    engine.stop()
    assert time.monotonic() - began < 5
    doc = farm.hub.get(farm.db, occ_id)
    assert doc["state"] == "ready" and doc["attempt"] == 0  # released, attempt given back
    assert rec.named("run_finished", occ_id=occ_id)[0].status == "released"


def test_cancel_one_run_from_the_ui(farm, make_engine):
    [occ_id] = seed(farm.hub, farm.db, "uicancel", "uicancel", 1, ms=20000, ttr=60)
    engine, rec = make_engine("w2", "uicancel")
    rec.wait("run_started", occ_id=occ_id, timeout=10)
    info = engine.run_info(occ_id)
    assert info is not None and info["kind"] == "demo.sleep" and info["attempt"] == 1
    assert 50 < info["lease_left_s"] <= 61  # hub time is known to about a second
    engine.pause("owner needs the CPU")  # or it would claim the released run again
    assert engine.cancel(occ_id, "owner needs the CPU")
    assert rec.wait("run_finished", occ_id=occ_id, timeout=5).status == "released"
    doc = farm.hub.get(farm.db, occ_id)
    assert doc["state"] == "ready" and doc["reason"] == "owner needs the CPU"
    assert engine.run_info(occ_id) is None and not engine.cancel(occ_id)


# ------------------------------------------------------------------ heartbeat


def test_heartbeat_is_rate_limited_and_survives_a_stale_rev(farm, make_engine):
    # A worker doc from an earlier life exists: the first write must re-GET and retry once.
    old = farm.worker("w3").get_or_none(farm.db, worker_id("w3"))
    if old is None:
        stamp = to_wire(farm.now())
        farm.worker("w3").put(
            farm.db,
            {
                "_id": worker_id("w3"),
                "type": "worker",
                "name": "w3",
                "version": "0",
                "os": "x",
                "last_seen": stamp,
                "started_at": stamp,
            },
        )
    rev_before = int(farm.hub.get(farm.db, worker_id("w3"))["_rev"].split("-")[0])
    engine, rec = make_engine("w3", "heartbeat", slots=3)
    rec.wait("heartbeat", timeout=10)
    for _ in range(3):
        engine.pause("flapping")
        engine.resume()
    time.sleep(1.0)
    assert engine.heartbeats_written == 1  # state changes wait for the 30 s window
    doc = farm.hub.get(farm.db, worker_id("w3"))
    assert int(doc["_rev"].split("-")[0]) == rev_before + 1
    assert doc["state"] == "running" and doc["slots"] == 3 and doc["tubes"] == ["heartbeat"]
    assert doc["version"] and doc["os"] and "demo.sleep" in doc["kinds"]
    assert doc["totals"] == {"done": 0, "failed": 0, "lost": 0} and doc["current"] == []
    engine.stop()
    assert engine.heartbeats_written == 2
    assert farm.hub.get(farm.db, worker_id("w3"))["state"] == "stopped"


def test_state_change_is_written_once_the_window_allows(farm, make_engine):
    engine, rec = make_engine("w2", "hbwindow", heartbeat_interval_s=0.6)
    rec.wait("heartbeat", timeout=10)
    began = time.monotonic()
    engine.pause("lunch")
    wait_for(lambda: farm.hub.get(farm.db, worker_id("w2"))["state"] == "paused", timeout=5)
    assert time.monotonic() - began < 1.5
    for _ in range(10):
        engine.resume()
        engine.pause("again")
        time.sleep(0.1)
    elapsed = time.monotonic() - began
    assert engine.heartbeats_written <= 2 + elapsed / 0.6


# ------------------------------------------------------------------ spool


def test_spool_left_from_an_earlier_run_is_uploaded_at_start(farm, make_engine, tmp_path):
    [occ_id] = seed(farm.hub, farm.db, "leftover", "leftover", 1)
    ready = Occurrence.from_doc(farm.hub.get(farm.db, occ_id))
    leased = states.claim(ready, "w1", farm.now())
    rev = farm.worker("w1").put(farm.db, leased.to_doc())
    leased = leased.model_copy(update={"rev": rev})
    # It finished an hour ago (the server was away since): the upload is written now.
    hour_ago = farm.now() - timedelta(hours=1)
    finished = states.finish(leased, "w1", hour_ago, started_at=hour_ago, output={"x": 1})
    spool = Spool(tmp_path / "spool-w1-leftover.sqlite3")
    assert leased.lease is not None
    spool.add(
        finished.to_doc(), op="finish", worker="w1", attempt=1, claimed_at=leased.lease.claimed_at
    )
    spool.close()
    engine, rec = make_engine("w1", "leftover")
    rec.wait("result_uploaded", occ_id=occ_id, status="done", timeout=10)
    doc = farm.hub.get(farm.db, occ_id)
    assert doc["result"]["output"] == {"x": 1}
    assert doc["result"]["finished_at"] == to_wire(hour_ago)  # when it really ran
    assert near(doc["updated_at"], farm.now())  # when the hub got it
    assert engine.totals["done"] == 1


def test_unwritable_spool_is_an_error_state_not_a_crash(farm, make_engine, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    [occ_id] = seed(farm.hub, farm.db, "nospool", "nospool", 1, ms=10)
    engine, rec = make_engine("w2", "nospool", spool_path=blocker / "spool.sqlite3")
    event = rec.wait("state_changed", state="error", timeout=5)
    assert "spool" in event.why and str(blocker) in event.why
    time.sleep(1.0)
    assert farm.hub.get(farm.db, occ_id)["state"] == "ready"  # no work without a spool
    engine.stop()
    assert engine.state == EngineState.STOPPED


def test_spool_that_stops_taking_writes_mid_run(farm, make_engine, tmp_path):
    """A full or read-only disk at finish time: the result goes straight to the hub, the
    engine shows an error and claims no more until the spool takes writes again."""
    spool = Spool(tmp_path / "readonly.sqlite3")
    ids = seed(farm.hub, farm.db, "rospool", "rospool", 2, ms=300)
    spool._run("PRAGMA query_only=ON")  # every write now fails, as on a full disk
    _engine, rec = make_engine("w3", "rospool", engine_kwargs={"spool": spool}, poll_interval_s=0.5)
    first = rec.wait("run_finished", timeout=15)
    assert first.status == "done"
    assert farm.hub.get(farm.db, first.occ_id)["result"]["worker"] == "w3"
    event = rec.wait("state_changed", state="error", timeout=5)
    assert "spool" in event.why and "readonly" in event.why
    [other] = [i for i in ids if i != first.occ_id]
    time.sleep(1.0)
    assert farm.hub.get(farm.db, other)["state"] == "ready"  # no new work meanwhile
    spool._run("PRAGMA query_only=OFF")
    rec.wait("run_finished", occ_id=other, status="done", timeout=15)


@contextmanager
def _solo_server(tmp_path: Path, farm) -> Iterator[tuple[ControlledServer, Couch]]:
    """A server of the test's own to stop or kill, provisioned with ``farm.db`` and hub, w1
    and w2: a new PouchDB Server, or on a real CouchDB the dedicated fault primary of
    tests/servers.py, from which ``farm.db`` and its months are dropped afterwards."""
    with fault_servers(
        tmp_path, "primary", real=farm.server.dev is None,
        admin_password=farm.server.admin_password,
    ) as [server]:  # fmt: skip
        admin = Couch(server.url, server.admin_user, server.admin_password)
        try:
            _provision(admin, farm)
            yield server, admin
        finally:
            if server.persistent:
                server.close()  # running again
                for name in replication.farm_databases(admin, farm.db)[1:]:
                    admin.delete_db(name)


def _provision(admin: Couch, farm) -> None:
    provision.init(admin, farm.db, now=admin.now(), hub_user="")
    for name in ("hub", "w1", "w2"):
        role = ADMIN_ROLE if name == "hub" else WORKER_ROLE
        provision.add_user(admin, name, [role], farm.passwords[name], replace=True)


def test_result_is_spooled_while_the_server_is_down_and_uploaded_when_it_returns(
    farm, make_engine, tmp_path
):
    with _solo_server(tmp_path, farm) as (server, _admin):
        hub = Couch(server.url, "hub", farm.passwords["hub"])
        [occ_id] = seed(hub, farm.db, "spooled", "spooled", 1, ms=2500, ttr=60)
        engine, rec = make_engine("w1", "spooled", urls=server.url)
        rec.wait("run_started", occ_id=occ_id, timeout=10)
        server.stop()
        assert rec.wait("run_finished", occ_id=occ_id, timeout=20).status == "spooled"
        assert engine.spool.counts()["pending"] == 1
        rec.wait("state_changed", state="offline", timeout=10)
        server.start()  # the same data, on the same address
        rec.wait("result_uploaded", occ_id=occ_id, status="done", timeout=20)
        doc = hub.get(farm.db, occ_id)
        assert doc["state"] == "done" and doc["result"]["worker"] == "w1"
        assert engine.spool.counts() == {"pending": 0, "uploaded": 0}  # no standby: done
        assert engine.totals["done"] == 1


def test_uploaded_result_stays_until_seen_on_the_standby(farm, make_engine, standby_server):
    standby = standby_server.admin()
    provision.init(standby, farm.db, now=standby.now(), hub_user="")
    replication.copy_users(farm.server.endpoint("primary"), standby_server.endpoint("standby"))
    ids = seed(farm.hub, farm.db, "confirm", "confirm", 2, ms=0)
    engine, rec = make_engine("w2", "confirm", urls=[farm.server.url, standby_server.url])
    for occ_id in ids:
        rec.wait("run_finished", occ_id=occ_id, status="done", timeout=15)
    assert engine.spool.counts() == {"pending": 0, "uploaded": 2}
    time.sleep(0.8)
    assert engine.spool.counts()["uploaded"] == 2  # the standby has neither yet

    # One arrives by replication (the live doc), the other already archived there.
    replicated = farm.admin.get(farm.db, ids[0])
    standby.put(farm.db, {k: v for k, v in replicated.items() if k != "_rev"})
    archived = Occurrence.from_doc(farm.admin.get(farm.db, ids[1]))
    assert archived.result is not None
    month_db = results_db(farm.db, from_wire(archived.due_at))
    provision.ensure_results_db(standby, month_db)
    standby.put(
        month_db,
        Result(
            _id=result_id(archived.id),
            occurrence=archived.id,
            task=archived.task,
            client=archived.client,
            kind=archived.kind,
            due_at=archived.due_at,
            state=archived.state,
            attempt=archived.attempt,
            worker=archived.result.worker,
            started_at=archived.result.started_at,
            finished_at=archived.result.finished_at,
            status="ok",
            output=archived.result.output,
        ).to_doc(),
    )
    for occ_id in ids:
        rec.wait("result_confirmed", occ_id=occ_id, timeout=10)
    assert engine.spool.counts() == {"pending": 0, "uploaded": 0}


# ------------------------------------------------------------------ failover


def test_engine_survives_a_dead_primary(farm, make_engine, tmp_path, dispatching):
    """The hub (its dispatcher here) runs on the survivor: the worker tells it at once
    that it moved there, and gets the new occurrence offered."""
    with _solo_server(tmp_path, farm) as (primary, _admin):
        engine, rec = make_engine("w2", "failover", urls=[primary.url, farm.server.url])
        rec.wait("heartbeat", timeout=10)
        assert engine.couch.on_primary
        time.sleep(0.5)  # the watcher is now on the primary's longpoll
        primary.kill()
        killed = time.monotonic()
        [occ_id] = seed(farm.hub, farm.db, "failover", "failover", 1, ms=10)
        rec.wait("run_finished", occ_id=occ_id, status="done", timeout=15)
        assert time.monotonic() - killed < 15
        assert not engine.couch.on_primary
        assert farm.hub.get(farm.db, occ_id)["result"]["worker"] == "w2"
