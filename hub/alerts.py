"""Run health per task: consecutive failed runs, counted from the hub's ``_changes`` feed,
and what follows from them (pause on failure; alerts build on the same counts).

Which ends count (docs/SCHEDULES.md, "Pause on failure"):

* a **failure**: ``done`` with ``result.status == "error"`` (the run ran and reported an
  error, e.g. a check that found its target down), ``failed`` (a permanent error) and
  ``buried`` (every attempt used up);
* a **success**: ``done`` with status ``ok``;
* **neither** (the streak is left as it is): ``missed``, ``skipped``, ``cancelled`` (no run
  happened, or a person or a policy stopped it) and a failed attempt that will be retried
  (``scheduled`` again: the run has not ended).

Each task's counts live in ``hub:health:{task}`` in the live database (farm_admin only,
like every ``hub:`` document). Cheap by construction: the feed hands each finished
occurrence to :meth:`HealthTracker.observe` (no request); :meth:`HealthTracker.process`
writes only when a count changes (a failure, or the first success after failures), so a
healthy task's runs cost nothing. Two hubs both count every outcome; each write carries
the ``_rev`` it read, and a run is counted once because the document remembers the due
time of the newest run it counted (``last_due``).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from hub.protocol.couch import Conflict, Couch
from hub.protocol.model import Task
from hub.protocol.timefmt import to_wire

log = logging.getLogger("couchfarm.alerts")

HEALTH_PREFIX = "hub:health:"
Outcome = Literal["ok", "failure"]


def health_id(task_id: str) -> str:
    return f"{HEALTH_PREFIX}{task_id}"


def outcome_of(doc: dict[str, Any]) -> Outcome | None:
    """What an occurrence's current state says about its run (see the module's docstring)."""
    if doc.get("type") != "occurrence" or doc.get("_deleted"):
        return None
    state = doc.get("state")
    if state == "done":
        result = doc.get("result") or {}
        return "failure" if result.get("status") == "error" else "ok"
    if state in ("failed", "buried"):
        return "failure"
    return None


@dataclass(frozen=True)
class Health:
    """One task's counts (the body of ``hub:health:{task}``, minus its ``_rev``)."""

    task: str
    client: str
    streak: int = 0  # consecutive failed runs, newest last
    pause_streak: int = 0  # the same, since the task was last resumed
    last_due: str = ""  # due time of the newest run counted
    last_occurrence: str = ""
    last_outcome: str = ""
    updated_at: str = ""

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Health:
        return cls(**{k: doc[k] for k in cls.__dataclass_fields__ if k in doc})

    def to_doc(self, rev: str | None) -> dict[str, Any]:
        doc: dict[str, Any] = {"_id": health_id(self.task), "type": "hub", "kind": "task_health"}
        doc.update(self.__dict__)
        if rev:
            doc["_rev"] = rev
        return doc


def advance(
    health: Health, occ_id: str, due_at: str, outcome: Outcome, now: datetime
) -> Health | None:
    """The counts after one run's outcome, or None when nothing changes (already counted,
    an older run than the newest counted, or a success on a healthy task)."""
    newer = due_at > health.last_due
    changed_ending = (
        due_at == health.last_due
        and occ_id == health.last_occurrence
        and outcome != health.last_outcome  # e.g. a buried run kicked and then done
    )
    if not (newer or changed_ending):
        return None
    if outcome == "ok":
        if health.streak == 0 and health.pause_streak == 0:
            return None  # nothing to write: a healthy task's runs are free
        streak, pause_streak = 0, 0
    else:
        streak, pause_streak = health.streak + 1, health.pause_streak + 1
    return Health(
        task=health.task,
        client=health.client,
        streak=streak,
        pause_streak=pause_streak,
        last_due=due_at,
        last_occurrence=occ_id,
        last_outcome=outcome,
        updated_at=to_wire(now),
    )


def pause_reason(task: Task, health: Health) -> str | None:
    """Why ``task`` should pause now, or None."""
    limit = task.pause_after_failures
    if limit is None or task.paused or health.pause_streak < limit:
        return None
    return (
        f"paused after {health.pause_streak} consecutive failed runs "
        f"(pause_after_failures={limit}; last: {health.last_occurrence})"
    )


@dataclass
class HealthTracker:
    """Counts outcomes seen on the live feed into ``hub:health:{task}`` documents and
    pauses a task whose ``pause_after_failures`` is reached."""

    couch: Couch
    db: str
    cache: dict[str, tuple[Health, str | None]] = field(default_factory=dict)  # task -> rev
    _pending: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    paused: int = 0

    def load(self) -> None:
        rows = self.couch.all_docs(
            self.db, startkey=HEALTH_PREFIX, endkey=HEALTH_PREFIX + "\ufff0", include_docs=True
        )
        with self._lock:
            for row in rows:
                if row.get("doc"):
                    self._remember(row["doc"])

    def observe(self, doc: dict[str, Any] | None) -> None:
        """One document from the feed: no request, so the feed never waits on this."""
        if not doc:
            return
        doc_id = str(doc.get("_id", ""))
        with self._lock:
            if doc_id.startswith(HEALTH_PREFIX) and not doc.get("_deleted"):
                self._remember(doc)
            elif outcome_of(doc) is not None:
                self._pending.append(doc)

    def _remember(self, doc: dict[str, Any]) -> None:
        health = Health.from_doc(doc)
        known = self.cache.get(health.task)
        if known is None or _generation(doc.get("_rev")) >= _generation(known[1]):
            self.cache[health.task] = (health, doc.get("_rev"))

    def process(self, tasks: dict[str, Task], now: datetime) -> int:
        """Count what the feed brought. Returns how many health documents were written."""
        with self._lock:
            pending, self._pending = self._pending, []
        pending.sort(key=lambda doc: str(doc.get("due_at", "")))
        written = 0
        for doc in pending:
            outcome = outcome_of(doc)
            task_id, client = str(doc.get("task", "")), str(doc.get("client", ""))
            if outcome is None or not task_id:
                continue
            health = self._count(task_id, client, doc, outcome, now)
            if health is None:
                continue
            written += 1
            task = tasks.get(task_id)
            if task is not None:
                self._pause_if_due(task, health, now)
        return written

    def _count(
        self, task_id: str, client: str, doc: dict[str, Any], outcome: Outcome, now: datetime
    ) -> Health | None:
        for _ in range(5):
            with self._lock:
                known, rev = self.cache.get(task_id, (Health(task_id, client), None))
            updated = advance(known, str(doc["_id"]), str(doc.get("due_at", "")), outcome, now)
            if updated is None:
                return None
            try:
                new_rev = self.couch.put(self.db, updated.to_doc(rev))
            except Conflict:
                # Another hub counted, or the task was resumed: count on the stored copy.
                fresh = self.couch.get_or_none(self.db, health_id(task_id))
                with self._lock:
                    if fresh is None:
                        self.cache.pop(task_id, None)
                    else:
                        self.cache[task_id] = (Health.from_doc(fresh), fresh.get("_rev"))
                continue
            with self._lock:
                self.cache[task_id] = (updated, new_rev)
            log.info(
                "event=task_health task=%s occ=%s outcome=%s streak=%d",
                task_id, doc["_id"], outcome, updated.streak,
            )  # fmt: skip
            return updated
        log.warning("event=task_health_contended task=%s occ=%s", task_id, doc["_id"])
        return None

    def _pause_if_due(self, task: Task, health: Health, now: datetime) -> None:
        if pause_reason(task, health) is None:
            return
        for _ in range(3):
            current = self.couch.get_or_none(self.db, task.id)
            if current is None:
                return
            fresh = Task.from_doc(current)
            reason = pause_reason(fresh, health)
            if reason is None:
                return  # paused meanwhile, or the limit was raised
            stamp = to_wire(now)
            paused = fresh.model_copy(
                update={"paused": True, "paused_reason": reason, "paused_at": stamp,
                        "updated_at": stamp}
            )  # fmt: skip
            try:
                self.couch.put(self.db, paused.to_doc())
            except Conflict:
                continue
            self.paused += 1
            log.warning("event=task_paused_on_failure task=%s reason=%r", task.id, reason)
            return


def reset_pause_streak(couch: Couch, db: str, task_id: str) -> None:
    """On resume: failures before it no longer count toward ``pause_after_failures``
    (the ok/failing streak for alerts stays)."""
    for _ in range(5):
        doc = couch.get_or_none(db, health_id(task_id))
        if doc is None or not doc.get("pause_streak"):
            return
        try:
            couch.put(db, {**doc, "pause_streak": 0})
            return
        except Conflict:
            continue


def _generation(rev: Any) -> int:
    try:
        return int(str(rev).split("-", 1)[0])
    except ValueError:
        return 0
