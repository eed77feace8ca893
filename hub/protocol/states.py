"""The occurrence state machine as pure functions: (occurrence, inputs, now) -> occurrence.

No I/O and no clock reads: every function takes hub time ``now``. The hub and the worker
both build the next version of a document with these functions and then write it with
the ``_rev`` they read, so CouchDB's revision check decides races, not this module.

```
scheduled --promote--> ready --claim--> leased --finish--> done
    ^                    ^                 |--fail--> scheduled (backoff) | buried | failed
    |                    +--expire/release-+
 (materialize)         buried --kick--> ready
 ready/scheduled --miss--> missed, --skip--> skipped; any live state --cancel--> cancelled
```
"""

from __future__ import annotations

import hashlib
import math
import random
from datetime import datetime, timedelta
from typing import Any

from hub.protocol.model import (
    ACTIVE_STATES,
    DEFAULT_PRIORITY,
    FINAL_STATES,
    MAX_ERROR_CHARS,
    MAX_ERROR_HISTORY,
    MAX_REASON_CHARS,
    Backoff,
    ErrorRecord,
    Lease,
    Occurrence,
    Progress,
    RunResult,
    State,
    Task,
    clean_text,
    occurrence_id,
)
from hub.protocol.timefmt import from_wire, to_wire


class InvalidTransition(ValueError):
    """The operation is not allowed from the occurrence's current state (or by this worker)."""

    def __init__(self, occurrence: Occurrence, operation: str, why: str) -> None:
        super().__init__(f"cannot {operation} {occurrence.id} ({occurrence.state}): {why}")
        self.occurrence_id = occurrence.id
        self.operation = operation
        self.why = why


def _require(occ: Occurrence, operation: str, allowed: set[State] | frozenset[State]) -> None:
    if occ.state not in allowed:
        allowed_text = ", ".join(sorted(s.value for s in allowed))
        raise InvalidTransition(occ, operation, f"only from {allowed_text}")


def _require_holder(occ: Occurrence, operation: str, worker: str) -> None:
    _require(occ, operation, {State.LEASED})
    assert occ.lease is not None
    if occ.lease.worker != worker:
        raise InvalidTransition(occ, operation, f"leased by {occ.lease.worker}, not {worker}")


def _with(occ: Occurrence, now: datetime, **changes: Any) -> Occurrence:
    changes["updated_at"] = to_wire(now)
    data = occ.model_dump(by_alias=True, exclude_none=False)
    data.update(changes)
    return Occurrence.model_validate(data)


def _reason(text: str) -> str:
    """A reason as stored: valid text (lone surrogates replaced), cut to the model's maximum.
    Every reason and error that comes from outside goes through here or :func:`fail`."""
    return clean_text(text, MAX_REASON_CHARS)


def _errors_plus(occ: Occurrence, record: ErrorRecord) -> list[ErrorRecord]:
    # Keep the first error and the most recent ones: the first often explains the rest.
    history = [*occ.errors, record]
    if len(history) > MAX_ERROR_HISTORY:
        history = [history[0], *history[-(MAX_ERROR_HISTORY - 1) :]]
    return history


# ---------------------------------------------------------------- creation


def materialize(
    task: Task,
    due: datetime,
    now: datetime,
    *,
    state: State = State.READY,
    reason: str | None = None,
    not_before: datetime | None = None,
    fair_offset: float = 0.0,
) -> Occurrence:
    """The occurrence of ``task`` due at ``due``, born in ``state``.

    ``fair_offset`` spaces out one client's occurrences of one materializing batch so
    that another client's are interleaved with them (see :func:`turn_at`).
    """
    if state not in (State.READY, State.SCHEDULED, State.MISSED, State.SKIPPED):
        raise ValueError(f"an occurrence cannot be born {state}")
    stamp = to_wire(now)
    occ = Occurrence(
        _id=occurrence_id(task.id, due),
        task=task.id,
        client=task.client,
        kind=task.kind,
        input=task.input,
        tube=task.tube,
        priority=task.priority,
        ttr=task.ttr,
        max_attempts=task.max_attempts,
        due_at=to_wire(due),
        not_before=to_wire(not_before or due),
        queue_at=to_wire(turn_at(not_before or due, task.priority, fair_offset)),
        state=state,
        reason=None if reason is None else _reason(reason),
        created_at=stamp,
        updated_at=stamp,
    )
    if task.quorum > 1:  # k workers run it (decision 17); quorum-1 documents are unchanged
        from hub.protocol.quorum import with_quorum  # (quorum builds on this module)

        return with_quorum(occ, task)
    return occ


# ---------------------------------------------------------------- worker operations


def claim(occ: Occurrence, worker: str, now: datetime) -> Occurrence:
    _require(occ, "claim", {State.READY})
    if occ.attempt >= occ.max_attempts:
        raise InvalidTransition(occ, "claim", "no attempts left")
    if occ.is_quorum:  # k workers share it: hub.protocol.quorum.claim_slot
        raise InvalidTransition(occ, "claim", f"a quorum of {occ.quorum}: claim a slot")
    return _with(
        occ,
        now,
        state=State.LEASED,
        attempt=occ.attempt + 1,
        lease=Lease(
            worker=worker,
            claimed_at=to_wire(now),
            expires_at=to_wire(now + timedelta(seconds=occ.ttr)),
        ),
        progress=None,
    )


def touch(
    occ: Occurrence, worker: str, now: datetime, progress: Progress | None = None
) -> Occurrence:
    """Extend the lease by a TTR from ``now`` (beanstalkd's touch), with optional progress.

    ``Progress`` replaces lone surrogates in its message itself (hub.protocol.model.OutsideText), so
    a worker's progress is valid however it was built; its length is the caller's to cut."""
    _require_holder(occ, "touch", worker)
    assert occ.lease is not None
    lease = occ.lease.model_copy(update={"expires_at": to_wire(now + timedelta(seconds=occ.ttr))})
    return _with(occ, now, lease=lease, progress=progress or occ.progress)


def abandon(occ: Occurrence, worker: str, now: datetime) -> Occurrence:
    """Mark a claim that will never run: on a CouchDB cluster it reached fewer copies than
    a majority (202 Accepted), so another claim of the same revision reached the majority.
    The lease keeps its expiry; the resolver keeps any other claim over an abandoned one
    and puts an occurrence whose every claim was abandoned back to ready
    (:func:`requeue_abandoned`)."""
    _require_holder(occ, "abandon", worker)
    assert occ.lease is not None
    return _with(occ, now, lease=occ.lease.model_copy(update={"abandoned": True}))


def requeue_abandoned(occ: Occurrence, now: datetime) -> Occurrence:
    """An abandoned claim never ran: ready again, with its attempt given back (hub only)."""
    _require(occ, "requeue", {State.LEASED})
    if occ.lease is None or not occ.lease.abandoned:
        raise InvalidTransition(occ, "requeue", "only an abandoned claim")
    return _with(
        occ, now, state=State.READY, lease=None, progress=None,
        attempt=max(0, occ.attempt - 1), reason="claim abandoned: requeued",
    )  # fmt: skip


# A worker's acknowledged result may be put back over these (see :func:`restore`): every
# state that ranks below done in PROGRESS_RANK, except the active ones, where the run that
# holds or will take the occurrence finishes on its own and "first finished" settles it.
RESTORABLE_STATES = frozenset(
    {State.MISSED, State.SKIPPED, State.CANCELLED, State.FAILED, State.BURIED}
)


def restore(occ: Occurrence, result: dict[str, Any], now: datetime) -> Occurrence:
    """Put back a run a server acknowledged (201) and then lost, over a survivor's copy
    that ended without a result (missed, skipped, cancelled, failed) or was buried.

    The same rule as the resolver's (PROGRESS_RANK: done beats every other state), applied
    by the worker that still holds the result in its spool: had the lost revision
    replicated, the resolver would have kept it. The run keeps its own worker, times and
    output; the attempt is the larger of the two; the error history stays;
    ``validate_doc_update`` allows exactly this move, only for the writer's own result and
    only within the replacement window.
    """
    _require(occ, "restore", RESTORABLE_STATES)
    run = RunResult.model_validate(result)
    note = f"restored: {run.worker}'s run finished before this copy ended {occ.state.value}"
    return _with(
        occ, now, state=State.DONE, lease=None, progress=None, result=run,
        attempt=max(occ.attempt, run.attempt), reason=_reason(note),
    )  # fmt: skip


def finish(
    occ: Occurrence, worker: str, now: datetime, *, started_at: datetime, output: Any
) -> Occurrence:
    _require_holder(occ, "finish", worker)
    # RunResult replaces lone surrogates in the output's strings (hub.protocol.model.clean_json).
    result = RunResult(
        status="ok",
        worker=worker,
        attempt=occ.attempt,
        started_at=to_wire(started_at),
        finished_at=to_wire(now),
        output=output,
    )
    return _with(occ, now, state=State.DONE, lease=None, result=result)


def fail(
    occ: Occurrence,
    worker: str,
    now: datetime,
    *,
    error: str,
    backoff: Backoff | None = None,
    permanent: bool = False,
    rng: random.Random | None = None,
) -> Occurrence:
    """A run failed: retry after backoff, bury when attempts are used, or fail for good."""
    _require_holder(occ, "fail", worker)
    stored = clean_text(error, MAX_ERROR_CHARS)
    record = ErrorRecord(attempt=occ.attempt, at=to_wire(now), worker=worker, error=stored)
    errors = _errors_plus(occ, record)
    if permanent:
        return _with(occ, now, state=State.FAILED, lease=None, errors=errors, reason=_reason(error))
    if occ.attempt >= occ.max_attempts:
        reason = f"failed {occ.attempt} of {occ.max_attempts} attempts"
        return _with(occ, now, state=State.BURIED, lease=None, errors=errors, reason=reason)
    delay = retry_delay(occ.attempt, backoff or Backoff(), rng)
    return _with(
        occ,
        now,
        state=State.SCHEDULED,
        lease=None,
        errors=errors,
        not_before=to_wire(now + timedelta(seconds=delay)),
    )


def release(occ: Occurrence, worker: str, now: datetime, reason: str = "released") -> Occurrence:
    """Hand a claimed occurrence back unrun (drain, quit): the attempt is not counted."""
    _require_holder(occ, "release", worker)
    return _with(
        occ,
        now,
        state=State.READY,
        lease=None,
        attempt=max(0, occ.attempt - 1),
        reason=_reason(reason),
    )


# ---------------------------------------------------------------- hub operations


def expire(occ: Occurrence, now: datetime) -> Occurrence:
    """The lease ran out (hub time): back to ready, or buried if attempts are used up."""
    _require(occ, "expire", {State.LEASED})
    assert occ.lease is not None
    if from_wire(occ.lease.expires_at) > now:
        raise InvalidTransition(occ, "expire", f"lease runs until {occ.lease.expires_at}")
    record = ErrorRecord(
        attempt=occ.attempt,
        at=to_wire(now),
        worker=occ.lease.worker,
        error=f"lease expired at {occ.lease.expires_at} (worker {occ.lease.worker} went silent)",
    )
    errors = _errors_plus(occ, record)
    if occ.attempt >= occ.max_attempts:
        reason = f"lease expired on the last of {occ.max_attempts} attempts"
        return _with(occ, now, state=State.BURIED, lease=None, errors=errors, reason=reason)
    return _with(occ, now, state=State.READY, lease=None, errors=errors, progress=None)


def promote(occ: Occurrence, now: datetime) -> Occurrence:
    """A scheduled occurrence whose ``not_before`` has come becomes ready."""
    _require(occ, "promote", {State.SCHEDULED})
    if from_wire(occ.not_before) > now:
        raise InvalidTransition(occ, "promote", f"not before {occ.not_before}")
    return _with(occ, now, state=State.READY, queue_at=to_wire(turn_at(now, occ.priority)))


def bury(occ: Occurrence, now: datetime, reason: str) -> Occurrence:
    _require(occ, "bury", {State.SCHEDULED, State.READY, State.LEASED})
    return _with(occ, now, state=State.BURIED, lease=None, reason=_reason(reason))


def kick(occ: Occurrence, now: datetime) -> Occurrence:
    """Buried back to ready with its attempts renewed; the error history stays."""
    _require(occ, "kick", {State.BURIED})
    return _with(
        occ,
        now,
        state=State.READY,
        attempt=0,
        reason="kicked",
        not_before=to_wire(now),
        queue_at=to_wire(turn_at(now, occ.priority)),
    )


def skip(occ: Occurrence, now: datetime, reason: str) -> Occurrence:
    _require(occ, "skip", {State.SCHEDULED, State.READY})
    return _with(occ, now, state=State.SKIPPED, reason=_reason(reason))


def miss(occ: Occurrence, now: datetime, reason: str) -> Occurrence:
    _require(occ, "miss", {State.SCHEDULED, State.READY})
    return _with(occ, now, state=State.MISSED, reason=_reason(reason))


def cancel(occ: Occurrence, now: datetime, reason: str) -> Occurrence:
    """Stop an occurrence for good. A worker holding it learns at its next write (409)."""
    _require(occ, "cancel", ACTIVE_STATES | {State.BURIED})
    return _with(occ, now, state=State.CANCELLED, lease=None, progress=None, reason=_reason(reason))


# ---------------------------------------------------------------- helpers

AGING_STEP_SECONDS = 60.0


def turn_at(eligible: datetime, priority: int, fair_offset: float = 0.0) -> datetime:
    """When an occurrence's turn comes in its tube: the ``ready`` view's sort key.

    turn = eligible + 60 s * (log2(1 + priority) - log2(1 + 1024)) + fair_offset.

    - Priority: each doubling of the priority number queues one minute later; the default
      1024 queues at its due time, 0 (most urgent) ten minutes ahead, 2**32-1 22 minutes
      behind.
    - Aging: the penalty is bounded, so a low-priority occurrence is served before any
      more urgent one that became ready more than (difference in penalties) later. No
      priority starves, and aging costs no writes because the key never changes.
    - Fair share: the hub spaces one client's occurrences of a batch by a quantum, so a
      client with 10,000 due at once is interleaved with a client with ten.
    """
    penalty = AGING_STEP_SECONDS * (math.log2(1 + priority) - math.log2(1 + DEFAULT_PRIORITY))
    return eligible + timedelta(seconds=penalty + fair_offset)


def retry_delay(attempt: int, backoff: Backoff, rng: random.Random | None = None) -> float:
    """Seconds before retry after failed attempt ``attempt`` (1-based), with jitter."""
    base = min(backoff.max, backoff.base * backoff.factor ** max(0, attempt - 1))
    spread = (rng or random).uniform(-backoff.jitter, backoff.jitter)
    return max(0.0, base * (1 + spread))


def lease_expired(occ: Occurrence, now: datetime) -> bool:
    return (
        occ.state == State.LEASED
        and occ.lease is not None
        and from_wire(occ.lease.expires_at) <= now
    )


def is_final(state: State) -> bool:
    return state in FINAL_STATES


# One total order of the states, for the conflict resolver's "furthest wins" and for the
# worker's restore: every pair of states has a winner, so two servers that ended one
# occurrence differently settle it the same way whatever the combination. A run's outcome
# beats a decision not to run (done, then failed: a run happened); a client's cancel
# beats the hub's own policies (skipped by overlap, then missed by misfire or coalescing);
# any end beats an active state. Within one state: first finished (done), the later claim
# (leased), then the later edit, then CouchDB's own winner (hub.resolver).
# Inconclusive (a quorum whose results did not agree, or timed out) sits just below done:
# runs happened and their results are kept, so it beats every end without a result; but a
# canonical result beats it (one hub decided at the k-th result while another, its copy
# behind, timed out with fewer), because the client asked for an answer and one exists.
PROGRESS_RANK: dict[State, int] = {
    State.SCHEDULED: 0,
    State.READY: 1,
    State.LEASED: 2,
    State.BURIED: 3,
    State.MISSED: 4,
    State.SKIPPED: 5,
    State.CANCELLED: 6,
    State.FAILED: 7,
    State.INCONCLUSIVE: 8,
    State.DONE: 9,
}


# ---------------------------------------------------------------- result order
# (here, not in hub.resolver, so the worker and its frozen bundle can use it)


def result_order(result: dict[str, Any] | None) -> tuple[str, str]:
    """Sort key of "first finished": finish time in hub time, then the worker's name.

    Wire times sort as time (fixed width, UTC), so plain string order is time order. A
    missing result sorts last: any result comes before none."""
    if not result:
        return ("9999", "")
    return (str(result.get("finished_at") or "9999"), str(result.get("worker") or ""))


def finished_first(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """True when result ``a`` comes strictly before result ``b`` in "first finished"."""
    return result_order(a) < result_order(b)


def same_run(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """The same run's result: same worker, start and finish. The attempt number is not
    part of it: a result rescued onto a survivor is renumbered to the survivor's attempt."""
    if not a or not b:
        return False
    return all(a.get(k) == b.get(k) for k in ("worker", "started_at", "finished_at"))


def rendezvous(occ_id: str, worker: str) -> int:
    """The rendezvous-hash score of (occurrence, worker): every hub and worker computes the
    same one, so they agree on who goes first for an occurrence without asking anyone."""
    digest = hashlib.blake2b(f"{occ_id}\0{worker}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rev_generation(rev: Any) -> int:
    """The generation of a ``_rev`` (``3-abc`` -> 3); 0 when it has none."""
    try:
        return int(str(rev).split("-", 1)[0])
    except ValueError:
        return 0
