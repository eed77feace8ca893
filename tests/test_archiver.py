"""The archiver: retention (pure), and per-task tallies against the real server."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hub import archiver, provision
from hub.archiver import expired_months
from hub.protocol import states
from hub.protocol.couch import Forbidden
from hub.protocol.model import Task
from hub.protocol.names import is_results_db, results_db
from hub.service import build_task
from tests import cluster


def test_results_db_names_are_recognised_exactly():
    assert is_results_db("farm", "farm_results_2026_11")
    for name in ("farm", "farm_results_2026_1", "farm_results_2026-11", "other_results_2026_11",
                 "farm_results_2026_11x", "farm_results_abcd_11"):  # fmt: skip
        assert not is_results_db("farm", name), name


def test_expired_months_are_those_that_ended_before_the_retention_window():
    names = ["farm", "farm_results_2026_01", "farm_results_2026_07", "farm_results_2026_08",
             "farm_results_2026_11", "_users", "farm_results_junk"]  # fmt: skip
    now = datetime(2026, 11, 22, tzinfo=UTC)
    # 90 days back is 2026-08-24: January and July have ended by then, August has not.
    assert expired_months(names, "farm", now, 90) == [
        "farm_results_2026_01",
        "farm_results_2026_07",
    ]
    assert expired_months(names, "farm", now, 3650) == []


def test_december_rolls_over_to_the_next_year():
    now = datetime(2027, 3, 1, tzinfo=UTC)
    assert expired_months(["farm_results_2026_12"], "farm", now, 31) == ["farm_results_2026_12"]
    assert expired_months(["farm_results_2026_12"], "farm", now, 60) == []


# ---------------------------------------------------------------- tallies (real server)

EVERY = {"kind": "demo.sleep", "input": {"ms": 1}, "schedule": {"every": 60}}


@pytest.fixture(scope="module")
def task(farm) -> Task:
    made = build_task("acme", "tallied", EVERY, farm.now() - timedelta(days=2))
    farm.hub.put(farm.db, made.to_doc())
    return made


def finished(task: Task, due, *, ok: bool = True):
    occ = states.claim(states.materialize(task, due, due), "w1", due + timedelta(seconds=1))
    if ok:
        return states.finish(
            occ, "w1", due + timedelta(seconds=3), started_at=due + timedelta(seconds=1),
            output={"n": 1},
        )  # fmt: skip
    return states.fail(occ, "w1", due + timedelta(seconds=2), error="boom", permanent=True)


def results(task: Task, start, count: int, every_nth_fails: int = 0) -> list[dict[str, Any]]:
    return [
        archiver.to_result(
            finished(task, start + timedelta(minutes=k),
                     ok=not (every_nth_fails and k % every_nth_fails == 0))
        ).to_doc()
        for k in range(count)
    ]  # fmt: skip


def tally(farm, month: str, task: Task) -> dict[str, Any]:
    return farm.hub.get(month, archiver.tally_id(task.id))


def settle(farm, db: str) -> None:
    """What `hub serve` does for concurrent writers on a CouchDB cluster, where each copy
    of a shard can take a different one of two updates of the same revision: settle the
    conflicted tallies, then fold the batches their losing branches announced. On one
    server this finds no conflict and does nothing, so a leftover there still fails."""
    cluster.settle_tallies(farm.hub, db)


def counts(doc: dict[str, Any]) -> dict[str, int]:
    return {status: stats["count"] for status, stats in doc["statuses"].items()}


def truth(farm, month: str, task: Task) -> dict[str, int]:
    """Counts by status straight from the results (the reduce the tallies replace)."""
    rows = farm.hub.view(
        month, "results", "by_client_task_status",
        startkey=[task.client, task.id], endkey=[task.client, task.id, {}], group_level=3,
    )["rows"]  # fmt: skip
    return {row["key"][2]: row["value"] for row in rows}


def test_a_tally_counts_each_stored_result_once(farm, task, month):
    now = farm.now()
    start = now.replace(microsecond=0, second=0) - timedelta(hours=5)
    docs = results(task, start, 12, every_nth_fails=4)
    rows = archiver.store_results(farm.hub, month, docs, now)
    assert all("rev" in row for row in rows)
    doc = tally(farm, month, task)
    assert counts(doc) == {"ok": 9, "failed": 3} == truth(farm, month, task)
    assert doc["pending"] == {}
    assert doc["statuses"]["ok"]["max"] == (start + timedelta(minutes=11)).timestamp()
    assert doc["duration_ms"] == {"sum": 9 * 2000, "n": 9}
    # Archiving the same results again (a restarted hub, a second hub) changes nothing.
    again = archiver.store_results(farm.hub, month, docs, now)
    assert not any("rev" in row for row in again)
    assert counts(tally(farm, month, task)) == {"ok": 9, "failed": 3}
    # A later batch overlapping the first counts only what it adds.
    more = results(task, start + timedelta(minutes=10), 5)
    archiver.store_results(farm.hub, month, more, now)
    assert counts(tally(farm, month, task)) == {"ok": 12, "failed": 3} == truth(farm, month, task)


def test_a_batch_left_pending_by_a_dead_writer_is_folded_once(farm, task, month):
    now = farm.now()
    start = now.replace(microsecond=0, second=0) - timedelta(hours=9)
    docs = results(task, start, 6)
    archiver.store_results(farm.hub, month, docs[:2], now)
    # A writer that died after announcing its batch and writing its results.
    batch = archiver.new_batch_id(now)
    occs = [d["occurrence"] for d in docs[2:]]

    def announce(tid, doc):
        doc = doc or archiver.empty_tally(task.id, task.client)
        doc["pending"][batch] = {"at": archiver.to_wire(now), "occurrences": occs}
        return doc

    archiver.update_tallies(farm.hub, month, [archiver.tally_id(task.id)], announce)
    written = farm.hub.bulk_docs(month, [{**d, "batch": batch} for d in docs[2:5]])
    assert all("rev" in row for row in written)
    assert counts(tally(farm, month, task)) == {"ok": 2}
    # Within the grace period it is left alone: its writer may still be finishing.
    assert archiver.recover_pending(farm.hub, month, now) == 0
    later = now + archiver.PENDING_GRACE + timedelta(seconds=1)
    assert archiver.recover_pending(farm.hub, month, later) == 1
    doc = tally(farm, month, task)
    assert counts(doc) == {"ok": 5} == truth(farm, month, task) and doc["pending"] == {}
    # Folding it again (a second hub's sweep, or the writer waking up) counts nothing.
    assert archiver.recover_pending(farm.hub, month, later) == 0
    assert archiver.fold(farm.hub, month, batch, docs[2:5], [archiver.tally_id(task.id)]) == 0
    # The result it never wrote is archived later by someone else, and counted then.
    archiver.store_results(farm.hub, month, docs, later)
    assert counts(tally(farm, month, task)) == {"ok": 6} == truth(farm, month, task)


class LandsTwice:
    """The hub's connection, where the results write lands but its reply is lost and the
    request is sent again (the retry sees its own documents as conflicts)."""

    def __init__(self, couch) -> None:
        self._couch = couch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._couch, name)

    def bulk_docs(self, db, docs, **kwargs):
        if docs and str(docs[0].get("_id", "")).startswith("res:"):
            self._couch.bulk_docs(db, docs, **kwargs)
        return self._couch.bulk_docs(db, docs, **kwargs)


def test_a_retried_write_still_counts_its_own_results(farm, task, month):
    now = farm.now()
    docs = results(task, now.replace(microsecond=0, second=0) - timedelta(hours=3), 4)
    rows = archiver.store_results(LandsTwice(farm.hub), month, docs, now)
    assert not any("rev" in row for row in rows)  # the retry's view: all "already there"
    assert counts(tally(farm, month, task)) == {"ok": 4} == truth(farm, month, task)


def test_two_hubs_archiving_overlapping_batches_at_once_count_each_result_once(farm, task, month):
    now = farm.now()
    docs = results(task, now.replace(microsecond=0, second=0) - timedelta(hours=12), 60,
                   every_nth_fails=7)  # fmt: skip
    errors: list[BaseException] = []

    def hub(offset: int) -> None:
        conn = farm.server.as_user("hub", farm.passwords["hub"])
        try:
            for start in range(offset, len(docs), 10):
                archiver.store_results(conn, month, docs[max(0, start - 5) : start + 10], now)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=hub, args=(offset,)) for offset in (0, 3, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    settle(farm, month)
    doc = tally(farm, month, task)
    assert doc["pending"] == {}
    assert counts(doc) == truth(farm, month, task)
    assert sum(counts(doc).values()) == 60


def test_archive_passes_after_a_restart_do_not_count_twice(farm, task):
    now = farm.now().replace(microsecond=0)
    due0 = now - timedelta(hours=2)
    occs = [finished(task, due0 + timedelta(minutes=k), ok=k != 1) for k in range(4)]
    for occ in occs:
        farm.hub.put(farm.db, occ.to_doc())
    month_db = results_db(farm.db, due0)
    provision.ensure_results_db(farm.admin, month_db)
    newest = occs[-1].id
    report = archiver.archive(
        farm.hub, farm.db, now, window=timedelta(0), keep=lambda occ: occ.id == newest
    )
    assert report.archived == 4 and report.removed == 3
    assert counts(tally(farm, month_db, task)) == {"ok": 3, "failed": 1}
    # A restarted hub has no cursor: it reads the kept occurrence again.
    again = archiver.archive(farm.hub, farm.db, now, window=timedelta(0), keep=lambda o: True)
    assert again.archived == 0 and again.already >= 1
    assert counts(tally(farm, month_db, task)) == {"ok": 3, "failed": 1}
    assert truth(farm, month_db, task) == {"ok": 3, "failed": 1}


def test_only_the_hub_writes_tallies_and_only_for_the_right_client(farm, task, month):
    doc = archiver.empty_tally(task.id, task.client)
    with pytest.raises(Forbidden):
        farm.worker("w1").put(month, doc)
    with pytest.raises(Forbidden):
        farm.hub.put(month, {**doc, "client": "globex"})
    with pytest.raises(Forbidden):
        farm.hub.put(month, {**doc, "_id": archiver.tally_id("task:globex:x")})
    farm.hub.put(month, doc)
