"""Unit and property tests for the occurrence state machine in hub.protocol.states."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from pydantic import ValidationError

from hub.protocol.model import (
    ACTIVE_STATES,
    FINAL_STATES,
    MAX_ERROR_HISTORY,
    Backoff,
    ErrorRecord,
    Occurrence,
    Progress,
    State,
    Task,
    clean_json,
    clean_text,
    occurrence_id,
)
from hub.protocol.states import (
    PROGRESS_RANK,
    InvalidTransition,
    bury,
    cancel,
    claim,
    expire,
    fail,
    finish,
    is_final,
    kick,
    lease_expired,
    materialize,
    miss,
    promote,
    release,
    retry_delay,
    skip,
    touch,
)
from hub.protocol.timefmt import from_wire, to_wire

T0 = datetime(2026, 12, 1, 0, 1, 0, tzinfo=UTC)
WORKERS = ("w1", "w2", "w3")


def make_task(**over: Any) -> Task:
    doc: dict[str, Any] = {
        "_id": "task:acme:ping",
        "client": "acme",
        "slug": "ping",
        "kind": "http.get",
        "input": {"url": "https://example.org", "n": None},
        "schedule": {"every": 60},
        "tube": "gpu",
        "priority": 7,
        "ttr": 30,
        "max_attempts": 3,
        "created_at": to_wire(T0),
        "updated_at": to_wire(T0),
    }
    doc.update(over)
    return Task.model_validate(doc)


TASK = make_task()


def after(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def ready(**task_over: Any) -> Occurrence:
    return materialize(make_task(**task_over) if task_over else TASK, T0, T0)


def leased(worker: str = "w1", **task_over: Any) -> Occurrence:
    return claim(ready(**task_over), worker, after(1))


def inconclusive() -> Occurrence:
    """A quorum of two whose results disagree (hub.protocol.quorum)."""
    from hub.protocol import quorum

    task = make_task(quorum=2)
    occ = materialize(task, T0, T0)
    for worker, output in (("w1", 1), ("w2", 2)):
        occ = quorum.claim_slot(occ, worker, after(1))
        occ = quorum.finish_slot(occ, worker, after(2), started_at=after(1), output=output)
    decision = quorum.decide(occ, after(3))
    assert decision is not None
    return decision.occurrence


def in_state(state: State) -> Occurrence:
    """A realistic occurrence in ``state``, built only with the state functions."""
    builders: dict[State, Callable[[], Occurrence]] = {
        State.SCHEDULED: lambda: materialize(
            TASK, T0, T0, state=State.SCHEDULED, not_before=after(5)
        ),
        State.READY: ready,
        State.LEASED: leased,
        State.DONE: lambda: finish(leased(), "w1", after(2), started_at=after(1), output=1),
        State.FAILED: lambda: fail(leased(), "w1", after(2), error="bad input", permanent=True),
        State.BURIED: lambda: bury(ready(), after(1), "operator"),
        State.MISSED: lambda: miss(ready(), after(1), "hub was down"),
        State.SKIPPED: lambda: skip(ready(), after(1), "previous run still going"),
        State.CANCELLED: lambda: cancel(ready(), after(1), "client said so"),
        State.INCONCLUSIVE: inconclusive,
    }
    occ = builders[state]()
    assert occ.state is state
    return occ


# Each operation, called "as it should be" (by the holder w1, late enough for time checks).
LATE = after(10_000)
OPERATIONS: dict[str, Callable[[Occurrence], Occurrence]] = {
    "claim": lambda o: claim(o, "w2", LATE),
    "touch": lambda o: touch(o, "w1", LATE),
    "finish": lambda o: finish(o, "w1", LATE, started_at=after(1), output=None),
    "fail": lambda o: fail(o, "w1", LATE, error="boom"),
    "release": lambda o: release(o, "w1", LATE),
    "expire": lambda o: expire(o, LATE),
    "promote": lambda o: promote(o, LATE),
    "bury": lambda o: bury(o, LATE, "stuck"),
    "kick": lambda o: kick(o, LATE),
    "skip": lambda o: skip(o, LATE, "overlap"),
    "miss": lambda o: miss(o, LATE, "misfire"),
    "cancel": lambda o: cancel(o, LATE, "stop"),
}
S = State
ALLOWED: dict[str, set[State]] = {
    "claim": {S.READY},
    "touch": {S.LEASED},
    "finish": {S.LEASED},
    "fail": {S.LEASED},
    "release": {S.LEASED},
    "expire": {S.LEASED},
    "promote": {S.SCHEDULED},
    "bury": {S.SCHEDULED, S.READY, S.LEASED},
    "kick": {S.BURIED},
    "skip": {S.SCHEDULED, S.READY},
    "miss": {S.SCHEDULED, S.READY},
    "cancel": {S.SCHEDULED, S.READY, S.LEASED, S.BURIED},
}
RESULT_STATE: dict[str, State] = {
    "claim": S.LEASED,
    "touch": S.LEASED,
    "finish": S.DONE,
    "fail": S.SCHEDULED,
    "release": S.READY,
    "expire": S.READY,
    "promote": S.READY,
    "bury": S.BURIED,
    "kick": S.READY,
    "skip": S.SKIPPED,
    "miss": S.MISSED,
    "cancel": S.CANCELLED,
}


def only_from(states: set[State]) -> str:
    return "only from " + ", ".join(sorted(s.value for s in states))


# ---------------------------------------------------------------- the transition table


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_transition_table(operation: str, state: State) -> None:
    occ = in_state(state)
    if state in ALLOWED[operation]:
        new = OPERATIONS[operation](occ)
        assert new.state is RESULT_STATE[operation]
        assert new.updated_at == to_wire(LATE)
        assert Occurrence.model_validate(new.to_doc()) == new
    else:
        with pytest.raises(InvalidTransition) as exc:
            OPERATIONS[operation](occ)
        err = exc.value
        assert err.operation == operation
        assert err.occurrence_id == occ.id
        assert err.why == only_from(ALLOWED[operation])
        assert str(err) == f"cannot {operation} {occ.id} ({state.value}): {err.why}"


def test_final_states_have_no_way_out() -> None:
    for state in FINAL_STATES:
        assert not any(state in allowed for allowed in ALLOWED.values()), state
    for state in set(State) - FINAL_STATES:
        assert any(state in allowed for allowed in ALLOWED.values()), state


def test_invalid_transition_is_a_value_error() -> None:
    assert issubclass(InvalidTransition, ValueError)


# ---------------------------------------------------------------- materialize


def test_materialize_copies_the_task() -> None:
    due = datetime(2026, 12, 1, 0, 1, 0, 456789, tzinfo=UTC)
    occ = materialize(TASK, due, after(-30))
    assert occ.id == occurrence_id(TASK.id, due) == "occ:task:acme:ping:20261201T000100Z"
    assert occ.task == TASK.id
    assert occ.client == "acme"
    assert (occ.kind, occ.tube, occ.priority, occ.ttr, occ.max_attempts) == (
        "http.get",
        "gpu",
        7,
        30,
        3,
    )
    assert occ.input == TASK.input
    assert occ.due_at == "2026-12-01T00:01:00.456Z"
    assert occ.not_before == occ.due_at
    assert occ.created_at == occ.updated_at == to_wire(after(-30))
    assert occ.state is State.READY
    assert occ.attempt == 0
    assert occ.errors == [] and occ.lease is None and occ.result is None
    assert occ.reason is None


def test_materialize_is_deterministic() -> None:
    a = materialize(TASK, T0, T0)
    b = materialize(TASK, T0, T0)
    assert a == b
    assert a.to_doc() == b.to_doc()


def test_materialize_with_not_before_and_reason() -> None:
    occ = materialize(TASK, T0, T0, state=State.SCHEDULED, not_before=after(90), reason="jitter")
    assert occ.state is State.SCHEDULED
    assert occ.not_before == to_wire(after(90))
    assert occ.due_at == to_wire(T0)
    assert occ.reason == "jitter"


@pytest.mark.parametrize("state", [S.READY, S.SCHEDULED, S.MISSED, S.SKIPPED])
def test_materialize_born_states(state: State) -> None:
    assert materialize(TASK, T0, T0, state=state, reason="r").state is state


@pytest.mark.parametrize("state", [S.LEASED, S.DONE, S.FAILED, S.BURIED, S.CANCELLED])
def test_materialize_refuses_other_born_states(state: State) -> None:
    with pytest.raises(ValueError, match=f"cannot be born {state.value}"):
        materialize(TASK, T0, T0, state=state)


def test_materialize_refuses_naive_times() -> None:
    with pytest.raises(ValueError, match="naive"):
        materialize(TASK, datetime(2026, 12, 1), T0)


# ---------------------------------------------------------------- claim


def test_claim_takes_a_lease_for_one_ttr() -> None:
    occ = claim(ready(), "w2", after(5))
    assert occ.state is State.LEASED
    assert occ.attempt == 1
    assert occ.lease is not None
    assert occ.lease.worker == "w2"
    assert occ.lease.claimed_at == to_wire(after(5))
    assert occ.lease.expires_at == to_wire(after(5 + TASK.ttr))
    assert occ.updated_at == to_wire(after(5))
    assert occ.progress is None


def test_claim_clears_progress_from_an_earlier_attempt() -> None:
    occ = touch(leased(), "w1", after(2), Progress(num=1, den=2))
    again = claim(expire(occ, after(100)), "w2", after(101))
    assert again.progress is None
    assert again.attempt == 2


def test_claim_refuses_when_no_attempts_are_left() -> None:
    # A hand-written ready occurrence at its last attempt (e.g. replicated from elsewhere).
    doc = ready(max_attempts=2).to_doc() | {"attempt": 2}
    occ = Occurrence.model_validate(doc)
    with pytest.raises(InvalidTransition) as exc:
        claim(occ, "w1", after(1))
    assert exc.value.why == "no attempts left"
    assert "cannot claim" in str(exc.value)


def test_claim_refuses_a_bad_worker_name() -> None:
    with pytest.raises(ValidationError):
        claim(ready(), "Not A Name", after(1))


# ---------------------------------------------------------------- touch


def test_touch_extends_the_lease_from_now() -> None:
    occ = leased()
    touched = touch(occ, "w1", after(25))
    assert touched.lease is not None and occ.lease is not None
    assert touched.lease.expires_at == to_wire(after(25 + TASK.ttr))
    assert touched.lease.claimed_at == occ.lease.claimed_at
    assert touched.lease.worker == "w1"
    assert touched.attempt == occ.attempt
    assert touched.state is State.LEASED


def test_touch_records_progress_and_keeps_it_when_none_given() -> None:
    first = touch(leased(), "w1", after(2), Progress(num=1, den=4, msg="a quarter"))
    assert first.progress == Progress(num=1, den=4, msg="a quarter")
    second = touch(first, "w1", after(3))
    assert second.progress == first.progress
    third = touch(second, "w1", after(4), Progress(num=3, den=4))
    assert third.progress == Progress(num=3, den=4)


@pytest.mark.parametrize("operation", ["touch", "finish", "fail", "release"])
@pytest.mark.parametrize("stranger", ["w2", "w3"])
def test_only_the_lease_holder_can_act(operation: str, stranger: str) -> None:
    occ = leased("w1")
    calls: dict[str, Callable[[], Occurrence]] = {
        "touch": lambda: touch(occ, stranger, after(2)),
        "finish": lambda: finish(occ, stranger, after(2), started_at=after(1), output=1),
        "fail": lambda: fail(occ, stranger, after(2), error="boom"),
        "release": lambda: release(occ, stranger, after(2)),
    }
    with pytest.raises(InvalidTransition) as exc:
        calls[operation]()
    assert exc.value.why == f"leased by w1, not {stranger}"
    assert exc.value.operation == operation


# ---------------------------------------------------------------- finish


def test_finish_stores_the_result_and_drops_the_lease() -> None:
    occ = finish(leased(), "w1", after(9), started_at=after(2), output={"rows": [1, None]})
    assert occ.state is State.DONE
    assert occ.lease is None
    assert occ.result is not None
    assert occ.result.status == "ok"
    assert occ.result.worker == "w1"
    assert occ.result.attempt == 1
    assert occ.result.started_at == to_wire(after(2))
    assert occ.result.finished_at == to_wire(after(9))
    assert occ.result.output == {"rows": [1, None]}
    assert occ.is_final


def test_finish_refuses_oversize_output() -> None:
    with pytest.raises(ValidationError, match="larger than"):
        finish(leased(), "w1", after(9), started_at=after(2), output="x" * 70_000)


# ---------------------------------------------------------------- fail


def test_fail_schedules_a_retry_after_backoff() -> None:
    backoff = Backoff(base=10, factor=2, max=3600, jitter=0)
    occ = fail(leased(), "w1", after(5), error="timeout", backoff=backoff)
    assert occ.state is State.SCHEDULED
    assert occ.lease is None
    assert occ.attempt == 1
    assert occ.not_before == to_wire(after(15))
    assert occ.errors == [
        ErrorRecord(attempt=1, at=to_wire(after(5)), worker="w1", error="timeout")
    ]
    with pytest.raises(InvalidTransition) as exc:
        promote(occ, after(14.999))
    assert exc.value.why == f"not before {occ.not_before}"
    again = claim(promote(occ, after(15)), "w2", after(16))
    second = fail(again, "w2", after(17), error="timeout", backoff=backoff)
    assert second.not_before == to_wire(after(17 + 20))
    assert [e.attempt for e in second.errors] == [1, 2]


def test_fail_uses_the_default_backoff_with_jitter() -> None:
    occ = fail(leased(), "w1", after(5), error="x", rng=random.Random(4))
    delay = (from_wire(occ.not_before) - after(5)).total_seconds()
    default = Backoff()
    assert (
        default.base * (1 - default.jitter) - 0.001 <= delay <= default.base * (1 + default.jitter)
    )


def test_fail_on_the_last_attempt_buries() -> None:
    occ = leased(max_attempts=1)
    buried = fail(occ, "w1", after(5), error="timeout")
    assert buried.state is State.BURIED
    assert buried.reason == "failed 1 of 1 attempts"
    assert buried.lease is None
    assert len(buried.errors) == 1
    assert not buried.is_final


def test_permanent_failure_is_final_whatever_the_attempts() -> None:
    occ = fail(leased(), "w1", after(5), error="bad input: " + "x" * 3000, permanent=True)
    assert occ.state is State.FAILED
    assert occ.is_final
    assert occ.reason is not None and len(occ.reason) == 500
    assert occ.reason.startswith("bad input: x")
    assert len(occ.errors[-1].error) == 2000


# ---------------------------------------------------------------- release


def test_release_gives_the_attempt_back() -> None:
    occ = release(leased(), "w1", after(3), reason="draining")
    assert occ.state is State.READY
    assert occ.lease is None
    assert occ.attempt == 0
    assert occ.reason == "draining"
    assert occ.errors == []
    assert claim(occ, "w2", after(4)).attempt == 1


def test_release_default_reason() -> None:
    assert release(leased(), "w1", after(3)).reason == "released"


def test_release_with_a_long_reason_is_cut_like_the_others() -> None:
    occ = release(leased(), "w1", after(3), reason="r" * 600)
    assert occ.reason == "r" * 500


# ---------------------------------------------------------------- expire


def test_expire_refuses_while_the_lease_runs() -> None:
    occ = leased()  # claimed at T0+1, ttr 30
    assert occ.lease is not None
    with pytest.raises(InvalidTransition) as exc:
        expire(occ, after(30.999))
    assert exc.value.why == f"lease runs until {occ.lease.expires_at}"
    assert not lease_expired(occ, after(30.999))
    assert lease_expired(occ, after(31))
    back = expire(occ, after(31))
    assert back.state is State.READY
    assert back.lease is None
    assert back.attempt == 1
    assert back.progress is None
    (record,) = back.errors
    assert record.worker == "w1"
    assert record.attempt == 1
    assert record.at == to_wire(after(31))
    assert "lease expired" in record.error and "w1" in record.error


def test_touch_postpones_expiry() -> None:
    occ = touch(leased(), "w1", after(20))
    with pytest.raises(InvalidTransition):
        expire(occ, after(31))
    assert expire(occ, after(50)).state is State.READY


def test_expire_on_the_last_attempt_buries() -> None:
    occ = leased(max_attempts=1)
    buried = expire(occ, after(100))
    assert buried.state is State.BURIED
    assert buried.reason == "lease expired on the last of 1 attempts"
    assert len(buried.errors) == 1


def test_lease_expired_is_false_unless_leased() -> None:
    for state in State:
        if state is not State.LEASED:
            assert not lease_expired(in_state(state), after(10**6))


# ---------------------------------------------------------------- promote, bury, kick


def test_promote_at_not_before() -> None:
    occ = in_state(State.SCHEDULED)
    with pytest.raises(InvalidTransition) as exc:
        promote(occ, after(4.999))
    assert exc.value.why == "not before 2026-12-01T00:01:05.000Z"
    promoted = promote(occ, after(5))
    assert promoted.state is State.READY
    assert promoted.attempt == occ.attempt


def test_bury_from_leased_drops_the_lease() -> None:
    occ = bury(leased(), after(3), "poison " * 100)
    assert occ.state is State.BURIED
    assert occ.lease is None
    assert occ.reason is not None and len(occ.reason) == 500
    assert occ.attempt == 1


def test_kick_renews_attempts_and_keeps_history() -> None:
    buried = fail(leased(max_attempts=1), "w1", after(5), error="e1")
    kicked = kick(buried, after(60))
    assert kicked.state is State.READY
    assert kicked.attempt == 0
    assert kicked.reason == "kicked"
    assert kicked.not_before == to_wire(after(60))
    assert kicked.errors == buried.errors
    assert claim(kicked, "w2", after(61)).attempt == 1


# ---------------------------------------------------------------- skip, miss, cancel


@pytest.mark.parametrize(
    ("op", "state"), [(skip, State.SKIPPED), (miss, State.MISSED), (cancel, State.CANCELLED)]
)
def test_stopping_operations_record_a_cut_reason(
    op: Callable[..., Occurrence], state: State
) -> None:
    occ = op(ready(), after(2), "why " * 200)
    assert occ.state is state
    assert occ.is_final
    assert occ.reason is not None and len(occ.reason) == 500


def test_cancel_of_a_leased_occurrence_drops_lease_and_progress() -> None:
    occ = touch(leased(), "w1", after(2), Progress(num=1, den=2))
    cancelled = cancel(occ, after(3), "client deleted the task")
    assert cancelled.state is State.CANCELLED
    assert cancelled.lease is None
    assert cancelled.progress is None
    assert cancelled.reason == "client deleted the task"


def test_cancel_of_a_buried_occurrence() -> None:
    assert cancel(in_state(State.BURIED), after(3), "gave up").state is State.CANCELLED


# ---------------------------------------------------------------- error history


def test_error_history_keeps_the_first_and_the_most_recent() -> None:
    occ = ready(max_attempts=100)
    now = T0
    for n in range(MAX_ERROR_HISTORY + 5):
        now += timedelta(seconds=1)
        occ = claim(occ, "w1", now)
        occ = fail(occ, "w1", now, error=f"error {n}", backoff=Backoff(base=1, jitter=0, max=1))
        now += timedelta(seconds=1)
        occ = promote(occ, now)
        assert len(occ.errors) == min(n + 1, MAX_ERROR_HISTORY)
    messages = [e.error for e in occ.errors]
    assert messages[0] == "error 0"
    assert messages[1:] == [f"error {n}" for n in range(6, MAX_ERROR_HISTORY + 5)]  # 1..5 dropped


# ---------------------------------------------------------------- text from outside


# What Hypothesis found (issue 21): a reason of lone surrogates, which skip passed on to
# pydantic and which UTF-8, and so CouchDB, cannot carry.
SURROGATES = "\ud800" * 495
# The same text made valid: each lone surrogate becomes U+FFFD.
REPLACED = "\ufffd" * 495


def stored(occ: Occurrence) -> Occurrence:
    """``occ`` as CouchDB stores it, UTF-8 JSON, and read back: it must be the same."""
    body = json.dumps(occ.to_doc(), ensure_ascii=False).encode("utf-8")
    again = Occurrence.from_doc(json.loads(body))
    assert again == occ
    return again


def test_skip_with_a_reason_of_lone_surrogates_gives_a_valid_occurrence() -> None:
    occ = skip(ready(), after(2), SURROGATES)
    assert occ.state is State.SKIPPED
    assert occ.reason == REPLACED
    assert occ.reason.encode("utf-8").decode("utf-8") == REPLACED
    stored(occ)


@pytest.mark.parametrize(
    "stop",
    [
        lambda reason: skip(ready(), after(2), reason),
        lambda reason: miss(ready(), after(2), reason),
        lambda reason: cancel(leased(), after(2), reason),
        lambda reason: bury(leased(), after(2), reason),
        lambda reason: release(leased(), "w1", after(2), reason),
        lambda reason: materialize(TASK, T0, T0, state=State.SKIPPED, reason=reason),
    ],
    ids=["skip", "miss", "cancel", "bury", "release", "materialize"],
)
def test_every_reason_is_made_valid_then_cut(stop: Callable[[str], Occurrence]) -> None:
    assert stored(stop(SURROGATES)).reason == REPLACED
    # Replaced first, then cut to 500 characters; valid characters are kept as they are.
    long = "é\udc00😀" + "\ud800" * 600
    assert stored(stop(long)).reason == ("é\ufffd😀" + "\ufffd" * 600)[:500]


@pytest.mark.parametrize("permanent", [False, True])
def test_fail_with_an_error_of_lone_surrogates(permanent: bool) -> None:
    error = "handler said: " + "\udfff" * 2500
    occ = stored(fail(leased(), "w1", after(2), error=error, permanent=permanent))
    made_valid = "handler said: " + "\ufffd" * 2500
    assert occ.errors[-1].error == made_valid[:2000]
    assert occ.reason == (made_valid[:500] if permanent else None)


def test_touch_with_a_progress_message_of_lone_surrogates() -> None:
    # The worker builds Progress itself (desktop_worker.engine): the model makes it valid.
    progress = Progress(num=1, den=2, msg="step \ud800 of 2")
    occ = stored(touch(leased(), "w1", after(2), progress))
    assert occ.progress is not None and occ.progress.msg == "step \ufffd of 2"
    with pytest.raises(ValidationError):  # the length is still the caller's to cut
        Progress(msg="\ud800" * 201)


def test_finish_with_worker_json_output_with_lone_surrogates() -> None:
    # A handler's output as the worker reads it back: json.loads lets lone surrogates
    # through (a valid pair becomes its character).
    output = json.loads('{"body": "\\ud800 ok \\ud83d\\ude00", "\\udfff": ["\\udc00", 1, null]}')
    assert output["body"] == "\ud800 ok 😀"
    occ = stored(finish(leased(), "w1", after(2), started_at=after(1), output=output))
    assert occ.result is not None
    assert occ.result.output == {"body": "\ufffd ok 😀", "\ufffd": ["\ufffd", 1, None]}


def test_a_failed_run_with_such_output_and_error_can_be_stored_either_way() -> None:
    # The worker's finish path: finish, or fail with the refusal when the output is refused.
    occ = leased()
    output = {"text": "\ud800" * 70_000}  # over 64 KB of JSON once replaced: refused
    with pytest.raises(ValidationError, match="larger than"):
        finish(occ, "w1", after(2), started_at=after(1), output=output)
    failed = fail(occ, "w1", after(2), error="the output was refused \ud800", permanent=True)
    assert stored(failed).reason == "the output was refused \ufffd"


# ---------------------------------------------------------------- helpers


def test_is_final_and_progress_rank() -> None:
    assert {s for s in State if is_final(s)} == FINAL_STATES
    assert set(PROGRESS_RANK) == set(State)
    assert max(PROGRESS_RANK, key=PROGRESS_RANK.__getitem__) is State.DONE
    path = [State.SCHEDULED, State.READY, State.LEASED, State.DONE]
    assert [PROGRESS_RANK[s] for s in path] == sorted(PROGRESS_RANK[s] for s in path)
    assert all(PROGRESS_RANK[s] > PROGRESS_RANK[State.LEASED] for s in FINAL_STATES)
    assert ACTIVE_STATES.isdisjoint(FINAL_STATES)


def test_retry_delay_examples_without_jitter() -> None:
    backoff = Backoff(base=10, factor=3, max=100, jitter=0)
    assert [retry_delay(n, backoff) for n in range(0, 6)] == [10, 10, 30, 90, 100, 100]


class FixedSpread(random.Random):
    """An rng whose uniform() always returns the same point of the jitter range."""

    def __init__(self, where: float) -> None:
        super().__init__(0)
        self.where = where

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.where


def test_retry_delay_jitter_edges() -> None:
    backoff = Backoff(base=10, factor=2, max=3600, jitter=0.25)
    assert retry_delay(2, backoff, FixedSpread(0.0)) == pytest.approx(15.0)
    assert retry_delay(2, backoff, FixedSpread(1.0)) == pytest.approx(25.0)
    assert retry_delay(2, backoff, FixedSpread(0.5)) == pytest.approx(20.0)


backoffs = st.builds(
    Backoff,
    base=st.floats(0.001, 86400, allow_nan=False),
    factor=st.floats(1, 10, allow_nan=False),
    max=st.floats(0.001, 7 * 86400, allow_nan=False),
    jitter=st.floats(0, 1, allow_nan=False),
)


def expected_delay(attempt: int, backoff: Backoff) -> float:
    return min(backoff.max, backoff.base * backoff.factor ** (max(attempt, 1) - 1))


@given(attempt=st.integers(0, 100), backoff=backoffs, seed=st.integers(0, 2**32))
def test_retry_delay_stays_within_the_jitter_band(
    attempt: int, backoff: Backoff, seed: int
) -> None:
    centre = expected_delay(attempt, backoff)
    delay = retry_delay(attempt, backoff, random.Random(seed))
    slack = 1e-9 * centre
    assert centre * (1 - backoff.jitter) - slack <= delay <= centre * (1 + backoff.jitter) + slack
    assert delay >= 0
    assert delay <= backoff.max * (1 + backoff.jitter) + slack


@given(attempt=st.integers(1, 99), backoff=backoffs, where=st.floats(0, 1))
def test_retry_delay_does_not_shrink_with_more_attempts(
    attempt: int, backoff: Backoff, where: float
) -> None:
    # Same point of the jitter band: the delay is a non-decreasing function of the attempt,
    # and so is its expectation (the centre of the band).
    assert expected_delay(attempt, backoff) <= expected_delay(attempt + 1, backoff)
    now = retry_delay(attempt, backoff, FixedSpread(where))
    later = retry_delay(attempt + 1, backoff, FixedSpread(where))
    assert now <= later * (1 + 1e-12)
    centre = retry_delay(attempt, backoff, FixedSpread(0.5))
    assert centre == pytest.approx(expected_delay(attempt, backoff), rel=1e-9)


# ---------------------------------------------------------------- property: random lives


steps = st.one_of(
    st.integers(0, 2_000).map(lambda ms: timedelta(milliseconds=ms)),
    st.integers(1, 400).map(lambda s: timedelta(seconds=s)),
    st.integers(1, 3).map(lambda d: timedelta(days=d)),
)


# Text as workers, handlers and people send it: often a lone surrogate, which json.loads
# lets through but UTF-8 cannot carry (Hypothesis found skip refusing '\ud800' * 495).
chars = st.characters() | st.characters(categories=["Cs"])


def around(limit: int) -> st.SearchStrategy[str]:
    """Short texts, and texts near ``limit`` characters, to reach the cut-off edges."""
    return st.text(chars, max_size=30) | st.builds(
        lambda char, n: char * n, chars, st.integers(limit - 5, limit + 100)
    )


reasons = around(500)
error_texts = around(2000)
workers = st.sampled_from(WORKERS)
progresses = st.none() | st.builds(
    Progress,
    num=st.integers(0, 100),
    den=st.integers(0, 100),
    msg=st.text(chars, max_size=200),
)
outputs = st.none() | st.integers() | st.dictionaries(st.text(chars), st.text(chars))
UNCHANGING = (
    "id",
    "task",
    "client",
    "kind",
    "input",
    "tube",
    "priority",
    "ttr",
    "max_attempts",
    "due_at",
    "created_at",
)


class OccurrenceLife(RuleBasedStateMachine):
    """One occurrence pushed around by three workers and the hub, in hub time order."""

    occ: Occurrence
    now: datetime

    @initialize(
        max_attempts=st.integers(1, 4),
        ttr=st.integers(1, 300),
        backoff=st.builds(
            Backoff,
            base=st.floats(0.01, 120),
            factor=st.floats(1, 4),
            max=st.floats(1, 600),
            jitter=st.floats(0, 1),
        ),
        born=st.sampled_from([State.READY, State.SCHEDULED]),
        wait=st.integers(0, 600),
        prior_errors=st.integers(0, MAX_ERROR_HISTORY),
    )
    def born(
        self,
        max_attempts: int,
        ttr: int,
        backoff: Backoff,
        born: State,
        wait: int,
        prior_errors: int,
    ) -> None:
        self.now = T0
        self.backoff = backoff
        task = make_task(max_attempts=max_attempts, ttr=ttr, backoff=backoff.model_dump())
        self.task = task
        occ = materialize(task, T0, T0, state=born, not_before=T0 + timedelta(seconds=wait))
        if prior_errors:
            history = [
                {"attempt": 0, "at": to_wire(T0), "error": f"earlier {i}"}
                for i in range(prior_errors)
            ]
            occ = Occurrence.model_validate(occ.to_doc() | {"errors": history})
        self.occ = occ
        self.final_checked = False

    # ---------------------------------------------------------- driving

    def apply(
        self,
        operation: str,
        call: Callable[[], Occurrence],
        allowed: bool,
        why: str,
    ) -> Occurrence | None:
        before = self.occ
        try:
            new = call()
        except InvalidTransition as exc:
            assert not allowed, f"{operation} refused from {before.state}: {exc}"
            assert exc.operation == operation
            assert exc.occurrence_id == before.id
            assert exc.why == why, (exc.why, why)
            event(f"refused {operation} from {before.state.value}")
            return None
        assert allowed, f"{operation} allowed from {before.state} (expected: {why})"
        event(f"{operation}: {before.state.value} -> {new.state.value}")
        if len(new.errors) == MAX_ERROR_HISTORY and new.errors != before.errors:
            event("error history at the cap")
        assert not before.is_final, f"{operation} changed a final occurrence"
        self.check_common(operation, before, new)
        self.occ = new
        self.final_checked = False
        return new

    def holder_check(self, operation: str, worker: str) -> tuple[bool, str]:
        occ = self.occ
        if occ.state is not State.LEASED:
            return False, only_from({State.LEASED})
        assert occ.lease is not None
        if occ.lease.worker != worker:
            return False, f"leased by {occ.lease.worker}, not {worker}"
        return True, ""

    def state_check(self, allowed_states: set[State]) -> tuple[bool, str]:
        if self.occ.state in allowed_states:
            return True, ""
        return False, only_from(allowed_states)

    def check_common(self, operation: str, before: Occurrence, new: Occurrence) -> None:
        for name in UNCHANGING:
            assert getattr(new, name) == getattr(before, name), name
        assert new.updated_at == to_wire(self.now)
        # Attempts: only up, except kick (renews) and release (gives one back).
        if operation == "kick":
            assert new.attempt == 0
        elif operation == "release":
            assert new.attempt == before.attempt - 1
        elif operation == "claim":
            assert new.attempt == before.attempt + 1
        else:
            assert new.attempt == before.attempt
        # Error history only grows; at the cap the first error stays, the oldest other goes.
        old, cur = before.errors, new.errors
        if len(cur) == len(old) and cur == old:
            pass
        elif len(old) < MAX_ERROR_HISTORY:
            assert len(cur) == len(old) + 1
            assert cur[:-1] == old
        else:
            assert len(cur) == MAX_ERROR_HISTORY
            assert cur[0] == old[0]
            assert cur[1:-1] == old[2:]
        if cur != old:
            assert operation in ("fail", "expire")
            assert cur[-1].attempt == before.attempt
            assert cur[-1].at == to_wire(self.now)
            assert before.lease is not None
            assert cur[-1].worker == before.lease.worker

    # ---------------------------------------------------------- hub time

    @rule(step=steps)
    def advance(self, step: timedelta) -> None:
        self.now += step

    @rule(deadline=st.sampled_from(["lease", "not_before"]), off_ms=st.integers(-1, 1))
    def advance_to(self, deadline: str, off_ms: int) -> None:
        """Land on (or a millisecond either side of) the next deadline, to test the edges."""
        if deadline == "lease" and self.occ.lease is not None:
            target = from_wire(self.occ.lease.expires_at)
        else:
            target = from_wire(self.occ.not_before)
        target += timedelta(milliseconds=off_ms)
        if target > self.now:
            self.now = target

    # ---------------------------------------------------------- worker operations

    @rule(worker=workers)
    def claim(self, worker: str) -> None:
        occ = self.occ
        allowed, why = self.state_check({State.READY})
        if allowed and occ.attempt >= occ.max_attempts:
            allowed, why = False, "no attempts left"
        new = self.apply("claim", lambda: claim(occ, worker, self.now), allowed, why)
        if new is not None:
            assert new.state is State.LEASED and new.lease is not None
            assert new.lease.worker == worker
            assert new.lease.claimed_at == to_wire(self.now)
            assert new.lease.expires_at == to_wire(self.now + timedelta(seconds=occ.ttr))
            assert new.progress is None

    @rule(worker=workers, progress=progresses)
    def touch(self, worker: str, progress: Progress | None) -> None:
        occ = self.occ
        allowed, why = self.holder_check("touch", worker)
        new = self.apply("touch", lambda: touch(occ, worker, self.now, progress), allowed, why)
        if new is not None:
            assert new.lease is not None and occ.lease is not None
            assert new.lease.worker == occ.lease.worker
            assert new.lease.claimed_at == occ.lease.claimed_at
            assert new.lease.expires_at == to_wire(self.now + timedelta(seconds=occ.ttr))
            assert new.progress == (progress or occ.progress)

    @rule(worker=workers, output=outputs)
    def finish(self, worker: str, output: Any) -> None:
        occ = self.occ
        allowed, why = self.holder_check("finish", worker)
        started = self.now - timedelta(seconds=1)
        new = self.apply(
            "finish",
            lambda: finish(occ, worker, self.now, started_at=started, output=output),
            allowed,
            why,
        )
        if new is not None:
            assert new.state is State.DONE and new.lease is None
            assert new.result is not None
            assert new.result.output == clean_json(output)
            assert new.result.worker == worker
            assert new.result.attempt == occ.attempt

    @rule(
        worker=workers,
        permanent=st.sampled_from([False, False, False, True]),
        error=error_texts,
        seed=st.integers(0, 2**16),
    )
    def fail(self, worker: str, permanent: bool, error: str, seed: int) -> None:
        occ = self.occ
        allowed, why = self.holder_check("fail", worker)
        new = self.apply(
            "fail",
            lambda: fail(
                occ,
                worker,
                self.now,
                error=error,
                backoff=self.backoff,
                permanent=permanent,
                rng=random.Random(seed),
            ),
            allowed,
            why,
        )
        if new is None:
            return
        assert new.lease is None
        assert new.errors[-1].error == clean_text(error, 2000)
        if permanent:
            assert new.state is State.FAILED
            assert new.reason == clean_text(error, 500)
        elif occ.attempt >= occ.max_attempts:
            assert new.state is State.BURIED
        else:
            assert new.state is State.SCHEDULED
            centre = expected_delay(occ.attempt, self.backoff)
            delay = (from_wire(new.not_before) - self.now).total_seconds()
            # not_before is cut to whole milliseconds
            low = centre * (1 - self.backoff.jitter) - 0.001 - 1e-6
            assert low <= delay <= centre * (1 + self.backoff.jitter) + 1e-6

    @rule(worker=workers, reason=reasons)
    def release(self, worker: str, reason: str) -> None:
        occ = self.occ
        allowed, why = self.holder_check("release", worker)
        new = self.apply("release", lambda: release(occ, worker, self.now, reason), allowed, why)
        if new is not None:
            assert new.state is State.READY and new.lease is None
            assert new.reason == clean_text(reason, 500)

    # ---------------------------------------------------------- hub operations

    @rule()
    def expire(self) -> None:
        occ = self.occ
        allowed, why = self.state_check({State.LEASED})
        if allowed:
            assert occ.lease is not None
            if from_wire(occ.lease.expires_at) > self.now:
                allowed, why = False, f"lease runs until {occ.lease.expires_at}"
        assert lease_expired(occ, self.now) == allowed
        new = self.apply("expire", lambda: expire(occ, self.now), allowed, why)
        if new is not None:
            expected = State.BURIED if occ.attempt >= occ.max_attempts else State.READY
            assert new.state is expected
            assert len(new.errors) >= 1

    @rule()
    def promote(self) -> None:
        occ = self.occ
        allowed, why = self.state_check({State.SCHEDULED})
        if allowed and from_wire(occ.not_before) > self.now:
            allowed, why = False, f"not before {occ.not_before}"
        new = self.apply("promote", lambda: promote(occ, self.now), allowed, why)
        if new is not None:
            assert new.state is State.READY

    @rule(reason=reasons)
    def bury(self, reason: str) -> None:
        occ = self.occ
        allowed, why = self.state_check({State.SCHEDULED, State.READY, State.LEASED})
        new = self.apply("bury", lambda: bury(occ, self.now, reason), allowed, why)
        if new is not None:
            assert new.state is State.BURIED and new.lease is None
            assert new.reason == clean_text(reason, 500)

    @rule()
    def kick(self) -> None:
        occ = self.occ
        allowed, why = self.state_check({State.BURIED})
        new = self.apply("kick", lambda: kick(occ, self.now), allowed, why)
        if new is not None:
            assert new.state is State.READY
            assert new.errors == occ.errors
            assert new.not_before == to_wire(self.now)

    @rule(kind=st.sampled_from(["skip", "miss", "cancel"]), reason=reasons)
    def stop(self, kind: str, reason: str) -> None:
        # One rule for the three ways to end an occurrence early, so that they do not
        # crowd out the longer lives.
        occ = self.occ
        operation, allowed_states, final = {
            "skip": (skip, {State.SCHEDULED, State.READY}, State.SKIPPED),
            "miss": (miss, {State.SCHEDULED, State.READY}, State.MISSED),
            "cancel": (
                cancel,
                {State.SCHEDULED, State.READY, State.LEASED, State.BURIED},
                State.CANCELLED,
            ),
        }[kind]
        allowed, why = self.state_check(allowed_states)
        new = self.apply(kind, lambda: operation(occ, self.now, reason), allowed, why)
        if new is not None:
            assert new.state is final
            assert new.reason == clean_text(reason, 500)
            assert new.lease is None
            if kind == "cancel":
                assert new.progress is None

    @rule()
    @precondition(lambda self: self.occ.is_final and self.final_checked)
    def next_occurrence(self) -> None:
        """The task falls due again: a new occurrence starts its own life."""
        self.occ = materialize(self.task, self.now, self.now)
        self.final_checked = False

    # ---------------------------------------------------------- invariants

    @invariant()
    def still_a_valid_document(self) -> None:
        occ = self.occ
        again = Occurrence.model_validate(occ.to_doc())
        assert again == occ
        # What CouchDB stores: UTF-8 JSON (no lone surrogates anywhere in the document).
        body = json.dumps(occ.to_doc(), ensure_ascii=False).encode("utf-8")
        assert Occurrence.from_doc(json.loads(body)) == occ
        assert Occurrence.from_doc(occ.to_doc() | {"_conflicts": ["1-x"]}) == occ

    @invariant()
    def lease_iff_leased_result_iff_done(self) -> None:
        occ = self.occ
        assert (occ.lease is not None) == (occ.state is State.LEASED)
        assert (occ.result is not None) == (occ.state is State.DONE)

    @invariant()
    def attempts_within_bounds(self) -> None:
        occ = self.occ
        assert occ.attempt >= 0
        if occ.state in (State.READY, State.LEASED):
            assert occ.attempt <= occ.max_attempts
        if occ.state is State.LEASED:
            assert occ.attempt >= 1
        assert len(occ.errors) <= MAX_ERROR_HISTORY

    @invariant()
    def final_is_final(self) -> None:
        """Every operation, by anyone, at any later time, is refused on a final occurrence."""
        occ = self.occ
        if not occ.is_final or self.final_checked:
            return
        later = self.now + timedelta(days=365)
        attempts: list[Callable[[], Occurrence]] = [
            lambda: expire(occ, later),
            lambda: promote(occ, later),
            lambda: bury(occ, later, "r"),
            lambda: kick(occ, later),
            lambda: skip(occ, later, "r"),
            lambda: miss(occ, later, "r"),
            lambda: cancel(occ, later, "r"),
        ]
        for worker in WORKERS:
            attempts += [
                lambda w=worker: claim(occ, w, later),
                lambda w=worker: touch(occ, w, later),
                lambda w=worker: finish(occ, w, later, started_at=later, output=None),
                lambda w=worker: fail(occ, w, later, error="e"),
                lambda w=worker: fail(occ, w, later, error="e", permanent=True),
                lambda w=worker: release(occ, w, later),
            ]
        for attempt in attempts:
            with pytest.raises(InvalidTransition):
                attempt()
        self.final_checked = True

    def verify(self) -> None:
        self.still_a_valid_document()
        self.lease_iff_leased_result_iff_done()
        self.attempts_within_bounds()
        self.final_is_final()


# max_examples, deadline and the seed come from the profile (tests/conftest.py).
OccurrenceLife.TestCase.settings = settings(stateful_step_count=40)
TestOccurrenceLife = OccurrenceLife.TestCase


# The same lives as random operation sequences, weighted towards the long paths
# (claim, fail, expire, promote, kick) that the uniform rule choice above visits less.
WEIGHTED_OPERATIONS = (
    ["advance"] * 3
    + ["advance_to"] * 2
    + ["claim"] * 4
    + ["touch"] * 2
    + ["fail"] * 3
    + ["expire"] * 2
    + ["promote"] * 2
    + ["finish", "release", "bury", "kick", "stop"]
)
ARGUMENTS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "advance": st.fixed_dictionaries({"step": steps}),
    "advance_to": st.fixed_dictionaries(
        {"deadline": st.sampled_from(["lease", "not_before"]), "off_ms": st.integers(-1, 1)}
    ),
    "claim": st.fixed_dictionaries({"worker": workers}),
    "touch": st.fixed_dictionaries({"worker": workers, "progress": progresses}),
    "finish": st.fixed_dictionaries({"worker": workers, "output": outputs}),
    "fail": st.fixed_dictionaries(
        {
            "worker": workers,
            "permanent": st.sampled_from([False, False, False, False, True]),
            "error": error_texts,
            "seed": st.integers(0, 2**16),
        }
    ),
    "release": st.fixed_dictionaries({"worker": workers, "reason": reasons}),
    "expire": st.just({}),
    "promote": st.just({}),
    "bury": st.fixed_dictionaries({"reason": reasons}),
    "kick": st.just({}),
    "stop": st.fixed_dictionaries(
        {"kind": st.sampled_from(["skip", "miss", "cancel"]), "reason": reasons}
    ),
}
births = st.fixed_dictionaries(
    {
        "max_attempts": st.integers(1, 4),
        "ttr": st.integers(1, 300),
        "backoff": st.builds(
            Backoff,
            base=st.floats(0.01, 120),
            factor=st.floats(1, 4),
            max=st.floats(1, 600),
            jitter=st.floats(0, 1),
        ),
        "born": st.sampled_from([State.READY, State.SCHEDULED]),
        "wait": st.integers(0, 600),
        "prior_errors": st.integers(0, MAX_ERROR_HISTORY),
    }
)


@given(birth=births, data=st.data())
def test_random_operation_sequences_keep_the_invariants(
    birth: dict[str, Any], data: st.DataObject
) -> None:
    life = OccurrenceLife()
    life.born(**birth)
    life.verify()
    length = data.draw(st.integers(10, 50), label="length")
    for _ in range(length):
        if life.occ.is_final and data.draw(st.booleans(), label="next occurrence"):
            life.next_occurrence()
            continue
        name = data.draw(st.sampled_from(WEIGHTED_OPERATIONS), label="operation")
        getattr(life, name)(**data.draw(ARGUMENTS[name], label=name))
        life.verify()
