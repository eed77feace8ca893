"""The reaper: expired leases back to ready (or buried), due retries promoted to ready.

Only the hub decides that a lease has expired, by hub time. Every write carries the
``_rev`` it read, so a worker that touched or finished in the meantime wins and the
reaper's write is a harmless 409.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from hub.protocol import states
from hub.protocol.couch import Couch
from hub.protocol.model import Occurrence
from hub.protocol.states import InvalidTransition
from hub.protocol.timefmt import to_wire

log = logging.getLogger("couchfarm.reaper")
BATCH = 500


@dataclass
class ReapReport:
    expired: int = 0
    buried: int = 0
    promoted: int = 0
    conflicts: int = 0
    # Expired leases left alone because the occurrence is in conflict (a CouchDB cluster
    # took two claims): the resolver settles it first, and the winner expires after.
    conflicted: list[str] = field(default_factory=list)


def reap(
    couch: Couch,
    db: str,
    now: datetime,
    *,
    may_promote: Callable[[Occurrence], bool] = lambda occ: True,
) -> ReapReport:
    """One pass: expire leases whose ``expires_at`` <= now, promote due retries."""
    report = ReapReport()
    stamp = to_wire(now)
    expired_rows = couch.view(
        db, "farm", "leases_by_expiry", endkey=stamp, include_docs=True, conflicts=True,
        limit=BATCH,
    )["rows"]  # fmt: skip
    scheduled_rows = couch.view(
        db, "farm", "scheduled_by_time", endkey=stamp, include_docs=True, limit=BATCH
    )["rows"]
    updates: list[tuple[Occurrence, str]] = []
    for row in expired_rows:
        if row["doc"].get("_conflicts"):
            # Expiring the branch CouchDB happens to show (an abandoned claim's, one
            # revision longer) would put back to ready an occurrence another branch may
            # have finished: it ran again. The resolver picks the winner first.
            report.conflicted.append(row["id"])
            continue
        occ = Occurrence.from_doc(row["doc"])
        try:
            updates.append((states.expire(occ, now), "expired"))
        except InvalidTransition:
            continue
    for row in scheduled_rows:
        occ = Occurrence.from_doc(row["doc"])
        if not may_promote(occ):
            continue
        try:
            updates.append((states.promote(occ, now), "promoted"))
        except InvalidTransition:
            continue
    if not updates:
        return report
    rows = couch.bulk_docs(db, [occ.to_doc() for occ, _ in updates])
    for (occ, what), row in zip(updates, rows, strict=True):
        if "rev" not in row:
            report.conflicts += 1
            continue
        if what == "promoted":
            report.promoted += 1
        elif occ.state.value == "buried":
            report.buried += 1
        else:
            report.expired += 1
        log.info("event=%s occ=%s state=%s attempt=%d", what, occ.id, occ.state.value, occ.attempt)
    return report
