"""The local spool: writes the hub has not confirmed yet, kept in SQLite across crashes.

Every finishing write (finish, fail, release) is put here *before* it is sent
(write-ahead), so a worker killed between the end of a run and the server's answer
still has the result on disk. An entry is:

- ``pending``: not yet accepted by any server; uploaded in order when one answers;
- ``uploaded``: accepted by server ``uploaded_to``; a finished result waits here until it
  has been seen on another server of the list (the standby), so losing the primary with
  its disk loses nothing the worker was told was stored. Then it is deleted.

WAL journal with ``synchronous=FULL``: a committed add survives ``kill -9`` and power loss.
Any SQLite failure (full disk, read-only file, a directory in the way) raises
:class:`SpoolError` with a message that names the file.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS writes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    occ_id TEXT NOT NULL,
    op TEXT NOT NULL,
    worker TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    claimed_at TEXT NOT NULL DEFAULT '',
    doc TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    uploaded_to INTEGER,
    tries INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at REAL NOT NULL,
    uploaded_at REAL
);
CREATE INDEX IF NOT EXISTS writes_state ON writes (state, seq);
"""

COLUMNS = (
    "seq, occ_id, op, worker, attempt, claimed_at, doc, state, uploaded_to, tries, last_error, "
    "created_at, uploaded_at"
)
PENDING = "pending"
UPLOADED = "uploaded"


class SpoolError(RuntimeError):
    """The spool file cannot be opened or written."""


@dataclass(frozen=True)
class Entry:
    seq: int
    occ_id: str
    op: str  # "finish" | "fail" | "release"
    worker: str
    attempt: int
    claimed_at: str  # the lease the write was made under (recognises our own lease on 409)
    doc: dict[str, Any]
    state: str
    uploaded_to: int | None
    tries: int
    last_error: str | None
    created_at: float
    uploaded_at: float | None


class Spool:
    """Thread-safe; one connection guarded by a lock (writes are few and small)."""

    def __init__(self, path: str | Path, *, max_pages: int | None = None) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._max_pages = max_pages  # tests use it to play a full disk
        self._open()

    # ------------------------------------------------------------ plumbing

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                str(self.path), timeout=10.0, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(SCHEMA)
            if self._max_pages is not None:
                conn.execute(f"PRAGMA max_page_count={int(self._max_pages)}")
        except (sqlite3.Error, OSError) as exc:
            raise SpoolError(f"cannot open the spool {self.path}: {exc}") from exc
        self._conn = conn

    def _run(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        if self._conn is None:
            self._open()
        assert self._conn is not None
        try:
            return self._conn.execute(sql, params)
        except sqlite3.Error as exc:
            raise SpoolError(f"spool {self.path} failed: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def check(self) -> None:
        """Raise SpoolError unless a write transaction works now (disk space, permissions)."""
        with self._lock:
            self._run("BEGIN IMMEDIATE")
            try:
                self._run("CREATE TABLE IF NOT EXISTS probe (x)")
            finally:
                self._run("ROLLBACK")

    # ------------------------------------------------------------ writes

    def add(
        self, doc: dict[str, Any], *, op: str, worker: str, attempt: int, claimed_at: str = ""
    ) -> int:
        """Append a write; returns its sequence number once it is on disk."""
        body = _dump(doc)
        with self._lock:
            cursor = self._run(
                "INSERT INTO writes (occ_id, op, worker, attempt, claimed_at, doc, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (str(doc["_id"]), op, worker, attempt, claimed_at, body, time.time()),
            )
            return int(cursor.lastrowid or 0)

    def mark_uploaded(self, seq: int, server_index: int) -> None:
        with self._lock:
            self._run(
                "UPDATE writes SET state=?, uploaded_to=?, uploaded_at=?, last_error=NULL "
                "WHERE seq=?",
                (UPLOADED, server_index, time.time(), seq),
            )

    def replace_doc(self, seq: int, doc: dict[str, Any]) -> None:
        body = _dump(doc)
        with self._lock:
            self._run("UPDATE writes SET doc=? WHERE seq=?", (body, seq))

    def note_failure(self, seq: int, error: str) -> None:
        with self._lock:
            self._run(
                "UPDATE writes SET tries=tries+1, last_error=? WHERE seq=?", (error[:500], seq)
            )

    def delete(self, seq: int) -> None:
        with self._lock:
            self._run("DELETE FROM writes WHERE seq=?", (seq,))

    # ------------------------------------------------------------ reads

    def entries(self, state: str | None = None) -> list[Entry]:
        with self._lock:
            if state is None:
                rows = self._run(f"SELECT {COLUMNS} FROM writes ORDER BY seq").fetchall()
            else:
                rows = self._run(
                    f"SELECT {COLUMNS} FROM writes WHERE state=? ORDER BY seq", (state,)
                ).fetchall()
        return [_entry(row) for row in rows]

    def pending(self) -> list[Entry]:
        return self.entries(PENDING)

    def awaiting_confirmation(self) -> list[Entry]:
        return self.entries(UPLOADED)

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._run("SELECT state, COUNT(*) FROM writes GROUP BY state").fetchall()
        out = {PENDING: 0, UPLOADED: 0}
        out.update({str(state): int(count) for state, count in rows})
        return out


def _dump(doc: dict[str, Any]) -> str:
    # Key order is kept as is: validate_doc_update compares fields with JSON.stringify,
    # which is order-sensitive, so a re-ordered `input` reads as "changed" there.
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def _entry(row: tuple[Any, ...]) -> Entry:
    (seq, occ_id, op, worker, attempt, claimed_at, doc, state, uploaded_to, tries, last_error) = (
        row[:11]
    )
    created, up = row[11], row[12]
    return Entry(
        seq=int(seq),
        occ_id=str(occ_id),
        op=str(op),
        worker=str(worker),
        attempt=int(attempt),
        claimed_at=str(claimed_at or ""),
        doc=json.loads(doc),
        state=str(state),
        uploaded_to=None if uploaded_to is None else int(uploaded_to),
        tries=int(tries),
        last_error=last_error,
        created_at=float(created),
        uploaded_at=None if up is None else float(up),
    )
