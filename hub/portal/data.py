"""What the portal shows, read from CouchDB views, always within one client's key range.

The live database answers for occurrences still there (views ``by_client_state``,
``by_task``, ``outcomes_by_client_task``...); the monthly results databases answer for
archived ones (the archiver's ``tally:`` documents for counts, ``by_client_task_time`` for
history). Every query here takes
the client as the first part of its key (or a task id, which starts with the client), so
one client's page can never read another's rows.

Long ranges are read in pages (``limit`` + ``startkey``/``skip=1``) and merged lazily, so an
export or a plot over a year never holds the year in memory.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from hub import schedules
from hub.archiver import TALLY_PREFIX
from hub.materializer import task_schedule
from hub.portal.quorum import RELIABILITY_PREFIX, quorum_view, reliability_rows
from hub.protocol.couch import Couch, CouchError, NotFound
from hub.protocol.model import FINAL_STATES, Task, occurrence_id
from hub.protocol.names import CLAIM_DDOC, is_results_db, results_db
from hub.protocol.timefmt import as_utc, from_wire, month_key, to_wire
from hub.service import FarmService

log = logging.getLogger("couchfarm.portal")

SHOWN_STATES = ("ready", "leased", "done", "failed", "buried", "missed", "skipped")
ALL_STATES = (
    "scheduled", "ready", "leased", "done", "failed", "buried", "missed", "skipped", "cancelled"
)  # fmt: skip
# Outcomes of runs that actually ran. "inconclusive": a quorum run whose results did not
# agree (issue 18): it ran, but gave the client no answer, so it counts against success.
RAN_STATUSES = ("ok", "error", "failed", "inconclusive")
# What the history's state filter offers beyond the states: a quorum run's final state,
# and a done run's status.
FILTER_STATES = (*ALL_STATES, "inconclusive", "ok", "error")
PAGE = 500  # rows per view request when paging through a range
MAX_MONTHS = 121
FAR_FUTURE = "9999-12-31T23:59:59.999Z"
EPOCH_WIRE = "1970-01-01T00:00:00.000Z"
MIN_ACTIVITY_HOURS = 6  # the dashboard's plot shows at least this many hours


def month_starts(since: datetime, until: datetime) -> list[datetime]:
    """First instant of every month that overlaps [since, until], oldest first."""
    since, until = as_utc(since), as_utc(until)
    current = datetime(since.year, since.month, 1, tzinfo=UTC)
    months: list[datetime] = []
    while current <= until and len(months) < MAX_MONTHS:
        months.append(current)
        current = datetime(
            current.year + current.month // 12, current.month % 12 + 1, 1, tzinfo=UTC
        )
    return months


def epoch_to_wire(seconds: float) -> str:
    return to_wire(datetime.fromtimestamp(seconds, UTC))


def clamp_wire(text: str) -> datetime:
    """A wire time as a datetime, clamped into the years datetime can hold."""
    if text >= "9999":
        return datetime(9999, 12, 31, tzinfo=UTC)
    return from_wire(text)


# ---------------------------------------------------------------- rows


def row_from_live(doc: dict[str, Any]) -> dict[str, Any]:
    """A live occurrence as one history row."""
    result = doc.get("result") or {}
    lease = doc.get("lease") or {}
    errors = doc.get("errors") or []
    state = doc.get("state", "")
    duration = latency = None
    if result.get("started_at") and result.get("finished_at"):
        started, finished = from_wire(result["started_at"]), from_wire(result["finished_at"])
        duration = int((finished - started).total_seconds() * 1000)
        latency = int((started - from_wire(doc["due_at"])).total_seconds() * 1000)
    if state == "done":
        status = result.get("status")
    else:
        final = state in FINAL_STATES or state in ("buried", "inconclusive")
        status = state if final else None
    error = result.get("error") or doc.get("reason")
    if not error and errors and state in ("failed", "buried", "scheduled"):
        error = errors[-1].get("error")
    row = {
        "id": doc["_id"],
        "due_at": doc.get("due_at", ""),
        "state": state,
        "status": status,
        "attempt": doc.get("attempt", 0),
        "worker": result.get("worker") or lease.get("worker") or _last_worker(errors),
        "started_at": result.get("started_at"),
        "finished_at": result.get("finished_at"),
        "duration_ms": duration,
        "latency_ms": latency,
        "error": error,
        "errors": errors,
        "progress": doc.get("progress"),
        "lease_expires_at": lease.get("expires_at"),
        "output": result.get("output"),
        "source": "live",
    }
    return with_quorum(row, doc)


def row_from_archive(doc: dict[str, Any]) -> dict[str, Any]:
    """An archived result (``res:...``) as one history row."""
    row = {
        "id": doc.get("occurrence") or str(doc.get("_id", "")).removeprefix("res:"),
        "due_at": doc.get("due_at", ""),
        "state": doc.get("state", ""),
        "status": doc.get("status"),
        "attempt": doc.get("attempt", 0),
        "worker": doc.get("worker") or _last_worker(doc.get("errors")),
        "started_at": doc.get("started_at"),
        "finished_at": doc.get("finished_at"),
        "duration_ms": doc.get("duration_ms"),
        "latency_ms": doc.get("latency_ms"),
        "error": doc.get("error"),
        "errors": doc.get("errors") or [],
        "progress": None,
        "lease_expires_at": None,
        "output": doc.get("output"),
        "source": "archive",
    }
    return with_quorum(row, doc)


def with_quorum(row: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    """The row with its quorum run (``quorum``: the k results, which is canonical and why;
    hub/portal/quorum.py) when the document holds one; a quorum-1 row is left as it was."""
    view = quorum_view(doc)
    if view is None:
        return row
    if not row.get("worker"):
        # Several workers hold a quorum run's slots, and none is the lease holder.
        row["worker"] = view.canonical or ", ".join(s.worker for s in view.slots) or None
    row["quorum"] = view.to_json()
    return row


def _last_worker(errors: list[dict[str, Any]] | None) -> str | None:
    return (errors[-1] or {}).get("worker") if errors else None


def dedupe(rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Drop a row whose occurrence was just yielded (live and archived copies sit together)."""
    last = None
    for row in rows:
        if row["id"] == last:
            continue
        last = row["id"]
        yield row


# ---------------------------------------------------------------- the reader


@dataclass
class PortalData:
    """View queries for the portal, on the hub's connection."""

    service: FarmService
    dbs_couch: Couch | None = None  # may list /_all_dbs (server admin); optional
    months_ttl: float = 60.0
    page: int = PAGE  # rows per view request when paging through a long range
    _known_dbs: tuple[float, frozenset[str] | None] = field(default=(0.0, None), repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _outcome_cache: dict[tuple[str, str], tuple[str, list]] = field(
        default_factory=dict, repr=False
    )

    @property
    def couch(self) -> Couch:
        return self.service.couch

    @property
    def db(self) -> str:
        return self.service.db

    # ------------------------------------------------------------ months

    def existing_results_dbs(self) -> frozenset[str] | None:
        """Monthly results databases that exist, or None when this user may not list them.

        CouchDB 3 lets only server admins read ``/_all_dbs`` by default; then callers
        compute month names from dates and treat a missing database as empty.
        """
        with self._lock:
            at, known = self._known_dbs
            if time.monotonic() - at < self.months_ttl:
                return known
        found: frozenset[str] | None = None
        for conn in (self.dbs_couch, self.couch):
            if conn is None:
                continue
            try:
                found = frozenset(n for n in conn.all_dbs() if is_results_db(self.db, n))
                break
            except CouchError:
                continue
        with self._lock:
            self._known_dbs = (time.monotonic(), found)
        return found

    def month_dbs(self, since: datetime, until: datetime) -> list[str]:
        """Results databases that may hold results due in [since, until], oldest first."""
        names = [results_db(self.db, month) for month in month_starts(since, until)]
        known = self.existing_results_dbs()
        return names if known is None else [n for n in names if n in known]

    def history_start(self, tasks: list[Task], now: datetime) -> datetime:
        """Oldest moment a client's results can date from: first task, within retention."""
        if not tasks:
            return now
        oldest = min(from_wire(t.created_at) for t in tasks)
        keep = max(t.retention_days for t in tasks)
        return max(oldest - timedelta(days=1), now - timedelta(days=keep + 31))

    # ------------------------------------------------------------ view helpers

    def _view(self, db: str, view: str, ddoc: str, **params: Any) -> list[dict[str, Any]]:
        """Rows of a view; a missing database or view reads as empty."""
        try:
            return list(self.couch.view(db, ddoc, view, **params)["rows"])
        except NotFound:
            return []

    def stream(
        self,
        db: str,
        ddoc: str,
        view: str,
        start: Any,
        end: Any,
        *,
        descending: bool = False,
        include_docs: bool = False,
        page: int = PAGE,
    ) -> Iterator[dict[str, Any]]:
        """Every row of a key range, fetched ``page`` rows at a time (keys must be unique)."""
        params: dict[str, Any] = {
            "startkey": start, "endkey": end, "descending": descending,
            "include_docs": include_docs, "limit": page,
        }  # fmt: skip
        while True:
            try:
                rows = self.couch.view(db, ddoc, view, **params)["rows"]
            except NotFound:
                return
            yield from rows
            if len(rows) < page:
                return
            params.update(startkey=rows[-1]["key"], startkey_docid=rows[-1]["id"], skip=1)

    # ------------------------------------------------------------ dashboard

    def outcomes(self, client: str, since: datetime, now: datetime) -> dict[str, Any]:
        """Per task: live counts by state, finished outcomes by status, the latest of each.

        Returns {"live": {task: {state: n}}, "live_out": {task: {status: stats}},
        "archived": {task: {status: stats}}} where stats is CouchDB's _stats (count, max...).
        """
        live = self.service.counts_by_task(client)
        live_out: dict[str, dict[str, dict[str, Any]]] = {}
        for row in self._view(
            self.db, "outcomes_by_client_task", "farm",
            startkey=[client], endkey=[client, {}], group_level=3,
        ):  # fmt: skip
            _client, task, status = row["key"]
            live_out.setdefault(task, {})[status] = row["value"]
        archived: dict[str, dict[str, dict[str, Any]]] = {}
        for month_db in self.month_dbs(since, now):
            for task, status, stats in self._archived_outcomes(month_db, client):
                into = archived.setdefault(task, {}).setdefault(status, {"count": 0, "max": 0})
                into["count"] += stats.get("count", 0)
                into["max"] = max(into["max"], stats.get("max") or 0)
        return {"live": live, "live_out": live_out, "archived": archived}

    def _archived_outcomes(self, month_db: str, client: str) -> list[tuple[str, str, dict]]:
        """One month's outcomes of a client, from the archiver's per-task tallies.

        ``tally:task:{client}:...`` documents (one per task and month, see hub.archiver) are
        read as one ``_all_docs`` key range: the cost follows the number of tasks, not of
        results, and needs no view index (POUCHDB: a reduce over the results would be
        computed at query time over every result in range). Batches still pending are not
        counted yet: their occurrences are still in the live database, counted there.
        Reused while the month's database is unchanged (one ``GET /db`` tells).
        """
        try:
            seq = self.couch.update_seq(month_db)
        except NotFound:
            return []
        key = (month_db, client)
        with self._lock:
            cached = self._outcome_cache.get(key)
        if cached is not None and cached[0] == seq:
            return cached[1]
        prefix = f"{TALLY_PREFIX}task:{client}:"
        try:
            rows = self.couch.all_docs(
                month_db, startkey=prefix, endkey=prefix + "\ufff0", include_docs=True
            )
        except NotFound:
            return []
        found = []
        for row in rows:
            doc = row.get("doc") or {}
            if doc.get("type") != "tally" or doc.get("client") != client:
                continue
            for status, stats in (doc.get("statuses") or {}).items():
                found.append((str(doc.get("task")), status, dict(stats)))
        with self._lock:
            if len(self._outcome_cache) >= 5000:
                self._outcome_cache.clear()
            self._outcome_cache[key] = (seq, found)
        return found

    def _archived_ids(self, occ_ids: list[str]) -> set[str]:
        """Which of these occurrences already have a result in their month's database."""
        by_month: dict[str, list[str]] = {}
        for occ in occ_ids:
            due = occ.rsplit(":", 1)[-1]
            month = f"{due[0:4]}-{due[4:6]}-01T00:00:00Z"
            by_month.setdefault(results_db(self.db, from_wire(month)), []).append(occ)
        found: set[str] = set()
        for month_db, ids in by_month.items():
            try:
                rows = self.couch.all_docs(month_db, keys=[f"res:{i}" for i in ids])
            except NotFound:
                continue
            found |= {
                r["key"].removeprefix("res:")
                for r in rows
                if "value" in r and not (r.get("value") or {}).get("deleted")
            }
        return found

    def dashboard(self, client: str) -> dict[str, Any]:
        """Every task of the client with counts, success rate, last result and next due."""
        now = self.service.now()
        tasks = self.service.list_tasks(client)
        out = self.outcomes(client, self.history_start(tasks, now), now)
        live, live_out, archived = out["live"], out["live_out"], out["archived"]

        # The archiver keeps each task's newest finished occurrence in the live database
        # after copying it, so that one may be counted on both sides: find out and drop it.
        candidates = {}
        for task_name, by_status in live_out.items():
            for status, stats in by_status.items():
                if stats.get("max"):
                    occ = occurrence_id(task_name, datetime.fromtimestamp(stats["max"], UTC))
                    candidates[occ] = (task_name, status)
        twice = self._archived_ids(sorted(candidates)) if candidates else set()

        rows = []
        totals: dict[str, Any] = dict.fromkeys(SHOWN_STATES, 0) | {
            "ok": 0,
            "error": 0,
            "tasks": len(tasks),
        }
        for task in tasks:
            counts = dict.fromkeys(SHOWN_STATES, 0)
            for state, n in live.get(task.id, {}).items():
                if state in counts:
                    counts[state] += n
            statuses: dict[str, dict[str, Any]] = {}
            for source in (live_out.get(task.id, {}), archived.get(task.id, {})):
                for status, stats in source.items():
                    into = statuses.setdefault(status, {"count": 0, "max": 0})
                    into["count"] += stats.get("count", 0)
                    into["max"] = max(into["max"], stats.get("max") or 0)
            for occ, (task_name, status) in candidates.items():
                if occ in twice and task_name == task.id:
                    statuses[status]["count"] -= 1
                    state = "done" if status in ("ok", "error") else status
                    if state in counts:
                        counts[state] -= 1
            for status, stats in archived.get(task.id, {}).items():
                state = "done" if status in ("ok", "error") else status
                if state in counts:
                    counts[state] += stats.get("count", 0)
            ok = statuses.get("ok", {}).get("count", 0)
            ran = sum(statuses.get(s, {}).get("count", 0) for s in RAN_STATUSES)
            last = None
            for status in RAN_STATUSES:
                stats = statuses.get(status)
                if stats and stats["max"] and (last is None or stats["max"] > last[0]):
                    last = (stats["max"], status)
            rows.append(
                {
                    "name": task.slug,
                    "client": task.client,
                    "kind": task.kind,
                    "tube": task.tube,
                    "priority": task.priority,
                    "paused": task.paused,
                    "status": task.status,
                    "schedule": describe_schedule(task),
                    "counts": counts,
                    "ok": ok,
                    "error": ran - ok,
                    "success_rate": round(ok / ran, 4) if ran else None,
                    "last": None
                    if last is None
                    else {
                        "due_at": epoch_to_wire(last[0]),
                        "status": last[1],
                        "occurrence": occurrence_id(task.id, datetime.fromtimestamp(last[0], UTC)),
                    },
                    "next_due": next_due(task, now),
                }
            )
            for state in SHOWN_STATES:
                totals[state] += counts[state]
            totals["ok"] += ok
            totals["error"] += ran - ok
        ran_total = totals["ok"] + totals["error"]
        totals["success_rate"] = round(totals["ok"] / ran_total, 4) if ran_total else None
        return {"at": to_wire(now), "client": client, "tasks": rows, "totals": totals}

    def clients_overview(self) -> list[dict[str, Any]]:
        """For operators: every client with its task count and live counts by state."""
        tasks: dict[str, int] = {}
        for row in self._view(self.db, "tasks_by_client", "farm"):
            tasks[row["key"][0]] = tasks.get(row["key"][0], 0) + 1
        states: dict[str, dict[str, int]] = {}
        for row in self._view(self.db, "by_client_state", "farm", group_level=2):
            client, state = row["key"]
            states.setdefault(client, {})[state] = row["value"]
        return [
            {"client": c, "tasks": tasks.get(c, 0), "counts": states.get(c, {})}
            for c in sorted(set(tasks) | set(states))
        ]

    # ------------------------------------------------------------ task history

    def merged(
        self,
        task: Task,
        lo: str,
        hi: str,
        *,
        descending: bool,
        include_docs: bool = True,
        page: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Live and archived rows of one task with lo <= due_at <= hi, in time order."""
        page = page or self.page
        now = self.service.now()
        lo_dt = max(clamp_wire(lo), from_wire(task.created_at) - timedelta(days=1))
        hi_dt = min(clamp_wire(hi), now + timedelta(days=1))
        months = self.month_dbs(lo_dt, hi_dt) if lo_dt <= hi_dt else []
        if descending:
            months.reverse()
        first, last = (hi, lo) if descending else (lo, hi)

        def archive() -> Iterator[dict[str, Any]]:
            for month_db in months:
                for row in self.stream(
                    month_db, "results", "by_client_task_time",
                    [task.client, task.id, first], [task.client, task.id, last],
                    descending=descending, include_docs=include_docs, page=page,
                ):  # fmt: skip
                    if include_docs and row.get("doc"):
                        yield row_from_archive(row["doc"])
                    elif not include_docs:
                        value = row.get("value") or {}
                        yield {
                            "id": row["id"].removeprefix("res:"), "due_at": row["key"][2],
                            "state": None, **value, "source": "archive",
                        }  # fmt: skip

        def live() -> Iterator[dict[str, Any]]:
            for row in self.stream(
                self.db, "farm", "by_task", [task.id, first], [task.id, last],
                descending=descending, include_docs=True, page=page,
            ):  # fmt: skip
                if row.get("doc"):
                    yield row_from_live(row["doc"])

        # Archive first: for an occurrence in both, the archived copy wins (it is final).
        return dedupe(heapq.merge(archive(), live(), key=lambda r: r["due_at"], reverse=descending))

    def history(
        self,
        task: Task,
        *,
        before: str | None = None,
        since: str | None = None,
        until: str | None = None,
        states: set[str] | None = None,
        limit: int = 50,
        max_scan: int = 5000,
    ) -> dict[str, Any]:
        """One page of occurrences, newest first, with a cursor for the next page."""
        hi = min(until or FAR_FUTURE, before or FAR_FUTURE)
        lo = since or EPOCH_WIRE
        rows: list[dict[str, Any]] = []
        scanned = 0
        next_before = None
        page = min(self.page, limit + 1)
        for row in self.merged(task, lo, hi, descending=True, page=page):
            if before is not None and row["due_at"] >= before:
                continue
            scanned += 1
            if states and row["state"] not in states and row.get("status") not in states:
                if scanned >= max_scan:
                    next_before = row["due_at"]
                    break
                continue
            if len(rows) == limit:
                next_before = rows[-1]["due_at"]
                break
            rows.append(row)
            if scanned >= max_scan:
                next_before = row["due_at"]
                break
        return {"occurrences": rows, "next_before": next_before}

    def running(self, task: Task) -> list[dict[str, Any]]:
        """Leased occurrences of the task, with their progress, and quorum runs some of
        whose slots are leased."""
        rows = self._view(
            self.db, "active_by_task", "farm",
            startkey=[task.id], endkey=[task.id, {}], include_docs=True,
        )  # fmt: skip
        running = []
        for r in rows:
            if not r.get("doc"):
                continue
            if r["value"] == "leased":
                running.append(row_from_live(r["doc"]))
            elif r["value"] == "ready" and r["doc"].get("slots"):
                # A quorum run stays ready while workers hold its slots (issue 18).
                row = row_from_live(r["doc"])
                if any(s["state"] == "leased" for s in row.get("quorum", {}).get("slots", [])):
                    running.append(row)
        return running

    def series(
        self, task: Task, since: datetime, until: datetime, buckets: int = 120
    ) -> dict[str, Any]:
        """Duration, latency and success rate over time, in at most ``buckets`` buckets."""
        since, until = as_utc(since), as_utc(until)
        width = max((until - since).total_seconds() / max(buckets, 1), 1.0)
        out: dict[int, dict[str, Any]] = {}
        for row in self.merged(task, to_wire(since), to_wire(until), descending=False):
            status = row.get("status")
            if status not in RAN_STATUSES:
                continue
            index = int((from_wire(row["due_at"]) - since).total_seconds() // width)
            b = out.setdefault(index, {"n": 0, "ok": 0, "dur": [0, 0], "lat": [0, 0]})
            b["n"] += 1
            b["ok"] += status == "ok"
            for key, name in (("dur", "duration_ms"), ("lat", "latency_ms")):
                value = row.get(name)
                if isinstance(value, int | float):
                    b[key][0] += value
                    b[key][1] += 1
        points = []
        for index in sorted(out):
            b = out[index]
            points.append(
                {
                    "t": to_wire(since + timedelta(seconds=index * width)),
                    "runs": b["n"],
                    "success_rate": round(b["ok"] / b["n"], 4),
                    "duration_ms": round(b["dur"][0] / b["dur"][1], 1) if b["dur"][1] else None,
                    "latency_ms": round(b["lat"][0] / b["lat"][1], 1) if b["lat"][1] else None,
                }
            )
        return {
            "since": to_wire(since),
            "until": to_wire(until),
            "bucket_seconds": width,
            "points": points,
        }

    def first_run(self, task: Task) -> str | None:
        """Due time of the task's oldest run still kept (live or archived), or None: where
        its plot starts by default, so a new task's few runs fill the plot."""
        for row in self.merged(task, EPOCH_WIRE, FAR_FUTURE, descending=False, page=1):
            return str(row["due_at"])
        return None

    # ------------------------------------------------------------ the dashboard's plot

    def activity(self, client: str, hours: int) -> dict[str, Any]:
        """Runs per hour and their success rate over the last ``hours`` (whole hours, the
        current one last), leading empty hours trimmed to at least
        :data:`MIN_ACTIVITY_HOURS`, so a new client's first runs are not a sliver.

        Cost: one ``by_client_task_time`` range per task and month (values only, no
        documents) plus one ``outcomes_by_client_task`` range for the runs still live: it
        follows the tasks and the runs in the window, never the client's whole history.
        """
        now = self.service.now()
        end = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        start = end - timedelta(hours=hours)
        counts: dict[int, list[int]] = {}  # hour index -> [runs, ok]

        def count(due: datetime, status: str) -> None:
            if status in RAN_STATUSES and start <= due < end:
                bucket = counts.setdefault(int((due - start).total_seconds() // 3600), [0, 0])
                bucket[0] += 1
                bucket[1] += status == "ok"

        archived: set[str] = set()
        lo, hi = to_wire(start), to_wire(end)
        months = self.month_dbs(start, end)
        for task in self.service.list_tasks(client):
            for month_db in months:
                for row in self.stream(
                    month_db, "results", "by_client_task_time",
                    [client, task.id, lo], [client, task.id, hi],
                ):  # fmt: skip
                    archived.add(row["id"].removeprefix("res:"))
                    count(from_wire(row["key"][2]), str((row.get("value") or {}).get("status")))
        for row in self._view(
            self.db, "outcomes_by_client_task", "farm",
            startkey=[client], endkey=[client, {}], reduce=False,
        ):  # fmt: skip
            if row["id"] not in archived and isinstance(row.get("value"), int | float):
                count(datetime.fromtimestamp(row["value"], UTC), str(row["key"][2]))
        first = min(counts, default=hours)
        shown = max(min(hours, MIN_ACTIVITY_HOURS), hours - first)
        points = []
        for index in range(hours - shown, hours):
            runs, ok = counts.get(index, (0, 0))
            points.append(
                {
                    "t": to_wire(start + timedelta(hours=index)),
                    "runs": runs,
                    "ok": ok,
                    "success_rate": round(ok / runs, 4) if runs else None,
                }
            )
        return {
            "since": to_wire(end - timedelta(hours=shown)),
            "until": to_wire(end),
            "bucket_seconds": 3600,
            "points": points,
        }

    # ------------------------------------------------------------ ops

    def reliability(self, limit: int = 1000) -> list[Any]:
        """Every worker's ``hub:reliability:{worker}`` document (issue 18), in the ops
        page's order (hub/portal/quorum.py ``reliability_rows``): one ``_all_docs`` key
        range, so the cost follows the workers that ever ran a quorum run."""
        try:
            rows = self.couch.all_docs(
                self.db, startkey=RELIABILITY_PREFIX, endkey=RELIABILITY_PREFIX + "\ufff0",
                include_docs=True, limit=limit,
            )  # fmt: skip
        except NotFound:
            return []
        return reliability_rows([row["doc"] for row in rows if row.get("doc")])

    def ops(self) -> dict[str, Any]:
        stats = self.service.stats()
        now = self.service.now()
        workers = []
        online = self._view(self.db, "workers_by_last_seen", CLAIM_DDOC, descending=True, limit=500)
        for row in online:
            value = row.get("value") or {}
            seen = from_wire(row["key"])
            workers.append(
                {
                    **value,
                    "last_seen": row["key"],
                    "online": (now - seen).total_seconds() <= 90,
                    "seconds_ago": int((now - seen).total_seconds()),
                }
            )
        buried = [
            {
                "client": row["key"][0],
                "task": row["key"][1],
                "due_at": row["key"][2],
                "occurrence": row["id"],
                "reason": row.get("value"),
            }
            for row in self._view(self.db, "buried", "farm", limit=200)
        ]
        reliability = self.reliability()
        quarantined = {row.worker for row in reliability if row.quarantined}
        for worker in workers:
            worker["quarantined"] = worker.get("name") in quarantined
        return {
            "at": stats["at"],
            "reliability": [asdict(row) for row in reliability],
            "by_state": stats["by_state"],
            "by_tube": stats["by_tube"],
            "paused_tubes": stats["paused_tubes"],
            "finished_last_minute": stats["finished_last_minute"],
            "workers": workers,
            "buried": buried,
            "fauxton": self.couch.servers[0].url.rstrip("/") + "/_utils/",
            "servers": [server.label for server in self.couch.servers],
        }


def next_due(task: Task, now: datetime) -> str | None:
    if task.paused:
        return None
    try:
        fire = schedules.next_fire(task_schedule(task), now)
    except schedules.ScheduleError:
        return None
    return None if fire is None else to_wire(fire)


def describe_schedule(task: Task) -> str:
    s = task.schedule
    if s.every is not None:
        text = f"every {human_seconds(s.every)}"
    elif s.cron is not None:
        text = f"cron {s.cron}"
    else:
        text = f"once at {s.at}"
    if s.tz != "UTC":
        text += f" ({s.tz})"
    return text


def human_seconds(value: float) -> str:
    value = int(value)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if value >= size and value % size == 0:
            return f"{value // size} {unit}"
    return f"{value} s"


def month_of(wire: str) -> str:
    return month_key(from_wire(wire))
