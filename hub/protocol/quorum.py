"""Quorum runs as pure functions: slots, their expiry, comparators and the decision.

No I/O and no clock reads (docs/DECISIONS.md decision 17). A task with ``quorum: k``
(k > 1) materializes occurrences that k distinct workers run. Every worker's part is a
*slot* in the one occurrence document, keyed by its name, so ``validate_doc_update`` sees
all of them in the write it checks: a worker may add its own slot (never a second one,
even after its first expired) while fewer than k are live, and change only its own. The
occurrence stays ``ready`` while it collects results (the ``ready`` view lists it while
a slot is open); the hub's validator (:mod:`hub.validator`) ends it ``done`` with the
canonical result, or ``inconclusive``, with :func:`decide`.

```
slot:  (none) --claim_slot--> leased --finish_slot--> done | error
                                |--release_slot--> void
                                +--expire_slots (hub)--> expired
```

Everything a worker writes here is rebuilt from the *current* document on a 409
(:func:`apply_own_slot`): k workers write one document, so a conflict means "someone else's
slot moved", not "my lease is gone".
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from hub.protocol.model import (
    LIVE_SLOT_STATES,
    MAX_LIFTS,
    RESULT_SLOT_STATES,
    Occurrence,
    Progress,
    QuarantineLift,
    Reliability,
    RunResult,
    Slot,
    State,
    Task,
    Validation,
    clean_text,
    reliability_id,
    reliability_score,
)
from hub.protocol.states import InvalidTransition, result_order
from hub.protocol.timefmt import from_wire, to_wire

TIMEOUT_TTRS = 3  # quorum_timeout None: wait 3 x ttr after not_before for the k-th result
HTTP_LATENCY_TOLERANCE_MS = 500
DNS_LATENCY_IGNORED = True  # (documented: two resolvers agree on answers, not on speed)


# ---------------------------------------------------------------- materialization


def spot_check_draw(occ_id: str, rate: float) -> bool:
    """Is this occurrence a spot check? A deterministic draw from its id, so two hubs (and
    a restarted one) agree without asking each other: the id's hash as a uniform number
    in [0, 1), compared with ``rate``."""
    if rate <= 0:
        return False
    if rate >= 1:
        return True
    digest = hashlib.blake2b(f"spot\0{occ_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < rate


def quorum_fields(task: Task, occ_id: str, not_before: datetime) -> dict[str, Any]:
    """What a quorum task's occurrence carries beyond a quorum-1 one (nothing for k = 1)."""
    if task.quorum <= 1:
        return {}
    timeout = task.quorum_timeout if task.quorum_timeout is not None else TIMEOUT_TTRS * task.ttr
    fields: dict[str, Any] = {
        "quorum": task.quorum,
        "slots": {},
        "quorum_deadline": to_wire(not_before + timedelta(seconds=timeout)),
        "quorum_on_timeout": task.quorum_on_timeout,
    }
    if task.adaptive:
        fields["adaptive"] = True
        fields["spot_check"] = spot_check_draw(occ_id, task.spot_check_rate)
    return fields


def with_quorum(occ: Occurrence, task: Task) -> Occurrence:
    """``occ`` (just materialized from ``task``) with its quorum fields."""
    extra = quorum_fields(task, occ.id, from_wire(occ.not_before))
    if not extra:
        return occ
    data = occ.model_dump(by_alias=True, exclude_none=False)
    data.update(extra)
    return Occurrence.model_validate(data)


# ---------------------------------------------------------------- slot queries


def slots_of(occ: Occurrence) -> dict[str, Slot]:
    return dict(occ.slots or {})


def live_slots(occ: Occurrence) -> list[Slot]:
    return [s for s in slots_of(occ).values() if s.state in LIVE_SLOT_STATES]


def results_in(occ: Occurrence) -> list[Slot]:
    """The slots with a result, in "first finished" order (deterministic for two hubs)."""
    done = [s for s in slots_of(occ).values() if s.state in RESULT_SLOT_STATES]
    return sorted(done, key=lambda s: result_order(_dump(s.result)))


def open_slots(occ: Occurrence) -> int:
    return max(0, (occ.quorum or 1) - len(live_slots(occ)))


def may_claim_slot(occ: Occurrence, worker: str, now: datetime) -> str | None:
    """Why ``worker`` may not take a slot of ``occ`` now, or None when it may."""
    if not occ.is_quorum:
        return "not a quorum occurrence"
    if occ.state != State.READY:
        return f"the occurrence is {occ.state.value}"
    if worker in slots_of(occ):
        return f"{worker} already has a slot (one per worker, ever)"
    if open_slots(occ) <= 0:
        return f"all {occ.quorum} slots are taken"
    if from_wire(occ.not_before) > now:
        return f"not before {occ.not_before}"
    return None


# ---------------------------------------------------------------- worker moves


def _with_slots(occ: Occurrence, now: datetime, slots: Mapping[str, Slot]) -> Occurrence:
    data = occ.model_dump(by_alias=True, exclude_none=False)
    data["slots"] = {name: slot.model_dump(exclude_none=False) for name, slot in slots.items()}
    data["updated_at"] = to_wire(now)
    return Occurrence.model_validate(data)


def _own(occ: Occurrence, worker: str, operation: str) -> Slot:
    slot = slots_of(occ).get(worker)
    if slot is None:
        raise InvalidTransition(occ, operation, f"{worker} has no slot")
    if occ.state != State.READY:
        raise InvalidTransition(occ, operation, "the quorum is decided")
    if slot.state != "leased":
        raise InvalidTransition(occ, operation, f"{worker}'s slot is {slot.state}")
    return slot


def claim_slot(occ: Occurrence, worker: str, now: datetime) -> Occurrence:
    why = may_claim_slot(occ, worker, now)
    if why is not None:
        raise InvalidTransition(occ, "claim a slot of", why)
    slots = slots_of(occ)
    slots[worker] = Slot(
        worker=worker,
        claimed_at=to_wire(now),
        expires_at=to_wire(now + timedelta(seconds=occ.ttr)),
        state="leased",
    )
    return _with_slots(occ, now, slots)


def touch_slot(
    occ: Occurrence, worker: str, now: datetime, progress: Progress | None = None
) -> Occurrence:
    slot = _own(occ, worker, "touch the slot of")
    slots = slots_of(occ)
    slots[worker] = slot.model_copy(
        update={
            "expires_at": to_wire(now + timedelta(seconds=occ.ttr)),
            "progress": progress or slot.progress,
        }
    )
    return _with_slots(occ, now, slots)


def round_attempt(occ: Occurrence) -> int:
    """The attempt a slot's result carries: the occurrence counts one attempt per quorum
    round, taken when the validator decides (a slot never changes ``attempt``)."""
    return occ.attempt + 1


def finish_slot(
    occ: Occurrence,
    worker: str,
    now: datetime,
    *,
    started_at: datetime,
    output: Any = None,
    error: str | None = None,
) -> Occurrence:
    """The slot's result: ``done`` with the output, or ``error`` with the error text (an
    error is a result too: a majority of workers may agree that a target is down)."""
    slot = _own(occ, worker, "finish the slot of")
    result = RunResult(
        status="ok" if error is None else "error",
        worker=worker,
        attempt=round_attempt(occ),
        started_at=to_wire(started_at),
        finished_at=to_wire(now),
        output=output if error is None else None,
        error=None if error is None else clean_text(error, 2000),
    )
    slots = slots_of(occ)
    slots[worker] = slot.model_copy(
        update={"state": "done" if error is None else "error", "result": result}
    )
    return _with_slots(occ, now, slots)


def release_slot(occ: Occurrence, worker: str, now: datetime) -> Occurrence:
    """Hand a slot back unrun (stop, drain): void, so another worker may take one; this
    worker never takes a slot of this occurrence again."""
    slot = _own(occ, worker, "release the slot of")
    slots = slots_of(occ)
    slots[worker] = slot.model_copy(update={"state": "void"})
    return _with_slots(occ, now, slots)


def apply_own_slot(current: Occurrence, mine: Occurrence, worker: str, now: datetime) -> Occurrence:
    """After a 409: ``mine``'s slot of ``worker`` put onto the current document, when the
    current one still has our slot leased (or no slot yet, for a claim). Raises
    InvalidTransition when the move no longer applies (decided, expired, voided, full)."""
    wanted = slots_of(mine).get(worker)
    if wanted is None:
        raise InvalidTransition(current, "re-apply the slot of", f"{worker} wrote no slot")
    have = slots_of(current).get(worker)
    if have is None:
        if wanted.state != "leased":
            raise InvalidTransition(current, "re-apply the slot of", "our slot is gone")
        why = may_claim_slot(current, worker, now)
        if why is not None:
            raise InvalidTransition(current, "re-apply the slot of", why)
    else:
        _own(current, worker, "re-apply the slot of")
        if have.claimed_at != wanted.claimed_at:
            raise InvalidTransition(current, "re-apply the slot of", "another claim of ours")
    slots = slots_of(current)
    slots[worker] = wanted
    return _with_slots(current, now, slots)


def restore_own_result(
    current: Occurrence, worker: str, result: RunResult, now: datetime
) -> Occurrence:
    """After a failover: our run's result, acknowledged by the server we left and never
    replicated, put onto our own *leased* slot of the survivor's copy (decision 17,
    "Failover"). The run keeps its own start, finish and output ("first finished" still sees
    when it ran); only the attempt is this copy's round. Raises InvalidTransition when the
    slot there is not ours to finish (expired, void, decided: ``validate_doc_update`` allows
    a worker one slot per occurrence, ever)."""
    slot = _own(current, worker, "restore the slot result of")
    if result.worker != worker:
        raise InvalidTransition(current, "restore the slot result of", f"a run of {result.worker}")
    slots = slots_of(current)
    slots[worker] = slot.model_copy(
        update={
            "state": "done" if result.status == "ok" else "error",
            "result": result.model_copy(update={"attempt": round_attempt(current)}),
        }
    )
    return _with_slots(current, now, slots)


# ---------------------------------------------------------------- hub moves


def expire_slots(occ: Occurrence, now: datetime) -> Occurrence | None:
    """Leased slots whose lease ran out become ``expired`` (they stop counting, so another
    worker may take a slot; the silent worker never gets one here again). None: nothing
    expired."""
    if not occ.is_quorum or occ.state != State.READY:
        return None
    slots = slots_of(occ)
    gone = [n for n, s in slots.items() if s.state == "leased" and from_wire(s.expires_at) <= now]
    if not gone:
        return None
    for name in gone:
        slots[name] = slots[name].model_copy(update={"state": "expired"})
    return _with_slots(occ, now, slots)


def next_slot_expiry(occ: Occurrence) -> datetime | None:
    leased = [from_wire(s.expires_at) for s in slots_of(occ).values() if s.state == "leased"]
    return min(leased) if leased else None


# ---------------------------------------------------------------- merging two copies
#
# Two servers' copies of one occurrence (a primary and a standby after a failover, two
# copies on a cluster) may each have taken slot writes. The resolver keeps one leaf by
# its usual order (hub/resolver.py ``choose``) and writes on it the *union* of every
# copy's slots, one per worker: a slot that is further along wins. This works on the wire
# documents (plain dicts), as the resolver does, so a slot the model would refuse is still
# merged, not dropped.

_RESULT_TIER, _LEASE_TIER, _ENDED_TIER, _MALFORMED_TIER = 2, 1, 0, -1


def _descending(key: tuple[str, ...]) -> tuple[tuple[int, ...], ...]:
    # Larger must mean "first finished": every character negated. The trailing 1 (above any
    # negated character) keeps a prefix first: "w1" before "w10".
    return tuple((*(-ord(ch) for ch in part), 1) for part in key)


def slot_order(slot: Any) -> tuple[int, tuple[Any, ...], str]:
    """The sort key of "further along" between two copies of one worker's slot; the larger
    wins. A total order on wire slots:

    1. a finished slot with its result (done, error) > a live lease > an expired or void
       slot (> anything that is not a slot object at all);
    2. two results: the first finished (``states.result_order``, as for every result);
       two leases, or two ended slots: the later ``expires_at`` (the later touch), then the
       later ``claimed_at``;
    3. then the slot's canonical JSON, so two different slots never tie: the merge is
       commutative, associative and idempotent, and every copy merges to the same bytes.
    """
    text = json.dumps(slot, sort_keys=True, separators=(",", ":"), default=str)
    if not isinstance(slot, Mapping):
        return (_MALFORMED_TIER, (), text)
    result = slot.get("result")
    if slot.get("state") in RESULT_SLOT_STATES and isinstance(result, Mapping):
        return (_RESULT_TIER, _descending(result_order(dict(result))), text)
    times = (str(slot.get("expires_at") or ""), str(slot.get("claimed_at") or ""))
    return (_LEASE_TIER if slot.get("state") == "leased" else _ENDED_TIER, times, text)


def further_along(a: Any, b: Any) -> Any:
    """The copy of one worker's slot that :func:`slot_order` puts first (either, if equal)."""
    return a if slot_order(a) >= slot_order(b) else b


def merge_slots(*copies: Mapping[str, Any] | None) -> dict[str, Any]:
    """The union of several copies' ``slots``, keyed by worker; a worker present in more
    than one keeps its slot that is further along. Keys come out sorted, so the merged
    document is the same bytes whatever order the copies are given in."""
    merged: dict[str, Any] = {}
    for slots in copies:
        for name, slot in (slots or {}).items():
            merged[name] = slot if name not in merged else further_along(merged[name], slot)
    return {name: merged[name] for name in sorted(merged)}


def merged_slots(
    winner: Mapping[str, Any], copies: Iterable[Mapping[str, Any]]
) -> dict[str, Any] | None:
    """The ``slots`` the resolver writes on the kept leaf ``winner`` of a conflicted
    quorum occurrence: the union of every copy's slots (:func:`merge_slots`). None: not a
    quorum occurrence (nothing to merge).

    When the kept leaf is decided (it carries ``validation``: done or inconclusive), the
    decision stays, and the slots it compared (canonical, agree, disagree) stay exactly as
    it saw them, so ``result`` and ``validation`` keep matching their slots. Every other
    copy's results are added beside them, not re-validated: a decision is final (clients
    may have read it from the results feed, and the reliability scores counted it once,
    by the hub whose decision write won), so a late result is kept for the record (the
    archiver lists every slot's result as an ``alternative``) but changes no verdict.
    """
    k = winner.get("quorum")
    if not isinstance(k, int) or k < 2:
        return None
    slots = merge_slots(*(c.get("slots") for c in copies if isinstance(c.get("slots"), Mapping)))
    validation = winner.get("validation")
    decided = winner.get("slots")
    if isinstance(validation, Mapping) and isinstance(decided, Mapping):
        named = [validation.get("canonical"), *(validation.get("agree") or []),
                 *(validation.get("disagree") or [])]  # fmt: skip
        for name in named:
            if isinstance(name, str) and name in decided:
                slots[name] = decided[name]
    return slots


# ---------------------------------------------------------------- comparators

Comparator = Callable[[RunResult, RunResult], bool]
"""Do two results of one occurrence agree? Symmetric; not necessarily transitive."""


def _output(result: RunResult) -> dict[str, Any]:
    return result.output if isinstance(result.output, dict) else {}


def _same_status(a: RunResult, b: RunResult) -> bool | None:
    """Shared by every comparator: an error agrees only with an error (same first line of
    text is not required: two workers say it differently). None: both ok, compare more."""
    if a.status != b.status:
        return False
    if a.status == "error":
        return True
    return None


def compare_equal(a: RunResult, b: RunResult) -> bool:
    """The default, and ``demo.sleep``'s: equal outputs."""
    same = _same_status(a, b)
    return same if same is not None else a.output == b.output


def compare_http_check(a: RunResult, b: RunResult) -> bool:
    """Same status class (2xx, 3xx...), same ``ok`` verdict and latencies within
    HTTP_LATENCY_TOLERANCE_MS: two honest workers far apart see different latencies."""
    same = _same_status(a, b)
    if same is not None:
        return same
    x, y = _output(a), _output(b)
    status_x, status_y = x.get("status"), y.get("status")
    if not isinstance(status_x, int) or not isinstance(status_y, int):
        return x == y
    if status_x // 100 != status_y // 100 or x.get("ok") != y.get("ok"):
        return False
    lat_x, lat_y = x.get("latency_ms"), y.get("latency_ms")
    if isinstance(lat_x, int | float) and isinstance(lat_y, int | float):
        return abs(lat_x - lat_y) <= HTTP_LATENCY_TOLERANCE_MS
    return lat_x == lat_y


def compare_dns_resolve(a: RunResult, b: RunResult) -> bool:
    """The same answer set (order and latency do not matter)."""
    same = _same_status(a, b)
    if same is not None:
        return same
    x, y = _output(a), _output(b)
    answers_x, answers_y = x.get("addresses"), y.get("addresses")
    if not isinstance(answers_x, list) or not isinstance(answers_y, list):
        return x == y
    return {str(v) for v in answers_x} == {str(v) for v in answers_y}


COMPARATORS: dict[str, Comparator] = {
    "http.check": compare_http_check,
    "dns.resolve": compare_dns_resolve,
    "demo.sleep": compare_equal,
}

COMPARATOR_WHY: dict[str, str] = {
    "http.check": f"same status class, latency within {HTTP_LATENCY_TOLERANCE_MS} ms",
    "dns.resolve": "same answer set",
    "demo.sleep": "equal output",
}


def register_comparator(kind: str, comparator: Comparator, why: str = "") -> None:
    """A plugin kind declares how two of its results are compared (the hub's validator
    loads the ``couchfarm.comparators`` entry points and calls this)."""
    COMPARATORS[kind] = comparator
    COMPARATOR_WHY[kind] = why or f"{kind}'s own comparator"


def comparator_for(kind: str) -> Comparator:
    return COMPARATORS.get(kind, compare_equal)


# ---------------------------------------------------------------- the decision


@dataclass(frozen=True)
class TrustPolicy:
    """Adaptive replication and quarantine (the hub's settings)."""

    min_score: float = 0.9
    min_agree: int = 10
    quarantine_after: int = 3  # a disagree streak this long quarantines a worker

    def trusted(self, rel: Reliability | None) -> bool:
        return (
            rel is not None
            and not rel.quarantined
            and rel.agree >= self.min_agree
            and rel.score >= self.min_score
        )


@dataclass
class Decision:
    occurrence: Occurrence  # the final document: done or inconclusive
    agree: list[str] = field(default_factory=list)
    disagree: list[str] = field(default_factory=list)

    @property
    def compared(self) -> bool:
        """Does the decision say who was right? Only a canonical result does. An accepted-
        alone result met no other; an inconclusive one names nobody wrong (an honest worker
        paired with a liar at k = 2 must not lose trust for it, nor two that agreed but
        timed out with ``quorum_on_timeout: fail``)."""
        return self.occurrence.validation is not None and (
            self.occurrence.validation.outcome == "canonical"
        )


def _dump(result: RunResult | None) -> dict[str, Any] | None:
    return None if result is None else result.model_dump()


def timed_out(occ: Occurrence, now: datetime) -> bool:
    return occ.quorum_deadline is not None and from_wire(occ.quorum_deadline) <= now


def _majority(kind: str, slots: list[Slot]) -> tuple[Slot | None, list[Slot]]:
    """The result most others agree with, when more than half of ``slots`` do (itself
    included), with its supporters. Ties between equally supported results go to the first
    finished, so two hubs pick the same one; a tie between two *majorities* cannot happen."""
    same = comparator_for(kind)
    best: tuple[Slot | None, list[Slot]] = (None, [])
    for slot in slots:
        assert slot.result is not None
        backers = [
            other
            for other in slots
            if other is slot or (other.result is not None and same(slot.result, other.result))
        ]
        if len(backers) > len(best[1]):
            best = (slot, backers)
    if best[0] is None or 2 * len(best[1]) <= len(slots):
        return None, []
    return best


def decide(
    occ: Occurrence,
    now: datetime,
    *,
    reliability: Mapping[str, Reliability] | None = None,
    trust: TrustPolicy | None = None,
) -> Decision | None:
    """The validator's decision on a collecting quorum occurrence, or None to wait.

    - adaptive, not a spot check: the first result of a trusted worker is accepted alone;
    - k results in: the one a strict majority of them agrees with is canonical (done);
      otherwise inconclusive;
    - past ``quorum_deadline``: with "decide", a strict majority of the results in hand,
      and at least 2 of them; otherwise (or with "fail") inconclusive.
    Deterministic in (document, now, reliability): two hubs write the same decision, and
    the second one's write is a 409.
    """
    if not occ.is_quorum or occ.state != State.READY:
        return None
    trust = trust or TrustPolicy()
    quorum = occ.quorum or 1
    results = results_in(occ)
    if occ.adaptive and not occ.spot_check:
        for slot in results:
            assert slot.result is not None
            if slot.result.status == "ok" and trust.trusted((reliability or {}).get(slot.worker)):
                why = (
                    f"accepted alone: {slot.worker} is trusted "
                    "(adaptive replication, not a spot check)"
                )
                return _final(occ, now, "accepted_alone", slot, [slot.worker], [], why)
    expired = timed_out(occ, now)
    if len(results) < quorum and not expired:
        return None
    names = [s.worker for s in results]
    rule = COMPARATOR_WHY.get(occ.kind, "equal output")
    if len(results) < quorum and (occ.quorum_on_timeout == "fail" or len(results) < 2):
        why = f"quorum timed out with {len(results)} of {quorum} results"
        if occ.quorum_on_timeout == "fail":
            why += " (quorum_on_timeout: fail)"
        return _final(occ, now, "inconclusive", None, [], names, why)
    canonical, backers = _majority(occ.kind, results)
    if canonical is None:
        why = f"no strict majority of {len(results)} results agrees ({occ.kind}: {rule})"
        return _final(occ, now, "inconclusive", None, [], names, why)
    agree = [s.worker for s in backers]
    disagree = [n for n in names if n not in agree]
    why = f"{len(agree)} of {len(results)} results agree ({occ.kind}: {rule})"
    if len(results) < quorum:
        why += f"; quorum timed out with {len(results)} of {quorum}"
    return _final(occ, now, "canonical", canonical, sorted(agree), sorted(disagree), why)


def _final(
    occ: Occurrence,
    now: datetime,
    outcome: str,
    canonical: Slot | None,
    agree: list[str],
    disagree: list[str],
    why: str,
) -> Decision:
    validation = Validation(
        outcome=outcome,  # type: ignore[arg-type]
        canonical=canonical.worker if canonical else None,
        agree=agree,
        disagree=disagree,
        why=why,
        decided_at=to_wire(now),
        spot_check=bool(occ.spot_check),
    )
    data = occ.model_dump(by_alias=True, exclude_none=False)
    data.update(
        state=State.DONE if canonical is not None else State.INCONCLUSIVE,
        result=canonical.result.model_dump() if canonical and canonical.result else None,
        validation=validation.model_dump(),
        attempt=round_attempt(occ),
        progress=None,
        updated_at=to_wire(now),
    )
    if canonical is None:
        data["reason"] = why[:500]
    return Decision(Occurrence.model_validate(data), agree, disagree)


VOIDED_PREFIX = "voided: "


def void_result(occ: Occurrence, now: datetime, why: str) -> Occurrence:
    """A quorum-1 result of a quarantined worker, voided by the hub: ready again, the
    attempt given back, the voided run kept in the error history. ``validate_doc_update``
    lets farm_admin move done to ready only with a reason starting ``voided: ``."""
    if occ.state != State.DONE or occ.result is None or occ.is_quorum:
        raise InvalidTransition(occ, "void", "only a done quorum-1 occurrence")
    from hub.protocol.model import MAX_ERROR_HISTORY, ErrorRecord

    record = ErrorRecord(attempt=occ.result.attempt, at=to_wire(now), worker=occ.result.worker,
                         error=clean_text(f"result voided: {why}", 2000))  # fmt: skip
    errors = [*occ.errors, record]
    if len(errors) > MAX_ERROR_HISTORY:
        errors = [errors[0], *errors[-(MAX_ERROR_HISTORY - 1) :]]
    data = occ.model_dump(by_alias=True, exclude_none=False)
    data.update(
        state=State.READY, result=None, lease=None, progress=None,
        attempt=max(0, occ.attempt - 1), errors=[e.model_dump() for e in errors],
        reason=clean_text(VOIDED_PREFIX + why, 500), not_before=to_wire(now),
        updated_at=to_wire(now),
    )  # fmt: skip
    return Occurrence.model_validate(data)


def alternatives(occ: Occurrence) -> list[RunResult]:
    """Every slot's result, canonical included, first finished first."""
    return [s.result for s in results_in(occ) if s.result is not None]


# ---------------------------------------------------------------- reliability


def update_reliability(
    current: Reliability | None,
    worker: str,
    agreed: bool,
    now: datetime,
    trust: TrustPolicy | None = None,
) -> Reliability:
    """One more comparison for ``worker``: agree resets the streak; a disagree streak of
    ``quarantine_after`` quarantines it (it stays quarantined until an operator lifts it:
    agreeing now and then while lying otherwise must not earn trust back)."""
    trust = trust or TrustPolicy()
    agree = (current.agree if current else 0) + (1 if agreed else 0)
    disagree = (current.disagree if current else 0) + (0 if agreed else 1)
    streak = 0 if agreed else (current.disagree_streak if current else 0) + 1
    quarantined = bool(current and current.quarantined) or streak >= trust.quarantine_after
    since = current.quarantined_at if current and current.quarantined else None
    if quarantined and since is None:
        since = to_wire(now)
    return Reliability(
        _id=reliability_id(worker),
        _rev=current.rev if current else None,
        worker=worker,
        agree=agree,
        disagree=disagree,
        disagree_streak=streak,
        score=reliability_score(agree, disagree),
        quarantined=quarantined,
        quarantined_at=since,
        updated_at=to_wire(now),
        lifts=list(current.lifts) if current else [],  # an operator's record stays
    )


def lift_quarantine(
    current: Reliability,
    now: datetime,
    *,
    by: str,
    user: str | None = None,
    reason: str | None = None,
) -> Reliability | None:
    """An operator lifts ``current``'s quarantine: not quarantined, the disagree streak
    reset (the next disagreement must not quarantine it again at once), the agreement
    history kept (so its score still shows what it did), the lift recorded. None when it
    is not quarantined: nothing to lift, nothing to write (lifting twice is harmless)."""
    if not current.quarantined:
        return None
    lift = QuarantineLift(
        by=clean_text(by, 100) or "unknown",
        user=user,
        at=to_wire(now),
        quarantined_at=current.quarantined_at,
        disagree_streak=current.disagree_streak,
        reason=clean_text(reason, 500) if reason else None,
    )
    data = current.model_dump(by_alias=True, exclude_none=False)
    data.update(
        quarantined=False,
        quarantined_at=None,
        disagree_streak=0,
        lifts=[x.model_dump() for x in [*current.lifts, lift][-MAX_LIFTS:]],
        updated_at=to_wire(now),
    )
    return Reliability.model_validate(data)


def binomial_bounds(n: int, p: float, sigmas: float = 5.0) -> tuple[float, float]:
    """[low, high] of a Binomial(n, p) count within ``sigmas`` standard deviations."""
    sd = math.sqrt(n * p * (1 - p))
    return n * p - sigmas * sd, n * p + sigmas * sd


def quarantined_names(docs: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    """The quarantined workers among reliability documents (the worker skips quorum-1
    work while it is on this list)."""
    return frozenset(
        str(d.get("worker"))
        for d in docs
        if d.get("type") == "reliability" and d.get("quarantined")
    )
