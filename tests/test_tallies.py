"""`hub tallies rebuild` and the recount behind it, against the real server.

Every expected count here is taken straight from the stored ``res:`` documents (plain
Python over ``_all_docs``, or the results view), never from the code under test.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest

from hub import archiver, cli, provision, replication, resolver, tallies
from hub.protocol.model import Task
from hub.protocol.timefmt import from_wire
from hub.service import build_task
from tests import cluster
from tests.test_archiver import EVERY, results, settle


@pytest.fixture(scope="module")
def tasks(farm) -> list[Task]:
    made = [
        build_task("acme", "recounted", EVERY, farm.now() - timedelta(days=2)),
        build_task("globex", "other", EVERY, farm.now() - timedelta(days=2)),
    ]
    for task in made:
        farm.hub.put(farm.db, task.to_doc())
    return made


def stored(farm, month: str, task: Task) -> list[dict[str, Any]]:
    prefix = f"res:occ:{task.id}:"
    rows = farm.hub.all_docs(month, startkey=prefix, endkey=prefix + "\ufff0", include_docs=True)
    return [row["doc"] for row in rows]


def truth(farm, month: str, task: Task) -> dict[str, Any]:
    """What the tally must hold, computed here from the stored results themselves."""
    docs = stored(farm, month, task)
    out: dict[str, Any] = {"counts": dict(Counter(d["status"] for d in docs))}
    out["max"] = {
        s: max(from_wire(d["due_at"]).timestamp() for d in docs if d["status"] == s)
        for s in out["counts"]
    }
    for key in ("duration_ms", "latency_ms"):
        values = [d[key] for d in docs if isinstance(d.get(key), int)]
        out[key] = {"sum": sum(values), "n": len(values)}
    return out


def view_counts(farm, month: str, task: Task) -> dict[str, int]:
    """Counts by status from the results view (the reduce the tallies stand in for)."""
    rows = farm.hub.view(
        month, "results", "by_client_task_status",
        startkey=[task.client, task.id], endkey=[task.client, task.id, {}], group_level=3,
    )["rows"]  # fmt: skip
    return {row["key"][2]: row["value"] for row in rows}


def held(farm, month: str, task: Task) -> dict[str, Any]:
    doc = farm.hub.get(month, archiver.tally_id(task.id))
    statuses = doc["statuses"]
    return {
        "counts": {s: v["count"] for s, v in statuses.items() if v["count"]},
        "max": {s: v["max"] for s, v in statuses.items() if v["count"]},
        "duration_ms": doc["duration_ms"],
        "latency_ms": doc["latency_ms"],
    }


def assert_exact(farm, month: str, task: Task) -> None:
    expected = truth(farm, month, task)
    assert held(farm, month, task) == expected
    assert expected["counts"] == view_counts(farm, month, task)


def delete_tallies(farm, month: str) -> None:
    rows = farm.hub.all_docs(month, startkey="tally:", endkey="tally:\ufff0")
    farm.hub.bulk_docs(
        month, [{"_id": r["id"], "_rev": r["value"]["rev"], "_deleted": True} for r in rows]
    )


def fill(farm, month: str, tasks: list[Task]) -> None:
    """A month as the archiver leaves it, including results from before tallies existed
    (no batch), batches named long ago, and recent ones."""
    now = farm.now()
    start = now.replace(microsecond=0, second=0) - timedelta(days=1)
    acme, globex = tasks
    legacy = results(acme, start, 7, every_nth_fails=3)
    assert all("rev" in r for r in farm.hub.bulk_docs(month, legacy))
    archiver.store_results(farm.hub, month, results(acme, start + timedelta(hours=1), 9, 4),
                           now - timedelta(hours=5))  # fmt: skip
    archiver.store_results(farm.hub, month, results(acme, start + timedelta(hours=2), 5), now)
    archiver.store_results(farm.hub, month, results(globex, start, 6, every_nth_fails=2), now)


def revisions(farm, db: str) -> dict[str, str]:
    """Every document's winning revision, deleted ones included (a cluster's update_seq
    differs between two reads of an unchanged database: each copy of a shard counts its own)."""
    changes, _ = farm.hub.changes(db, since="0")
    return {row["id"]: row["changes"][0]["rev"] for row in changes}


# ---------------------------------------------------------------- rebuild


def test_rebuild_restores_deleted_tallies_exactly_and_a_second_run_changes_nothing(
    farm, tasks, month
):
    fill(farm, month, tasks)
    delete_tallies(farm, month)
    report = tallies.recount_tallies(farm.hub, month)
    assert {t.task: t.action for t in report.tallies} == {t.id: "created" for t in tasks}
    assert report.results == 7 + 9 + 5 + 6
    for task in tasks:
        assert_exact(farm, month, task)
    acme = next(t for t in report.tallies if t.task == tasks[0].id)
    assert acme.before == {} and acme.after == truth(farm, month, tasks[0])["counts"]
    revs = {t.id: farm.hub.get(month, archiver.tally_id(t.id))["_rev"] for t in tasks}
    before = revisions(farm, month)
    again = tallies.recount_tallies(farm.hub, month)
    assert [t.action for t in again.tallies] == ["unchanged", "unchanged"]
    assert {t.id: farm.hub.get(month, archiver.tally_id(t.id))["_rev"] for t in tasks} == revs
    assert revisions(farm, month) == before  # nothing written at all


def test_a_tally_with_wrong_counts_is_corrected_and_its_pending_batches_kept(farm, tasks, month):
    fill(farm, month, tasks)
    acme, globex = tasks
    # A batch still in flight: announced, its results stored, not yet folded.
    now = farm.now()
    flying = results(acme, now.replace(microsecond=0, second=0) - timedelta(hours=30), 3)
    batch = announce(farm, month, acme, flying, now)
    assert all("rev" in r for r in farm.hub.bulk_docs(month, [{**d, "batch": batch}
                                                              for d in flying]))  # fmt: skip
    doc = farm.hub.get(month, archiver.tally_id(acme.id))
    doc["statuses"] = {"ok": {"count": 9999, "max": 1}, "bogus": {"count": 3, "max": 0}}
    doc["duration_ms"] = {"sum": -1, "n": 1}
    farm.hub.put(month, doc)
    report = tallies.recount_tallies(farm.hub, month, tasks={acme.id})
    (change,) = report.tallies
    assert change.action == "changed" and change.before == {"ok": 9999, "bogus": 3}
    fixed = farm.hub.get(month, archiver.tally_id(acme.id))
    assert set(fixed["pending"]) == {batch}  # kept: its fold will count it
    # The in-flight batch is left to its fold, which then makes the tally exact.
    expected = truth(farm, month, acme)["counts"]
    assert change.after == {s: n - sum(1 for d in flying if d["status"] == s)
                            for s, n in expected.items()}  # fmt: skip
    archiver.fold(farm.hub, month, batch, [{**d, "batch": batch} for d in flying],
                  [archiver.tally_id(acme.id)])  # fmt: skip
    assert_exact(farm, month, acme)
    assert farm.hub.get(month, archiver.tally_id(acme.id))["pending"] == {}
    # --task touched only that task.
    assert_exact(farm, month, globex)


def announce(farm, month: str, task: Task, docs: list[dict[str, Any]], now) -> str:
    batch = archiver.new_batch_id(now)
    occs = [d["occurrence"] for d in docs]

    def add(tid, doc):
        doc = doc or archiver.empty_tally(task.id, task.client)
        doc["pending"][batch] = {"at": archiver.to_wire(now), "occurrences": occs}
        return doc

    archiver.update_tallies(farm.hub, month, [archiver.tally_id(task.id)], add)
    return batch


def test_dry_run_writes_nothing(farm, tasks, month):
    fill(farm, month, tasks)
    acme = tasks[0]
    doc = farm.hub.get(month, archiver.tally_id(acme.id))
    farm.hub.put(month, {**doc, "statuses": {"ok": {"count": 1, "max": 0}}})
    farm.hub.delete(month, archiver.tally_id(tasks[1].id),
                    farm.hub.get(month, archiver.tally_id(tasks[1].id))["_rev"])  # fmt: skip
    before = revisions(farm, month)
    report = tallies.recount_tallies(farm.hub, month, dry_run=True)
    assert {t.task: t.action for t in report.tallies} == {acme.id: "changed",
                                                          tasks[1].id: "created"}  # fmt: skip
    assert revisions(farm, month) == before
    assert farm.hub.get_or_none(month, archiver.tally_id(tasks[1].id)) is None


# ---------------------------------------------------------------- concurrent archiving


class DuringScan:
    """The hub's real connection; ``act`` runs before the scan's ``page``-th results page
    is read, as another hub archiving at that moment would."""

    def __init__(self, couch, page: int, act) -> None:
        self._couch, self._page, self._act, self.pages = couch, page, act, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._couch, name)

    def all_docs(self, db, **params):
        if str(params.get("startkey", "")).startswith("res:") and "limit" in params:
            self.pages += 1
            if self.pages == self._page:
                self._act()
        return self._couch.all_docs(db, **params)


def test_batches_archived_during_the_scan_are_counted_once(farm, tasks, month):
    acme = tasks[0]
    now = farm.now()
    start = now.replace(microsecond=0, second=0) - timedelta(days=3)
    archiver.store_results(farm.hub, month, results(acme, start + timedelta(hours=5), 20, 3), now)
    delete_tallies(farm, month)
    # Written mid-scan: a folded batch with results behind the cursor and ahead of it, and
    # a batch announced and stored but not folded until the rebuild has written.
    folded = results(acme, start, 4) + results(acme, start + timedelta(hours=9), 4, 2)
    flying = results(acme, start + timedelta(hours=1), 3) + results(
        acme, start + timedelta(hours=10), 2, 1
    )
    batch: list[str] = []

    def archive_now() -> None:
        archiver.store_results(farm.hub, month, folded, now)
        batch.append(announce(farm, month, acme, flying, now))
        farm.hub.bulk_docs(month, [{**d, "batch": batch[0]} for d in flying])

    conn = DuringScan(farm.hub, 2, archive_now)
    report = tallies.recount_tallies(conn, month, tasks={acme.id}, page=6)
    assert conn.pages >= 3 and report.restarts == 0
    archiver.fold(farm.hub, month, batch[0], [{**d, "batch": batch[0]} for d in flying],
                  [archiver.tally_id(acme.id)])  # fmt: skip
    assert sum(truth(farm, month, acme)["counts"].values()) == 20 + 8 + 5
    assert_exact(farm, month, acme)


def test_a_batch_named_long_ago_but_stored_during_the_scan_restarts_it(farm, tasks, month):
    acme = tasks[0]
    now = farm.now()
    start = now.replace(microsecond=0, second=0) - timedelta(days=4)
    archiver.store_results(farm.hub, month, results(acme, start + timedelta(hours=2), 15), now)
    late = results(acme, start, 3, 1)  # behind the cursor, from a hub that stalled for hours

    conn = DuringScan(farm.hub, 2, lambda: archiver.store_results(
        farm.hub, month, late, now - 2 * tallies.RECENT_BATCH))  # fmt: skip
    delete_tallies(farm, month)
    report = tallies.recount_tallies(conn, month, page=5)
    assert report.restarts == 1
    assert_exact(farm, month, acme)


class FoldsFirst:
    """Another hub's batch lands between the rebuild's tally read and its write (409)."""

    def __init__(self, couch, act) -> None:
        self._couch, self._act, self.fired = couch, act, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._couch, name)

    def bulk_docs(self, db, docs, **kwargs):
        if not self.fired and docs and str(docs[0]["_id"]).startswith("tally:"):
            self.fired = True
            self._act()
        return self._couch.bulk_docs(db, docs, **kwargs)


def test_a_write_that_loses_to_an_archiving_fold_is_recounted(farm, tasks, month):
    acme = tasks[0]
    now = farm.now()
    start = now.replace(microsecond=0, second=0) - timedelta(days=5)
    archiver.store_results(farm.hub, month, results(acme, start, 10, 4), now)
    doc = farm.hub.get(month, archiver.tally_id(acme.id))
    farm.hub.put(month, {**doc, "statuses": {}})
    more = results(acme, start + timedelta(hours=1), 6, 2)
    conn = FoldsFirst(farm.hub, lambda: archiver.store_results(farm.hub, month, more, now))
    report = tallies.recount_tallies(conn, month)
    assert conn.fired and report.tallies[0].action == "changed"
    assert sum(report.tallies[0].after.values()) == 16
    assert_exact(farm, month, acme)


def test_rebuilds_running_while_hubs_archive_leave_exact_tallies(farm, tasks, month):
    now = farm.now()
    start = now.replace(microsecond=0, second=0) - timedelta(days=6)
    acme = tasks[0]
    docs = {t.id: results(t, start, 80, 7) for t in tasks}
    archiver.store_results(farm.hub, month, docs[acme.id][:20], now - timedelta(hours=3))
    for task in tasks:  # a damaged tally to start from
        farm.hub.put(month, {**archiver.empty_tally(task.id, task.client),
                             **(farm.hub.get_or_none(month, archiver.tally_id(task.id)) or {}),
                             "statuses": {"ok": {"count": 500, "max": 0}}})  # fmt: skip
    errors: list[BaseException] = []
    archiving = threading.Event()

    def hub(offset: int) -> None:
        conn = farm.server.as_user("hub", farm.passwords["hub"])
        try:
            for first in range(offset, 80, 8):
                for task in tasks:
                    chunk = docs[task.id][max(0, first - 4) : first + 8]
                    archiver.store_results(conn, month, chunk, now)
                # A hub archives in passes (every 30 s); here a pass every few ms.
                time.sleep(random.uniform(0, 0.02))
        except BaseException as exc:
            errors.append(exc)

    def rebuild() -> None:
        conn = farm.server.as_user("hub", farm.passwords["hub"])
        try:
            while archiving.is_set():
                tallies.recount_tallies(conn, month, page=7)
        except BaseException as exc:
            errors.append(exc)

    archiving.set()
    threads = [threading.Thread(target=hub, args=(o,)) for o in (0, 3)]
    rebuilder = threading.Thread(target=rebuild)
    rebuilder.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    archiving.clear()
    rebuilder.join(180)
    assert not errors, errors
    settle(farm, month)
    for task in tasks:
        assert farm.hub.get(month, archiver.tally_id(task.id))["pending"] == {}
        assert sum(truth(farm, month, task)["counts"].values()) == 80
        assert_exact(farm, month, task)
    again = tallies.recount_tallies(farm.hub, month)
    assert {t.action for t in again.tallies} == {"unchanged"}


def test_a_result_two_batches_created_is_recounted_once_their_folds_are_done(farm, tasks, month):
    """A cluster's copies can take two creates of one ``res:`` (one from each of two hubs
    archiving it at once): both batches fold it and the tally counts it twice. Settling
    that conflict recounts the tally, but only once no batch naming it is pending (its
    fold would count it again after the recount)."""
    acme = tasks[0]
    now = farm.now()
    start = now.replace(microsecond=0, second=0) - timedelta(days=7)
    docs = results(acme, start, 3)
    archiver.store_results(farm.hub, month, docs, now)  # batch A created all three
    twin_of = docs[1]
    batch = announce(farm, month, acme, [twin_of], now)  # batch B, whose create also landed
    stored_rev = farm.hub.get(month, twin_of["_id"])["_rev"]
    twin = {**twin_of, "batch": batch, "_rev": "1-" + ("0" if stored_rev[2] != "0" else "1") * 32}
    farm.admin.bulk_docs(month, [twin], new_edits=False)  # as replication writes a branch
    cluster.converge(farm.hub, month, [twin["_id"]])
    doc = farm.hub.get(month, twin["_id"], conflicts="true")
    assert doc.get("_conflicts"), "two creates of one result should be in conflict"

    # B has not folded yet: the conflict is settled, the recount waits.
    settled = resolver.resolve(farm.hub, month, doc)
    assert isinstance(settled, resolver.Resolution) and not settled.complete
    assert not resolver.settle_again(farm.hub, month, twin["_id"])
    assert sum(truth(farm, month, acme)["counts"].values()) == 3
    # B folds what its create returned: the result is counted a second time.
    archiver.fold(farm.hub, month, batch, [twin], [archiver.tally_id(acme.id)])
    assert sum(held(farm, month, acme)["counts"].values()) == 4
    assert resolver.settle_again(farm.hub, month, twin["_id"])
    assert farm.hub.get(month, archiver.tally_id(acme.id))["pending"] == {}
    assert_exact(farm, month, acme)


# ---------------------------------------------------------------- the command


@pytest.fixture
def hub_env(farm, monkeypatch):
    monkeypatch.setenv("COUCHFARM_URL", farm.server.url)
    monkeypatch.setenv("COUCHFARM_USER", "hub")
    monkeypatch.setenv("COUCHFARM_PASSWORD", farm.passwords["hub"])
    monkeypatch.setenv("COUCHFARM_DB", farm.db)


def month_arg(month: str) -> str:
    year, mm = month.rsplit("_", 2)[-2:]
    return f"{year}-{mm}"


def test_the_command_reports_per_month_and_is_idempotent(farm, tasks, month, hub_env, capsys):
    fill(farm, month, tasks)
    acme, globex = tasks
    doc = farm.hub.get(month, archiver.tally_id(acme.id))
    farm.hub.put(month, {**doc, "statuses": {"ok": {"count": 2, "max": 0}}})
    farm.hub.delete(month, archiver.tally_id(globex.id),
                    farm.hub.get(month, archiver.tally_id(globex.id))["_rev"])  # fmt: skip
    assert cli.main(["tallies", "rebuild", "--month", month_arg(month), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run, nothing written" in out and "changed 1, created 1" in out
    assert farm.hub.get_or_none(month, archiver.tally_id(globex.id)) is None

    assert cli.main(["tallies", "rebuild", "--month", month_arg(month)]) == 0
    out = capsys.readouterr().out
    expected = truth(farm, month, acme)["counts"]
    assert (
        f"{month}: 2 task(s) recounted from 27 result(s); changed 1, created 1, unchanged 0" in out
    )
    assert f"changed {acme.id}: failed 0 -> {expected['failed']}, ok 2 -> {expected['ok']}" in out
    assert f"created {globex.id}: " in out
    for task in tasks:
        assert_exact(farm, month, task)

    assert cli.main(["tallies", "rebuild", "--month", month_arg(month), "--task", acme.id]) == 0
    assert "changed 0, created 0, unchanged 1" in capsys.readouterr().out


def test_a_bad_month_or_task_is_refused_by_name(farm, hub_env, capsys):
    assert cli.main(["tallies", "rebuild", "--month", "2026-13"]) == 2
    assert "--month '2026-13' is not a month" in capsys.readouterr().err
    assert cli.main(["tallies", "rebuild", "--month", "2026-1"]) == 2
    assert "'2026-1'" in capsys.readouterr().err
    assert cli.main(["tallies", "rebuild", "--month", "2026-11", "--task", "acme:x"]) == 2
    assert "--task 'acme:x' is not a task id" in capsys.readouterr().err
    # A well-formed month with nothing archived is named too.
    assert cli.main(["tallies", "rebuild", "--month", "1899-01"]) == 1
    assert f"{farm.db}_results_1899_01: no such results database" in capsys.readouterr().err


# ---------------------------------------------------------------- conflicted tallies


def test_a_tally_conflicted_by_a_partition_is_settled_by_a_recount(
    couch_server, standby_server, passwords, farm_on_both
):
    """Both sides archived during a partition (some occurrences on both): no revision
    is right and summing them double counts; the recount is exact on both servers."""
    db, *ends = farm_on_both("farm_tsplit")
    month = f"{db}_results_1999_03"
    conns = []
    for info in (couch_server, standby_server):
        provision.ensure_results_db(info.admin(), month)
        conns.append(info.as_user("hub", passwords["hub"]))
    primary, standby = conns
    now = primary.now()
    task = build_task("acme", "split", EVERY, now - timedelta(days=2))
    start = now.replace(microsecond=0, second=0) - timedelta(days=1)
    archiver.store_results(primary, month, results(task, start, 10, 3), now)

    def sync(source: int, target: int) -> None:
        replication.replicate_once(ends[source], ends[target], month, run_on=ends[0])

    sync(0, 1)
    # Partition: each side archives; five occurrences are archived on both sides.
    archiver.store_results(primary, month, results(task, start + timedelta(hours=1), 8, 2), now)
    archiver.store_results(standby, month, results(task, start + timedelta(hours=1), 5, 2)
                           + results(task, start + timedelta(hours=2), 6), now)  # fmt: skip
    sync(0, 1)
    sync(1, 0)
    tid = archiver.tally_id(task.id)
    doc = primary.get(month, tid, conflicts="true")
    assert doc.get("_conflicts"), "the partition should have left a conflicted tally"
    settled = resolver.resolve(primary, month, doc)  # the hub's way in
    assert settled is not None and settled.deleted and settled.merged
    sync(0, 1)
    for side in (primary, standby):
        final = side.get(month, tid, conflicts="true")
        assert not final.get("_conflicts")
        docs = side.all_docs(month, startkey="res:", endkey="res:\ufff0", include_docs=True)
        counts = Counter(r["doc"]["status"] for r in docs)
        assert sum(counts.values()) == 10 + 8 + 6
        assert {s: v["count"] for s, v in final["statuses"].items()} == dict(counts)
    # Settled once; nothing left to settle.
    assert tallies.resolve_tally(primary, month, primary.get(month, tid, conflicts="true")) is None
