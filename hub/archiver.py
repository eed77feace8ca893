"""The archiver: finished occurrences move to the month's results database, then leave.

Copies each occurrence in a final state (older than a short window) to
``<db>_results_YYYY_MM`` (month of its due time) as ``res:{occurrence}``. The id is
deterministic, so a second copy is a 409 and exactly one result exists per occurrence.
Once the copy exists, the occurrence is deleted from the live database, except the
newest occurrence of each task, which anchors where a restarted hub resumes.

Retention drops whole monthly databases (server-admin rights needed).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from hub.couch import Couch, NotFound
from hub.model import Occurrence, Result, State, result_id
from hub.provision import is_results_db, results_db
from hub.timefmt import from_wire, to_wire

log = logging.getLogger("couchfarm.archiver")
BATCH = 500


@dataclass
class ArchiveReport:
    archived: int = 0
    already: int = 0
    removed: int = 0
    missing_db: list[str] | None = None
    until: str | None = None


def to_result(occ: Occurrence) -> Result:
    run = occ.result
    duration = latency = None
    if run is not None:
        started, finished = from_wire(run.started_at), from_wire(run.finished_at)
        duration = int((finished - started).total_seconds() * 1000)
        latency = int((started - from_wire(occ.due_at)).total_seconds() * 1000)
    status = run.status if (occ.state == State.DONE and run) else occ.state.value
    return Result(
        _id=result_id(occ.id),
        occurrence=occ.id,
        task=occ.task,
        client=occ.client,
        kind=occ.kind,
        due_at=occ.due_at,
        state=occ.state,
        attempt=occ.attempt,
        worker=run.worker if run else None,
        started_at=run.started_at if run else None,
        finished_at=run.finished_at if run else None,
        status=status,
        output=run.output if run else None,
        error=(run.error if run else None) or occ.reason,
        errors=occ.errors,
        duration_ms=duration,
        latency_ms=latency,
    )


def archive(
    couch: Couch,
    db: str,
    now: datetime,
    *,
    window: timedelta = timedelta(minutes=5),
    keep: Callable[[Occurrence], bool] = lambda occ: False,
    since: str | None = None,
) -> ArchiveReport:
    """One pass over occurrences that ended before ``now - window`` (and after ``since``,
    the ``until`` of the previous pass, so kept occurrences are not copied each pass)."""
    report = ArchiveReport(missing_db=[], until=since)
    rows = couch.view(
        db, "farm", "finished_by_time", startkey=since, endkey=to_wire(now - window),
        include_docs=True, limit=BATCH,
    )["rows"]  # fmt: skip
    if rows:
        report.until = rows[-1]["key"]
    by_month: dict[str, list[Occurrence]] = defaultdict(list)
    for row in rows:
        occ = Occurrence.from_doc(row["doc"])
        by_month[results_db(db, from_wire(occ.due_at))].append(occ)
    removable: list[dict[str, Any]] = []
    for month_db, occs in by_month.items():
        try:
            written = couch.bulk_docs(month_db, [to_result(o).to_doc() for o in occs])
        except NotFound:
            log.error(
                "event=results_db_missing db=%s hint='run hub init or give the hub admin rights'",
                month_db,
            )
            report.missing_db.append(month_db)
            continue
        for occ, row in zip(occs, written, strict=True):
            if "rev" in row:
                report.archived += 1
            elif row.get("error") == "conflict" or "already exists" in str(row.get("reason")):
                # CouchDB answers 409; a server that runs validation first answers 403.
                report.already += 1
            else:
                log.error("event=archive_failed occ=%s error=%s", occ.id, row.get("reason"))
                continue
            if not keep(occ):
                removable.append({"_id": occ.id, "_rev": occ.rev, "_deleted": True})
    if removable:
        for row in couch.bulk_docs(db, removable):
            report.removed += "rev" in row
    return report


def expired_months(all_dbs: list[str], db: str, now: datetime, retention_days: int) -> list[str]:
    """Monthly results databases whose whole month ended more than ``retention_days`` ago."""
    cutoff = now - timedelta(days=retention_days)
    expired = []
    for name in all_dbs:
        if not is_results_db(db, name):
            continue
        year, month = (int(part) for part in name.rsplit("_", 2)[-2:])
        month_end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=now.tzinfo)
        if month_end <= cutoff:
            expired.append(name)
    return sorted(expired)


def drop_expired(admin: Couch, db: str, now: datetime, retention_days: int) -> list[str]:
    dropped = []
    for name in expired_months(admin.all_dbs(), db, now, retention_days):
        admin.delete_db(name)
        log.warning("event=results_month_dropped db=%s retention_days=%d", name, retention_days)
        dropped.append(name)
    return dropped
