"""Unit and property tests for hub.protocol.model (document shapes) and timefmt (hub time)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from hub.protocol.model import (
    DEFAULT_PRIORITY,
    FINAL_STATES,
    MAX_INPUT_BYTES,
    MAX_OUTPUT_BYTES,
    MAX_PRIORITY,
    MODEL_BY_TYPE,
    NAME_PATTERN,
    SLUG_PATTERN,
    ErrorRecord,
    Lease,
    Occurrence,
    Progress,
    Result,
    RunResult,
    Schedule,
    State,
    Task,
    WorkerDoc,
    clean_json,
    clean_text,
    describe_validation_error,
    json_size,
    occurrence_id,
    result_id,
    split_occurrence_id,
    task_id,
    worker_id,
)
from hub.protocol.timefmt import (
    as_utc,
    from_wire,
    month_key,
    seconds,
    to_id_stamp,
    to_wire,
    utcnow,
)

T0 = datetime(2026, 12, 1, 0, 1, 0, 123456, tzinfo=UTC)
W0 = "2026-12-01T00:01:00.123Z"
W1 = "2026-12-01T00:02:00.000Z"

names = st.from_regex(NAME_PATTERN, fullmatch=True)
slugs = st.from_regex(SLUG_PATTERN, fullmatch=True)
offsets = st.builds(
    lambda minutes: timezone(timedelta(minutes=minutes)), st.integers(-14 * 60, 14 * 60)
)
moments = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2200, 1, 1),
    timezones=st.one_of(st.just(UTC), offsets),
)


# ---------------------------------------------------------------- builders


def task_doc(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "_id": "task:acme:ping",
        "client": "acme",
        "slug": "ping",
        "kind": "http.get",
        "input": {"url": "https://example.org"},
        "schedule": {"every": 60},
        "created_at": W0,
        "updated_at": W0,
    }
    doc.update(over)
    return doc


def lease_doc(worker: str = "w1") -> dict[str, Any]:
    return {"worker": worker, "claimed_at": W0, "expires_at": W1}


def result_doc(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "status": "ok",
        "worker": "w1",
        "attempt": 1,
        "started_at": W0,
        "finished_at": W1,
        "output": {"answer": 42},
    }
    doc.update(over)
    return doc


def occ_doc(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "_id": "occ:task:acme:ping:20261201T000100Z",
        "task": "task:acme:ping",
        "client": "acme",
        "kind": "http.get",
        "input": {},
        "tube": "default",
        "priority": DEFAULT_PRIORITY,
        "ttr": 60,
        "max_attempts": 3,
        "due_at": W0,
        "not_before": W0,
        "state": "ready",
        "created_at": W0,
        "updated_at": W0,
    }
    doc.update(over)
    return doc


def worker_doc(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "_id": "worker:w1",
        "name": "w1",
        "version": "0.1.0",
        "os": "Linux 6.1",
        "tubes": ["default", "gpu.big"],
        "kinds": ["http.get"],
        "last_seen": W1,
        "started_at": W0,
    }
    doc.update(over)
    return doc


def archived_doc(**over: Any) -> dict[str, Any]:
    occ = "occ:task:acme:ping:20261201T000100Z"
    doc: dict[str, Any] = {
        "_id": result_id(occ),
        "occurrence": occ,
        "task": "task:acme:ping",
        "client": "acme",
        "kind": "http.get",
        "due_at": W0,
        "state": "done",
        "attempt": 1,
        "worker": "w1",
        "status": "ok",
        "output": [1, None, "x"],
        "duration_ms": 1500,
    }
    doc.update(over)
    return doc


def errors_of(exc: pytest.ExceptionInfo[ValidationError]) -> list[str]:
    return describe_validation_error(exc.value)


# ---------------------------------------------------------------- ids


def test_id_helpers_spell_the_documented_ids() -> None:
    assert task_id("acme", "ping") == "task:acme:ping"
    assert occurrence_id("task:acme:ping", T0) == "occ:task:acme:ping:20261201T000100Z"
    assert result_id("occ:task:acme:ping:20261201T000100Z") == (
        "res:occ:task:acme:ping:20261201T000100Z"
    )
    assert worker_id("w1") == "worker:w1"


def test_occurrence_id_is_the_same_for_the_same_instant_in_any_zone() -> None:
    plus_two = timezone(timedelta(hours=2))
    same_instant = T0.astimezone(plus_two)
    assert same_instant.hour == 2
    assert occurrence_id("task:acme:ping", same_instant) == occurrence_id("task:acme:ping", T0)


def test_occurrence_id_uses_whole_seconds() -> None:
    a = T0.replace(microsecond=0)
    b = T0.replace(microsecond=999_999)
    c = T0 + timedelta(seconds=1)
    assert occurrence_id("task:acme:ping", a) == occurrence_id("task:acme:ping", b)
    assert occurrence_id("task:acme:ping", a) != occurrence_id("task:acme:ping", c)


def test_occurrence_id_refuses_naive_due() -> None:
    with pytest.raises(ValueError, match="naive"):
        occurrence_id("task:acme:ping", datetime(2026, 12, 1))


@given(client=names, slug=slugs, due=moments)
def test_occurrence_ids_are_deterministic_and_split_round_trips(
    client: str, slug: str, due: datetime
) -> None:
    task = task_id(client, slug)
    first = occurrence_id(task, due)
    assert first == occurrence_id(task, due)
    assert first == occurrence_id(task, due.astimezone(UTC))
    assert split_occurrence_id(first) == (client, slug, to_id_stamp(due))
    stamp = split_occurrence_id(first)[2]
    assert datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC) == (
        due.astimezone(UTC).replace(microsecond=0)
    )


@given(client=names, slug=slugs, due=moments, later=st.integers(1, 10**8))
def test_different_seconds_give_different_occurrence_ids(
    client: str, slug: str, due: datetime, later: int
) -> None:
    task = task_id(client, slug)
    assert occurrence_id(task, due) != occurrence_id(task, due + timedelta(seconds=later))


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "occ",
        "res:occ:task:acme:ping:20261201T000100Z",
        "occ:acme:ping:20261201T000100Z",
        "occ:task:acme:ping",
        "occ:task:acme:ping:extra:20261201T000100Z",
        "task:acme:ping",
        "occ:job:acme:ping:20261201T000100Z",
    ],
)
def test_split_occurrence_id_refuses_other_shapes(bad: str) -> None:
    with pytest.raises(ValueError, match="not an occurrence id"):
        split_occurrence_id(bad)


# ---------------------------------------------------------------- task


def test_a_minimal_task_gets_the_documented_defaults() -> None:
    task = Task.model_validate(task_doc())
    assert task.id == "task:acme:ping"
    assert task.rev is None
    assert task.type == "task"
    assert task.priority == DEFAULT_PRIORITY
    assert task.tube == "default"
    assert task.ttr == 60
    assert task.max_attempts == 3
    assert task.backoff.base == 10.0
    assert task.backoff.factor == 2.0
    assert task.overlap == "skip"
    assert task.misfire == "run_latest"
    assert task.paused is False
    assert task.schedule.every == 60
    assert task.schedule.tz == "UTC"


@pytest.mark.parametrize("client", ["a", "0", "acme", "acme-1_x", "a" * 40])
def test_task_accepts_good_client_names(client: str) -> None:
    task = Task.model_validate(task_doc(client=client, _id=task_id(client, "ping")))
    assert task.client == client


@pytest.mark.parametrize(
    "client",
    ["", "Acme", "-acme", "_acme", "a" * 41, "ac me", "acme:x", "acme\n", "ácme", "acme.x"],
)
def test_task_rejects_bad_client_names(client: str) -> None:
    with pytest.raises(ValidationError) as exc:
        Task.model_validate(task_doc(client=client, _id=task_id(client, "ping")))
    lines = errors_of(exc)
    assert any(line.startswith("client: String should match pattern") for line in lines), lines


@pytest.mark.parametrize("slug", ["p", "ping-2_b", "9" * 64])
def test_task_accepts_good_slugs(slug: str) -> None:
    assert Task.model_validate(task_doc(slug=slug, _id=task_id("acme", slug))).slug == slug


@pytest.mark.parametrize("slug", ["", "Ping", "-ping", "p" * 65, "pi:ng", "pi ng", "ping\n"])
def test_task_rejects_bad_slugs(slug: str) -> None:
    with pytest.raises(ValidationError) as exc:
        Task.model_validate(task_doc(slug=slug, _id=task_id("acme", slug)))
    assert any(line.startswith("slug: ") for line in errors_of(exc))


@pytest.mark.parametrize(
    "bad_id", ["task:acme:pong", "task:other:ping", "acme:ping", "task:acme:ping:", "ping"]
)
def test_task_rejects_an_id_that_does_not_match_client_and_slug(bad_id: str) -> None:
    with pytest.raises(ValidationError) as exc:
        Task.model_validate(task_doc(_id=bad_id))
    (line,) = errors_of(exc)
    assert line.startswith("document: _id must be 'task:acme:ping'")


def test_task_requires_an_id() -> None:
    doc = task_doc()
    del doc["_id"]
    with pytest.raises(ValidationError) as exc:
        Task.model_validate(doc)
    assert "_id: Field required" in errors_of(exc)


def _input_of_size(size: int, char: str = "a") -> dict[str, Any]:
    overhead = json_size({"x": ""})
    per_char = len(char.encode("utf-8"))
    assert (size - overhead) % per_char == 0
    value = {"x": char * ((size - overhead) // per_char)}
    assert json_size(value) == size
    return value


def test_task_input_at_the_limit_is_accepted() -> None:
    task = Task.model_validate(task_doc(input=_input_of_size(MAX_INPUT_BYTES)))
    assert json_size(task.input) == MAX_INPUT_BYTES


def test_task_rejects_oversize_input() -> None:
    with pytest.raises(ValidationError) as exc:
        Task.model_validate(task_doc(input=_input_of_size(MAX_INPUT_BYTES + 1)))
    assert errors_of(exc) == [f"input: input is larger than {MAX_INPUT_BYTES} bytes of JSON"]


def test_task_input_size_counts_utf8_bytes_not_characters() -> None:
    # Each 'é' is two bytes of UTF-8: well under the limit in characters, over it in bytes.
    value = {"x": "é" * (MAX_INPUT_BYTES // 2)}
    assert len(json.dumps(value, ensure_ascii=False)) < MAX_INPUT_BYTES
    with pytest.raises(ValidationError, match="larger than"):
        Task.model_validate(task_doc(input=value))


def test_json_size_is_compact_utf8() -> None:
    assert json_size({"a": [1, 2]}) == len('{"a":[1,2]}')
    assert json_size("é") == 4  # two quotes and two bytes
    assert json_size(None) == 4


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("kind", "Http.get"),
        ("kind", "http..get"),
        ("kind", "1http"),
        ("kind", "h" * 65),
        ("priority", -1),
        ("priority", MAX_PRIORITY + 1),
        ("tube", "Default"),
        ("tube", "t" * 65),
        ("ttr", 0),
        ("ttr", 86401),
        ("max_attempts", 0),
        ("max_attempts", 101),
        ("misfire_grace", -1),
        ("retention_days", 0),
        ("overlap", "sometimes"),
        ("misfire", "never"),
        ("created_at", "2026-12-01T00:01:00Z"),
        ("updated_at", "2026-12-01 00:01:00.000Z"),
        ("backoff", {"base": 0}),
        ("backoff", {"factor": 0.5}),
        ("backoff", {"jitter": 1.5}),
    ],
)
def test_task_rejects_out_of_range_fields(field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as exc:
        Task.model_validate(task_doc(**{field: value}))
    lines = errors_of(exc)
    assert lines
    assert all(line.startswith(f"{field}") for line in lines), lines


def test_task_accepts_the_edges_of_its_ranges() -> None:
    task = Task.model_validate(
        task_doc(priority=MAX_PRIORITY, ttr=86400, max_attempts=100, tube="gpu.big-1_x")
    )
    assert (task.priority, task.ttr, task.max_attempts) == (MAX_PRIORITY, 86400, 100)


def test_task_forbids_unknown_fields_and_is_frozen() -> None:
    with pytest.raises(ValidationError) as exc:
        Task.model_validate(task_doc(colour="blue"))
    assert errors_of(exc) == ["colour: Extra inputs are not permitted (got 'blue')"]
    task = Task.model_validate(task_doc())
    with pytest.raises(ValidationError):
        task.priority = 1  # type: ignore[misc]


def test_task_type_is_fixed() -> None:
    with pytest.raises(ValidationError) as exc:
        Task.model_validate(task_doc(type="occurrence"))
    assert errors_of(exc)[0].startswith("type: Input should be 'task'")


# ---------------------------------------------------------------- schedule


@pytest.mark.parametrize(
    "rule",
    [
        {"every": 1},
        {"every": 366 * 86400},
        {"cron": "*/5 * * * *"},
        {"at": "2026-12-01T00:00:00Z"},
        {"at": "2026-12-01T01:00:00+01:00"},
        {"at": W0},
    ],
)
def test_schedule_accepts_exactly_one_rule(rule: dict[str, Any]) -> None:
    schedule = Schedule.model_validate(rule)
    given_rules = [k for k in ("every", "cron", "at") if getattr(schedule, k) is not None]
    assert given_rules == list(rule)


@pytest.mark.parametrize(
    ("rule", "got"),
    [
        ({}, "none"),
        ({"every": 60, "cron": "*/5 * * * *"}, "every, cron"),
        ({"every": 60, "at": W0}, "every, at"),
        ({"cron": "*/5 * * * *", "at": W0}, "cron, at"),
        ({"every": 60, "cron": "*/5 * * * *", "at": W0}, "every, cron, at"),
        ({"start": W0}, "none"),
    ],
)
def test_schedule_refuses_zero_or_several_rules(rule: dict[str, Any], got: str) -> None:
    with pytest.raises(ValidationError) as exc:
        Schedule.model_validate(rule)
    (line,) = errors_of(exc)
    assert "give exactly one of 'every' (seconds), 'cron' (expression) or 'at' (time)" in line
    assert line.endswith(f"got {got}")


@pytest.mark.parametrize("field", ["at", "start", "end"])
def test_schedule_refuses_naive_timestamps(field: str) -> None:
    rule: dict[str, Any] = {"every": 60} if field != "at" else {}
    rule[field] = "2026-12-01T00:00:00"
    with pytest.raises(ValidationError) as exc:
        Schedule.model_validate(rule)
    (line,) = errors_of(exc)
    assert line.startswith(f"document: {field}: timestamp '2026-12-01T00:00:00' has no time zone")
    assert "add 'Z' or an offset" in line


@pytest.mark.parametrize("field", ["at", "start", "end"])
def test_schedule_refuses_timestamps_that_are_not_iso(field: str) -> None:
    rule: dict[str, Any] = {"every": 60} if field != "at" else {}
    rule[field] = "next tuesday"
    with pytest.raises(ValidationError) as exc:
        Schedule.model_validate(rule)
    (line,) = errors_of(exc)
    assert f"{field}: not an ISO-8601 timestamp: 'next tuesday'" in line


def test_schedule_accepts_a_window_with_zones() -> None:
    schedule = Schedule(every=60, start="2026-01-01T00:00:00Z", end="2027-01-01T00:00:00+05:30")
    assert schedule.end == "2027-01-01T00:00:00+05:30"


@pytest.mark.parametrize(
    ("rule", "where"),
    [
        ({"every": 0}, "every"),
        ({"every": 366 * 86400 + 1}, "every"),
        ({"cron": "* * * *"}, "cron"),
        ({"every": 60, "jitter": -1}, "jitter"),
        ({"every": 60, "jitter": 3601}, "jitter"),
        ({"every": 60, "tz": ""}, "tz"),
        ({"every": 60, "when": "now"}, "when"),
    ],
)
def test_schedule_field_limits(rule: dict[str, Any], where: str) -> None:
    with pytest.raises(ValidationError) as exc:
        Task.model_validate(task_doc(schedule=rule))
    lines = errors_of(exc)
    assert any(line.startswith(f"schedule.{where}: ") for line in lines), lines


def test_task_reports_a_schedule_rule_error_under_schedule() -> None:
    with pytest.raises(ValidationError) as exc:
        Task.model_validate(task_doc(schedule={"at": "2026-12-01T00:00:00"}))
    (line,) = errors_of(exc)
    assert line.startswith("schedule: at: timestamp '2026-12-01T00:00:00' has no time zone")


# ---------------------------------------------------------------- occurrence


def test_a_well_formed_ready_occurrence() -> None:
    occ = Occurrence.model_validate(occ_doc())
    assert occ.state is State.READY
    assert occ.attempt == 0
    assert occ.lease is None and occ.result is None and occ.errors == []
    assert not occ.is_final


@pytest.mark.parametrize("state", list(State))
def test_occurrence_is_final_matches_final_states(state: State) -> None:
    extra: dict[str, Any] = {}
    if state is State.LEASED:
        extra["lease"] = lease_doc()
    if state is State.DONE:
        extra["result"] = result_doc()
    if state is State.INCONCLUSIVE:
        extra.update(quorum=2, slots={}, validation={
            "outcome": "inconclusive", "why": "no results", "decided_at": "2026-12-01T00:05:00.000Z"
        })  # fmt: skip
    occ = Occurrence.model_validate(occ_doc(state=state.value, **extra))
    assert occ.is_final == (state in FINAL_STATES)


def test_leased_needs_a_lease() -> None:
    with pytest.raises(ValidationError) as exc:
        Occurrence.model_validate(occ_doc(state="leased", attempt=1))
    assert errors_of(exc) == ["document: a lease is present exactly when the state is 'leased'"]
    occ = Occurrence.model_validate(occ_doc(state="leased", attempt=1, lease=lease_doc()))
    assert occ.lease is not None and occ.lease.worker == "w1"


@pytest.mark.parametrize(
    "state", [s for s in State if s is not State.LEASED and s is not State.DONE]
)
def test_only_leased_carries_a_lease(state: State) -> None:
    with pytest.raises(ValidationError, match="a lease is present exactly when"):
        Occurrence.model_validate(occ_doc(state=state.value, lease=lease_doc()))


def test_done_needs_a_result() -> None:
    with pytest.raises(ValidationError) as exc:
        Occurrence.model_validate(occ_doc(state="done", attempt=1))
    assert errors_of(exc) == ["document: a done occurrence carries its result"]
    occ = Occurrence.model_validate(occ_doc(state="done", attempt=1, result=result_doc()))
    assert occ.result is not None and occ.result.output == {"answer": 42}


@pytest.mark.parametrize(
    "state", [s for s in State if s is not State.DONE and s is not State.LEASED]
)
def test_only_done_carries_a_result(state: State) -> None:
    with pytest.raises(ValidationError) as exc:
        Occurrence.model_validate(occ_doc(state=state.value, result=result_doc()))
    assert errors_of(exc) == ["document: only a done occurrence carries a result"]


def test_client_must_match_the_id() -> None:
    with pytest.raises(ValidationError) as exc:
        Occurrence.model_validate(occ_doc(client="other"))
    assert errors_of(exc) == ["document: client 'other' does not match the id's 'acme'"]


@pytest.mark.parametrize(
    "over",
    [
        {"_id": "occ:task:acme:ping:20261201T000101Z"},
        {"due_at": "2026-12-01T00:01:01.000Z"},
        {"task": "task:acme:pong"},
        {"_id": "occ:task:acme:ping:2026-12-01T00:01:00Z"},
    ],
)
def test_id_must_follow_task_and_due_at(over: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as exc:
        Occurrence.model_validate(occ_doc(**over))
    (line,) = errors_of(exc)
    assert line.startswith("document: _id must be 'occ:task:")
    assert "for this task and due_at" in line


def test_due_at_within_the_same_second_keeps_the_id() -> None:
    occ = Occurrence.model_validate(occ_doc(due_at="2026-12-01T00:01:00.999Z"))
    assert occ.id == "occ:task:acme:ping:20261201T000100Z"


def test_task_reference_must_be_a_task_id() -> None:
    with pytest.raises(ValidationError, match="not an occurrence id"):
        Occurrence.model_validate(
            occ_doc(task="task:acme:ping:x", _id="occ:task:acme:ping:x:20261201T000100Z")
        )


@pytest.mark.parametrize("state", ["ready", "leased"])
def test_live_occurrence_cannot_be_past_its_attempts(state: str) -> None:
    extra = {"lease": lease_doc()} if state == "leased" else {}
    ok = Occurrence.model_validate(occ_doc(state=state, attempt=3, **extra))
    assert ok.attempt == 3
    with pytest.raises(ValidationError) as exc:
        Occurrence.model_validate(occ_doc(state=state, attempt=4, **extra))
    assert errors_of(exc) == [
        "document: attempt is past max_attempts but the occurrence is still live"
    ]


@pytest.mark.parametrize("state", ["scheduled", "buried", "failed", "cancelled"])
def test_resting_occurrence_may_be_past_its_attempts(state: str) -> None:
    assert Occurrence.model_validate(occ_doc(state=state, attempt=4)).attempt == 4


def test_occurrence_field_shapes() -> None:
    with pytest.raises(ValidationError) as exc:
        Occurrence.model_validate(
            occ_doc(
                state="sleeping",
                attempt=-1,
                not_before="soon",
                lease={"worker": "W 1", "claimed_at": W0, "expires_at": W1},
                reason="r" * 501,
            )
        )
    where = sorted(line.split(":")[0] for line in errors_of(exc))
    assert where == ["attempt", "lease.worker", "not_before", "reason", "state"]


def test_error_records_and_progress_shapes() -> None:
    ErrorRecord(attempt=0, at=W0, error="boom")
    with pytest.raises(ValidationError):
        ErrorRecord(attempt=-1, at=W0, error="boom")
    with pytest.raises(ValidationError):
        ErrorRecord(attempt=1, at=W0, error="x" * 2001)
    with pytest.raises(ValidationError):
        ErrorRecord(attempt=1, at=W0, worker="Bad Worker", error="boom")
    assert Progress(num=1, den=2, msg="half").num == 1
    with pytest.raises(ValidationError):
        Progress(num=-1)
    with pytest.raises(ValidationError):
        Progress(msg="m" * 201)
    with pytest.raises(ValidationError):
        Lease(worker="w1", claimed_at=W0, expires_at="2026-12-01T00:02:00Z")


# ---------------------------------------------------------------- run result


def test_run_result_shapes() -> None:
    RunResult.model_validate(result_doc())
    RunResult.model_validate(result_doc(status="error", error="boom", output=None))
    for bad in (
        {"status": "maybe"},
        {"attempt": 0},
        {"worker": "W1"},
        {"finished_at": "yesterday"},
        {"error": "e" * 2001},
    ):
        with pytest.raises(ValidationError):
            RunResult.model_validate(result_doc(**bad))


def test_run_result_output_size_limit() -> None:
    overhead = json_size("")
    at_limit = "a" * (MAX_OUTPUT_BYTES - overhead)
    assert RunResult.model_validate(result_doc(output=at_limit)).output == at_limit
    with pytest.raises(ValidationError) as exc:
        RunResult.model_validate(result_doc(output=at_limit + "a"))
    (line,) = errors_of(exc)
    assert line.startswith(f"output: output is larger than {MAX_OUTPUT_BYTES} bytes of JSON")
    assert line.endswith(" (got " + repr(at_limit)[:60] + ")")


# ---------------------------------------------------------------- text from outside

# Text with lone surrogates: often, not once in a few thousand as st.characters() alone.
chars = st.characters() | st.characters(categories=["Cs"])


def by_hand(text: str) -> str:
    """What clean_text should give, written out: a high surrogate followed by a low one is
    their character, any other surrogate U+FFFD, anything else itself."""
    out, i = [], 0
    while i < len(text):
        char = text[i]
        low = text[i + 1] if i + 1 < len(text) else ""
        if "\ud800" <= char <= "\udbff" and "\udc00" <= low <= "\udfff":
            out.append(chr(0x10000 + (ord(char) - 0xD800) * 0x400 + ord(low) - 0xDC00))
            i += 2
            continue
        out.append("\ufffd" if "\ud800" <= char <= "\udfff" else char)
        i += 1
    return "".join(out)


@pytest.mark.parametrize(
    ("text", "clean"),
    [
        ("", ""),
        ("plain ascii", "plain ascii"),
        ("é ✓ 😀 \x00", "é ✓ 😀 \x00"),
        ("\ud800" * 495, "\ufffd" * 495),  # what Hypothesis found (issue 21)
        ("a\udc00b\ud800", "a\ufffdb\ufffd"),
        ("\udc00\ud800", "\ufffd\ufffd"),  # low before high: not a pair
        ("\ud83d\ude00", "😀"),  # a pair, as two code points: its character
    ],
)
def test_clean_text_replaces_lone_surrogates(text: str, clean: str) -> None:
    assert clean_text(text) == clean
    clean.encode("utf-8")


def test_clean_text_cuts_after_replacing() -> None:
    assert clean_text("\ud800" * 600, 500) == "\ufffd" * 500
    assert clean_text("ab\ud83d\ude00cd", 4) == "ab😀c"
    assert clean_text("short", 500) == "short"


@given(text=st.text(chars), limit=st.none() | st.integers(0, 50))
def test_clean_text_gives_valid_utf8_and_changes_only_surrogates(
    text: str, limit: int | None
) -> None:
    clean = clean_text(text, limit)
    assert clean.encode("utf-8").decode("utf-8") == clean
    whole = by_hand(text)
    assert clean == (whole if limit is None else whole[:limit])


@given(text=st.text())
def test_clean_text_keeps_valid_text(text: str) -> None:
    assert clean_text(text) == text
    assert clean_text(text, 5) == text[:5]


def json_size_or_none(value: Any) -> int | None:
    try:
        return json_size(value)
    except UnicodeEncodeError:
        return None


@given(
    value=st.recursive(
        st.none() | st.integers() | st.text(chars),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(chars), inner),
        max_leaves=20,
    )
)
def test_clean_json_cleans_every_string_keys_too(value: Any) -> None:
    clean = clean_json(value)
    json.dumps(clean, ensure_ascii=False).encode("utf-8")
    if json_size_or_none(value) is not None:  # valid already: unchanged
        assert clean == value


def test_text_fields_take_lone_surrogates_as_replacement_characters() -> None:
    # Every model field that holds text from outside: the model makes it valid itself,
    # so a document built anywhere (the worker builds Progress) can be stored.
    assert Progress(msg="step \ud800").msg == "step \ufffd"
    assert ErrorRecord(attempt=1, at=W0, error="\udfff").error == "\ufffd"
    assert RunResult.model_validate(result_doc(error="x\ud800")).error == "x\ufffd"
    assert Occurrence.model_validate(occ_doc(reason="\ud800" * 495)).reason == "\ufffd" * 495
    # The lengths are still checked, not cut: cutting is hub.protocol.states' job.
    for build in (
        lambda: Progress(msg="\ud800" * 201),
        lambda: ErrorRecord(attempt=1, at=W0, error="\ud800" * 2001),
        lambda: RunResult.model_validate(result_doc(error="\ud800" * 2001)),
        lambda: Occurrence.model_validate(occ_doc(reason="\ud800" * 501)),
    ):
        with pytest.raises(ValidationError):
            build()


def test_run_result_output_with_lone_surrogates() -> None:
    output = json.loads('{"\\ud800": ["\\udfff ok", 1, {"k": "\\ud83d\\ude00"}]}')
    result = RunResult.model_validate(result_doc(output=output))
    assert result.output == {"\ufffd": ["\ufffd ok", 1, {"k": "😀"}]}
    json.dumps(result.model_dump(mode="json"), ensure_ascii=False).encode("utf-8")
    # Measured once replaced: three bytes each.
    fits = "\ud800" * ((MAX_OUTPUT_BYTES - json_size("")) // 3)
    assert RunResult.model_validate(result_doc(output=fits)).output == "\ufffd" * len(fits)
    with pytest.raises(ValidationError, match="larger than"):
        RunResult.model_validate(result_doc(output=fits + "\ud800"))


# ---------------------------------------------------------------- result and worker


def test_archived_result_id_must_follow_its_occurrence() -> None:
    res = Result.model_validate(archived_doc())
    assert res.id == "res:occ:task:acme:ping:20261201T000100Z"
    with pytest.raises(ValidationError) as exc:
        Result.model_validate(archived_doc(_id="res:occ:task:acme:ping:20261201T000200Z"))
    assert errors_of(exc) == ["document: _id must be 'res:occ:task:acme:ping:20261201T000100Z'"]
    with pytest.raises(ValidationError):
        Result.model_validate(archived_doc(status="lost"))


def test_worker_doc_id_must_follow_its_name() -> None:
    worker = WorkerDoc.model_validate(worker_doc())
    assert worker.id == "worker:w1"
    with pytest.raises(ValidationError) as exc:
        WorkerDoc.model_validate(worker_doc(_id="worker:w2"))
    assert errors_of(exc) == ["document: _id must be 'worker:w1'"]


def test_worker_doc_defaults() -> None:
    doc = worker_doc()
    del doc["tubes"]
    worker = WorkerDoc.model_validate(doc)
    assert worker.tubes == ["default"]
    assert worker.slots == 1
    assert worker.state == "running"
    assert worker.totals.done == worker.totals.failed == worker.totals.lost == 0


@pytest.mark.parametrize("tube", ["", "Default", "-x", "t" * 65, "a b", "default\n"])
def test_worker_doc_rejects_bad_tube_names(tube: str) -> None:
    with pytest.raises(ValidationError) as exc:
        WorkerDoc.model_validate(worker_doc(tubes=["default", tube]))
    assert errors_of(exc) == [f"document: tube {tube!r} is not a valid tube name"]


def test_worker_tube_names_agree_with_the_task_tube_rule() -> None:
    # The same name is either a valid tube everywhere or nowhere.
    for tube in ["default", "gpu.big", "x" * 64, "x" * 65, "default\n", "Default", "a_b-c.d"]:
        try:
            Task.model_validate(task_doc(tube=tube))
            task_ok = True
        except ValidationError:
            task_ok = False
        try:
            WorkerDoc.model_validate(worker_doc(tubes=[tube]))
            worker_ok = True
        except ValidationError:
            worker_ok = False
        assert task_ok == worker_ok, tube


def test_model_by_type_maps_each_type_to_its_model() -> None:
    assert set(MODEL_BY_TYPE) == {"task", "occurrence", "result", "worker", "reliability"}
    for name, model in MODEL_BY_TYPE.items():
        assert model.model_fields["type"].default == name


# ---------------------------------------------------------------- describe_validation_error


def test_describe_validation_error_gives_one_actionable_line_per_problem() -> None:
    with pytest.raises(ValidationError) as exc:
        Task.model_validate(task_doc(client="Bad Client", schedule={"every": 0}, bogus=1))
    lines = describe_validation_error(exc.value, prefix="tasks/ping.json: ")
    assert lines == [
        "tasks/ping.json: client: String should match pattern "
        "'^[a-z0-9][a-z0-9_-]{0,39}$' (got 'Bad Client')",
        "tasks/ping.json: schedule.every: Input should be greater than or equal to 1 (got 0)",
        "tasks/ping.json: bogus: Extra inputs are not permitted (got 1)",
    ]


def test_describe_validation_error_strips_pydantic_value_error_prefix() -> None:
    with pytest.raises(ValidationError) as exc:
        Task.model_validate(task_doc(schedule={"every": 5, "cron": "*/5 * * * *"}))
    (line,) = describe_validation_error(exc.value)
    assert "Value error" not in line
    assert line.startswith("schedule: give exactly one of")


def test_describe_validation_error_names_missing_fields() -> None:
    with pytest.raises(ValidationError) as exc:
        Task.model_validate({"_id": "task:acme:ping", "client": "acme", "slug": "ping"})
    lines = describe_validation_error(exc.value)
    assert sorted(lines) == [
        "created_at: Field required",
        "kind: Field required",
        "schedule: Field required",
        "updated_at: Field required",
    ]


def test_describe_validation_error_shows_list_positions_in_the_path() -> None:
    with pytest.raises(ValidationError) as exc:
        Occurrence.model_validate(
            occ_doc(state="scheduled", errors=[{"attempt": 1, "at": W0, "error": "x"}, {}])
        )
    lines = describe_validation_error(exc.value)
    assert "errors.1.attempt: Field required" in lines
    assert "errors.1.at: Field required" in lines


def test_describe_validation_error_shortens_long_inputs_and_hides_containers() -> None:
    with pytest.raises(ValidationError) as exc:
        Task.model_validate(task_doc(kind="K" * 500, input=["not", "a", "dict"]))
    lines = describe_validation_error(exc.value)
    kind_line = next(line for line in lines if line.startswith("kind: "))
    assert "(got 'KKKK" in kind_line
    assert len(kind_line) < 200
    input_line = next(line for line in lines if line.startswith("input: "))
    assert input_line == "input: Input should be a valid dictionary"


# ---------------------------------------------------------------- to_doc / from_doc


def _all_models() -> list[Any]:
    return [
        Task.model_validate(
            task_doc(
                _rev="3-abc",
                input={"nested": {"none": None, "list": [1, None]}},
                schedule={"cron": "0 * * * *", "tz": "Europe/Berlin", "jitter": 5},
            )
        ),
        Occurrence.model_validate(occ_doc()),
        Occurrence.model_validate(occ_doc(state="leased", attempt=1, lease=lease_doc())),
        Occurrence.model_validate(
            occ_doc(
                _rev="7-def",
                state="done",
                attempt=2,
                result=result_doc(output=None),
                progress={"num": 3, "den": 4, "msg": "almost"},
                errors=[{"attempt": 1, "at": W0, "worker": "w2", "error": "boom"}],
                reason="finished",
            )
        ),
        Result.model_validate(archived_doc()),
        WorkerDoc.model_validate(worker_doc(current=["occ:task:acme:ping:20261201T000100Z"])),
    ]


@pytest.mark.parametrize("model", _all_models(), ids=lambda m: f"{m.type}-{m.id}")
def test_to_doc_from_doc_round_trip(model: Any) -> None:
    doc = model.to_doc()
    assert doc["_id"] == model.id
    assert "id" not in doc and "rev" not in doc
    assert ("_rev" in doc) == (model.rev is not None)
    assert json.loads(json.dumps(doc)) == doc  # plain JSON
    again = type(model).from_doc(doc)
    assert again == model
    assert again.to_doc() == doc
    assert MODEL_BY_TYPE[doc["type"]].from_doc(doc) == model


@pytest.mark.parametrize("model", _all_models(), ids=lambda m: f"{m.type}-{m.id}")
def test_from_doc_ignores_couchdb_metadata(model: Any) -> None:
    doc = model.to_doc()
    doc["_rev"] = "9-fff"
    doc["_conflicts"] = ["8-aaa", "8-bbb"]
    doc["_revisions"] = {"start": 9, "ids": ["fff", "eee"]}
    doc["_attachments"] = {"log.txt": {"stub": True}}
    doc["_deleted_conflicts"] = ["2-ccc"]
    again = type(model).from_doc(doc)
    assert again.rev == "9-fff"
    assert again.model_copy(update={"rev": model.rev}) == model
    assert "_conflicts" not in again.to_doc()
    with pytest.raises(ValidationError):
        type(model).model_validate(doc)  # the metadata is only ignored by from_doc


def test_from_doc_still_refuses_unknown_plain_fields() -> None:
    doc = Task.model_validate(task_doc()).to_doc()
    doc["conflicts"] = ["2-abc"]
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        Task.from_doc(doc)


def test_to_doc_keeps_none_inside_user_data() -> None:
    task = Task.model_validate(task_doc(input={"a": None}))
    assert task.to_doc()["input"] == {"a": None}


def test_from_doc_accepts_python_names_too() -> None:
    doc = task_doc()
    doc["id"] = doc.pop("_id")
    assert Task.model_validate(doc).id == "task:acme:ping"


# ---------------------------------------------------------------- timefmt


def test_to_wire_is_fixed_width_utc_with_milliseconds() -> None:
    assert to_wire(T0) == "2026-12-01T00:01:00.123Z"
    assert to_wire(T0.replace(microsecond=0)) == "2026-12-01T00:01:00.000Z"
    assert to_wire(T0.replace(microsecond=999_999)) == "2026-12-01T00:01:00.999Z"
    assert to_wire(T0.astimezone(timezone(timedelta(hours=-5)))) == W0
    with pytest.raises(ValueError, match="naive"):
        to_wire(datetime(2026, 12, 1))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-01T00:01:00.123Z", T0.replace(microsecond=123000)),
        ("2026-12-01T00:01:00Z", T0.replace(microsecond=0)),
        ("2026-12-01T01:01:00+01:00", T0.replace(microsecond=0)),
        ("2026-11-30T19:01:00.123-05:00", T0.replace(microsecond=123000)),
    ],
)
def test_from_wire_parses_zoned_timestamps_into_utc(text: str, expected: datetime) -> None:
    parsed = from_wire(text)
    assert parsed == expected
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize("text", ["2026-12-01T00:01:00", "2026-12-01"])
def test_from_wire_refuses_naive(text: str) -> None:
    with pytest.raises(ValueError, match="has no time zone"):
        from_wire(text)


@pytest.mark.parametrize("text", ["", "now", "2026-13-01T00:00:00Z", "01/12/2026 00:00Z"])
def test_from_wire_refuses_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="not an ISO-8601 timestamp"):
        from_wire(text)


@given(moment=moments)
def test_wire_round_trip_and_order(moment: datetime) -> None:
    text = to_wire(moment)
    assert len(text) == len(W0)
    back = from_wire(text)
    assert back == moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    assert to_wire(back) == text


@given(a=moments, b=moments)
def test_wire_string_order_is_time_order(a: datetime, b: datetime) -> None:
    ta, tb = to_wire(a), to_wire(b)
    ms_a = a.replace(microsecond=a.microsecond // 1000 * 1000)
    ms_b = b.replace(microsecond=b.microsecond // 1000 * 1000)
    assert (ta < tb) == (ms_a < ms_b)
    assert (ta == tb) == (ms_a == ms_b)


def test_other_time_helpers() -> None:
    assert to_id_stamp(T0) == "20261201T000100Z"
    assert month_key(T0) == "2026_12"
    assert month_key(datetime(2027, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1)))) == (
        "2026_12"
    )
    assert seconds(1.5) == timedelta(milliseconds=1500)
    assert as_utc(T0.astimezone(timezone(timedelta(hours=3)))).utcoffset() == timedelta(0)
    with pytest.raises(ValueError, match="naive"):
        as_utc(datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="naive"):
        month_key(datetime(2026, 1, 1))
    now = utcnow()
    assert now.tzinfo is UTC
    assert abs(now - datetime.now(UTC)) < timedelta(seconds=5)
