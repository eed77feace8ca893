"""The hub's duties against the real server, driven by a fake clock."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from hub.protocol import states
from hub.protocol.model import Occurrence, State, Task, task_id
from hub.protocol.timefmt import to_wire
from hub.serve import Hub, HubConfig

DAY_START = datetime(2027, 1, 1, tzinfo=UTC)


@pytest.fixture(autouse=True)
def no_tasks_left_behind(farm):
    """Tests share the module's database but run on different fake days: each test's tasks
    and occurrences are removed afterwards so the next test's hub does not see them."""
    yield
    rows = [
        row
        for prefix in ("task:", "occ:")
        for row in farm.admin.all_docs(farm.db, startkey=prefix, endkey=prefix + "\ufff0")
    ]
    gone = [{"_id": r["id"], "_rev": r["value"]["rev"], "_deleted": True} for r in rows]
    farm.admin.bulk_docs(farm.db, gone)


class FakeClock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> datetime:
        self.now += timedelta(**kwargs)
        return self.now


def recent_minute(farm) -> datetime:
    """Hub time a second past the current minute: tests where workers write use it, since
    validate_doc_update holds worker-written times to within minutes of the server's."""
    return farm.now().replace(second=1, microsecond=0)


def add_task(farm, slug: str, clock: FakeClock, **fields) -> Task:
    stamp = to_wire(clock.now)
    data = dict(
        _id=task_id("acme", slug),
        client="acme",
        slug=slug,
        kind="demo.sleep",
        input={"ms": 0},
        schedule={"every": 60},
        created_at=stamp,
        updated_at=stamp,
    )
    task = Task(**{**data, **fields})
    farm.hub.put(farm.db, task.to_doc())
    return task


def occurrences(farm, task: Task) -> list[dict]:
    rows = farm.admin.view(
        farm.db, "farm", "by_task", startkey=[task.id], endkey=[task.id, {}], include_docs=True
    )["rows"]
    return [row["doc"] for row in rows]


def new_hub(farm, clock: FakeClock) -> Hub:
    hub = Hub(farm.hub, HubConfig(db=farm.db), clock=clock)
    hub.load()
    return hub


def test_a_day_of_every_minute_is_1440_occurrences_across_5_restarts(farm):
    clock = FakeClock(DAY_START - timedelta(seconds=1))
    task = add_task(farm, "daylong", clock, misfire="run_all", overlap="allow")
    hub = new_hub(farm, clock)
    restarts = {240, 480, 720, 960, 1200}
    for minute in range(1, 1441):
        clock.now = DAY_START + timedelta(minutes=minute - 1, seconds=0.3)
        if minute in restarts:
            hub = new_hub(farm, clock)  # a crashed hub comes back: state from the database
        hub.materialize()
    docs = occurrences(farm, task)
    ids = [doc["_id"] for doc in docs]
    assert len(ids) == 1440 == len(set(ids))
    assert docs[0]["due_at"] == "2027-01-01T00:00:00.000Z"
    assert docs[-1]["due_at"] == "2027-01-01T23:59:00.000Z"
    assert hub.materializer.conflicts == 0


def test_hub_down_ten_minutes_with_run_latest(farm):
    clock = FakeClock(recent_minute(farm))
    task = add_task(farm, "downtime", clock)
    hub = new_hub(farm, clock)
    clock.advance(minutes=1, seconds=0.5)
    assert hub.materialize() == 1
    first = occurrences(farm, task)[0]
    # A worker runs the first occurrence, so nothing is waiting when the hub goes down.
    w1 = farm.worker("w1")
    claimed = states.claim(Occurrence.from_doc(first), "w1", clock.now)
    rev = w1.put(farm.db, claimed.to_doc())
    done = states.finish(claimed.model_copy(update={"rev": rev}), "w1", clock.now,
                         started_at=clock.now, output={})  # fmt: skip
    w1.put(farm.db, done.to_doc())
    clock.advance(minutes=10)  # down: ten due times pass unseen
    hub = new_hub(farm, clock)
    hub.materialize()
    after = [d for d in occurrences(farm, task) if d["_id"] != first["_id"]]
    counts = Counter(d["state"] for d in after)
    assert counts == {"missed": 9, "ready": 1}
    assert all("misfire" in d["reason"] for d in after if d["state"] == "missed")


def test_skip_overlap_records_skipped_runs_while_a_long_run_is_leased(farm):
    clock = FakeClock(recent_minute(farm))
    task = add_task(farm, "longrun", clock, ttr=3600, overlap="skip")
    hub = new_hub(farm, clock)
    clock.advance(minutes=1, seconds=0.1)
    hub.materialize()
    running = Occurrence.from_doc(occurrences(farm, task)[0])
    farm.worker("w1").put(farm.db, states.claim(running, "w1", clock.now).to_doc())
    hub.follow_once(wait=5)
    for _ in range(3):
        clock.advance(minutes=1)
        hub.materialize()
    states_seen = [d["state"] for d in occurrences(farm, task)]
    assert states_seen == ["leased", "skipped", "skipped", "skipped"]


def test_expired_lease_is_requeued_then_buried_after_max_attempts(farm):
    clock = FakeClock(recent_minute(farm))
    task = add_task(farm, "silent", clock, ttr=30, max_attempts=2)
    hub = new_hub(farm, clock)
    clock.now = clock.now.replace(second=0) + timedelta(minutes=1, seconds=0.1)
    hub.materialize()
    occ_id = occurrences(farm, task)[0]["_id"]
    for attempt in (1, 2):
        occ = Occurrence.from_doc(farm.admin.get(farm.db, occ_id))
        assert occ.state == State.READY and occ.attempt == attempt - 1
        farm.worker("w2").put(farm.db, states.claim(occ, "w2", clock.now).to_doc())
        clock.advance(seconds=29)
        assert hub.reap().expired == 0  # not yet: the lease runs 30 s
        clock.advance(seconds=2)
        report = hub.reap()
        assert (report.expired, report.buried) == ((1, 0) if attempt == 1 else (0, 1))
    buried = farm.admin.get(farm.db, occ_id)
    assert buried["state"] == "buried" and buried["attempt"] == 2
    assert len(buried["errors"]) == 2 and all(
        "lease expired" in e["error"] for e in buried["errors"]
    )


def test_archiver_moves_results_and_keeps_the_newest_per_task(farm):
    real = farm.now()
    clock = FakeClock(
        real.replace(second=real.second // 10 * 10, microsecond=0) + timedelta(seconds=1)
    )
    task = add_task(
        farm, "archived", clock, misfire="run_all", overlap="allow", schedule={"every": 10}
    )
    hub = new_hub(farm, clock)
    for _ in range(3):
        clock.advance(seconds=10)
        hub.materialize()
    w1 = farm.worker("w1")
    for doc in occurrences(farm, task):
        occ = Occurrence.from_doc(doc)
        claimed = states.claim(occ, "w1", clock.now)
        rev = w1.put(farm.db, claimed.to_doc())
        w1.put(farm.db, states.finish(claimed.model_copy(update={"rev": rev}), "w1", clock.now,
                                      started_at=clock.now, output={"n": 1}).to_doc())  # fmt: skip
    clock.advance(minutes=10)
    report = hub.archive()
    assert (report.archived, report.removed) == (3, 2)
    left = occurrences(farm, task)
    assert len(left) == 1
    from hub.protocol.names import results_db

    archived = farm.admin.get(results_db(farm.db, clock.now), "res:" + left[0]["_id"])
    assert archived["status"] == "ok" and archived["output"] == {"n": 1}
    assert hub.archive().archived == 0  # the next pass starts after what it has seen
    assert new_hub(farm, clock).archive().already == 1  # a restarted hub: harmless repeat


@pytest.mark.slow
def test_two_hub_processes_side_by_side_create_no_duplicates(farm, repo_root):
    """Two real `hub serve` processes for 2 minutes over one database."""
    seconds = float(os.environ.get("COUCHFARM_TWO_HUBS_SECONDS", "120"))
    clock = FakeClock(farm.now())
    tasks = [add_task(farm, f"twin{n}", clock, schedule={"every": 10}, misfire="run_all",
                      overlap="allow") for n in range(5)]  # fmt: skip
    env = {**os.environ, "COUCHFARM_URL": farm.server.url, "COUCHFARM_USER": "hub",
           "COUCHFARM_PASSWORD": farm.passwords["hub"], "COUCHFARM_DB": farm.db}  # fmt: skip
    hubs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hub.cli",
                "serve",
                "--portal-port",
                "-1",
                "--seconds",
                str(seconds),
            ],
            cwd=repo_root,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    started = time.monotonic()
    for hub in hubs:
        _out, err = hub.communicate(timeout=seconds + 60)
        assert hub.returncode == 0, err.decode()[-2000:]
    elapsed = time.monotonic() - started
    for task in tasks:
        docs = occurrences(farm, task)
        ids = [d["_id"] for d in docs]
        assert len(ids) == len(set(ids))
        assert len(ids) >= int(elapsed / 10) - 3, (len(ids), elapsed)


def test_fair_share_a_big_client_does_not_starve_a_small_one(farm):
    """1,000 due at once for one client, 10 for another: the small client's runs are in
    the first turns of the tube, not behind the big client's thousand."""
    clock = FakeClock(recent_minute(farm))
    stamp = to_wire(clock.now)
    docs = []
    for client, count in (("acme", 1000), ("globex", 10)):
        for n in range(count):
            docs.append(Task(_id=task_id(client, f"fair{n:04d}"), client=client,
                             slug=f"fair{n:04d}", kind="demo.sleep", input={"ms": 0},
                             schedule={"every": 60}, tube="fairness", created_at=stamp,
                             updated_at=stamp).to_doc())  # fmt: skip
    for start in range(0, len(docs), 500):
        farm.hub.bulk_docs(farm.db, docs[start : start + 500])
    hub = new_hub(farm, clock)
    clock.now = clock.now.replace(second=0) + timedelta(minutes=1, seconds=0.2)
    assert hub.materialize() == 1010
    view = farm.admin.view(
        farm.db, "claim", "ready", startkey=["fairness"], endkey=["fairness", {}], limit=40,
        include_docs=True,
    )  # fmt: skip
    rows = view["rows"]
    first = Counter(row["doc"]["client"] for row in rows[:20])
    assert first["globex"] == 10, first


def test_aging_a_low_priority_run_is_served_before_later_urgent_ones():
    """turn_at: priority 2**32-1 waits at most 22 minutes behind priority 0, never more."""
    from hub.protocol.states import turn_at

    due = datetime(2027, 1, 1, tzinfo=UTC)
    lowest = turn_at(due, 2**32 - 1)
    assert turn_at(due, 1024) == due  # the default priority queues at its due time
    assert turn_at(due, 0) < due < lowest
    # An urgent run that falls due 33 minutes later queues behind the old low-priority one.
    assert turn_at(due + timedelta(minutes=33), 0) > lowest
    # ...but one due 5 minutes later still goes first.
    assert turn_at(due + timedelta(minutes=5), 0) < lowest
    penalties = [turn_at(due, p) - due for p in (0, 1, 2**10, 2**20, 2**32 - 1)]
    assert penalties == sorted(penalties)
    assert penalties[-1] - penalties[0] <= timedelta(minutes=33)


def test_materializing_ahead_writes_the_next_fire_ready_before_it_is_due(farm):
    clock = FakeClock(recent_minute(farm))
    task = add_task(farm, "ahead", clock, ttr=3600, overlap="skip")
    hub = new_hub(farm, clock)
    due = clock.now.replace(second=0) + timedelta(minutes=1)
    clock.now = due - timedelta(seconds=0.5)  # within the 1 s trigger
    assert hub.materialize() == 1
    [early] = occurrences(farm, task)
    assert early["state"] == "ready" and early["due_at"] == to_wire(due)
    assert early["not_before"] == to_wire(due)  # nobody may start it before it is due
    assert early["created_at"] < early["due_at"]
    # While it runs, the next fire's fate (overlap=skip) is decided at its due time only.
    farm.worker("w1").put(farm.db, states.claim(Occurrence.from_doc(early), "w1", due).to_doc())
    hub.follow_once(wait=5)
    clock.now = due + timedelta(minutes=1) - timedelta(seconds=0.5)
    assert hub.materialize() == 0
    clock.now = due + timedelta(minutes=1, seconds=0.1)
    assert hub.materialize() == 1
    assert [d["state"] for d in occurrences(farm, task)] == ["leased", "skipped"]


@pytest.mark.parametrize("restart", [False, True], ids=["same hub", "restarted hub"])
def test_a_pause_skips_a_run_written_ahead_that_is_not_due_yet(farm, restart):
    clock = FakeClock(recent_minute(farm))
    task = add_task(farm, "pausedahead", clock, ttr=3600)
    hub = new_hub(farm, clock)
    due = clock.now.replace(second=0) + timedelta(minutes=1)
    clock.now = due - timedelta(seconds=0.5)
    assert hub.materialize() == 1
    current = farm.hub.get(farm.db, task.id)
    farm.hub.put(farm.db, {**current, "paused": True})
    if restart:
        hub = new_hub(farm, clock)  # the hub that finds the task paused at its start
    else:
        hub.follow_once(wait=5)
    hub.materialize()
    [early] = occurrences(farm, task)
    assert early["state"] == "skipped", early
    assert early["reason"] == "task paused before this run was due"
    clock.now = due + timedelta(minutes=3)
    assert hub.materialize() == 0  # and nothing new while paused
    assert len(occurrences(farm, task)) == 1


def test_materializing_ahead_is_off_without_the_setting(farm):
    clock = FakeClock(recent_minute(farm))
    task = add_task(farm, "notahead", clock)
    hub = Hub(farm.hub, HubConfig(db=farm.db, materialize_ahead=None), clock=clock)
    hub.load()
    clock.now = clock.now.replace(second=0) + timedelta(minutes=1) - timedelta(seconds=0.5)
    assert hub.materialize() == 0
    assert occurrences(farm, task) == []


def test_the_reaper_asks_the_server_only_when_the_followed_changes_show_work(farm):
    """With the changes stream up and nothing leased, a reap sends no request; a lease
    that expires is still reaped within a reap tick of its expiry, not the safety interval."""
    hub = Hub(farm.hub, HubConfig(db=farm.db, reap_every=0.2, reap_safety_s=300.0))
    hub.start()
    try:
        deadline = time.monotonic() + 10
        while hub.reaps_skipped < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert hub.reaps_skipped >= 3  # nothing to reap and the stream is live
        now = farm.now()
        task = Task(
            _id=task_id("acme", "gate"), client="acme", slug="gate", kind="demo.sleep",
            input={"ms": 0}, schedule={"every": 3600}, ttr=2,
            created_at=to_wire(now), updated_at=to_wire(now),
        )  # fmt: skip
        farm.hub.put(farm.db, task.to_doc())
        occ = states.materialize(task, now - timedelta(seconds=1), now)
        rev = farm.hub.put(farm.db, occ.to_doc())
        leased = states.claim(occ.model_copy(update={"rev": rev}), "w2", farm.now())
        farm.worker("w2").put(farm.db, leased.to_doc())
        claimed = time.monotonic()
        while time.monotonic() - claimed < 15:
            doc = farm.admin.get(farm.db, occ.id)
            if doc["state"] == "ready":
                break
            time.sleep(0.1)
        assert doc["state"] == "ready" and "lease expired" in doc["errors"][-1]["error"]
        assert time.monotonic() - claimed < 10  # far sooner than the 300 s safety interval
    finally:
        hub.stop()


def test_a_conflict_a_resolution_left_behind_is_settled_again_at_the_next_reap(farm):
    """A cluster may refuse the resolver's deletion of a losing branch, and the feed shows
    the document again only when it changes: the hub keeps it and settles it at each reap."""
    occ_id = "occ:task:acme:leftover:20261201T000000Z"
    base = {"_id": occ_id, "type": "occurrence", "task": task_id("acme", "leftover"),
            "client": "acme", "state": "missed", "due_at": "2026-12-01T00:00:00.000Z"}  # fmt: skip
    farm.admin.bulk_docs(farm.db, [{**base, "_rev": "1-" + "a" * 32},
                                   {**base, "_rev": "1-" + "b" * 32}], new_edits=False)  # fmt: skip
    assert farm.admin.get(farm.db, occ_id, conflicts="true").get("_conflicts")
    hub = Hub(farm.hub, HubConfig(db=farm.db))
    hub.load()
    hub.unsettled.add(occ_id)  # what resolve() reported incomplete
    hub.reap()
    assert not farm.admin.get(farm.db, occ_id, conflicts="true").get("_conflicts")
    assert hub.unsettled == set()
    farm.admin.delete(farm.db, occ_id, farm.admin.get(farm.db, occ_id)["_rev"])
