"""Quorum runs as pure functions (hub/protocol/quorum.py): slots, comparators, decide,
reliability and the adaptive spot-check draw. The same rules against the real server are
in tests/test_quorum_server.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from hub.protocol import quorum, states
from hub.protocol.model import Occurrence, Reliability, RunResult, State, Task, reliability_id
from hub.protocol.timefmt import to_wire

T0 = datetime(2026, 12, 1, 0, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def task(**changes: Any) -> Task:
    data: dict[str, Any] = {
        "_id": "task:acme:ping",
        "client": "acme",
        "slug": "ping",
        "kind": "demo.sleep",
        "input": {"ms": 1},
        "schedule": {"every": 60},
        "ttr": 30,
        "quorum": 3,
        "created_at": to_wire(T0),
        "updated_at": to_wire(T0),
    }
    data.update(changes)
    return Task.model_validate(data)


def occurrence(**changes: Any) -> Occurrence:
    t = task(**changes)
    return states.materialize(t, T0, T0)


def run(occ: Occurrence, worker: str, output: Any, finish_at: float = 5) -> Occurrence:
    claimed = quorum.claim_slot(occ, worker, at(1))
    return quorum.finish_slot(claimed, worker, at(finish_at), started_at=at(1), output=output)


def test_task_quorum_fields_are_checked() -> None:
    assert task().quorum == 3
    assert task(quorum=1).quorum == 1
    for bad in ({"quorum": 0}, {"quorum": 8}, {"spot_check_rate": 1.5},
                {"quorum_on_timeout": "maybe"}, {"quorum_timeout": 0}):  # fmt: skip
        with pytest.raises(ValidationError):
            task(**bad)


def test_a_quorum_one_occurrence_is_unchanged() -> None:
    t = task(quorum=1)
    occ = quorum.with_quorum(states.materialize(t, T0, T0), t)
    doc = occ.to_doc()
    assert not {"quorum", "slots", "validation", "quorum_deadline"} & set(doc)


def test_materialized_quorum_occurrence_carries_its_rules() -> None:
    occ = occurrence()
    assert occ.quorum == 3 and occ.slots == {}
    assert occ.quorum_deadline == to_wire(T0 + timedelta(seconds=90))  # 3 x ttr
    assert occurrence(quorum_timeout=10).quorum_deadline == to_wire(at(10))
    assert occ.adaptive is None and occ.spot_check is None


def test_k_distinct_workers_claim_one_slot_each() -> None:
    occ = occurrence()
    occ = quorum.claim_slot(occ, "w1", at(1))
    assert occ.state == State.READY and quorum.open_slots(occ) == 2
    with pytest.raises(states.InvalidTransition, match="already has a slot"):
        quorum.claim_slot(occ, "w1", at(2))
    occ = quorum.claim_slot(quorum.claim_slot(occ, "w2", at(1)), "w3", at(1))
    assert quorum.open_slots(occ) == 0
    with pytest.raises(states.InvalidTransition, match="all 3 slots are taken"):
        quorum.claim_slot(occ, "w4", at(2))


def test_an_expired_slot_frees_a_place_but_never_a_second_slot() -> None:
    occ = quorum.claim_slot(quorum.claim_slot(occurrence(quorum=2), "w1", at(1)), "w2", at(1))
    assert quorum.expire_slots(occ, at(30)) is None  # leases run until 31 s
    expired = quorum.expire_slots(occ, at(31))
    assert expired is not None
    assert {n: s.state for n, s in (expired.slots or {}).items()} == {"w1": "expired",
                                                                      "w2": "expired"}  # fmt: skip
    with pytest.raises(states.InvalidTransition, match="already has a slot"):
        quorum.claim_slot(expired, "w1", at(32))
    assert quorum.open_slots(quorum.claim_slot(expired, "w3", at(32))) == 1


def test_touch_finish_and_release_change_only_the_own_slot() -> None:
    occ = quorum.claim_slot(quorum.claim_slot(occurrence(), "w1", at(1)), "w2", at(1))
    touched = quorum.touch_slot(occ, "w1", at(10))
    assert (touched.slots or {})["w1"].expires_at == to_wire(at(40))
    assert (touched.slots or {})["w2"] == (occ.slots or {})["w2"]
    done = quorum.finish_slot(touched, "w1", at(12), started_at=at(1), output={"slept_ms": 1})
    slot = (done.slots or {})["w1"]
    assert slot.state == "done" and slot.result is not None and slot.result.attempt == 1
    with pytest.raises(states.InvalidTransition, match="is done"):
        quorum.touch_slot(done, "w1", at(13))
    err = quorum.finish_slot(done, "w2", at(12), started_at=at(1), error="boom")
    assert (err.slots or {})["w2"].state == "error"
    void = quorum.release_slot(quorum.claim_slot(err, "w3", at(2)), "w3", at(3))
    assert (void.slots or {})["w3"].state == "void" and quorum.open_slots(void) == 1
    with pytest.raises(states.InvalidTransition, match="no slot"):
        quorum.touch_slot(occ, "w9", at(2))


def test_a_conflict_is_settled_by_reapplying_the_own_slot() -> None:
    base = occurrence()
    mine = quorum.claim_slot(base, "w1", at(1))
    theirs = quorum.claim_slot(base, "w2", at(1))  # got there first
    merged = quorum.apply_own_slot(theirs, mine, "w1", at(2))
    assert set(merged.slots or {}) == {"w1", "w2"}
    finished = quorum.finish_slot(merged, "w1", at(3), started_at=at(1), output=1)
    other_touch = quorum.touch_slot(merged, "w2", at(3))
    again = quorum.apply_own_slot(other_touch, finished, "w1", at(4))
    assert (again.slots or {})["w1"].state == "done"
    assert (again.slots or {})["w2"] == (other_touch.slots or {})["w2"]
    expired = quorum.expire_slots(merged, at(100))
    assert expired is not None
    with pytest.raises(states.InvalidTransition):
        quorum.apply_own_slot(expired, finished, "w1", at(101))


def _result(output: Any, status: str = "ok") -> RunResult:
    return RunResult(status=status, worker="w1", attempt=1, started_at=to_wire(T0),
                     finished_at=to_wire(T0), output=output,
                     error="x" if status == "error" else None)  # fmt: skip


def test_comparators_by_kind() -> None:
    http = quorum.comparator_for("http.check")
    ok = {"status": 200, "ok": True, "latency_ms": 100}
    assert http(_result(ok), _result({**ok, "status": 204, "latency_ms": 590}))
    assert not http(_result(ok), _result({**ok, "latency_ms": 601}))
    assert not http(_result(ok), _result({**ok, "status": 500, "ok": False}))
    assert not http(_result(ok), _result(None, "error"))
    assert http(_result(None, "error"), _result(None, "error"))
    dns = quorum.comparator_for("dns.resolve")
    assert dns(_result({"addresses": ["1.1.1.1", "2.2.2.2"], "latency_ms": 1}),
               _result({"addresses": ["2.2.2.2", "1.1.1.1"], "latency_ms": 900}))  # fmt: skip
    assert not dns(_result({"addresses": ["1.1.1.1"]}), _result({"addresses": ["6.6.6.6"]}))
    same = quorum.comparator_for("demo.sleep")
    assert same(_result({"slept_ms": 1}), _result({"slept_ms": 1}))
    assert not same(_result({"slept_ms": 1}), _result({"slept_ms": 2}))
    assert quorum.comparator_for("no.such.kind") is quorum.compare_equal


def test_a_plugin_declares_its_own_comparator() -> None:
    quorum.register_comparator("acme.roll", lambda a, b: True, "any roll agrees")
    try:
        occ = run(run(occurrence(kind="acme.roll", quorum=2), "w1", 1), "w2", 6)
        decision = quorum.decide(occ, at(6))
        assert decision is not None and decision.occurrence.state == State.DONE
        assert "any roll agrees" in (decision.occurrence.validation or _never()).why
    finally:
        quorum.COMPARATORS.pop("acme.roll")
        quorum.COMPARATOR_WHY.pop("acme.roll")


def _never() -> Any:
    raise AssertionError("no validation")


def test_k3_with_one_liar_keeps_the_honest_result() -> None:
    occ = run(run(run(occurrence(), "w1", {"slept_ms": 1}, 5), "w2", {"slept_ms": 666}, 3),
              "w3", {"slept_ms": 1}, 7)  # fmt: skip
    assert quorum.decide(run(occurrence(), "w1", 1), at(8)) is None  # 1 of 3: wait
    decision = quorum.decide(occ, at(8))
    assert decision is not None
    final = decision.occurrence
    assert final.state == State.DONE and final.result is not None
    assert final.result.output == {"slept_ms": 1} and final.result.worker == "w1"
    assert final.attempt == 1
    v = final.validation
    assert v is not None and v.outcome == "canonical" and v.canonical == "w1"
    assert v.agree == ["w1", "w3"] and v.disagree == ["w2"]
    assert v.why == "2 of 3 results agree (demo.sleep: equal output)"
    assert decision.agree == ["w1", "w3"] and decision.disagree == ["w2"]
    assert [r.worker for r in quorum.alternatives(final)] == ["w2", "w1", "w3"]


def test_k2_disagreeing_is_inconclusive_with_every_result_kept() -> None:
    occ = run(run(occurrence(quorum=2), "w1", {"slept_ms": 1}), "w2", {"slept_ms": 2})
    decision = quorum.decide(occ, at(8))
    assert decision is not None
    final = decision.occurrence
    assert final.state == State.INCONCLUSIVE and final.result is None
    assert final.validation is not None and final.validation.outcome == "inconclusive"
    assert len(quorum.alternatives(final)) == 2
    assert Occurrence.from_doc(final.to_doc()) == final


def test_quorum_timeout_decides_with_a_majority_in_hand_or_fails() -> None:
    two = run(run(occurrence(quorum=3), "w1", 1), "w2", 1)
    assert quorum.decide(two, at(89)) is None  # deadline 90 s
    decided = quorum.decide(two, at(90))
    assert decided is not None and decided.occurrence.state == State.DONE
    assert "timed out with 2 of 3" in (decided.occurrence.validation or _never()).why
    strict = run(run(occurrence(quorum=3, quorum_on_timeout="fail"), "w1", 1), "w2", 1)
    failed = quorum.decide(strict, at(90))
    assert failed is not None and failed.occurrence.state == State.INCONCLUSIVE
    assert "quorum_on_timeout: fail" in (failed.occurrence.validation or _never()).why
    one = run(occurrence(quorum=3), "w1", 1)
    alone = quorum.decide(one, at(90))
    assert alone is not None and alone.occurrence.state == State.INCONCLUSIVE
    assert not alone.compared and not failed.compared and decided.compared
    split = run(run(occurrence(quorum=3), "w1", 1), "w2", 2)
    assert (quorum.decide(split, at(90)) or _never()).occurrence.state == State.INCONCLUSIVE
    nothing = quorum.decide(occurrence(quorum=3), at(90))
    assert nothing is not None and nothing.occurrence.state == State.INCONCLUSIVE


def _trusted(worker: str, agree: int = 20, quarantined: bool = False) -> Reliability:
    from hub.protocol.model import reliability_score

    return Reliability(_id=reliability_id(worker), worker=worker, agree=agree, disagree=0,
                       score=reliability_score(agree, 0), quarantined=quarantined,
                       updated_at=to_wire(T0))  # fmt: skip


def test_adaptive_accepts_a_trusted_result_alone_unless_spot_checked() -> None:
    occ = occurrence(adaptive=True, spot_check_rate=0.0)
    assert occ.adaptive and occ.spot_check is False
    one = run(occ, "w1", 1)
    assert quorum.decide(one, at(6)) is None  # nobody trusted yet
    assert quorum.decide(one, at(6), reliability={"w1": _trusted("w1", agree=5)}) is None
    assert quorum.decide(one, at(6), reliability={"w1": _trusted("w1", quarantined=True)}) is None
    alone = quorum.decide(one, at(6), reliability={"w1": _trusted("w1")})
    assert alone is not None and alone.occurrence.state == State.DONE
    assert (alone.occurrence.validation or _never()).outcome == "accepted_alone"
    assert not alone.compared
    checked = run(occurrence(adaptive=True, spot_check_rate=1.0), "w1", 1)
    assert checked.spot_check is True
    assert quorum.decide(checked, at(6), reliability={"w1": _trusted("w1")}) is None


def test_reliability_score_streak_and_quarantine() -> None:
    rel = None
    for _ in range(3):
        rel = quorum.update_reliability(rel, "w2", True, T0)
    assert rel is not None and rel.score == 4 / 5 and rel.disagree_streak == 0
    for n in range(1, 4):
        rel = quorum.update_reliability(rel, "w2", False, at(n))
        assert rel.disagree_streak == n and rel.quarantined is (n >= 3)
    assert rel is not None and rel.quarantined_at == to_wire(at(3))
    assert rel.score == pytest.approx(4 / 8)
    rel = quorum.update_reliability(rel, "w2", True, at(9))
    assert rel.quarantined and rel.quarantined_at == to_wire(at(3)) and rel.disagree_streak == 0


def test_lifting_a_quarantine_is_recorded_kept_and_idempotent() -> None:
    rel = None
    for n in range(4):
        rel = quorum.update_reliability(rel, "w2", n == 0, at(n))
    assert rel is not None and rel.quarantined and rel.disagree_streak == 3
    lifted = quorum.lift_quarantine(rel, at(10), by="alice", user="hub", reason="fixed its clock")
    assert lifted is not None and not lifted.quarantined and lifted.quarantined_at is None
    assert lifted.disagree_streak == 0 and (lifted.agree, lifted.disagree) == (1, 3)
    [lift] = lifted.lifts
    assert (lift.by, lift.user, lift.at) == ("alice", "hub", to_wire(at(10)))
    assert lift.quarantined_at == to_wire(at(3)) and lift.disagree_streak == 3
    assert lift.reason == "fixed its clock"
    assert quorum.lift_quarantine(lifted, at(11), by="bob") is None  # nothing to lift
    # The validator's next updates keep the record; a new streak quarantines it again.
    again = lifted
    for n in range(3):
        again = quorum.update_reliability(again, "w2", False, at(20 + n))
        assert again.lifts == lifted.lifts
        assert again.quarantined is (n == 2)
    twice = quorum.lift_quarantine(again, at(30), by="bob")
    assert twice is not None and [x.by for x in twice.lifts] == ["alice", "bob"]
    assert Reliability.from_doc(twice.to_doc()) == twice


def test_spot_check_draw_is_deterministic_and_at_the_rate() -> None:
    """10,000 ids, rate 0.1: the count of spot checks within 5 standard deviations of a
    Binomial(10,000, 0.1) (a wrong draw, e.g. always or never, is far outside)."""
    ids = [f"occ:task:acme:ping:2027{n:08d}Z" for n in range(10_000)]
    for rate in (0.1, 0.5, 0.02):
        hits = sum(quorum.spot_check_draw(i, rate) for i in ids)
        low, high = quorum.binomial_bounds(len(ids), rate)
        assert low <= hits <= high, (rate, hits)
    assert [quorum.spot_check_draw(i, 0.3) for i in ids[:50]] == [
        quorum.spot_check_draw(i, 0.3) for i in ids[:50]
    ]
    assert not any(quorum.spot_check_draw(i, 0.0) for i in ids[:100])
    assert all(quorum.spot_check_draw(i, 1.0) for i in ids[:100])


def test_decision_is_deterministic_whatever_the_slot_order() -> None:
    occ = run(run(run(occurrence(), "w3", 1, 5), "w1", 2, 5), "w2", 1, 5)
    doc = occ.to_doc()
    reordered = {**doc, "slots": dict(reversed(list(doc["slots"].items())))}
    a = quorum.decide(occ, at(9))
    b = quorum.decide(Occurrence.from_doc(reordered), at(9))
    assert a is not None and b is not None
    assert a.occurrence.to_doc() == b.occurrence.to_doc()


def test_the_model_refuses_slots_on_a_quorum_one_occurrence() -> None:
    doc = states.materialize(task(quorum=1), T0, T0).to_doc()
    with pytest.raises(ValidationError, match="quorum occurrences"):
        Occurrence.from_doc({**doc, "slots": {"w1": {"worker": "w1", "claimed_at": doc["due_at"],
                                                     "expires_at": doc["due_at"],
                                                     "state": "leased"}}})  # fmt: skip


def test_task_submission_checks_the_quorum_fields() -> None:
    from hub.service import ServiceError, build_task

    spec: dict[str, Any] = {"kind": "demo.sleep", "input": {"ms": 1}, "schedule": {"every": 60}}
    assert build_task("acme", "q", {**spec, "quorum": 3, "adaptive": True}, T0).quorum == 3
    cases = {
        "quorum: Input should be less than or equal to 7": {"quorum": 9},
        "adaptive: replication needs quorum 2 or more": {"adaptive": True},
        "quorum_timeout: only a task with quorum 2 or more uses it": {"quorum_timeout": 60},
        "quorum_timeout: 5 s is shorter than ttr (60 s)": {"quorum": 2, "quorum_timeout": 5},
        "spot_check_rate: Input should be less than or equal to 1": {"spot_check_rate": 2},
    }
    for expected, extra in cases.items():
        with pytest.raises(ServiceError) as refusal:
            build_task("acme", "q", {**spec, **extra}, T0)
        assert any(expected in line for line in refusal.value.problems), refusal.value.problems


def test_the_claimer_skips_own_slots_full_quorums_and_when_quarantined_quorum_one() -> None:
    from desktop_worker.claim import Claimer

    claimer = Claimer(None, "farm", "w1", ["default"])  # type: ignore[arg-type]
    plain = states.materialize(task(quorum=1), T0, T0)
    open_q = states.materialize(task(quorum=2, slug="open", _id="task:acme:open"), T0, T0)
    mine = quorum.claim_slot(
        states.materialize(task(quorum=2, slug="mine", _id="task:acme:mine"), T0, T0), "w1", at(1)
    )
    full = states.materialize(task(quorum=2, slug="full", _id="task:acme:full"), T0, T0)
    full = quorum.claim_slot(quorum.claim_slot(full, "w2", at(1)), "w3", at(1))
    docs = [o.to_doc() for o in (plain, open_q, mine, full)]
    ids = lambda got: [o.id for o in got[0]]  # noqa: E731
    assert ids(claimer._claimable(docs, at(2))) == [plain.id, open_q.id]
    claimer.quorum_only = True  # quarantined: only work that others check
    assert ids(claimer._claimable(docs, at(2))) == [open_q.id]


def test_tallies_count_inconclusive_as_a_status() -> None:
    from hub.archiver import add_to_tally, empty_tally

    tally = empty_tally("task:acme:ping", "acme")
    add_to_tally(tally, {"status": "inconclusive", "due_at": to_wire(T0)})
    add_to_tally(tally, {"status": "ok", "due_at": to_wire(T0), "duration_ms": 5})
    assert tally["statuses"]["inconclusive"]["count"] == 1
    assert tally["statuses"]["ok"]["count"] == 1


# ---------------------------------------------------------------- two copies merged


def _slot_variants() -> list[Any]:
    """Every kind of copy of w1's slot two servers may hold, as wire dicts: claims, touches,
    an expiry, a void, results of two runs (a rescue's re-claim), an error, equal finish
    times, and something that is not a slot at all."""
    claimed = quorum.claim_slot(occurrence(), "w1", at(1))
    leased = claimed.to_doc()["slots"]["w1"]
    touched = quorum.touch_slot(claimed, "w1", at(10)).to_doc()["slots"]["w1"]
    expired = {**leased, "state": "expired"}
    void = quorum.release_slot(claimed, "w1", at(2)).to_doc()["slots"]["w1"]
    done5 = quorum.finish_slot(claimed, "w1", at(5), started_at=at(1), output=1)
    done5_slot = done5.to_doc()["slots"]["w1"]
    reclaimed = quorum.claim_slot(occurrence(), "w1", at(3))
    done7 = quorum.finish_slot(reclaimed, "w1", at(7), started_at=at(3), output=1)
    error6 = quorum.finish_slot(claimed, "w1", at(6), started_at=at(1), error="boom")
    other_output = {**done5_slot, "result": {**done5_slot["result"], "output": 2}}
    return [leased, touched, expired, void, done5_slot, done7.to_doc()["slots"]["w1"],
            error6.to_doc()["slots"]["w1"], other_output, "not a slot"]  # fmt: skip


def test_slot_order_result_beats_lease_beats_expired_and_void() -> None:
    leased, touched, expired, void, done5, done7, error6, other_output, junk = _slot_variants()
    assert quorum.further_along(leased, done5) is done5
    assert quorum.further_along(error6, touched) is error6  # an error is a result too
    assert quorum.further_along(expired, leased) is leased
    assert quorum.further_along(void, touched) is touched
    assert quorum.further_along(junk, void) is void
    assert quorum.further_along(leased, touched) is touched  # the later touch
    # Two runs of one worker (a rescue claimed again): the first finished, as everywhere.
    assert quorum.further_along(done7, done5) is done5
    assert quorum.further_along(error6, done7) is error6
    # Same finish, same worker, other bytes: still one answer, whichever comes first.
    assert quorum.further_along(done5, other_output) == quorum.further_along(other_output, done5)


def test_slot_order_is_total_so_the_merge_is_commutative_associative_idempotent() -> None:
    """Property-style over every pair and triple of the variants (deterministic, no
    Hypothesis): the pick never depends on the order the copies come in."""
    variants = _slot_variants()
    for a in variants:
        assert quorum.further_along(a, a) == a
        for b in variants:
            ab, ba = quorum.further_along(a, b), quorum.further_along(b, a)
            assert ab == ba, (a, b)
            assert ab in (a, b)
            if a != b:
                assert quorum.slot_order(a) != quorum.slot_order(b)  # no ties: total
            for c in variants:
                left = quorum.further_along(quorum.further_along(a, b), c)
                right = quorum.further_along(a, quorum.further_along(b, c))
                assert left == right, (a, b, c)


def test_merge_slots_is_the_union_keyed_by_worker_whatever_the_order() -> None:
    import itertools

    leased, touched, expired, _void, done5, done7, _error6, _other, _junk = _slot_variants()
    w2 = {**leased, "worker": "w2"}
    w3 = {**done5, "worker": "w3", "result": {**done5["result"], "worker": "w3"}}
    w2_touched = {**touched, "worker": "w2"}
    copies = [{"w1": leased, "w2": w2}, {"w1": done7, "w3": w3}, {"w1": expired},
              {"w1": done5, "w2": {**w2, "state": "expired"}}, {}, {"w2": w2_touched}]  # fmt: skip
    expected = quorum.merge_slots(*copies)
    assert list(expected) == ["w1", "w2", "w3"]  # sorted: the same bytes on every copy
    assert expected["w1"] == done5 and expected["w3"] == w3
    assert expected["w2"] == w2_touched  # the live, later-touched lease
    for order in itertools.permutations(copies):
        assert quorum.merge_slots(*order) == expected
        assert list(quorum.merge_slots(*order)) == list(expected)
    assert quorum.merge_slots(expected, expected) == expected  # idempotent
    assert quorum.merge_slots(quorum.merge_slots(*copies[:3]), *copies[3:]) == expected
    assert quorum.merge_slots(None, {}) == {}


def test_a_decided_copy_keeps_its_decision_and_the_slots_it_compared() -> None:
    base = occurrence(quorum=2)
    collecting = run(run(base, "w1", 1, 5), "w2", 1, 6)
    decision = quorum.decide(collecting, at(9))
    assert decision is not None
    decided = decision.occurrence.to_doc()
    # The other server: w2's slot there ran again (a rescue's claim) and finished first;
    # w3 filled a place there, with a result nobody compared yet.
    other = run(run(base, "w2", 1, 4), "w3", 2, 4).to_doc()
    slots = quorum.merged_slots(decided, [decided, other])
    assert slots is not None and list(slots) == ["w1", "w2", "w3"]
    assert slots["w2"] == decided["slots"]["w2"]  # compared by the decision: as it saw it
    assert slots["w3"] == other["slots"]["w3"]  # added for the record, not re-validated
    # Collecting on both: the plain union, the first finished for w2.
    assert quorum.merged_slots(collecting.to_doc(), [collecting.to_doc(), other]) == (
        quorum.merge_slots(collecting.to_doc()["slots"], other["slots"])
    )
    plain = states.materialize(task(quorum=1), T0, T0).to_doc()
    assert quorum.merged_slots(plain, [plain]) is None  # quorum 1: nothing to merge


def test_a_slot_result_is_restored_only_onto_the_own_leased_slot() -> None:
    primary = quorum.finish_slot(quorum.claim_slot(occurrence(), "w1", at(1)), "w1", at(5),
                                 started_at=at(1), output={"slept_ms": 1})  # fmt: skip
    ours = (primary.slots or {})["w1"].result
    assert ours is not None
    # The survivor took our claim again later (a new claimed_at), in a later round.
    survivor = quorum.claim_slot(occurrence().model_copy(update={"attempt": 1}), "w1", at(20))
    restored = quorum.restore_own_result(survivor, "w1", ours, at(21))
    slot = (restored.slots or {})["w1"]
    assert slot.state == "done" and slot.claimed_at == to_wire(at(20))
    assert slot.result is not None and slot.result.attempt == 2  # this copy's round
    assert (slot.result.started_at, slot.result.finished_at) == (ours.started_at, ours.finished_at)
    expired = quorum.expire_slots(survivor, at(60))
    assert expired is not None
    with pytest.raises(states.InvalidTransition, match="expired"):
        quorum.restore_own_result(expired, "w1", ours, at(61))
    with pytest.raises(states.InvalidTransition, match="a run of w1"):
        quorum.restore_own_result(quorum.claim_slot(survivor, "w2", at(20)), "w2", ours, at(21))
