"""A client's results as a feed (docs/PORTAL.md, "Results feed"): pages since a cursor,
long-polling when there is nothing new, backed by ``_changes`` on the monthly results
databases, so a client's own systems consume results without scraping the dashboard.

Results are filed by the month of their due time (``farm_results_YYYY_MM``), and a run
due late in a month can be archived early the next one, so the cursor holds a position
(CouchDB's ``seq``) in each month still open: this one and the previous one. A month
older than that is closed: nothing new can arrive in it.

Isolation: only ids that start with ``res:occ:task:{client}:`` are fetched from the change
rows, and each fetched document is checked again (type, client and id) before it is
returned. (No server-side filter: PouchDB Server answers ``filter=_selector`` with 404, and
a JS filter costs CouchDB time per write per waiting feed; the id carries the client.)
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hub.protocol.couch import Couch, NotFound
from hub.protocol.names import results_db
from hub.protocol.timefmt import as_utc, month_key

log = logging.getLogger("couchfarm.results_feed")

MAX_PAGE = 500
LONGPOLL_SLACK_S = 1.0
"""A long poll may return this much after its wait (Couch.changes bounds it on our side)."""
MAX_WAIT_S = 60.0


class CursorError(ValueError):
    """A ``since`` value that is not a cursor this feed gave; the message names it."""


@dataclass(frozen=True)
class Cursor:
    """Where a client is in each open month: month ("2026_12") -> CouchDB seq."""

    positions: tuple[tuple[str, str], ...]

    def encode(self) -> str:
        raw = json.dumps(dict(self.positions), sort_keys=True, separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            padded = text + "=" * (-len(text) % 4)
            data = json.loads(base64.urlsafe_b64decode(padded.encode()).decode())
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise CursorError("since: not a cursor this feed gave (use its 'next')") from None
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and len(k) == 7 and k[4] == "_" and isinstance(v, str)
            for k, v in data.items()
        ):
            raise CursorError("since: not a cursor this feed gave (use its 'next')")
        return cls(tuple(sorted(data.items())))

    def get(self, month: str) -> str:
        return dict(self.positions).get(month, "0")


def open_months(now: datetime) -> list[str]:
    """The months a new result can still arrive in: the previous one and this one."""
    now = as_utc(now)
    previous = (now.year, now.month - 1) if now.month > 1 else (now.year - 1, 12)
    return [f"{previous[0]:04d}_{previous[1]:02d}", month_key(now)]


def _month_db(live_db: str, month: str) -> str:
    return results_db(live_db, datetime(int(month[:4]), int(month[5:]), 1, tzinfo=UTC))


def is_clients_result(doc: dict[str, Any], client: str) -> bool:
    return (
        doc.get("type") == "result"
        and doc.get("client") == client
        and str(doc.get("_id", "")).startswith(f"res:occ:task:{client}:")
    )


QUORUM_FIELDS = ("validation", "alternatives")


def public_result(doc: dict[str, Any], *, alternatives: bool = False) -> dict[str, Any]:
    """What the client receives of a stored result: its fields, not CouchDB's.

    A quorum run's result (issue 18) is the canonical one in the usual fields, plus
    ``validation`` (which worker's result is canonical and why, or ``inconclusive``);
    ``alternatives`` (every worker's result, up to k of them) only when asked for, since
    it multiplies the size of a page by k. A quorum-1 result comes out as it always did:
    an empty quorum field is left out."""
    hidden = {"_rev", "type", "batch"} | (set() if alternatives else {"alternatives"})
    return {
        ("id" if k == "_id" else k): v
        for k, v in doc.items()
        if k not in hidden and not (k in QUORUM_FIELDS and v is None)
    }


CHANGES_BATCH = 1000
"""Change rows read per request: small rows (id, seq), the client's picked out by id."""


def _read_month(
    couch: Couch, month_db: str, client: str, since: str, room: int, alternatives: bool = False
) -> tuple[list[dict[str, Any]], str, bool]:
    """Up to ``room`` of the client's results after ``since`` in one month's database:
    (results, the seq to resume from, whether more may follow). The change rows carry only
    ids; the client's are picked by their id (``res:occ:task:{client}:``), and only those
    documents are fetched, each checked again before it is returned."""
    prefix = f"res:occ:task:{client}:"
    picked: list[str] = []
    position, more = since, False
    while len(picked) < room:
        rows, last = couch.changes(month_db, since=position, limit=CHANGES_BATCH)
        for row in rows:
            if str(row.get("id", "")).startswith(prefix) and not row.get("deleted"):
                picked.append(str(row["id"]))
            position = str(row.get("seq", position))
            if len(picked) >= room:
                more = True
                break
        if len(rows) < CHANGES_BATCH:
            if len(picked) < room:
                position = last
            break
    if not picked:
        return [], position, more
    found = couch.all_docs(month_db, keys=picked, include_docs=True)
    results = [
        public_result(row["doc"], alternatives=alternatives)
        for row in found
        if row.get("doc") and is_clients_result(row["doc"], client)
    ]
    return results, position, more


def read_page(
    couch: Couch,
    live_db: str,
    client: str,
    cursor: Cursor | None,
    now: datetime,
    *,
    limit: int = 100,
    wait_s: float = 0.0,
    alternatives: bool = False,
) -> dict[str, Any]:
    """The client's results after ``cursor`` (None: everything in the open months), at
    most ``limit``, in the order they were stored; with ``wait_s``, waits that long for one
    to arrive when there is none. Returns ``results``, ``next`` (the cursor to ask with
    next) and ``more`` (there may be more right now: ask again at once). With
    ``alternatives``, a quorum run's result carries every worker's result too."""
    limit = max(1, min(limit, MAX_PAGE))
    deadline = time.monotonic() + max(0.0, min(wait_s, MAX_WAIT_S))
    months = open_months(now)
    positions = {month: (cursor.get(month) if cursor else "0") for month in months}
    while True:
        results: list[dict[str, Any]] = []
        more = False
        for month in months:
            room = limit - len(results)
            if room <= 0:
                more = True
                break
            try:
                found, positions[month], month_more = _read_month(
                    couch, _month_db(live_db, month), client, positions[month], room,
                    alternatives,
                )  # fmt: skip
            except NotFound:
                continue  # no result has been archived in that month yet
            results += found
            more = more or month_more
        remaining = deadline - time.monotonic()
        if results or more or remaining <= 0:
            break
        if remaining < LONGPOLL_SLACK_S + 0.5:
            time.sleep(remaining)  # too short a wait for a long poll: look once more
            continue
        current = months[-1]
        try:  # wait on this month's database, where new results arrive
            couch.changes(
                _month_db(live_db, current), since=positions[current], feed="longpoll",
                wait=min(remaining - LONGPOLL_SLACK_S, 25.0), limit=1,
            )  # fmt: skip
        except NotFound:
            time.sleep(min(remaining, 1.0))  # the month's database is not made yet
    next_cursor = Cursor(tuple(sorted(positions.items())))
    return {"results": results, "next": next_cursor.encode(), "more": more}


def current_cursor(couch: Couch, live_db: str, now: datetime) -> Cursor:
    """A cursor at the end of every open month: ``since=now`` (only what comes next)."""
    positions = []
    for month in open_months(now):
        try:
            _, last = couch.changes(_month_db(live_db, month), since="now", limit=0)
        except NotFound:
            last = "0"
        positions.append((month, last))
    return Cursor(tuple(positions))
