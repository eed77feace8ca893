"""Farm operations, one module for the CLI and the portal alike.

Every operation that names a client only ever touches that client's documents; a task
or occurrence of another client is reported as not found, so existence does not leak.
"""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any

from pydantic import ValidationError

from hub import alerts, schedules
from hub.materializer import (
    BACKFILL_REASON,
    BACKFILL_SERIAL_REASON,
    FAIR_QUANTUM_SECONDS,
    task_schedule,
)
from hub.protocol import kinds, quorum, states
from hub.protocol.board import BEAT_ID, board_db
from hub.protocol.couch import Conflict, Couch, CouchError, Forbidden, NotFound
from hub.protocol.model import (
    MAX_REASON_CHARS,
    NAME_PATTERN,
    Occurrence,
    Reliability,
    State,
    Task,
    clean_text,
    describe_validation_error,
    occurrence_id,
    reliability_id,
    split_occurrence_id,
    task_id,
    worker_id,
)
from hub.protocol.names import CLAIM_DDOC, results_db
from hub.protocol.timefmt import from_wire, to_wire

log = logging.getLogger("couchfarm.service")
TUBES_DOC = "hub:tubes"
ONLINE_SECONDS = 90
MAX_BACKFILL_RUNS = 1000
"""Runs one backfill request may create: a bigger range is refused, naming this limit."""
BACKFILL_OVERLAPS = ("allow", "queue")


@dataclass(frozen=True)
class BackfillReport:
    """What a backfill did, one list of occurrence ids per outcome."""

    task: str
    created: list[str]
    already_live: list[str]  # the run exists in the live database (scheduled or backfilled)
    already_archived: list[str]  # the run ended and its result is archived


def _moment(field: str, value: datetime | str, problems: list[str]) -> datetime | None:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            problems.append(f"{field}: {value.isoformat()} has no time zone")
            return None
        return value.astimezone(UTC)
    try:
        return from_wire(str(value))
    except ValueError as exc:
        problems.append(f"{field}: {exc}")
        return None
    except OverflowError:  # e.g. year 1 with a positive offset: before datetime.min in UTC
        problems.append(f"{field}: {str(value)[:40]!r} is out of range")
        return None


WEBHOOK_URL = re.compile(r"^https?://[^\s/?#]+[^\s]{0,1990}$")
EMAIL_ADDRESS = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,190}\.[^@\s]{2,63}$")


class ServiceError(ValueError):
    """Bad request: ``problems`` lists each thing to fix, prefixed with its field."""

    status = 400

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class NotFoundError(ServiceError):
    status = 404


class ConflictError(ServiceError):
    status = 409


TASK_FIELDS = {
    "kind",
    "input",
    "schedule",
    "priority",
    "tube",
    "ttr",
    "max_attempts",
    "backoff",
    "overlap",
    "misfire",
    "misfire_grace",
    "retention_days",
    "paused",
    "pause_after_failures",
    "max_runs",
    "alert_after_failures",
    "alert_channels",
    "quorum",
    "quorum_timeout",
    "quorum_on_timeout",
    "adaptive",
    "spot_check_rate",
}


def build_task(
    client: str,
    slug: str,
    spec: dict[str, Any],
    now: datetime,
    *,
    min_interval: int = 10,
    created_at: datetime | None = None,
) -> Task:
    """A validated Task from a client's request; every problem is reported at once.
    ``created_at``: when an existing task was created (``max_runs`` counts from then)."""
    unknown = sorted(set(spec) - TASK_FIELDS)
    problems = [f"{name}: unknown field" for name in unknown]
    stamp = to_wire(now)
    data = {k: v for k, v in spec.items() if k in TASK_FIELDS}
    try:
        task = Task(
            _id=task_id(client, slug),
            client=client,
            slug=slug,
            created_at=stamp,
            updated_at=stamp,
            **data,
        )
    except ValidationError as exc:
        problems += describe_validation_error(exc)
        # Report the input's and the schedule's own problems in the same answer.
        if isinstance(data.get("kind"), str) and isinstance(data.get("input", {}), dict):
            problems += kinds.validate_input(data["kind"], data.get("input", {}))
        problems += _schedule_problems(data.get("schedule"), now, min_interval)
        raise ServiceError(list(dict.fromkeys(problems))) from None
    try:
        schedules.validate_schedule(task.schedule, now, min_interval=min_interval)
    except schedules.ScheduleError as exc:
        problems += exc.problems
    else:
        problems += _max_runs_problems(task, now, created_at or now)
    problems += kinds.validate_input(task.kind, task.input)
    problems += _quorum_problems(task)
    if problems:
        raise ServiceError(problems)
    return task


def _quorum_problems(task: Task) -> list[str]:
    """A quorum must be able to finish: its timeout leaves each slot at least one TTR."""
    if task.quorum <= 1:
        extra = [f for f in ("quorum_timeout", "adaptive") if getattr(task, f) not in (None, False)]
        return [f"{f}: only a task with quorum 2 or more uses it" for f in extra]
    if task.quorum_timeout is not None and task.quorum_timeout < task.ttr:
        return [
            f"quorum_timeout: {task.quorum_timeout} s is shorter than ttr ({task.ttr} s): "
            "no slot could finish before the quorum times out"
        ]
    return []


def _max_runs_problems(task: Task, now: datetime, created_at: datetime) -> list[str]:
    """``max_runs`` must leave a run to come (a limit already used up is a mistake)."""
    if task.max_runs is None:
        return []
    try:
        last = schedules.max_runs_end(task.schedule, task.max_runs, created_at)
    except schedules.ScheduleError as exc:
        return exc.problems
    if last is not None and last <= now:
        since = "start" if task.schedule.start else "the task's creation"
        return [
            f"max_runs: the {task.max_runs} runs counted from {since} were all due by "
            f"{to_wire(last)}, before now ({to_wire(now)}); raise max_runs or move start"
        ]
    return []


def _schedule_problems(raw: Any, now: datetime, min_interval: int) -> list[str]:
    from hub.protocol.model import Schedule

    if not isinstance(raw, dict):
        return []
    try:
        schedule = Schedule(**raw)
    except (ValidationError, TypeError):
        return []  # already reported by the task model
    try:
        schedules.validate_schedule(schedule, now, min_interval=min_interval)
    except schedules.ScheduleError as exc:
        return exc.problems
    return []


@dataclass
class FarmService:
    couch: Couch
    db: str
    min_interval: int = 10

    # ------------------------------------------------------------ tasks

    def now(self) -> datetime:
        return self.couch.now()

    def add_task(self, client: str, slug: str, spec: dict[str, Any]) -> Task:
        task = build_task(client, slug, spec, self.now(), min_interval=self.min_interval)
        try:
            rev = self.couch.put(self.db, task.to_doc())
        except Conflict:
            raise ConflictError(f"task {slug!r} already exists for client {client!r}") from None
        log.info("event=task_added task=%s kind=%s", task.id, task.kind)
        return task.model_copy(update={"rev": rev})

    def update_task(self, client: str, slug: str, spec: dict[str, Any]) -> Task:
        current = self.get_task(client, slug)
        merged = {k: v for k, v in current.to_doc().items() if k in TASK_FIELDS} | spec
        task = build_task(
            client, slug, merged, self.now(), min_interval=self.min_interval,
            created_at=from_wire(current.created_at),
        )  # fmt: skip
        kept: dict[str, Any] = {"created_at": current.created_at, "rev": current.rev}
        if task.paused and current.paused:  # still paused: keep why and since when
            kept |= {"paused_reason": current.paused_reason, "paused_at": current.paused_at}
        elif task.paused:
            kept |= {"paused_reason": "paused by the client", "paused_at": to_wire(self.now())}
        task = task.model_copy(update=kept)
        rev = self.couch.put(self.db, task.to_doc())
        if current.paused and not task.paused:
            alerts.reset_pause_streak(self.couch, self.db, task.id)
        return task.model_copy(update={"rev": rev})

    def get_task(self, client: str | None, slug_or_id: str) -> Task:
        doc_id = slug_or_id if slug_or_id.startswith("task:") else task_id(client or "", slug_or_id)
        if client is not None and not doc_id.startswith(f"task:{client}:"):
            raise NotFoundError(f"no task {slug_or_id!r}")
        doc = self.couch.get_or_none(self.db, doc_id)
        if doc is None:
            raise NotFoundError(f"no task {slug_or_id!r}")
        return Task.from_doc(doc)

    def list_tasks(self, client: str | None = None) -> list[Task]:
        params: dict[str, Any] = {"include_docs": True}
        if client is not None:
            params.update(startkey=[client], endkey=[client, {}])
        rows = self.couch.view(self.db, "farm", "tasks_by_client", **params)["rows"]
        return [Task.from_doc(row["doc"]) for row in rows if row.get("doc")]

    def set_paused(
        self, client: str | None, slug: str, paused: bool, reason: str | None = None
    ) -> Task:
        """Pause (with an optional note, shown as ``paused_reason``) or resume a task.
        Resuming clears the reason and the time, and failures before it no longer count
        toward ``pause_after_failures``."""
        for _ in range(3):
            task = self.get_task(client, slug)
            stamp = to_wire(self.now())
            note = None if reason is None else clean_text(reason, MAX_REASON_CHARS)
            update: dict[str, Any] = {"paused": paused, "updated_at": stamp}
            if paused and not task.paused:
                update |= {"paused_reason": note or "paused by the client", "paused_at": stamp}
            elif not paused:
                update |= {"paused_reason": None, "paused_at": None}
            updated = task.model_copy(update=update)
            try:
                rev = self.couch.put(self.db, updated.to_doc())
            except Conflict:
                continue  # the hub paused it on failure meanwhile: decide on the new copy
            if not paused:
                alerts.reset_pause_streak(self.couch, self.db, task.id)
            log.info("event=task_%s task=%s", "paused" if paused else "resumed", task.id)
            return updated.model_copy(update={"rev": rev})
        raise ConflictError(f"task {slug!r} kept changing; try again")

    def run_now(self, client: str | None, slug: str) -> Occurrence:
        """An extra run due now, outside the schedule (whole second, so it has its own id)."""
        task = self.get_task(client, slug)
        now = self.now().replace(microsecond=0)
        occ = states.materialize(task, now, now)
        try:
            rev = self.couch.put(self.db, occ.to_doc())
        except (Conflict, Forbidden):
            # POUCHDB: validation runs before the conflict check there, so an existing
            # occurrence answers 403 rather than 409.
            raise ConflictError(f"a run of {slug!r} due {occ.due_at} already exists") from None
        return occ.model_copy(update={"rev": rev})

    def backfill(
        self,
        client: str | None,
        slug: str,
        start: datetime | str,
        end: datetime | str,
        overlap: str = "allow",
    ) -> BackfillReport:
        """Materialize the task's runs due in ``[start, end]`` (a past range) that do not
        exist yet, live or archived (docs/SCHEDULES.md, "Backfill").

        ``overlap="allow"`` (default): all start now, spread by fair share; ``"queue"``:
        one after another in due order. Backfilled runs are ordinary occurrences (archived
        and counted in the tallies like any other) whose reason starts with "backfill"; the
        schedule's own overlap and coalescing leave them alone. Ids are deterministic, so
        a repeated request creates nothing new.
        """
        task = self.get_task(client, slug)
        now = self.now()
        problems: list[str] = []
        since = _moment("from", start, problems)
        until = _moment("to", end, problems)
        if overlap not in BACKFILL_OVERLAPS:
            problems.append(
                f"overlap: {overlap!r} is not a backfill policy; use 'allow' (all at once) "
                "or 'queue' (one at a time, in due order)"
            )
        if since is not None and until is not None:
            if until > now:
                problems.append(
                    f"to: {to_wire(until)} is in the future (hub time is {to_wire(now)}); "
                    "a backfill covers past runs only"
                )
            if since >= until:
                problems.append(f"from: {to_wire(since)} must be before to {to_wire(until)}")
            if since.year < 1970:  # no schedule runs that early; keeps the arithmetic in range
                problems.append(f"from: {to_wire(since)} is before 1970")
        if problems or since is None or until is None:
            raise ServiceError(problems)
        after = since - timedelta(microseconds=1)  # from is inclusive
        dues = list(
            islice(schedules.fire_times(task_schedule(task), after, until), MAX_BACKFILL_RUNS + 1)
        )
        if len(dues) > MAX_BACKFILL_RUNS:
            raise ServiceError(
                f"to: the range holds more than {MAX_BACKFILL_RUNS} runs, the limit of one "
                f"backfill request (MAX_BACKFILL_RUNS); split it into smaller ranges"
            )
        if not dues:
            raise ServiceError(
                f"from: no run of this task's schedule falls between {to_wire(since)} and "
                f"{to_wire(until)}"
            )
        ids = [occurrence_id(task.id, due) for due in dues]
        live = {
            row["key"]
            for row in self.couch.all_docs(self.db, keys=ids)
            if "value" in row and not row["value"].get("deleted")
        }
        archived = self._archived(ids, dues)
        missing = [due for due, occ in zip(dues, ids, strict=True)
                   if occ not in live and occ not in archived]  # fmt: skip
        serial = overlap == "queue"
        lead = BACKFILL_SERIAL_REASON if serial else BACKFILL_REASON
        reason = f"{lead}: {to_wire(since)} .. {to_wire(until)}, asked at {to_wire(now)}"
        docs = [
            states.materialize(
                task, due, now, not_before=now, reason=reason,
                state=State.SCHEDULED if serial else State.READY,
                fair_offset=index * FAIR_QUANTUM_SECONDS,
            ).to_doc()
            for index, due in enumerate(missing)
        ]  # fmt: skip
        created: list[str] = []
        raced: list[str] = []
        for row in self.couch.bulk_docs(self.db, docs) if docs else []:
            # A conflict (403 on PouchDB) is a run created meanwhile: harmless.
            (created if "rev" in row else raced).append(row["id"])
        log.info(
            "event=backfill task=%s from=%s to=%s overlap=%s created=%d live=%d archived=%d",
            task.id, to_wire(since), to_wire(until), overlap, len(created),
            len(live) + len(raced), len(archived),
        )  # fmt: skip
        return BackfillReport(
            task=task.id,
            created=created,
            already_live=sorted(live | set(raced)),
            already_archived=sorted(archived),
        )

    def _archived(self, ids: list[str], dues: list[datetime]) -> set[str]:
        """Which of these occurrences have a result in their month's results database."""
        by_month: dict[str, list[str]] = {}
        for occ, due in zip(ids, dues, strict=True):
            by_month.setdefault(results_db(self.db, due), []).append(f"res:{occ}")
        found: set[str] = set()
        for month, keys in by_month.items():
            try:
                rows = self.couch.all_docs(month, keys=keys)
            except NotFound:
                continue  # no such month: nothing archived there
            found |= {
                row["key"].removeprefix("res:")
                for row in rows
                if "value" in row and not row["value"].get("deleted")
            }
        return found

    def next_fire_times(self, schedule: dict[str, Any], n: int = 5) -> list[str]:
        """The next ``n`` fire times (wire format) of a schedule a client is typing: the
        portal's live preview and the API's. Every problem names its field."""
        from hub.protocol.model import Schedule

        try:
            parsed = Schedule(**schedule)
        except ValidationError as exc:
            raise ServiceError(describe_validation_error(exc, "schedule.")) from None
        except TypeError as exc:
            raise ServiceError(f"schedule: {exc}") from None
        try:
            fires = schedules.next_fire_times(parsed, n, self.now())
        except schedules.ScheduleError as exc:
            raise ServiceError(exc.problems) from None
        except ValueError as exc:
            raise ServiceError(str(exc)) from None
        return [to_wire(fire) for fire in fires]

    # ------------------------------------------------------------ alerts (docs/ALERTS.md)

    def alert_settings(self, client: str) -> dict[str, Any]:
        """The client's alert channels: webhook URL and secret, email address."""
        doc = self.couch.get_or_none(self.db, alerts.client_settings_id(client)) or {}
        return {
            "webhook_url": doc.get("webhook_url"),
            "webhook_secret": doc.get("webhook_secret"),
            "email": doc.get("email"),
            "updated_at": doc.get("updated_at"),
        }

    def set_alert_settings(
        self, client: str, changes: dict[str, Any], *, new_secret: bool = False
    ) -> dict[str, Any]:
        """Change the client's alert channels (an empty string clears one). A webhook gets
        a secret at once (the hub makes it: 32 random bytes), and a new one on request."""
        problems = []
        unknown = sorted(set(changes) - {"webhook_url", "email"})
        problems += [f"{name}: unknown field" for name in unknown]
        url = changes.get("webhook_url")
        if url is not None and url != "" and not WEBHOOK_URL.match(str(url)):
            problems.append(
                f"webhook_url: {str(url)[:80]!r} is not an http(s) URL (at most 2000 characters)"
            )
        email = changes.get("email")
        if email is not None and email != "" and not EMAIL_ADDRESS.match(str(email)):
            problems.append(f"email: {str(email)[:80]!r} is not an email address")
        if problems:
            raise ServiceError(problems)
        doc_id = alerts.client_settings_id(client)
        for _ in range(5):
            doc = self.couch.get_or_none(self.db, doc_id) or {
                "_id": doc_id, "type": "hub", "kind": "client_settings", "client": client,
            }  # fmt: skip
            for name in ("webhook_url", "email"):
                if name in changes:
                    doc[name] = changes[name] or None
            if doc.get("webhook_url") and (new_secret or not doc.get("webhook_secret")):
                doc["webhook_secret"] = secrets.token_hex(32)
            doc["updated_at"] = to_wire(self.now())
            try:
                self.couch.put(self.db, doc)
            except Conflict:
                continue
            log.info(
                "event=alert_settings_changed client=%s webhook=%s email=%s new_secret=%s",
                client, bool(doc.get("webhook_url")), bool(doc.get("email")), new_secret,
            )  # fmt: skip
            return self.alert_settings(client)
        raise ConflictError("alert settings: changed by someone else meanwhile; try again")

    def task_alerts(self, client: str | None, slug: str, limit: int = 50) -> list[dict[str, Any]]:
        """The task's alerts, newest first, each with its channels and every attempt."""
        task = self.get_task(client, slug)
        prefix = f"{alerts.ALERT_PREFIX}{task.id}:"
        rows = self.couch.all_docs(
            self.db, startkey=prefix + "\ufff0", endkey=prefix, descending=True,
            include_docs=True, limit=max(1, min(limit, 200)),
        )  # fmt: skip
        keep = ("seq", "transition", "streak", "occurrence", "due_at", "created_at", "state",
                "channels", "attempts", "attempt_count", "next_attempt_at")  # fmt: skip
        return [
            {"id": row["doc"]["_id"], **{k: row["doc"].get(k) for k in keep}}
            for row in rows
            if row.get("doc")
        ]

    def task_health(self, client: str | None, slug: str) -> dict[str, Any]:
        """A task's run health (hub/alerts.py): consecutive failed runs (``streak``, and
        ``pause_streak`` since the last resume) and the newest run counted; zeros for a
        task that never failed. With the task's ``paused_reason``/``paused_at``."""
        task = self.get_task(client, slug)
        doc = self.couch.get_or_none(self.db, alerts.health_id(task.id)) or {}
        health = alerts.Health.from_doc({"task": task.id, "client": task.client, **doc})
        return {
            "task": task.id,
            "streak": health.streak,
            "pause_streak": health.pause_streak,
            "pause_after_failures": task.pause_after_failures,
            "failing": health.failing,
            "alert_after_failures": task.alert_after_failures,
            "last_occurrence": health.last_occurrence or None,
            "last_outcome": health.last_outcome or None,
            "paused": task.paused,
            "paused_reason": task.paused_reason,
            "paused_at": task.paused_at,
        }

    def delete_task(self, client: str | None, slug: str) -> int:
        """Delete the task and cancel its live occurrences. Returns how many were cancelled."""
        task = self.get_task(client, slug)
        now = self.now()
        rows = self.couch.view(
            self.db,
            "farm",
            "active_by_task",
            startkey=[task.id],
            endkey=[task.id, {}],
            include_docs=True,
        )["rows"]
        cancelled = [
            states.cancel(Occurrence.from_doc(r["doc"]), now, "task deleted").to_doc() for r in rows
        ]
        done = sum("rev" in row for row in self.couch.bulk_docs(self.db, cancelled))
        assert task.rev is not None
        self.couch.delete(self.db, task.id, task.rev)
        log.info("event=task_deleted task=%s cancelled=%d", task.id, done)
        return done

    # ------------------------------------------------------------ occurrences

    def occurrence(self, client: str | None, occ_id: str) -> dict[str, Any]:
        """The live occurrence, or its archived result once it has left the live database."""
        try:
            owner, _slug, _stamp = split_occurrence_id(occ_id)
        except ValueError:
            raise NotFoundError(f"no occurrence {occ_id!r}") from None
        if client is not None and owner != client:
            raise NotFoundError(f"no occurrence {occ_id!r}")
        doc = self.couch.get_or_none(self.db, occ_id)
        if doc is not None:
            return {"source": "live", "occurrence": doc}
        try:
            due = due_of(occ_id)
        except ValueError:
            raise NotFoundError(f"no occurrence {occ_id!r}") from None
        try:
            archived = self.couch.get_or_none(results_db(self.db, due), f"res:{occ_id}")
        except NotFound:
            archived = None
        if archived is None:
            raise NotFoundError(f"no occurrence {occ_id!r}")
        return {"source": "archive", "result": archived}

    def occurrences_of(
        self, client: str | None, slug: str, limit: int = 50
    ) -> list[dict[str, Any]]:
        task = self.get_task(client, slug)
        rows = self.couch.view(
            self.db,
            "farm",
            "by_task",
            startkey=[task.id, {}],
            endkey=[task.id],
            descending=True,
            include_docs=True,
            limit=limit,
        )["rows"]
        return [row["doc"] for row in rows if row.get("doc")]

    def kick(self, client: str | None = None, slug: str | None = None, limit: int = 1000) -> int:
        """Buried occurrences back to ready (beanstalkd's kick), for a task, client or all."""
        params: dict[str, Any] = {"include_docs": True, "limit": limit}
        if client is not None:
            prefix = [client, task_id(client, slug)] if slug else [client]
            params.update(startkey=prefix, endkey=[*prefix, {}])
        rows = self.couch.view(self.db, "farm", "buried", **params)["rows"]
        now = self.now()
        docs = [states.kick(Occurrence.from_doc(r["doc"]), now).to_doc() for r in rows]
        kicked = sum("rev" in row for row in self.couch.bulk_docs(self.db, docs))
        log.info("event=kicked count=%d client=%s task=%s", kicked, client, slug)
        return kicked

    def cancel(self, client: str | None, occ_id: str, reason: str = "cancelled") -> Occurrence:
        found = self.occurrence(client, occ_id)
        if found["source"] != "live":
            raise ConflictError(f"{occ_id} has already ended")
        occ = Occurrence.from_doc(found["occurrence"])
        try:
            updated = states.cancel(occ, self.now(), reason)
        except states.InvalidTransition as exc:
            raise ConflictError(str(exc)) from None
        rev = self.couch.put(self.db, updated.to_doc())
        return updated.model_copy(update={"rev": rev})

    # ------------------------------------------------------------ tubes

    def paused_tubes(self) -> dict[str, str]:
        doc = self.couch.get_or_none(self.db, TUBES_DOC) or {}
        return dict(doc.get("paused", {}))

    def set_tube_paused(self, tube: str, paused: bool, reason: str = "paused by operator") -> None:
        for _ in range(3):
            doc = self.couch.get_or_none(self.db, TUBES_DOC) or {"_id": TUBES_DOC, "type": "hub"}
            tubes = dict(doc.get("paused", {}))
            if paused:
                tubes[tube] = reason
            else:
                tubes.pop(tube, None)
            try:
                self.couch.put(self.db, {**doc, "paused": tubes})
                return
            except Conflict:
                continue
        raise ConflictError(f"tube {tube!r} kept changing; try again")

    # ------------------------------------------------------------ workers

    def worker_reliability(self, name: str) -> dict[str, Any]:
        """A worker's reliability (``hub:reliability:{name}``, kept by the validator) and
        its worker doc. ``reliability`` is None for a worker none of whose quorum results
        was compared yet; a name with neither document is an error."""
        if not re.fullmatch(NAME_PATTERN, name or ""):
            raise ServiceError(
                f"worker: {name!r} is not a worker name (lowercase letters, digits, _ and -, "
                "up to 40, starting with a letter or digit)"
            )
        rows = self.couch.all_docs(
            self.db, keys=[reliability_id(name), worker_id(name)], include_docs=True
        )
        reliability, worker = (row.get("doc") for row in rows)
        if reliability is None and worker is None:
            raise NotFoundError(
                f"worker: no worker named {name!r} in {self.db} (neither {worker_id(name)} "
                f"nor {reliability_id(name)} exists); `hub stats` lists the workers online"
            )
        return {"worker": name, "reliability": reliability, "worker_doc": worker}

    def lift_quarantine(
        self, name: str, by: str, reason: str | None = None
    ) -> tuple[dict[str, Any], bool]:
        """Lift ``name``'s quarantine (hub.protocol.quorum.lift_quarantine): recorded in the
        reliability document (who, when, what was lifted). Returns (the reliability
        document, whether this call lifted it): a worker that is not quarantined is left as
        it is, so a second lift writes nothing. A write that lost to the validator's (a
        comparison meanwhile) is done again on the new revision."""
        for _ in range(5):
            found = self.worker_reliability(name)
            doc = found["reliability"]
            if doc is None:
                return {"worker": name, "quarantined": False}, False
            try:
                current = Reliability.from_doc(doc)
            except ValidationError as exc:
                raise ServiceError(f"{reliability_id(name)} is malformed: {exc}") from None
            lifted = quorum.lift_quarantine(
                current, self.now(), by=by, user=self.couch.user, reason=reason
            )
            if lifted is None:
                return doc, False
            try:
                rev = self.couch.put(self.db, lifted.to_doc())
            except (Conflict, Forbidden):
                continue
            log.warning("event=quarantine_lifted worker=%s by=%s", name, by)
            return {**lifted.to_doc(), "_rev": rev}, True
        raise ConflictError(f"{reliability_id(name)} kept changing; try again")

    # ------------------------------------------------------------ stats

    def counts_by_task(self, client: str) -> dict[str, dict[str, int]]:
        rows = self.couch.view(
            self.db,
            "farm",
            "by_client_state",
            startkey=[client],
            endkey=[client, {}],
            group_level=3,
        )["rows"]
        counts: dict[str, dict[str, int]] = {}
        for row in rows:
            _client, state, task = row["key"]
            counts.setdefault(task, {})[state] = row["value"]
        return counts

    def online_seconds(self) -> float:
        """How long after its last heartbeat a worker counts as online: what the hub's beat
        says (its keep-alive grows with the fleet, hub/protocol/board.py), else 90 s."""
        try:
            beat = self.couch.get_or_none(board_db(self.db), BEAT_ID)
        except CouchError:
            beat = None
        return max(ONLINE_SECONDS, _positive((beat or {}).get("online_s")) or 0.0)

    def stats(self) -> dict[str, Any]:
        """beanstalkd-style stats: by state, tube and client; workers online; throughput."""
        now = self.now()
        by_tube: dict[str, dict[str, int]] = {}
        for row in self.couch.view(self.db, "farm", "by_tube_state", group=True)["rows"]:
            tube, state = row["key"]
            by_tube.setdefault(tube, {})[state] = row["value"]
        by_client: dict[str, dict[str, int]] = {}
        for row in self.couch.view(self.db, "farm", "by_client_state", group_level=2)["rows"]:
            client, state = row["key"]
            by_client.setdefault(client, {})[state] = row["value"]
        by_state: dict[str, int] = {}
        for tubes in by_tube.values():
            for state, n in tubes.items():
                by_state[state] = by_state.get(state, 0) + n
        online = self.couch.view(
            self.db,
            CLAIM_DDOC,
            "workers_by_last_seen",
            startkey=to_wire(now - timedelta(seconds=self.online_seconds())),
        )["rows"]
        last_minute = self.couch.view(
            self.db,
            "farm",
            "finished_by_time",
            startkey=to_wire(now - timedelta(minutes=1)),
            endkey=to_wire(now),
        )["rows"]
        return {
            "at": to_wire(now),
            "by_state": by_state,
            "by_tube": by_tube,
            "by_client": by_client,
            "paused_tubes": self.paused_tubes(),
            "workers_online": [
                {
                    "name": r["value"]["name"],
                    "last_seen": r["key"],
                    "state": r["value"]["state"],
                    "version": r["value"]["version"],
                    "current": r["value"]["current"],
                }
                for r in online
            ],
            "finished_last_minute": len(last_minute),
        }


def _positive(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and value > 0 else None


def due_of(occ_id: str) -> datetime:
    """The due time stamped in an occurrence id; ValueError for a malformed one."""
    _client, _slug, stamp = split_occurrence_id(occ_id)
    if len(stamp) != 16 or stamp[8] != "T" or not stamp.endswith("Z"):
        raise ValueError(f"not an occurrence id: {occ_id!r}")
    return from_wire(
        f"{stamp[0:4]}-{stamp[4:6]}-{stamp[6:8]}T{stamp[9:11]}:{stamp[11:13]}:{stamp[13:15]}Z"
    )
