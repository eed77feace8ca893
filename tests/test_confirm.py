"""desktop_worker/confirm.py: the decisions behind confirming a result on the other server.

The whole failover stories (a result put back, rescued or restored on a survivor) are in
tests/test_resolver.py; here are the single decisions, with real occurrence and archived
documents. Decisions made from the documents alone run offline (no server listens at the
addresses, and no request is sent); archive lookups use the real server of ``farm``.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from desktop_worker.confirm import CONFIRMED, SLOT_OP, WAIT, Confirmer, archived_result
from desktop_worker.spool import Entry, Spool
from hub import provision
from hub.archiver import to_result
from hub.protocol import quorum, states
from hub.protocol.couch import Couch
from hub.protocol.model import Occurrence, Task, result_id, task_id
from hub.protocol.names import results_db
from hub.protocol.timefmt import from_wire, to_wire
from tests.conftest import Farm
from tests.test_netguard import closed_port

DUE = datetime(1999, 12, 31, 23, 59, 30, tzinfo=UTC)  # due in December, finished in January


def _ready(slug: str, due: datetime = DUE) -> Occurrence:
    stamp = to_wire(due - timedelta(days=1))
    task = Task(_id=task_id("acme", slug), client="acme", slug=slug, kind="demo.sleep",
                schedule={"every": 60}, created_at=stamp, updated_at=stamp)  # fmt: skip
    return states.materialize(task, due, due)


def _done(occ: Occurrence, worker: str, finished_s: int, started_s: int = 10) -> Occurrence:
    due = from_wire(occ.due_at)
    started, finished = due + timedelta(seconds=started_s), due + timedelta(seconds=finished_s)
    claimed = states.claim(occ, worker, started)
    return states.finish(claimed, worker, finished, started_at=started, output={"ok": 1})


def _entry(tmp_path: Path, doc: dict[str, Any], op: str = "finish", uploaded_to: int = 0) -> Entry:
    spool = Spool(tmp_path / f"spool-{secrets.token_hex(3)}.sqlite3")
    seq = spool.add(doc, op=op, worker="w1", attempt=1)
    spool.mark_uploaded(seq, uploaded_to)
    return next(e for e in spool.awaiting_confirmation() if e.seq == seq)


def _confirmer(tmp_path: Path, urls: list[str], active: int = 0, db: str = "farm") -> Confirmer:
    couch = Couch(urls, "w1", "pw", retries=0)
    couch._active = active
    return Confirmer(couch, db, "w1", Spool(tmp_path / "own.sqlite3"), lambda *a, **k: None)


def _offline_pair() -> list[str]:
    return [f"http://127.0.0.1:{closed_port()}", f"http://127.0.0.1:{closed_port()}"]


# ------------------------------------------------------------------ from the documents alone


def test_only_a_finished_result_waits_for_confirmation(tmp_path: Path) -> None:
    confirmer = _confirmer(tmp_path, _offline_pair())
    other = confirmer.couch.for_server(1)
    ours = _done(_ready("only"), "w1", 60).to_doc()
    for op in ("fail", "release"):
        assert confirmer.verdict(other, 1, _entry(tmp_path, ours, op=op), None) == CONFIRMED
    no_result = {k: v for k, v in ours.items() if k != "result"}
    assert confirmer.verdict(other, 1, _entry(tmp_path, no_result), None) == CONFIRMED
    assert other.requests_sent == 0


def test_our_run_on_the_other_server_is_confirmed_even_renumbered(tmp_path: Path) -> None:
    confirmer = _confirmer(tmp_path, _offline_pair())
    other = confirmer.couch.for_server(1)
    ours = _done(_ready("renumbered"), "w1", 60).to_doc()
    there = {**ours, "attempt": 2, "result": {**ours["result"], "attempt": 2}}
    assert confirmer.verdict(other, 1, _entry(tmp_path, ours), there) == CONFIRMED
    assert other.requests_sent == 0


@pytest.mark.parametrize(("worker", "finished_s"), [("w2", 59), ("w0", 60)])
def test_a_stored_result_that_finished_first_supersedes_ours(
    tmp_path: Path, worker: str, finished_s: int
) -> None:
    """Earlier finish, or the same millisecond and a name that sorts first."""
    confirmer = _confirmer(tmp_path, _offline_pair())
    occ = _ready(f"first{worker}")
    ours = _done(occ, "w1", 60).to_doc()
    theirs = _done(occ, worker, finished_s).to_doc()
    why = confirmer.verdict(confirmer.couch.for_server(1), 1, _entry(tmp_path, ours), theirs)
    assert why == (
        f"a result that finished first is stored (worker {worker}, "
        f"{theirs['result']['finished_at']})"
    )


def test_a_copy_not_done_yet_waits_while_we_are_on_the_server_that_took_the_upload(
    tmp_path: Path,
) -> None:
    confirmer = _confirmer(tmp_path, _offline_pair(), active=0)
    other = confirmer.couch.for_server(1)
    occ = _ready("lag")
    ours = _done(occ, "w1", 60).to_doc()
    for there in (occ.to_doc(), states.claim(occ, "w2", DUE).to_doc()):
        assert confirmer.verdict(other, 1, _entry(tmp_path, ours, uploaded_to=0), there) == WAIT
    assert other.requests_sent == 0


@pytest.mark.parametrize(
    ("active", "uploaded_to", "other_index", "left"),
    [
        (1, 0, 1, True),  # failed over to the standby after the primary's 201
        (0, 1, 0, True),  # failed back to the primary after the standby's 201
        (0, 0, 1, False),  # still on the primary, looking at the standby
        (1, 1, 1, False),  # on the server that took it
        (1, 0, 0, False),  # looking at the server that took it
        (1, None, 1, False),  # never uploaded
    ],
)
def test_left_server(
    tmp_path: Path, active: int, uploaded_to: int | None, other_index: int, left: bool
) -> None:
    confirmer = _confirmer(tmp_path, _offline_pair(), active=active)
    assert confirmer.left_server(uploaded_to, other_index) is left


def test_with_a_single_server_there_is_nothing_to_confirm_against(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "single.sqlite3")
    spool.mark_uploaded(spool.add(_done(_ready("single"), "w1", 60).to_doc(),
                                  op="finish", worker="w1", attempt=1), 0)  # fmt: skip
    couch = Couch(_offline_pair()[:1], "w1", "pw", retries=0)
    assert Confirmer(couch, "farm", "w1", spool, lambda *a, **k: None).run() is False
    assert spool.counts()["uploaded"] == 1 and couch.requests_sent == 0


def _quorum_run(slug: str) -> tuple[Occurrence, dict[str, Any]]:
    """A quorum-2 occurrence, and w1's finished slot of it (as w1's spool holds it)."""
    occ = _ready(slug)
    occ = Occurrence.from_doc({**occ.to_doc(), "quorum": 2, "slots": {}})
    start = from_wire(occ.due_at) + timedelta(seconds=10)
    claimed = quorum.claim_slot(occ, "w1", start)
    done = quorum.finish_slot(claimed, "w1", start + timedelta(seconds=5), started_at=start,
                              output={"ok": 1})  # fmt: skip
    return claimed, done.to_doc()


def test_a_slot_result_waits_until_the_other_copy_carries_it_in_our_slot(tmp_path: Path) -> None:
    """Decisions from the documents alone (no request): the other server's copy with our
    run in our slot (renumbered or not) confirms it; our lease there, or no slot, waits
    while we are on the server that took it; a slot without a result needs nothing."""
    confirmer = _confirmer(tmp_path, _offline_pair(), active=0)
    other = confirmer.couch.for_server(1)
    claimed, ours = _quorum_run("slotwait")
    entry = _entry(tmp_path, ours, op=SLOT_OP)
    assert confirmer.verdict(other, 1, entry, ours) == CONFIRMED
    slot = ours["slots"]["w1"]
    renumbered = {**ours, "slots": {"w1": {**slot, "result": {**slot["result"], "attempt": 2}}}}
    assert confirmer.verdict(other, 1, entry, renumbered) == CONFIRMED
    for there in (claimed.to_doc(), _ready("slotwait").to_doc() | {"quorum": 2, "slots": {}}):
        assert confirmer.verdict(other, 1, entry, there) == WAIT
    assert confirmer.verdict(other, 1, _entry(tmp_path, claimed.to_doc(), op=SLOT_OP),
                             None) == CONFIRMED  # fmt: skip
    assert other.requests_sent == 0


def test_a_decision_without_our_slot_waits_on_the_same_server_and_stands_after_a_failover(
    tmp_path: Path,
) -> None:
    claimed, ours = _quorum_run("slotdecided")
    theirs = quorum.claim_slot(Occurrence.from_doc({**claimed.to_doc(), "slots": {}}), "w2", DUE)
    theirs = quorum.claim_slot(theirs, "w3", DUE)
    for name in ("w2", "w3"):
        theirs = quorum.finish_slot(theirs, name, DUE + timedelta(seconds=3), started_at=DUE,
                                    output={"ok": 1})  # fmt: skip
    decision = quorum.decide(theirs, DUE + timedelta(seconds=4))
    assert decision is not None
    decided = decision.occurrence.to_doc()
    entry = _entry(tmp_path, ours, op=SLOT_OP, uploaded_to=0)
    staying = _confirmer(tmp_path, _offline_pair(), active=0)
    assert staying.verdict(staying.couch.for_server(1), 1, entry, decided) == WAIT
    moved = _confirmer(tmp_path, _offline_pair(), active=1)
    why = moved.verdict(moved.couch.for_server(1), 1, entry, decided)
    assert why == "the quorum was decided without this run (done, canonical)"
    with_ours = {**decided, "slots": {**decided["slots"], "w1": ours["slots"]["w1"]}}
    assert moved.verdict(moved.couch.for_server(1), 1, entry, with_ours) == CONFIRMED


# ------------------------------------------------------------------ archived, on a real server


@pytest.fixture(scope="module")
def months(farm: Farm) -> Iterator[tuple[str, str]]:
    """The results databases of DUE's month and of the next (1999_12, 2000_01)."""
    names = (results_db(farm.db, DUE), results_db(farm.db, DUE + timedelta(minutes=1)))
    for name in names:
        provision.ensure_results_db(farm.admin, name)
    yield names
    for name in names:
        farm.admin.delete_db(name)


def _archive(farm: Farm, month: str, occ: Occurrence) -> dict[str, Any]:
    doc = to_result(occ).to_doc()
    farm.hub.put(month, doc)
    return doc


def test_archived_result_looks_in_the_due_month_then_the_finish_month(
    farm: Farm, months: tuple[str, str]
) -> None:
    december, january = months
    assert december.endswith("_results_1999_12") and january.endswith("_results_2000_01")
    worker = farm.worker("w1")
    in_due = _done(_ready("induemonth"), "w1", 60)
    in_finish = _done(_ready("infinishmonth"), "w1", 60)
    _archive(farm, december, in_due)
    _archive(farm, january, in_finish)
    found = archived_result(worker, farm.db, in_due.id, in_due.to_doc())
    assert found is not None and found["_id"] == result_id(in_due.id)
    assert found["finished_at"] == "2000-01-01T00:00:30.000Z"
    found = archived_result(worker, farm.db, in_finish.id, in_finish.to_doc())
    assert found is not None and found["_id"] == result_id(in_finish.id)
    nowhere = _done(_ready("nowhere"), "w1", 60)
    assert archived_result(worker, farm.db, nowhere.id, nowhere.to_doc()) is None
    no_months = _done(_ready("nomonths", DUE.replace(year=1970)), "w1", 60)
    assert archived_result(worker, farm.db, no_months.id, no_months.to_doc()) is None
    assert archived_result(worker, farm.db, nowhere.id, {"_id": nowhere.id}) is None


def _verdict_without_live_copy(farm: Farm, tmp_path: Path, ours: dict, there: Any) -> str:
    urls = [farm.server.url, f"http://127.0.0.1:{closed_port()}"]
    confirmer = _confirmer(tmp_path, urls, db=farm.db)
    other = Couch(farm.server.url, "w1", farm.passwords["w1"], retries=0)
    return confirmer.verdict(other, 0, _entry(tmp_path, ours, uploaded_to=1), there)


def test_with_no_live_copy_the_archive_decides(
    farm: Farm, months: tuple[str, str], tmp_path: Path
) -> None:
    december = months[0]
    cases = {
        "archnone": (None, WAIT),
        "archours": (lambda occ: _done(occ, "w1", 60), CONFIRMED),
        "archlater": (lambda occ: _done(occ, "w2", 61), "the survivor archived a later result"),
        "archmissed": (
            lambda occ: states.miss(occ, DUE, "coalesced"),
            "the survivor archived it missed",
        ),
    }
    for slug, (archived, expected) in cases.items():
        occ = _ready(slug)
        if archived:
            _archive(farm, december, archived(occ))
        ours = _done(occ, "w1", 60).to_doc()
        for there in (None, {"_id": occ.id, "_rev": "3-x", "_deleted": True}):
            assert _verdict_without_live_copy(farm, tmp_path, ours, there) == expected, slug
    occ = _ready("archfirst")
    earlier = _archive(farm, december, _done(occ, "w2", 59))
    why = _verdict_without_live_copy(farm, tmp_path, _done(occ, "w1", 60).to_doc(), None)
    assert why == f"a result that finished first is stored (worker w2, {earlier['finished_at']})"


def test_a_later_live_result_already_archived_is_reported_not_rewritten(
    farm: Farm, months: tuple[str, str], tmp_path: Path
) -> None:
    """Ours finished first, but the survivor kept its later result live and archived it:
    rewriting only the live copy would split the archive from it, so nothing is written."""
    december = months[0]
    for slug, archived_worker, expected in (
        ("keptlater", "w2", "the survivor archived a later result"),
        ("keptours", "w1", CONFIRMED),
    ):
        occ = _ready(slug)
        ours = _done(occ, "w1", 60).to_doc()
        live = _done(occ, "w2", 61).to_doc()
        _archive(farm, december, _done(occ, archived_worker, 61 if archived_worker == "w2" else 60))
        assert _verdict_without_live_copy(farm, tmp_path, ours, live) == expected, slug
        assert farm.admin.get_or_none(farm.db, occ.id) is None  # nothing put back live
