"""Run health per task: consecutive failed runs, counted from the hub's ``_changes`` feed,
and what follows from them (pause on failure; alerts build on the same counts).

Which ends count (docs/SCHEDULES.md, "Pause on failure"):

* a **failure**: ``done`` with ``result.status == "error"`` (the run ran and reported an
  error, e.g. a check that found its target down), ``failed`` (a permanent error),
  ``buried`` (every attempt used up) and ``inconclusive`` (a quorum run, decision 17, whose
  results did not agree, or too few came in: the runs happened and the farm has no answer
  to give; the client must hear about it as about an error);
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
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from hub.notify import DeliveryError, SmtpSettings, post_webhook, send_email
from hub.protocol.couch import Conflict, Couch
from hub.protocol.model import Task
from hub.protocol.timefmt import to_wire

log = logging.getLogger("couchfarm.alerts")

HEALTH_PREFIX = "hub:health:"
Outcome = Literal["ok", "failure"]


def health_id(task_id: str) -> str:
    return f"{HEALTH_PREFIX}{task_id}"


FAILED_ENDS = ("failed", "buried", "inconclusive")


def outcome_of(doc: dict[str, Any]) -> Outcome | None:
    """What an occurrence's current state says about its run (see the module's docstring)."""
    if doc.get("type") != "occurrence" or doc.get("_deleted"):
        return None
    state = doc.get("state")
    if state == "done":
        result = doc.get("result") or {}
        return "failure" if result.get("status") == "error" else "ok"
    if state in FAILED_ENDS:
        return "failure"
    return None


def end_of(doc: dict[str, Any]) -> str:
    """How a counted run ended, for the alert: ``ok``, ``error`` (done with an error),
    ``failed``, ``buried`` or ``inconclusive``."""
    state = str(doc.get("state", ""))
    if state == "done":
        return "error" if (doc.get("result") or {}).get("status") == "error" else "ok"
    return state


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
    last_end: str = ""  # how it ended (end_of): an alert says "inconclusive" apart from "error"
    updated_at: str = ""
    failing: bool = False  # an ok -> failing alert was raised and no success came since
    alert_seq: int = 0  # transitions raised so far: the next alert's id (alert_id)

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
    health: Health, occ_id: str, due_at: str, outcome: Outcome, now: datetime, end: str = ""
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
        if health.streak == 0 and health.pause_streak == 0 and not health.failing:
            return None  # nothing to write: a healthy task's runs are free
        streak, pause_streak = 0, 0
    else:
        streak, pause_streak = health.streak + 1, health.pause_streak + 1
    return replace(
        health,
        streak=streak,
        pause_streak=pause_streak,
        last_due=due_at,
        last_occurrence=occ_id,
        last_outcome=outcome,
        last_end=end,
        updated_at=to_wire(now),
    )


def with_transition(health: Health, alert_after: int | None) -> Health:
    """``health`` with ``failing``/``alert_seq`` moved when its counts cross a threshold:
    ok -> failing once ``alert_after`` failures are in a row (not at the first, against
    flapping), failing -> ok at the first success. The transition is written in the same
    revision as the count that caused it, so each one exists once whichever hub counts."""
    if not health.failing and alert_after is not None and health.streak >= alert_after:
        return replace(health, failing=True, alert_seq=health.alert_seq + 1)
    if health.failing and health.streak == 0:
        return replace(health, failing=False, alert_seq=health.alert_seq + 1)
    return health


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
            task = tasks.get(task_id)
            alert_after = task.alert_after_failures if task is not None else None
            health = self._count(task_id, client, doc, outcome, now, alert_after)
            if health is None:
                continue
            written += 1
            if task is not None:
                self._pause_if_due(task, health, now)
        return written

    def _count(
        self,
        task_id: str,
        client: str,
        doc: dict[str, Any],
        outcome: Outcome,
        now: datetime,
        alert_after: int | None = None,
    ) -> Health | None:
        for _ in range(5):
            with self._lock:
                known, rev = self.cache.get(task_id, (Health(task_id, client), None))
            updated = advance(
                known, str(doc["_id"]), str(doc.get("due_at", "")), outcome, now, end_of(doc)
            )
            if updated is None:
                return None
            updated = with_transition(updated, alert_after)
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
            if updated.alert_seq != known.alert_seq:
                raise_alert(self.couch, self.db, updated, now)
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


# ---------------------------------------------------------------- alert documents
#
# One document per transition, ``hub:alert:{task}:{seq}``: the id is the transition's, so
# a second hub (or a restarted one) that raises it again gets a 409 and nothing more. A
# hub sends only after *claiming* the document: a write over the revision it read, which
# only one hub can win; the claim lasts CLAIM_S, after which another hub may take over an
# attempt the first never recorded (a hub that died mid-send: then, and only then, a
# channel may hear twice). Every attempt is recorded in the document (``attempts``).

ALERT_PREFIX = "hub:alert:"
CLIENT_SETTINGS_PREFIX = "hub:client:"
CLAIM_S = 60.0
MAX_ALERT_ATTEMPTS = 8
ALERT_BACKOFF_BASE_S = 5.0
ALERT_BACKOFF_MAX_S = 3600.0
MAX_RECORDED_ATTEMPTS = 50  # per alert, newest kept: the document stays small
Transition = Literal["failing", "recovered"]
DeliveryState = Literal["pending", "delivered", "failed", "no_channel"]


def alert_id(task_id: str, seq: int) -> str:
    return f"{ALERT_PREFIX}{task_id}:{seq:06d}"


def client_settings_id(client: str) -> str:
    return f"{CLIENT_SETTINGS_PREFIX}{client}"


def new_alert(health: Health, now: datetime) -> dict[str, Any]:
    """The alert document for ``health``'s latest transition (pure)."""
    transition: Transition = "failing" if health.failing else "recovered"
    stamp = to_wire(now)
    return {
        "_id": alert_id(health.task, health.alert_seq),
        "type": "hub",
        "kind": "alert",
        "task": health.task,
        "client": health.client,
        "seq": health.alert_seq,
        "transition": transition,
        "streak": health.streak,
        "end": health.last_end,
        "occurrence": health.last_occurrence,
        "due_at": health.last_due,
        "created_at": stamp,
        "state": "pending",
        "channels": None,  # resolved at the first claim from the client's settings
        "attempts": [],
        "attempt_count": 0,
        "next_attempt_at": stamp,
        "claimed_by": None,
        "claimed_until": None,
    }


def alert_backoff_s(attempt_count: int) -> float:
    """Seconds before attempt ``attempt_count + 1``: 5, 10, 20, ... at most an hour."""
    return float(min(ALERT_BACKOFF_MAX_S, ALERT_BACKOFF_BASE_S * 2 ** max(0, attempt_count - 1)))


def claim_alert(
    doc: dict[str, Any], hub_name: str, now: datetime, channels: list[str]
) -> dict[str, Any]:
    """``doc`` claimed by ``hub_name`` for CLAIM_S; its channels fixed at the first claim
    (a pending channel for each the client set up and the task asks for)."""
    claimed = dict(doc)
    claimed["claimed_by"] = hub_name
    claimed["claimed_until"] = to_wire(now + timedelta(seconds=CLAIM_S))
    if claimed.get("channels") is None:
        claimed["channels"] = {channel: "pending" for channel in channels}
    return claimed


def settle_alert(
    doc: dict[str, Any], outcomes: dict[str, tuple[bool, str]], now: datetime
) -> dict[str, Any]:
    """``doc`` after one round of sending: each channel's attempt recorded (ok, detail),
    then delivered (every channel took it), failed (MAX_ALERT_ATTEMPTS used up), or pending
    again after the backoff. The claim is released."""
    settled = dict(doc)
    stamp = to_wire(now)
    channels = dict(settled.get("channels") or {})
    attempts = list(settled.get("attempts") or [])
    for channel, (ok, detail) in sorted(outcomes.items()):
        attempts.append({"channel": channel, "at": stamp, "ok": ok, "detail": detail[:500]})
        if ok:
            channels[channel] = "delivered"
    count = int(settled.get("attempt_count") or 0) + 1
    settled.update(
        channels=channels,
        attempts=attempts[-MAX_RECORDED_ATTEMPTS:],
        attempt_count=count,
        claimed_by=None,
        claimed_until=None,
    )
    if not channels:
        settled["state"] = "no_channel"
    elif all(state == "delivered" for state in channels.values()):
        settled["state"] = "delivered"
    elif count >= MAX_ALERT_ATTEMPTS:
        settled["state"] = "failed"
        for channel, state in channels.items():
            if state != "delivered":
                channels[channel] = "failed"
    else:
        settled["next_attempt_at"] = to_wire(now + timedelta(seconds=alert_backoff_s(count)))
    return settled


def alert_message(doc: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """(email subject, email text, webhook payload) for an alert document."""
    task = str(doc["task"])
    name = task.removeprefix("task:").replace(":", "/", 1)
    failing = doc["transition"] == "failing"
    if failing:
        subject = f"[couchfarm] {name} is failing ({doc['streak']} failed runs in a row)"
        text = (
            f"Task {name} has failed {doc['streak']} runs in a row; the latest is "
            f"{doc['occurrence']} (due {doc['due_at']}).\n"
        )
        if doc.get("end") == "inconclusive":
            text += (
                "It was inconclusive: the workers' results did not agree (or too few came "
                "in), so there is no answer for it; every result is kept with it.\n"
            )
    else:
        subject = f"[couchfarm] {name} recovered"
        text = f"Task {name} ran successfully again: {doc['occurrence']} (due {doc['due_at']}).\n"
    payload = {
        "event": f"task.{doc['transition']}",
        "alert": doc["_id"],
        "seq": doc["seq"],
        "task": task,
        "client": doc["client"],
        "streak": doc["streak"],
        "end": doc.get("end") or None,
        "occurrence": doc["occurrence"],
        "due_at": doc["due_at"],
        "at": doc["created_at"],
    }
    return subject, text + "\n-- couchfarm alerts (docs/ALERTS.md)\n", payload


def raise_alert(couch: Couch, db: str, health: Health, now: datetime) -> dict[str, Any] | None:
    """Create the alert document of ``health``'s latest transition; None if it exists."""
    doc = new_alert(health, now)
    try:
        doc["_rev"] = couch.put(db, doc)
    except Conflict:
        return None  # raised already (another hub, or before a restart)
    log.warning(
        "event=alert_raised alert=%s task=%s transition=%s streak=%d",
        doc["_id"], health.task, doc["transition"], health.streak,
    )  # fmt: skip
    return doc


@dataclass
class AlertSender:
    """Sends the pending alert documents the feed shows (the hub's ``alerts`` duty)."""

    couch: Couch
    db: str
    hub_name: str
    smtp: SmtpSettings | None = None
    allow_private: bool = False  # webhooks to private addresses (tests, closed networks)
    known: set[str] = field(default_factory=set)  # every alert id seen
    _due: dict[str, str] = field(default_factory=dict)  # pending alert id -> next attempt
    _lock: threading.Lock = field(default_factory=threading.Lock)
    sent: int = 0
    failed_attempts: int = 0

    def load(self) -> None:
        rows = self.couch.all_docs(
            self.db, startkey=ALERT_PREFIX, endkey=ALERT_PREFIX + "\ufff0", include_docs=True
        )
        for row in rows:
            if row.get("doc"):
                self.observe(row["doc"])

    def observe(self, doc: dict[str, Any] | None) -> None:
        if not doc or not str(doc.get("_id", "")).startswith(ALERT_PREFIX):
            return
        with self._lock:
            self.known.add(doc["_id"])
            if doc.get("state") == "pending" and not doc.get("_deleted"):
                due = str(doc.get("next_attempt_at") or "")
                if doc.get("claimed_until"):
                    due = max(due, str(doc["claimed_until"]))
                self._due[doc["_id"]] = due
            else:
                self._due.pop(doc["_id"], None)

    def process(self, now: datetime) -> int:
        """Attempt every alert that is due. Returns how many channels delivered."""
        stamp = to_wire(now)
        with self._lock:
            due = sorted(alert for alert, at in self._due.items() if at <= stamp)
        delivered = 0
        for alert in due:
            try:
                delivered += self._attempt(alert, now)
            except Exception:  # one alert must never stop the duty
                log.exception("event=alert_error alert=%s", alert)
        return delivered

    def _attempt(self, alert: str, now: datetime) -> int:
        doc = self.couch.get_or_none(self.db, alert)
        if doc is None or doc.get("state") != "pending":
            with self._lock:
                self._due.pop(alert, None)
            return 0
        stamp = to_wire(now)
        busy_until = str(doc.get("claimed_until") or "")
        if str(doc.get("next_attempt_at") or "") > stamp or busy_until > stamp:
            self.observe(doc)  # not yet, or another hub holds it
            return 0
        claimed = claim_alert(doc, self.hub_name, now, self._channels(doc))
        try:
            written = self.couch.put_counted(self.db, claimed, w=self.couch.majority(self.db))
        except Conflict:
            return 0  # another hub claimed it first: its change comes on the feed
        claimed["_rev"] = written.rev
        if not written.quorum:
            # A cluster took this claim on fewer copies than a majority (202): a concurrent
            # claim of the same revision may hold the majority and send. Sending as well
            # could deliver twice; holding back delays the alert to CLAIM_S at worst.
            log.warning("event=alert_claim_unsure alert=%s", alert)
            return 0
        outcomes = self._send(claimed, now)
        settled = settle_alert(claimed, outcomes, now)
        try:
            self.couch.put(self.db, settled)
        except Conflict:
            log.warning("event=alert_claim_lost alert=%s", alert)
        self.observe(settled)
        if settled["state"] == "failed":
            log.error(
                "event=alert_gave_up alert=%s attempts=%d channels=%s",
                alert, settled["attempt_count"], settled["channels"],
            )  # fmt: skip
        elif settled["state"] == "no_channel":
            log.warning("event=alert_no_channel alert=%s client=%s", alert, doc.get("client"))
        return sum(1 for ok, _ in outcomes.values() if ok)

    def _channels(self, doc: dict[str, Any]) -> list[str]:
        """The channels the client has set up, narrowed to the task's ``alert_channels``."""
        settings = self.couch.get_or_none(self.db, client_settings_id(str(doc["client"]))) or {}
        configured = [
            channel
            for channel, needed in (("webhook", "webhook_url"), ("email", "email"))
            if settings.get(needed)
        ]
        task_doc = self.couch.get_or_none(self.db, str(doc["task"])) or {}
        wanted = task_doc.get("alert_channels")
        return [c for c in configured if wanted is None or c in wanted]

    def _send(self, doc: dict[str, Any], now: datetime) -> dict[str, tuple[bool, str]]:
        channels = {c: s for c, s in (doc.get("channels") or {}).items() if s == "pending"}
        if not channels:
            return {}
        settings = self.couch.get_or_none(self.db, client_settings_id(str(doc["client"]))) or {}
        subject, text, payload = alert_message(doc)
        outcomes: dict[str, tuple[bool, str]] = {}
        for channel in sorted(channels):
            try:
                if channel == "webhook":
                    detail = post_webhook(
                        str(settings.get("webhook_url") or ""),
                        str(settings.get("webhook_secret") or ""),
                        payload,
                        int(now.timestamp()),
                        allow_private=self.allow_private,
                    )
                else:
                    detail = send_email(self.smtp, str(settings.get("email") or ""), subject, text)
            except DeliveryError as exc:
                outcomes[channel] = (False, str(exc))
                self.failed_attempts += 1
                log.error(
                    "event=alert_attempt_failed alert=%s channel=%s attempt=%d error=%r",
                    doc["_id"], channel, int(doc.get("attempt_count") or 0) + 1, str(exc),
                )  # fmt: skip
                continue
            outcomes[channel] = (True, detail)
            self.sent += 1
            log.info("event=alert_sent alert=%s channel=%s detail=%r", doc["_id"], channel, detail)
        return outcomes


def missing_alerts(healths: list[Health], known: set[str]) -> list[Health]:
    """Healths whose latest transition has no alert document (a hub stopped between the
    count and the alert): raised again at load, a 409 if another hub did it meanwhile."""
    return [h for h in healths if h.alert_seq and alert_id(h.task, h.alert_seq) not in known]
