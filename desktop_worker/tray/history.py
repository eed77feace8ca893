"""The worker's own record of its runs: a small SQLite file in its data directory.

Written from engine events on the GUI thread (local disk only, a few rows a minute), read
by the History and Statistics tabs. It is this PC's view, not the hub's: statistics come
from it, so they work offline and cost the hub nothing. Rows older than 30 days go.

A full or unwritable disk never breaks the tray: a failed write is logged and skipped, and
``problem`` says why (the window shows it).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from desktop_worker.log import log_event

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    occ_id TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT '',
    client TEXT NOT NULL DEFAULT '',
    started REAL,
    finished REAL,
    status TEXT NOT NULL DEFAULT 'running'
);
CREATE INDEX IF NOT EXISTS runs_finished ON runs (finished);
CREATE INDEX IF NOT EXISTS runs_occ ON runs (occ_id, status);
"""
KEEP_DAYS = 30
SUCCESS = frozenset({"done"})
# Outcomes that count against the success rate; released/cancelled runs were handed back,
# spooled/unsent ones are not decided yet.
FAILURE = frozenset({"failed", "retry", "buried", "lost", "rejected", "error"})
# The statistics cover this many whole local days, today the last.
STATS_DAYS = 7


def stats_days(now: datetime, days: int = STATS_DAYS) -> list[datetime]:
    """Local midnight of each day the statistics cover, oldest first, today the last: the
    one range both charts draw (the hourly chart once covered the last 168 hours, so its
    days ran from a week ago today while the daily chart's began a day later)."""
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return [today - timedelta(days=days - 1 - i) for i in range(days)]


@dataclass(frozen=True)
class HistoryRow:
    occ_id: str
    kind: str
    client: str
    started: float | None
    finished: float | None
    status: str

    @property
    def duration(self) -> float | None:
        if self.started is None or self.finished is None:
            return None
        return max(0.0, self.finished - self.started)


class History:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path) if str(path) != ":memory:" else path
        self.problem: str | None = None
        self._db: sqlite3.Connection | None = None
        try:
            if isinstance(self.path, Path):
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path))
            self._db.executescript(SCHEMA)
            # runs that were in progress when the app last ended
            self._db.execute("UPDATE runs SET status = 'interrupted' WHERE status = 'running'")
            self._db.commit()
        except (sqlite3.Error, OSError) as exc:
            self._fail("open", exc)

    def _fail(self, what: str, exc: Exception) -> None:
        self.problem = f"the run history ({self.path}) cannot be written: {exc}"
        log_event("history_error", 30, action=what, error=str(exc))

    def _write(self, what: str, sql: str, args: tuple[object, ...]) -> None:
        if self._db is None:
            return
        try:
            self._db.execute(sql, args)
            self._db.commit()
            self.problem = None
        except sqlite3.Error as exc:
            self._fail(what, exc)

    def started(self, occ_id: str, kind: str, client: str, at: float) -> None:
        self._write(
            "start",
            "INSERT INTO runs (occ_id, kind, client, started, status) "
            "VALUES (?, ?, ?, ?, 'running')",
            (occ_id, kind, client, at),
        )

    def finished(self, occ_id: str, kind: str, client: str, status: str, at: float) -> None:
        if self._db is None:
            return
        try:
            cursor = self._db.execute(
                "UPDATE runs SET finished = ?, status = ?, kind = COALESCE(NULLIF(?, ''), kind), "
                "client = COALESCE(NULLIF(?, ''), client) WHERE id = (SELECT MAX(id) FROM runs "
                "WHERE occ_id = ? AND status = 'running')",
                (at, status, kind, client, occ_id),
            )
            if cursor.rowcount == 0:  # the run began before this app did
                self._db.execute(
                    "INSERT INTO runs (occ_id, kind, client, finished, status) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (occ_id, kind, client, at, status),
                )
            self._db.commit()
            self.problem = None
        except sqlite3.Error as exc:
            self._fail("finish", exc)

    def uploaded(self, occ_id: str, status: str) -> None:
        """A spooled result reached the hub later: record its real outcome."""
        self._write(
            "upload",
            "UPDATE runs SET status = ? WHERE id = (SELECT MAX(id) FROM runs WHERE occ_id = ? "
            "AND status IN ('spooled', 'unsent', 'offline'))",
            (status, occ_id),
        )

    def prune(self, now: float) -> None:
        self._write("prune", "DELETE FROM runs WHERE finished < ?", (now - KEEP_DAYS * 86400,))

    def recent(self, limit: int = 200) -> list[HistoryRow]:
        if self._db is None:
            return []
        try:
            rows = self._db.execute(
                "SELECT occ_id, kind, client, started, finished, status FROM runs "
                "WHERE status != 'running' ORDER BY COALESCE(finished, started) DESC, id DESC "
                "LIMIT ?",
                (limit,),
            ).fetchall()
        except sqlite3.Error:
            return []
        return [HistoryRow(*row) for row in rows]

    def _finished_between(self, start: float, end: float) -> list[tuple[float, str]]:
        if self._db is None:
            return []
        try:
            return self._db.execute(
                "SELECT finished, status FROM runs WHERE finished >= ? AND finished < ?",
                (start, end),
            ).fetchall()
        except sqlite3.Error:
            return []

    def completed_per_hour(self, now: datetime, days: int = STATS_DAYS) -> list[int]:
        """Runs finished ``done`` in each local hour of the days :func:`stats_days` names
        (today's later hours stay 0), oldest first: the days of :meth:`success_per_day`."""
        first = stats_days(now, days)[0]
        counts = [0] * (days * 24)
        end = first + timedelta(days=days)
        for finished, status in self._finished_between(first.timestamp(), end.timestamp()):
            if status in SUCCESS:
                moment = datetime.fromtimestamp(finished, now.tzinfo)
                index = (moment.date() - first.date()).days * 24 + moment.hour
                if 0 <= index < len(counts):
                    counts[index] += 1
        return counts

    def success_per_day(self, now: datetime, days: int = STATS_DAYS) -> list[tuple[int, int]]:
        """(succeeded, decided) per local day for the last ``days`` days, oldest first."""
        starts = stats_days(now, days)
        out = [[0, 0] for _ in range(days)]
        end = starts[-1] + timedelta(days=1)
        for finished, status in self._finished_between(starts[0].timestamp(), end.timestamp()):
            moment = datetime.fromtimestamp(finished, now.tzinfo)
            index = (moment.date() - starts[0].date()).days
            if not 0 <= index < days:
                continue
            if status in SUCCESS:
                out[index][0] += 1
                out[index][1] += 1
            elif status in FAILURE:
                out[index][1] += 1
        return [(a, b) for a, b in out]

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
