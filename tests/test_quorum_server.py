"""Quorum runs against the real server: validate_doc_update's slot rules, the hub's
validator and reliability, the quorum timeout, adaptive replication and the archive.

Workers write as themselves (w1, w2, w3: farm_worker users), the hub as farm_admin.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

import pytest

from desktop_worker import slots
from hub import archiver, designdocs
from hub.protocol import quorum, states
from hub.protocol.couch import CouchError
from hub.protocol.model import (
    Occurrence,
    Reliability,
    State,
    Task,
    reliability_id,
    reliability_score,
    result_id,
    task_id,
)
from hub.protocol.names import results_db
from hub.protocol.timefmt import from_wire, to_wire
from hub.validator import Validator
from tests.conftest import Farm


def _task(farm: Farm, **changes: Any) -> Task:
    now = farm.now().replace(microsecond=0)
    slug = f"q{secrets.token_hex(4)}"
    data: dict[str, Any] = {
        "_id": task_id("acme", slug), "client": "acme", "slug": slug, "kind": "demo.sleep",
        "input": {"ms": 1}, "schedule": {"every": 3600}, "ttr": 60, "quorum": 3,
        "created_at": to_wire(now), "updated_at": to_wire(now),
    }  # fmt: skip
    data.update(changes)
    task = Task.model_validate(data)
    farm.hub.put(farm.db, task.to_doc())
    return task


def _occurrence(farm: Farm, task: Task, minutes_ago: int = 1) -> Occurrence:
    now = farm.now().replace(microsecond=0)
    occ = states.materialize(task, now - timedelta(minutes=minutes_ago), now)
    farm.hub.put(farm.db, occ.to_doc())
    return _read(farm, occ.id)


def _read(farm: Farm, occ_id: str) -> Occurrence:
    return Occurrence.from_doc(farm.admin.get(farm.db, occ_id))


def _claim(farm: Farm, occ_id: str, worker: str) -> Occurrence:
    occ = quorum.claim_slot(_read(farm, occ_id), worker, farm.now())
    farm.worker(worker).put(farm.db, occ.to_doc())
    return _read(farm, occ_id)


def _finish(farm: Farm, occ_id: str, worker: str, output: Any) -> Occurrence:
    now = farm.now()
    occ = quorum.finish_slot(_read(farm, occ_id), worker, now, started_at=now, output=output)
    farm.worker(worker).put(farm.db, occ.to_doc())
    return _read(farm, occ_id)


def _run(farm: Farm, occ_id: str, worker: str, output: Any) -> Occurrence:
    _claim(farm, occ_id, worker)
    return _finish(farm, occ_id, worker, output)


def _refused(farm: Farm, worker: str, doc: dict[str, Any], reason: str) -> None:
    """The write is refused with ``reason`` and the stored document is unchanged."""
    before = farm.admin.get(farm.db, doc["_id"])
    with pytest.raises(CouchError) as refusal:
        farm.worker(worker, retries=0).put(farm.db, doc)
    assert refusal.value.status == 403, refusal.value
    assert reason in refusal.value.reason, refusal.value.reason
    assert farm.admin.get(farm.db, doc["_id"]) == before


# ---------------------------------------------------------------- validate_doc_update


def test_a_worker_cannot_fill_two_slots_or_write_another_workers_slot(farm: Farm) -> None:
    task = _task(farm, quorum=2)
    occ = _occurrence(farm, task)
    claimed = _claim(farm, occ.id, "w1")
    now = farm.now()
    mine = (claimed.slots or {})["w1"]
    doc = claimed.to_doc()

    second = {**doc, "slots": {**doc["slots"], "w3": {**mine.model_dump(exclude_none=True),
                                                        "worker": "w3"}}}  # fmt: skip
    _refused(farm, "w1", second, "may not add a slot for w3")
    forged = quorum.claim_slot(claimed, "w2", now).to_doc()  # w1 writes w2's claim
    _refused(farm, "w1", forged, "may not add a slot for w2")

    both = _claim(farm, occ.id, "w2")
    doc = both.to_doc()
    theirs = quorum.finish_slot(both, "w2", now, started_at=now, output={"slept_ms": 9})
    _refused(farm, "w1", theirs.to_doc(), "may not change the slot of w2")
    dropped = {**doc, "slots": {"w1": doc["slots"]["w1"]}}
    _refused(farm, "w1", dropped, "may not change the slot of w2")
    _refused(farm, "w1", {**doc, "priority": 0}, "a worker cannot change occurrence.priority")
    _refused(farm, "w1", {**doc, "reason": "mine"}, "may change only its own slot")
    full = {**doc, "slots": {**doc["slots"], "w3": {**doc["slots"]["w1"], "worker": "w3"}}}
    _refused(farm, "w3", full, "all 2 slots of")
    lease = {"worker": "w1", "claimed_at": to_wire(now),
             "expires_at": to_wire(now + timedelta(seconds=60))}  # fmt: skip
    _refused(farm, "w1", {**doc, "state": "leased", "lease": lease}, "never leased as a whole")

    # Its slot expired (the hub's validator): the worker never takes a second one.
    later = from_wire(mine.expires_at)  # (w2 claimed after w1: its slot runs on)
    expired = quorum.expire_slots(_read(farm, occ.id), later)
    assert expired is not None
    farm.hub.put(farm.db, expired.to_doc())
    stored = _read(farm, occ.id)
    again = stored.to_doc()
    again["slots"]["w1"] = {**again["slots"]["w1"], "state": "leased",
                            "claimed_at": to_wire(farm.now()),
                            "expires_at": to_wire(farm.now() + timedelta(seconds=60))}  # fmt: skip
    _refused(farm, "w1", again, "already has a slot")
    assert quorum.open_slots(stored) == 1  # w2's slot still runs
    _claim(farm, occ.id, "w3")  # the place is free for someone else


def test_a_slot_result_must_be_the_workers_own_and_well_formed(farm: Farm) -> None:
    occ = _occurrence(farm, _task(farm, quorum=2))
    claimed = _claim(farm, occ.id, "w1")
    now = farm.now()
    done = quorum.finish_slot(claimed, "w1", now, started_at=now, output=1).to_doc()
    bad_attempt = {**done, "slots": {"w1": {**done["slots"]["w1"],
                   "result": {**done["slots"]["w1"]["result"], "attempt": 7}}}}  # fmt: skip
    _refused(farm, "w1", bad_attempt, "slot result.attempt must be 1")
    other = {**done, "slots": {"w1": {**done["slots"]["w1"],
             "result": {**done["slots"]["w1"]["result"], "worker": "w2"}}}}  # fmt: skip
    _refused(farm, "w1", other, "slot result.worker must be w1")
    farm.worker("w1").put(farm.db, done)
    after = _read(farm, occ.id)
    rewrite = quorum.finish_slot(claimed, "w1", now, started_at=now, output=2).to_doc()
    _refused(farm, "w1", {**rewrite, "_rev": after.rev}, "already has a slot")


def _update_refused(
    farm: Farm, worker: str, occ_id: str, slot: dict[str, Any], reason: str
) -> None:
    """A slot write through the update function is refused with ``reason``, unchanged."""
    before = farm.admin.get(farm.db, occ_id)
    body = {"slot": slot, "updated_at": to_wire(farm.now())}
    with pytest.raises(CouchError) as refusal:
        farm.worker(worker, retries=0).update(farm.db, "farm", "slot", occ_id, body)
    assert refusal.value.status == 403, refusal.value
    assert reason in refusal.value.reason, refusal.value.reason
    assert farm.admin.get(farm.db, occ_id) == before


def test_the_slot_update_function_is_held_to_the_same_rules(farm: Farm) -> None:
    """``_design/farm/_update/slot`` puts the caller's slot onto the current revision in one
    request (desktop_worker/slots.py); its save is checked by validate_doc_update as the
    caller, on PouchDB Server too (hub/pouchdb_fixes.js): same refusals as a PUT."""
    occ = _occurrence(farm, _task(farm, quorum=2))
    now = farm.now()
    w1 = (quorum.claim_slot(occ, "w1", now).slots or {})["w1"].model_dump(exclude_none=True)
    first = farm.worker("w1").update(farm.db, "farm", "slot", occ.id,
                                     {"slot": w1, "updated_at": to_wire(now)})  # fmt: skip
    # w2 claims on the revision it saw before w1's claim: no conflict, no re-read.
    w2 = (quorum.claim_slot(occ, "w2", farm.now()).slots or {})["w2"].model_dump(exclude_none=True)
    second = farm.worker("w2").update(farm.db, "farm", "slot", occ.id,
                                      {"slot": w2, "updated_at": to_wire(farm.now())})  # fmt: skip
    stored = _read(farm, occ.id)
    assert stored.rev == second != first
    assert sorted(stored.slots or {}) == ["w1", "w2"]
    assert (stored.slots or {})["w1"].model_dump(exclude_none=True) == w1

    # The full quorum, a second claim, a slot naming another worker, a changed claimed_at.
    w3 = {**w1, "worker": "w3", "claimed_at": to_wire(farm.now())}
    _update_refused(farm, "w3", occ.id, w3, "all 2 slots of")
    _update_refused(farm, "w1", occ.id, {**w1, "worker": "w2"}, "must name worker w1")
    moved = {**w1, "claimed_at": to_wire(farm.now() + timedelta(seconds=1))}
    _update_refused(farm, "w1", occ.id, moved, "cannot change its claimed_at")
    # w1's result through the function, then any rewrite of it: one slot, ever.
    done = quorum.finish_slot(stored, "w1", farm.now(), started_at=now, output={"slept_ms": 1})
    result = (done.slots or {})["w1"].model_dump(exclude_none=True)
    farm.worker("w1").update(farm.db, "farm", "slot", occ.id,
                             {"slot": result, "updated_at": to_wire(farm.now())})  # fmt: skip
    _update_refused(farm, "w1", occ.id, {**result, "result": {**result["result"], "output": 2}},
                    "already has a slot")  # fmt: skip
    # A quorum-1 occurrence has no slots to write.
    single = _occurrence(farm, _task(farm, quorum=1))
    _update_refused(farm, "w1", single.id, w1, "not a quorum occurrence")
    body = {"slot": w1, "updated_at": to_wire(farm.now())}
    with pytest.raises(CouchError) as missing:
        farm.worker("w1", retries=0).update(farm.db, "farm", "slot", "occ:nope", body)
    assert missing.value.status == 404


def test_a_server_without_the_slot_function_gets_the_put_of_before(farm: Farm) -> None:
    """A hub not yet upgraded (its design document has no ``updates``): the worker's slot
    writes fall back to PUT, and on a conflict GET and PUT again, on both servers."""
    occ = _occurrence(farm, _task(farm, quorum=2))
    ddoc = farm.admin.get(farm.db, "_design/farm")
    farm.admin.put(farm.db, {k: v for k, v in ddoc.items() if k != "updates"})
    try:
        for worker in ("w1", "w2"):  # both from the revision read before either claimed
            verdict, stored = slots.write_slot(farm.worker(worker), farm.db,
                                               quorum.claim_slot(occ, worker, farm.now()),
                                               worker, farm.now)  # fmt: skip
            assert verdict == "ok" and stored is not None
        assert sorted(_read(farm, occ.id).slots or {}) == ["w1", "w2"]
    finally:
        designdocs.push(farm.admin, farm.db, "farm")
    assert "slot" in farm.admin.get(farm.db, "_design/farm")["updates"]


def test_quorum_one_occurrences_keep_their_rules(farm: Farm) -> None:
    task = _task(farm, quorum=1)
    occ = _occurrence(farm, task)
    doc = farm.admin.get(farm.db, occ.id)
    assert occ.quorum is None and "slots" not in doc
    now = farm.now()
    claim = quorum.claim_slot(occ.model_copy(update={"quorum": 2, "slots": {}}), "w1", now)
    _refused(farm, "w1", {**claim.to_doc(), "_rev": doc["_rev"]}, "cannot make occurrence")
    claimed = states.claim(occ, "w1", now)
    farm.worker("w1").put(farm.db, claimed.to_doc())
    with pytest.raises(states.InvalidTransition, match="claim a slot"):
        states.claim(_occurrence(farm, _task(farm, quorum=2)), "w1", now)


# ---------------------------------------------------------------- the validator


def test_k3_with_one_liar_keeps_the_honest_result_and_the_liars_score_drops(farm: Farm) -> None:
    task = _task(farm, quorum=3)
    occ = _occurrence(farm, task)
    validator = Validator(farm.hub, farm.db)
    for worker, output in (("w1", {"slept_ms": 1}), ("w2", {"slept_ms": 666})):
        _run(farm, occ.id, worker, output)
    validator.observe(farm.admin.get(farm.db, occ.id))
    assert occ.id not in validator.run(farm.now()).decided_ids  # 2 of 3: wait for the third
    assert _read(farm, occ.id).state == State.READY
    _run(farm, occ.id, "w3", {"slept_ms": 1})
    validator.observe(farm.admin.get(farm.db, occ.id))
    before = validator.reliability(["w1", "w2", "w3"])
    assert occ.id in validator.run(farm.now()).decided_ids
    final = _read(farm, occ.id)
    assert final.state == State.DONE and final.result is not None
    assert final.result.output == {"slept_ms": 1} and final.result.worker in ("w1", "w3")
    v = final.validation
    assert v is not None and v.outcome == "canonical" and v.canonical == final.result.worker
    assert v.agree == ["w1", "w3"] and v.disagree == ["w2"]
    assert v.why == "2 of 3 results agree (demo.sleep: equal output)"
    after = validator.reliability(["w1", "w2", "w3"])

    def counts(rel: Reliability | None) -> tuple[int, int]:
        return (rel.agree, rel.disagree) if rel else (0, 0)

    for worker, agreed in (("w1", True), ("w2", False), ("w3", True)):
        a, d = counts(before.get(worker))
        assert counts(after[worker]) == (a + agreed, d + (not agreed)), worker
    assert after["w2"].score < reliability_score(*counts(before.get("w2")))
    assert after["w2"].score < after["w1"].score
    # A second hub deciding the same occurrence changes nothing.
    second = Validator(farm.hub, farm.db)
    second.observe(farm.admin.get(farm.db, occ.id))
    assert occ.id not in second.run(farm.now()).decided_ids
    assert counts(second.reliability(["w2"])["w2"]) == counts(after["w2"])


def test_k2_disagreeing_is_inconclusive_and_archived_with_every_result(
    farm: Farm, month: str
) -> None:
    occ = _occurrence(farm, _task(farm, quorum=2))
    _run(farm, occ.id, "w1", {"slept_ms": 1})
    _run(farm, occ.id, "w2", {"slept_ms": 2})
    validator = Validator(farm.hub, farm.db)
    validator.observe(farm.admin.get(farm.db, occ.id))
    assert occ.id in validator.run(farm.now()).decided_ids
    final = _read(farm, occ.id)
    assert final.state == State.INCONCLUSIVE and final.result is None
    assert final.validation is not None and final.validation.outcome == "inconclusive"
    assert {s.state for s in (final.slots or {}).values()} == {"done"}
    result = archiver.to_result(final)
    assert result.status == "inconclusive" and result.validation == final.validation
    assert [r.output for r in result.alternatives or []] == [{"slept_ms": 1}, {"slept_ms": 2}]
    farm.hub.put(month, result.to_doc())
    stored = farm.admin.get(month, result_id(occ.id))
    assert stored["status"] == "inconclusive" and len(stored["alternatives"]) == 2
    assert results_db(farm.db, farm.now()).startswith(farm.db)


@pytest.mark.parametrize("mode", ["decide", "fail"])
def test_quorum_timeout(farm: Farm, mode: str) -> None:
    occ = _occurrence(farm, _task(farm, quorum=3, quorum_timeout=30, quorum_on_timeout=mode),
                      minutes_ago=0)  # fmt: skip
    _run(farm, occ.id, "w1", {"slept_ms": 1})
    _run(farm, occ.id, "w2", {"slept_ms": 1})
    _claim(farm, occ.id, "w3")  # never finishes
    validator = Validator(farm.hub, farm.db)
    validator.observe(farm.admin.get(farm.db, occ.id))  # as the hub's feed does
    assert occ.quorum_deadline is not None
    deadline = from_wire(occ.quorum_deadline)
    assert occ.id not in validator.run(deadline - timedelta(seconds=1)).decided_ids
    assert _read(farm, occ.id).state == State.READY
    assert occ.id in validator.run(deadline).decided_ids
    final = _read(farm, occ.id)
    assert final.validation is not None
    assert "quorum timed out with 2 of 3" in final.validation.why
    if mode == "decide":
        assert final.state == State.DONE and final.validation.agree == ["w1", "w2"]
    else:
        assert final.state == State.INCONCLUSIVE
    assert (final.slots or {})["w3"].state == "leased"  # the slow worker's finish is refused
    now = farm.now()
    late = quorum.finish_slot(_read(farm, occ.id).model_copy(update={"state": State.READY,
                              "validation": None, "result": None}), "w3", now,
                              started_at=now, output=1)  # fmt: skip
    _refused(farm, "w3", {**late.to_doc(), "_rev": final.rev}, "its quorum is decided")


def test_silent_slots_expire_and_free_their_place(farm: Farm) -> None:
    occ = _occurrence(farm, _task(farm, quorum=2, ttr=5, quorum_timeout=3600))
    claimed = _claim(farm, occ.id, "w1")
    validator = Validator(farm.hub, farm.db)
    validator.observe(farm.admin.get(farm.db, occ.id))
    expiry = from_wire((claimed.slots or {})["w1"].expires_at)
    assert validator.next_due == expiry
    assert validator.run(expiry).slots_expired >= 1
    stored = _read(farm, occ.id)
    assert (stored.slots or {})["w1"].state == "expired" and quorum.open_slots(stored) == 2
    rows = farm.admin.view(farm.db, "claim", "ready", startkey=[occ.tube], endkey=[occ.tube, {}])
    assert occ.id in {row["id"] for row in rows["rows"]}


def test_a_full_quorum_leaves_the_ready_view(farm: Farm) -> None:
    occ = _occurrence(farm, _task(farm, quorum=2))

    def listed() -> bool:
        rows = farm.admin.view(farm.db, "claim", "ready", startkey=[occ.tube],
                               endkey=[occ.tube, {}])["rows"]  # fmt: skip
        return occ.id in {row["id"] for row in rows}

    assert listed()
    _claim(farm, occ.id, "w1")
    assert listed()
    _claim(farm, occ.id, "w2")
    assert not listed()


# ---------------------------------------------------------------- adaptive replication


def _trust(farm: Farm, worker: str, agree: int = 50) -> None:
    now = to_wire(farm.now())
    rel = Reliability(_id=reliability_id(worker), worker=worker, agree=agree, disagree=0,
                      score=reliability_score(agree, 0), updated_at=now)  # fmt: skip
    current = farm.admin.get_or_none(farm.db, rel.id)
    doc = rel.to_doc()
    if current:
        doc["_rev"] = current["_rev"]
    farm.hub.put(farm.db, doc)


def test_adaptive_replication_spot_checks_at_the_configured_rate(farm: Farm) -> None:
    """40 occurrences of an adaptive task at rate 0.25, each run once by a trusted worker:
    the spot checks wait for their full quorum, every other one is accepted alone; which
    is which is the deterministic draw, and their number is within binomial bounds."""
    task = _task(farm, quorum=2, adaptive=True, spot_check_rate=0.25, schedule={"every": 60})
    _trust(farm, "w3")
    now = farm.now().replace(second=0, microsecond=0)
    occs = [states.materialize(task, now - timedelta(minutes=n + 1), now, not_before=now)
            for n in range(40)]  # fmt: skip
    farm.hub.bulk_docs(farm.db, [o.to_doc() for o in occs])
    validator = Validator(farm.hub, farm.db)
    for occ in occs:
        assert occ.spot_check == quorum.spot_check_draw(occ.id, 0.25)
        validator.observe(_run(farm, occ.id, "w3", {"slept_ms": 1}).to_doc())
    report = validator.run(farm.now())
    spot = [o.id for o in occs if o.spot_check]
    low, high = quorum.binomial_bounds(len(occs), 0.25, sigmas=4)
    assert low <= len(spot) <= high
    assert set(report.decided_ids) & {o.id for o in occs} == {
        o.id for o in occs if not o.spot_check
    }
    for occ in occs:
        stored = _read(farm, occ.id)
        if occ.spot_check:
            assert stored.state == State.READY  # waits for a second result
        else:
            assert stored.state == State.DONE and stored.validation is not None
            assert stored.validation.outcome == "accepted_alone"
            assert stored.validation.canonical == "w3" and not stored.validation.spot_check
    if spot:  # a spot check is decided by its full quorum, and counted
        validator.observe(_run(farm, spot[0], "w1", {"slept_ms": 1}).to_doc())
        assert spot[0] in validator.run(farm.now()).decided_ids
        assert _read(farm, spot[0]).validation.spot_check is True  # type: ignore[union-attr]


def test_a_liar_is_quarantined_after_a_disagree_streak(farm: Farm) -> None:
    task = _task(farm, quorum=3)
    validator = Validator(farm.hub, farm.db)
    liar = "w2"
    start = validator.reliability([liar]).get(liar)
    for n in range(3):
        occ = _occurrence(farm, task, minutes_ago=n + 1)
        for worker in ("w1", "w2", "w3"):
            out = {"slept_ms": 666} if worker == liar else {"slept_ms": 1}
            validator.observe(_run(farm, occ.id, worker, out).to_doc())
        assert occ.id in validator.run(farm.now()).decided_ids
    rel = validator.reliability([liar])[liar]
    assert rel.disagree_streak >= 3 and rel.quarantined and rel.quarantined_at
    assert rel.disagree == (start.disagree if start else 0) + 3
    assert not validator.reliability(["w1"])["w1"].quarantined
    rows = farm.admin.view(farm.db, "farm", "reliability")["rows"]
    assert any(row["value"]["worker"] == liar and row["value"]["quarantined"] for row in rows)


def test_a_quarantined_workers_quorum_one_result_is_voided(farm: Farm) -> None:
    liar = "w2"
    _trust(farm, liar)  # (a reliability doc to flip)
    doc = farm.admin.get(farm.db, reliability_id(liar))
    farm.hub.put(farm.db, {**doc, "quarantined": True, "quarantined_at": to_wire(farm.now())})
    occ = _occurrence(farm, _task(farm, quorum=1))
    now = farm.now()
    claimed = states.claim(occ, liar, now)
    farm.worker(liar).put(farm.db, claimed.to_doc())
    done = states.finish(_read(farm, occ.id), liar, farm.now(), started_at=now, output=1)
    farm.worker(liar).put(farm.db, done.to_doc())
    stored = _read(farm, occ.id)
    # A worker may not void anyone's result, nor the hub without saying so.
    voided = quorum.void_result(stored, farm.now(), f"{liar} is quarantined")
    _refused(farm, "w1", voided.to_doc(), "")
    with pytest.raises(CouchError, match="a final state never changes"):
        farm.hub.put(farm.db, {**voided.to_doc(), "reason": "just because"})
    validator = Validator(farm.hub, farm.db)
    validator.run(farm.now())  # reads who is quarantined
    validator.observe(farm.admin.get(farm.db, occ.id))
    assert validator.run(farm.now()).voided == 1
    again = _read(farm, occ.id)
    assert again.state == State.READY and again.result is None and again.attempt == 0
    assert again.reason == f"voided: {liar} is quarantined"
    assert again.errors[-1].worker == liar and "result voided" in again.errors[-1].error
    honest = states.claim(again, "w1", farm.now())
    farm.worker("w1").put(farm.db, honest.to_doc())  # runs again, on someone else
