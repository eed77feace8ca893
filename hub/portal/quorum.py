"""What the portal shows of a quorum run (issue 18): the k results of one occurrence, which
one is canonical and why, and the workers' reliability for the ops page.

Pure functions over plain documents (no I/O). They read the quorum fields as dicts, not
through ``hub.protocol.model``, and treat every one of them as optional: a quorum-1
occurrence or result has none of them, and a document written before or after the model
gained them reads the same way. A field of the wrong type reads as absent, never as a
crash of the page that shows it.

The document shape (issue 18's brief):

- a live occurrence with ``quorum`` > 1 has ``slots`` (worker name -> ``{worker,
  claimed_at, expires_at, state, result, progress}``) and, once decided, ``validation``
  (``{outcome, canonical, agree, disagree, why, decided_at, spot_check}``);
- an archived result (``res:{occ}``) has ``validation`` and ``alternatives`` (every slot's
  RunResult, the canonical one included); an inconclusive one has ``status``
  ``"inconclusive"``;
- ``hub:reliability:{worker}`` in the live database: ``{worker, agree, disagree,
  disagree_streak, score, quarantined, quarantined_at, updated_at}``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from hub.protocol.timefmt import from_wire

OUTCOMES = ("canonical", "inconclusive", "accepted_alone")
RELIABILITY_PREFIX = "hub:reliability:"
FLAG_SCORE = 0.5
"""A worker below this score is flagged on the ops page: it disagreed at least as often as
it agreed (the score is (agree + 1) / (agree + disagree + 2), 0.5 with no history)."""
FLAG_STREAK = 2
"""A worker whose last results disagreed this many times in a row is flagged."""

# Where a result sits in the list: canonical first, then those that agree, then those that
# do not, then slots still running or without a result.
_VERDICT_ORDER = {"canonical": 0, "agrees": 1, "disagrees": 2, "no_majority": 2, "": 3}


@dataclass(frozen=True)
class SlotView:
    """One worker's part in a quorum run."""

    worker: str
    state: str  # leased, done, error, expired, void (an archived result: done)
    verdict: str  # canonical, agrees, disagrees, no_majority (inconclusive), "" (not judged)
    status: str | None = None  # the RunResult's status: ok or error
    attempt: int | None = None
    output: Any = None
    error: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    duration_ms: int | None = None
    latency_ms: int | None = None
    claimed_at: str | None = None
    expires_at: str | None = None
    progress: dict[str, Any] | None = None
    result: dict[str, Any] | None = None  # the RunResult as stored (exports' alternatives)

    @property
    def canonical(self) -> bool:
        return self.verdict == "canonical"


@dataclass(frozen=True)
class QuorumView:
    """A quorum run as the portal shows it; ``outcome`` None means not decided yet."""

    quorum: int | None
    outcome: str | None
    canonical: str | None
    why: str
    decided_at: str | None
    spot_check: bool
    agree: list[str]
    disagree: list[str]
    slots: list[SlotView] = field(default_factory=list)
    validation: dict[str, Any] | None = None  # as stored, for the feed and the exports
    deadline: str | None = None  # quorum_deadline: when the hub stops waiting for the k-th

    @property
    def results(self) -> int:
        """How many slots hold a result."""
        return sum(1 for slot in self.slots if slot.result is not None)

    @property
    def running(self) -> bool:
        """A worker holds a slot now (the occurrence itself stays ``ready`` meanwhile)."""
        return any(slot.state == "leased" for slot in self.slots)

    @property
    def alternatives(self) -> list[dict[str, Any]]:
        """Every result, the canonical one included (the export's ``alternatives``)."""
        return [slot.result for slot in self.slots if slot.result is not None]

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["results"] = self.results
        for slot in out["slots"]:
            slot.pop("result", None)  # the same fields are on the slot itself
        return out


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _names(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _ms_between(start: str | None, end: str | None) -> int | None:
    if not start or not end:
        return None
    try:
        return int((from_wire(end) - from_wire(start)).total_seconds() * 1000)
    except ValueError:
        return None


def validation_of(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The stored ``validation`` when it is one (an object with a known outcome)."""
    value = doc.get("validation")
    if isinstance(value, dict) and value.get("outcome") in OUTCOMES:
        return value
    return None


def _verdict(worker: str, has_result: bool, validation: dict[str, Any] | None) -> str:
    if not has_result or validation is None:
        return ""
    if worker == validation.get("canonical"):
        return "canonical"
    if worker in _names(validation.get("agree")):
        return "agrees"
    if validation.get("outcome") == "inconclusive":
        # No majority to disagree with: no result is called wrong, none is kept.
        return "no_majority"
    if worker in _names(validation.get("disagree")):
        return "disagrees"
    return ""  # e.g. a result that arrived after the decision: not judged


def _slot(
    worker: str, state: str, result: Any, due_at: str | None, validation: dict[str, Any] | None,
    extra: dict[str, Any],
) -> SlotView:  # fmt: skip
    run = result if isinstance(result, dict) else None
    started = _text(run.get("started_at")) if run else None
    finished = _text(run.get("finished_at")) if run else None
    progress = extra.get("progress")
    return SlotView(
        worker=worker, state=state, verdict=_verdict(worker, run is not None, validation),
        status=_text(run.get("status")) if run else None,
        attempt=run.get("attempt") if run and isinstance(run.get("attempt"), int) else None,
        output=run.get("output") if run else None,
        error=_text(run.get("error")) if run else None,
        started_at=started, finished_at=finished,
        duration_ms=_ms_between(started, finished), latency_ms=_ms_between(due_at, started),
        claimed_at=_text(extra.get("claimed_at")), expires_at=_text(extra.get("expires_at")),
        progress=progress if isinstance(progress, dict) else None, result=run,
    )  # fmt: skip


RUN_FIELDS = ("status", "worker", "attempt", "started_at", "finished_at", "output", "error")


def _flattened_run(doc: dict[str, Any]) -> dict[str, Any]:
    """An archived result's own RunResult fields (the archiver copies them to the top)."""
    return {name: doc[name] for name in RUN_FIELDS if doc.get(name) is not None}


def quorum_view(doc: dict[str, Any]) -> QuorumView | None:
    """The quorum run held by a live occurrence or an archived result, or None for a
    quorum-1 one (no ``slots``, ``validation`` or ``alternatives``, quorum absent or 1)."""
    if not isinstance(doc, dict):
        return None
    quorum = doc.get("quorum")
    quorum = quorum if isinstance(quorum, int) and not isinstance(quorum, bool) else None
    validation = validation_of(doc)
    raw_slots = doc.get("slots")
    alternatives = doc.get("alternatives")
    has_slots = isinstance(raw_slots, dict) and bool(raw_slots)
    has_alternatives = isinstance(alternatives, list) and bool(alternatives)
    if not (has_slots or has_alternatives or validation or (quorum or 1) > 1):
        return None
    due_at = _text(doc.get("due_at"))
    slots: list[SlotView] = []
    if has_slots:
        assert isinstance(raw_slots, dict)
        for name, slot in raw_slots.items():
            if not isinstance(slot, dict):
                continue
            worker = _text(slot.get("worker")) or str(name)
            state = _text(slot.get("state")) or "leased"
            slots.append(_slot(worker, state, slot.get("result"), due_at, validation, slot))
    elif has_alternatives:
        assert isinstance(alternatives, list)
        for run in alternatives:
            if isinstance(run, dict):
                worker = _text(run.get("worker")) or "?"
                slots.append(_slot(worker, "done", run, due_at, validation, {}))
    elif validation is not None and (isinstance(doc.get("result"), dict) or doc.get("worker")):
        # Decided with no slots or alternatives kept (e.g. accepted alone): the one result
        # is the canonical one, inside a live occurrence or flattened into an archived one.
        run = doc["result"] if isinstance(doc.get("result"), dict) else _flattened_run(doc)
        worker = _text(run.get("worker")) or "?"
        slots.append(_slot(worker, "done", run, due_at, validation, {}))
    slots.sort(key=lambda s: (_VERDICT_ORDER.get(s.verdict, 3), s.worker))
    v = validation or {}
    return QuorumView(
        quorum=quorum, outcome=_text(v.get("outcome")), canonical=_text(v.get("canonical")),
        why=_text(v.get("why")) or "", decided_at=_text(v.get("decided_at")),
        # The occurrence's own draw says so before the decision does.
        spot_check=v.get("spot_check") is True or doc.get("spot_check") is True,
        agree=_names(v.get("agree")), disagree=_names(v.get("disagree")), slots=slots,
        validation=validation, deadline=_text(doc.get("quorum_deadline")),
    )  # fmt: skip


# ---------------------------------------------------------------- reliability


@dataclass(frozen=True)
class ReliabilityRow:
    worker: str
    score: float | None
    agree: int
    disagree: int
    disagree_streak: int
    quarantined: bool
    quarantined_at: str | None
    updated_at: str | None
    flagged: bool
    flag_reason: str  # why it is flagged or quarantined, for the page; "" otherwise


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def reliability_row(doc: dict[str, Any]) -> ReliabilityRow | None:
    """One ``hub:reliability:{worker}`` document as a row, or None when it is not one."""
    if not isinstance(doc, dict) or doc.get("type") != "reliability":
        return None
    worker = _text(doc.get("worker")) or str(doc.get("_id", "")).removeprefix(RELIABILITY_PREFIX)
    agree, disagree = _count(doc.get("agree")), _count(doc.get("disagree"))
    streak = _count(doc.get("disagree_streak"))
    score = doc.get("score")
    if not isinstance(score, int | float) or isinstance(score, bool):
        score = (agree + 1) / (agree + disagree + 2)  # the documented formula
    quarantined = doc.get("quarantined") is True
    reasons = []
    if score < FLAG_SCORE:
        reasons.append(f"score under {FLAG_SCORE:g}")
    if streak >= FLAG_STREAK:
        reasons.append(f"{streak} disagreements in a row")
    return ReliabilityRow(
        worker=worker, score=round(float(score), 4), agree=agree, disagree=disagree,
        disagree_streak=streak, quarantined=quarantined,
        quarantined_at=_text(doc.get("quarantined_at")), updated_at=_text(doc.get("updated_at")),
        flagged=not quarantined and bool(reasons),
        flag_reason="quarantined" if quarantined else ", ".join(reasons),
    )  # fmt: skip


def reliability_rows(docs: list[dict[str, Any]]) -> list[ReliabilityRow]:
    """The ops page's order: quarantined workers first, then flagged ones, then the rest;
    within each, the least reliable first (lowest score, then longest streak, then name)."""
    rows = [row for row in (reliability_row(d) for d in docs) if row is not None]
    return sorted(
        rows,
        key=lambda r: (
            0 if r.quarantined else 1 if r.flagged else 2,
            r.score if r.score is not None else 1.0,
            -r.disagree_streak,
            r.worker,
        ),
    )
