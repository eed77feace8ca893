"""The documents Couchfarm keeps in CouchDB, and the rules for a well-formed one.

Pure code: no I/O. ``design_docs/validate_doc_update.js`` enforces the same shapes on the
server, so a document that passes here is accepted there and the other way round.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from hub.protocol.timefmt import from_wire, to_id_stamp

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,39}$"
SLUG_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
KIND_PATTERN = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$"
TUBE_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
WIRE_TIME_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$"
MAX_PRIORITY = 2**32 - 1
DEFAULT_PRIORITY = 1024
MAX_INPUT_BYTES = 16 * 1024
MAX_OUTPUT_BYTES = 64 * 1024
MAX_ERROR_HISTORY = 20
MAX_QUORUM = 7
# Lengths (in characters) of the text fields that hold text from outside: a worker's or a
# handler's error and progress message, a reason given by a person or the hub.
MAX_REASON_CHARS = 500
MAX_ERROR_CHARS = 2000
MAX_PROGRESS_CHARS = 200


class State(StrEnum):
    """Where an occurrence is in its life (DESIGN.md section 5)."""

    SCHEDULED = "scheduled"  # exists, but may not start before not_before (retry backoff)
    READY = "ready"  # claimable now
    LEASED = "leased"  # a worker holds it until lease.expires_at
    DONE = "done"  # ran; result.status says ok or error
    FAILED = "failed"  # a permanent error: retrying cannot help (bad input, refused target)
    BURIED = "buried"  # attempts used up; waits for a kick
    MISSED = "missed"  # fell due while nobody could run it (misfire policy)
    SKIPPED = "skipped"  # not started because the previous run was still going (overlap)
    CANCELLED = "cancelled"  # stopped by a client, an operator or the replace policy
    # A quorum run (quorum > 1) whose results did not agree (no strict majority), or whose
    # quorum timed out: every slot's result is kept for the client (docs/DECISIONS.md
    # decision 17).
    INCONCLUSIVE = "inconclusive"


FINAL_STATES = frozenset(
    {State.DONE, State.FAILED, State.MISSED, State.SKIPPED, State.CANCELLED, State.INCONCLUSIVE}
)
ACTIVE_STATES = frozenset({State.SCHEDULED, State.READY, State.LEASED})


class Overlap(StrEnum):
    """What a fire does while an earlier run of its task is still going (docs/SCHEDULES.md)."""

    SKIP = "skip"  # Temporal Skip
    QUEUE = "queue"  # Temporal BufferAll
    ALLOW = "allow"  # Temporal AllowAll
    REPLACE = "replace"  # Temporal TerminateOther (the new run starts at once)
    BUFFER_ONE = "buffer_one"  # Temporal BufferOne
    CANCEL_OTHER = "cancel_other"  # Temporal CancelOther (the new run waits for the end)


# Policies under which a task's runs go one at a time: a waiting run is promoted only when
# nothing of its task is leased.
SERIAL_OVERLAPS = frozenset({Overlap.QUEUE, Overlap.BUFFER_ONE, Overlap.CANCEL_OTHER})


class Misfire(StrEnum):
    RUN_ALL = "run_all"
    RUN_LATEST = "run_latest"
    SKIP = "skip"


class DocModel(BaseModel):
    """Base for documents: CouchDB's ``_id``/``_rev`` map to ``id``/``rev``."""

    # defer_build: each model's validator is built on first use, so an idle worker builds
    # only the few it touches (2 MB less for the tray, measured).
    model_config = ConfigDict(populate_by_name=True, extra="forbid", frozen=True, defer_build=True)

    id: str = Field(alias="_id")
    rev: str | None = Field(default=None, alias="_rev")

    def to_doc(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Any:
        # _conflicts / _revisions / _attachments are CouchDB metadata, not part of the model.
        clean = {k: v for k, v in doc.items() if not k.startswith("_") or k in ("_id", "_rev")}
        return cls.model_validate(clean)


# ---------------------------------------------------------------- text from outside


def clean_text(text: str, limit: int | None = None) -> str:
    """Text from outside (an error, a progress message, a reason) made fit to store.

    Lone surrogates, which ``json.loads`` and Python strings allow but UTF-8, pydantic and
    CouchDB refuse, become U+FFFD (a surrogate pair becomes its character); then the text
    is cut to ``limit`` characters, the model's maximum for its field. Text that is
    already valid comes back unchanged (cut, if it is longer than ``limit``).
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text if limit is None else text[:limit]


def clean_json(value: Any) -> Any:
    """A JSON value (a run's output) with every string in it, keys too, through clean_text."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_json(key): clean_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(item) for item in value]
    return value


def _valid_text(value: Any) -> Any:
    return clean_text(value) if isinstance(value, str) else value


# A text field that takes text from outside: lone surrogates are replaced, not refused
# (its length is still checked; hub.protocol.states cuts what it stores to the field's maximum).
OutsideText = Annotated[str, BeforeValidator(_valid_text)]


# ---------------------------------------------------------------- ids


def task_id(client: str, slug: str) -> str:
    return f"task:{client}:{slug}"


def occurrence_id(task: str, due: datetime) -> str:
    return f"occ:{task}:{to_id_stamp(due)}"


def result_id(occurrence: str) -> str:
    return f"res:{occurrence}"


def worker_id(name: str) -> str:
    return f"worker:{name}"


def split_occurrence_id(occ_id: str) -> tuple[str, str, str]:
    """'occ:task:acme:ping:20261201T000100Z' -> ('acme', 'ping', '20261201T000100Z')."""
    parts = occ_id.split(":")
    if len(parts) != 5 or parts[0] != "occ" or parts[1] != "task":
        raise ValueError(f"not an occurrence id: {occ_id!r}")
    return parts[2], parts[3], parts[4]


# ---------------------------------------------------------------- task


MAX_RUNS = 1_000_000
"""Largest ``max_runs``: a run a minute for almost two years."""

ENDED_REASON_PREFIX = "ended: "
"""Start of ``paused_reason`` when the hub ended a task at its ``max_runs``: such a task
shows as *ended*, not paused (a resume without a higher limit ends it again)."""


WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
"""Day names of an exclusion window's ``days``, in ``datetime.weekday()`` order."""
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
CLOCK_TIME_PATTERN = r"^([01]\d|2[0-3]):[0-5]\d$"
MAX_EXCLUSIONS = 20


class Exclusion(BaseModel):
    """A window in which no run of the schedule is due (docs/SCHEDULES.md, "Exclusions").

    Either a *daily* window, ``from``/``to`` as wall-clock ``HH:MM`` in the schedule's
    ``tz`` (``to`` before ``from`` crosses midnight; ``days`` limits it to the days it
    starts on), or a *one-off* window, ``from``/``to`` as date-times (without a zone they
    are read in ``tz``). ``from`` is inclusive, ``to`` exclusive.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True, populate_by_name=True)

    begins: str = Field(alias="from", max_length=40, description="HH:MM, or a date-time")
    ends: str = Field(alias="to", max_length=40, description="HH:MM, or a date-time")
    days: tuple[Weekday, ...] | None = Field(
        default=None, min_length=1, max_length=7, description="daily windows only"
    )
    note: str | None = Field(default=None, max_length=200, description="e.g. maintenance")

    @property
    def daily(self) -> bool:
        return re.match(CLOCK_TIME_PATTERN, self.begins) is not None

    @model_validator(mode="after")
    def _one_shape(self) -> Exclusion:
        clock = [re.match(CLOCK_TIME_PATTERN, v) is not None for v in (self.begins, self.ends)]
        if all(clock):
            if self.begins == self.ends:
                raise ValueError(
                    f"from and to are both {self.begins}: a window needs a length "
                    "(to before from crosses midnight)"
                )
            return self
        for name, text in (("from", self.begins), ("to", self.ends)):
            if re.match(r"^\d{1,2}:\d{1,2}$", text) and not re.match(CLOCK_TIME_PATTERN, text):
                raise ValueError(f"{name}: {text!r} is not a time of day HH:MM (00:00 to 23:59)")
        if any(clock):
            raise ValueError(
                "from and to must both be HH:MM (a daily window) or both date-times "
                "(a one-off window)"
            )
        if self.days is not None:
            raise ValueError("days: only a daily window (from/to as HH:MM) takes days")
        moments = []
        for name, text in (("from", self.begins), ("to", self.ends)):
            try:
                moments.append(datetime.fromisoformat(text.replace("Z", "+00:00")))
            except ValueError:
                raise ValueError(
                    f"{name}: {text!r} is neither HH:MM nor a date-time like "
                    "2026-12-24T22:00 (read in the schedule's tz) or 2026-12-24T21:00Z"
                ) from None
        first, last = moments
        if (first.tzinfo is None) == (last.tzinfo is None) and last <= first:
            raise ValueError(f"to: {self.ends} is not after from {self.begins}")
        return self


class Schedule(BaseModel):
    """When a task runs. Exactly one of ``every``, ``cron`` or ``at``.

    Date math and deeper checks (time zone exists, cron parses, a future run exists) live
    in ``hub.schedules``, which uses APScheduler's triggers.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    every: int | None = Field(default=None, ge=1, le=366 * 86400, description="seconds")
    cron: str | None = Field(default=None, min_length=9, max_length=200)
    at: str | None = Field(default=None, description="one-off time, ISO-8601 with zone")
    start: str | None = None
    end: str | None = None
    tz: str = Field(default="UTC", min_length=1, max_length=64)
    jitter: int = Field(default=0, ge=0, le=3600, description="seconds of random delay")
    # Windows in which no run is due: the fires inside are not runs at all (never missed).
    exclusions: tuple[Exclusion, ...] | None = Field(default=None, max_length=MAX_EXCLUSIONS)

    @model_validator(mode="after")
    def _exactly_one_rule(self) -> Schedule:
        given = [name for name in ("every", "cron", "at") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of 'every' (seconds), 'cron' (expression) or 'at' (time); "
                f"got {', '.join(given) or 'none'}"
            )
        for name in ("at", "start", "end"):
            value = getattr(self, name)
            if value is not None:
                try:
                    from_wire(value)
                except ValueError as exc:
                    raise ValueError(f"{name}: {exc}") from None
        return self


class Backoff(BaseModel):
    """Delay before retry n (1-based): min(max, base * factor**(n-1)) * (1 ± jitter)."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    base: float = Field(default=10.0, gt=0, le=86400)
    factor: float = Field(default=2.0, ge=1, le=10)
    max: float = Field(default=3600.0, gt=0, le=7 * 86400)
    jitter: float = Field(default=0.2, ge=0, le=1)


AlertChannel = Literal["webhook", "email"]
ALERT_CHANNELS: tuple[AlertChannel, ...] = ("webhook", "email")


class Task(DocModel):
    type: Literal["task"] = "task"
    client: str = Field(pattern=NAME_PATTERN)
    slug: str = Field(pattern=SLUG_PATTERN)
    kind: str = Field(pattern=KIND_PATTERN, max_length=64)
    input: dict[str, Any] = Field(default_factory=dict)
    schedule: Schedule
    priority: int = Field(default=DEFAULT_PRIORITY, ge=0, le=MAX_PRIORITY)
    tube: str = Field(default="default", pattern=TUBE_PATTERN)
    ttr: int = Field(default=60, ge=1, le=86400, description="seconds a lease lasts untouched")
    max_attempts: int = Field(default=3, ge=1, le=100)
    backoff: Backoff = Field(default_factory=Backoff)
    overlap: Overlap = Overlap.SKIP
    misfire: Misfire = Misfire.RUN_LATEST
    misfire_grace: int = Field(default=60, ge=0, le=7 * 86400, description="seconds")
    retention_days: int = Field(default=90, ge=1, le=3660)
    paused: bool = False
    # Pause on failure (docs/SCHEDULES.md): after this many consecutive failed runs the hub
    # pauses the task and says why (paused_reason) and since when (paused_at).
    pause_after_failures: int | None = Field(default=None, ge=1, le=1000)
    # A limit on the number of runs (docs/SCHEDULES.md, "max_runs"): the schedule's fires
    # are counted from its start (else the task's creation), so every hub agrees on where the
    # task ends without keeping a counter; then the hub marks it paused with the reason.
    max_runs: int | None = Field(default=None, ge=1, le=MAX_RUNS)
    # Alerts (docs/ALERTS.md): after this many consecutive failed runs the task is
    # "failing" and the client is told once; the first success after that tells "recovered".
    alert_after_failures: int | None = Field(default=None, ge=1, le=1000)
    # Where to tell (the client's settings hold the webhook and the address); None: every
    # channel the client has set up.
    alert_channels: tuple[AlertChannel, ...] | None = Field(default=None, max_length=2)
    paused_reason: str | None = Field(default=None, max_length=MAX_REASON_CHARS)
    paused_at: str | None = Field(default=None, pattern=WIRE_TIME_PATTERN)
    # Quorum runs (decision 17): k distinct workers run each occurrence and the hub's
    # validator keeps the result a strict majority agrees with.
    quorum: int = Field(default=1, ge=1, le=MAX_QUORUM)
    # Seconds after the occurrence's not_before to wait for the k-th result; None: 3 x ttr.
    quorum_timeout: int | None = Field(default=None, ge=1, le=7 * 86400)
    # At the timeout: "decide" with the results in hand (a strict majority of at least 2),
    # else (or with "fail") the occurrence ends inconclusive.
    quorum_on_timeout: Literal["decide", "fail"] = "decide"
    # A trusted worker's result may be accepted alone, but for spot checks at this rate.
    adaptive: bool = False
    spot_check_rate: float = Field(default=0.1, ge=0.0, le=1.0)
    created_at: str = Field(pattern=WIRE_TIME_PATTERN)
    updated_at: str = Field(pattern=WIRE_TIME_PATTERN)

    @property
    def ended(self) -> bool:
        """The hub ended it at its ``max_runs`` (and nobody resumed it since)."""
        return self.paused and (self.paused_reason or "").startswith(ENDED_REASON_PREFIX)

    @property
    def status(self) -> str:
        """``active``, ``paused`` or ``ended``: what the portal, API and CLI show."""
        return "ended" if self.ended else "paused" if self.paused else "active"

    @model_validator(mode="after")
    def _id_matches(self) -> Task:
        expected = task_id(self.client, self.slug)
        if self.id != expected:
            raise ValueError(f"_id must be {expected!r} for client {self.client!r} and slug")
        if self.adaptive and self.quorum < 2:
            raise ValueError(
                "adaptive: replication needs quorum 2 or more (a trusted worker's result is "
                "accepted alone; spot checks run the full quorum)"
            )
        return self

    @field_validator("input")
    @classmethod
    def _input_small(cls, value: dict[str, Any]) -> dict[str, Any]:
        if json_size(value) > MAX_INPUT_BYTES:
            raise ValueError(f"input is larger than {MAX_INPUT_BYTES} bytes of JSON")
        return value


# ---------------------------------------------------------------- occurrence


class Lease(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    worker: str = Field(pattern=NAME_PATTERN)
    claimed_at: str = Field(pattern=WIRE_TIME_PATTERN)
    expires_at: str = Field(pattern=WIRE_TIME_PATTERN)
    # The claim reached fewer copies than a majority of a cluster (202 Accepted): another
    # claim of the same revision won there, and this one will never run (states.abandon).
    abandoned: Literal[True] | None = None


class Progress(BaseModel):
    """Gearman-style numerator/denominator with a message."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    num: float = Field(default=0, ge=0)
    den: float = Field(default=0, ge=0)
    msg: OutsideText = Field(default="", max_length=MAX_PROGRESS_CHARS)


class ErrorRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    attempt: int = Field(ge=0)
    at: str = Field(pattern=WIRE_TIME_PATTERN)
    worker: str | None = Field(default=None, pattern=NAME_PATTERN)
    error: OutsideText = Field(max_length=MAX_ERROR_CHARS)


class RunResult(BaseModel):
    """What a run produced. Travels inside the occurrence's finishing write."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    status: Literal["ok", "error"]
    worker: str = Field(pattern=NAME_PATTERN)
    attempt: int = Field(ge=1)
    started_at: str = Field(pattern=WIRE_TIME_PATTERN)
    finished_at: str = Field(pattern=WIRE_TIME_PATTERN)
    output: Any = None
    error: OutsideText | None = Field(default=None, max_length=MAX_ERROR_CHARS)

    @field_validator("output")
    @classmethod
    def _output_small(cls, value: Any) -> Any:
        try:
            size = json_size(value)
        except UnicodeEncodeError:  # lone surrogates, e.g. from a handler's JSON
            value = clean_json(value)
            size = json_size(value)
        if size > MAX_OUTPUT_BYTES:
            raise ValueError(f"output is larger than {MAX_OUTPUT_BYTES} bytes of JSON")
        return value


SlotState = Literal["leased", "done", "error", "expired", "void"]
# Slots that count toward the quorum: running or with a result. An expired or void slot no
# longer counts, but stays, so its worker can never take a second slot of the occurrence.
LIVE_SLOT_STATES = frozenset({"leased", "done", "error"})
RESULT_SLOT_STATES = frozenset({"done", "error"})


class Slot(BaseModel):
    """One worker's part in a quorum occurrence, keyed by the worker's name."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    worker: str = Field(pattern=NAME_PATTERN)
    claimed_at: str = Field(pattern=WIRE_TIME_PATTERN)
    expires_at: str = Field(pattern=WIRE_TIME_PATTERN)
    state: SlotState
    result: RunResult | None = None
    progress: Progress | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Slot:
        if (self.state in RESULT_SLOT_STATES) != (self.result is not None):
            raise ValueError("a slot carries a result exactly when its state is done or error")
        if self.result is not None and self.result.worker != self.worker:
            raise ValueError(f"slot result of {self.result.worker} in {self.worker}'s slot")
        return self


class Validation(BaseModel):
    """The hub validator's decision on a quorum occurrence (hub.protocol.quorum.decide)."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    outcome: Literal["canonical", "inconclusive", "accepted_alone"]
    canonical: str | None = Field(default=None, pattern=NAME_PATTERN)
    agree: list[str] = Field(default_factory=list)
    disagree: list[str] = Field(default_factory=list)
    why: str = Field(max_length=MAX_REASON_CHARS)
    decided_at: str = Field(pattern=WIRE_TIME_PATTERN)
    spot_check: bool = False


class Occurrence(DocModel):
    type: Literal["occurrence"] = "occurrence"
    task: str
    client: str = Field(pattern=NAME_PATTERN)
    kind: str = Field(pattern=KIND_PATTERN)
    input: dict[str, Any] = Field(default_factory=dict)
    tube: str = Field(pattern=TUBE_PATTERN)
    priority: int = Field(ge=0, le=MAX_PRIORITY)
    ttr: int = Field(ge=1, le=86400)
    max_attempts: int = Field(ge=1, le=100)
    due_at: str = Field(pattern=WIRE_TIME_PATTERN)
    not_before: str = Field(pattern=WIRE_TIME_PATTERN)
    # Turn order in the tube's ready queue (see hub.protocol.states.turn_at); defaults to due_at.
    queue_at: str | None = Field(default=None, pattern=WIRE_TIME_PATTERN)
    state: State
    attempt: int = Field(default=0, ge=0)
    lease: Lease | None = None
    progress: Progress | None = None
    errors: list[ErrorRecord] = Field(default_factory=list)
    result: RunResult | None = None
    reason: OutsideText | None = Field(default=None, max_length=MAX_REASON_CHARS)
    # Quorum runs only (quorum > 1; absent otherwise, so quorum-1 documents are unchanged).
    quorum: int | None = Field(default=None, ge=2, le=MAX_QUORUM)
    slots: dict[str, Slot] | None = None
    validation: Validation | None = None
    # When the validator stops waiting for the k-th result, and what it then does; adaptive
    # replication's per-occurrence draw (spot_check: fully replicated even so).
    quorum_deadline: str | None = Field(default=None, pattern=WIRE_TIME_PATTERN)
    quorum_on_timeout: Literal["decide", "fail"] | None = None
    adaptive: bool | None = None
    spot_check: bool | None = None
    created_at: str = Field(pattern=WIRE_TIME_PATTERN)
    updated_at: str = Field(pattern=WIRE_TIME_PATTERN)

    @model_validator(mode="before")
    @classmethod
    def _default_queue_at(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("queue_at") is None and "due_at" in data:
            data = {**data, "queue_at": data["due_at"]}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Occurrence:
        expected = occurrence_id(self.task, from_wire(self.due_at))
        if self.id != expected:
            raise ValueError(f"_id must be {expected!r} for this task and due_at")
        client, _slug, _stamp = split_occurrence_id(self.id)
        if client != self.client:
            raise ValueError(f"client {self.client!r} does not match the id's {client!r}")
        if (self.state == State.LEASED) != (self.lease is not None):
            raise ValueError("a lease is present exactly when the state is 'leased'")
        if self.state == State.DONE and self.result is None:
            raise ValueError("a done occurrence carries its result")
        if self.result is not None and self.state != State.DONE:
            raise ValueError("only a done occurrence carries a result")
        if self.attempt > self.max_attempts and self.state in (State.READY, State.LEASED):
            raise ValueError("attempt is past max_attempts but the occurrence is still live")
        if self.quorum is None and (self.slots or self.validation is not None):
            raise ValueError("slots and validation belong to quorum occurrences (quorum > 1)")
        if self.state == State.INCONCLUSIVE and (
            self.validation is None or self.validation.outcome != "inconclusive"
        ):
            raise ValueError("an inconclusive occurrence carries validation.outcome inconclusive")
        for name, slot in (self.slots or {}).items():
            if slot.worker != name:
                raise ValueError(f"slot {name!r} names worker {slot.worker!r}")
        return self

    @property
    def is_quorum(self) -> bool:
        return (self.quorum or 1) > 1

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES


# ---------------------------------------------------------------- archived result


class Result(DocModel):
    """``res:{occurrence}`` in ``farm_results_YYYY_MM``: written once by the hub's archiver."""

    type: Literal["result"] = "result"
    occurrence: str
    task: str
    client: str = Field(pattern=NAME_PATTERN)
    kind: str = Field(pattern=KIND_PATTERN)
    due_at: str = Field(pattern=WIRE_TIME_PATTERN)
    state: State
    attempt: int = Field(ge=0)
    worker: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    status: Literal[
        "ok", "error", "failed", "buried", "missed", "skipped", "cancelled", "inconclusive"
    ]
    output: Any = None
    error: str | None = None
    errors: list[ErrorRecord] = Field(default_factory=list)
    duration_ms: int | None = None
    latency_ms: int | None = None
    # Quorum runs: the validator's decision, and every slot's result (canonical included).
    validation: Validation | None = None
    alternatives: list[RunResult] | None = None

    @model_validator(mode="after")
    def _id_matches(self) -> Result:
        if self.id != result_id(self.occurrence):
            raise ValueError(f"_id must be {result_id(self.occurrence)!r}")
        return self


# ---------------------------------------------------------------- worker


class WorkerTotals(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    done: int = Field(default=0, ge=0)
    failed: int = Field(default=0, ge=0)
    lost: int = Field(default=0, ge=0)


class WorkerDoc(DocModel):
    type: Literal["worker"] = "worker"
    name: str = Field(pattern=NAME_PATTERN)
    version: str = Field(max_length=40)
    os: str = Field(max_length=100)
    tubes: list[str] = Field(default_factory=lambda: ["default"], max_length=50)
    kinds: list[str] = Field(default_factory=list, max_length=100)
    slots: int = Field(default=1, ge=1, le=256)
    state: Literal["running", "paused", "draining", "stopped"] = "running"
    last_seen: str = Field(pattern=WIRE_TIME_PATTERN)
    started_at: str = Field(pattern=WIRE_TIME_PATTERN)
    current: list[str] = Field(default_factory=list, max_length=256)
    totals: WorkerTotals = Field(default_factory=WorkerTotals)

    @model_validator(mode="after")
    def _id_matches(self) -> WorkerDoc:
        if self.id != worker_id(self.name):
            raise ValueError(f"_id must be {worker_id(self.name)!r}")
        for tube in self.tubes:
            if not re.fullmatch(TUBE_PATTERN, tube):
                raise ValueError(f"tube {tube!r} is not a valid tube name")
        return self


# ---------------------------------------------------------------- reliability


def reliability_id(worker: str) -> str:
    return f"hub:reliability:{worker}"


def reliability_score(agree: int, disagree: int) -> float:
    """Laplace's rule of succession: a new worker starts at 0.5 and earns trust slowly."""
    return (agree + 1) / (agree + disagree + 2)


MAX_LIFTS = 10  # the quarantine lifts a reliability document remembers, newest last


class QuarantineLift(BaseModel):
    """An operator lifted a worker's quarantine (``hub worker lift-quarantine``): who (the
    person named, and the CouchDB user that wrote it), when (hub time), what was lifted."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    by: str = Field(min_length=1, max_length=100)
    user: str | None = Field(default=None, max_length=100)
    at: str = Field(pattern=WIRE_TIME_PATTERN)
    quarantined_at: str | None = Field(default=None, pattern=WIRE_TIME_PATTERN)
    disagree_streak: int = Field(default=0, ge=0)
    reason: str | None = Field(default=None, max_length=MAX_REASON_CHARS)


class Reliability(DocModel):
    """``hub:reliability:{worker}``: a worker's agreement history, kept by the validator."""

    type: Literal["reliability"] = "reliability"
    worker: str = Field(pattern=NAME_PATTERN)
    agree: int = Field(default=0, ge=0)
    disagree: int = Field(default=0, ge=0)
    disagree_streak: int = Field(default=0, ge=0)
    score: float = Field(default=0.5, ge=0.0, le=1.0)
    quarantined: bool = False
    quarantined_at: str | None = Field(default=None, pattern=WIRE_TIME_PATTERN)
    updated_at: str = Field(pattern=WIRE_TIME_PATTERN)
    lifts: list[QuarantineLift] = Field(default_factory=list, max_length=MAX_LIFTS)

    @model_validator(mode="after")
    def _id_matches(self) -> Reliability:
        if self.id != reliability_id(self.worker):
            raise ValueError(f"_id must be {reliability_id(self.worker)!r}")
        return self


# ---------------------------------------------------------------- helpers


def json_size(value: Any) -> int:
    import json

    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


def describe_validation_error(exc: ValidationError, prefix: str = "") -> list[str]:
    """Pydantic's error list as lines a person can act on: 'schedule.every: ...'."""
    lines = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(part) for part in err["loc"]) or "document"
        message = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r:.60})"
        lines.append(f"{prefix}{where}: {message}{shown}")
    return lines


MODEL_BY_TYPE: dict[str, type[DocModel]] = {
    "task": Task,
    "occurrence": Occurrence,
    "result": Result,
    "worker": WorkerDoc,
    "reliability": Reliability,
}
