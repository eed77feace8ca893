"""``hub audit``: do the primary and the standby hold the same farm?

Compares the live database and every monthly results database (``<db>_results_YYYY_MM``)
present on either server, and lists five kinds of finding:

- ``missing``: a document live on one server and absent (or deleted) on the other;
- ``differs``: a document live on both whose winning revision differs (for occurrences
  and results, the state on each side is shown);
- ``conflict``: a document with conflicting leaves (``_conflicts``) on either server;
- ``two_results``: an occurrence with two results (below);
- ``database``: a farm database that exists on one server only (its documents are then
  not listed one by one, but its results still count for ``two_results``).

Not compared: ``_local`` documents (never replicated), the replication probes
(``hub:probe:primary``/``hub:probe:standby``, written on each side on purpose) and
documents deleted on both sides or deleted on one and never seen on the other (nothing
live differs). Design documents are compared like any other. ``_users`` and
``_replicator`` are not audited: users are written on the primary only and settled by
``hub replication setup``/``hub recover``, and each server keeps its own replications.

**Two results.** The live database holds an occurrence until the archiver has copied it
to ``res:{occurrence}`` in the month of its due time, then deletes it (keeping the newest
per task). So a finished occurrence can be recorded in up to four places: its live
document on each server and its ``res:`` document on each server, plus, in principle,
``res:`` documents in another month. Each of those records that is *final* (a live
occurrence in a final state, or any ``res:`` document) carries one outcome: for
``done`` the run (worker, start, finish, as ``hub.protocol.states.same_run`` compares them), for
the other final states the state itself (``missed``, ``failed``...). An occurrence has
**two results** when its final records disagree, for example:

- ``res:`` archived on one server with one run, and the live occurrence ``done`` by
  another run (on either server): one of them will be lost when the archiver's write-once
  ``res:`` refuses the other;
- archived as ``missed`` on one server, ``done`` on the other (the issue 15 pattern);
- two ``res:`` documents for one occurrence in different months, or with different runs
  on the two servers.

A live occurrence that is still active (ready, leased...) on one side is not a result: it
is a ``differs`` finding only. The losing leaves of a conflicted document are not read;
the conflict is reported as such and the resolver settles it by the same order.

**Cost.** Per database and server: ``_changes?style=all_docs`` in pages (ids, leaf
revisions, deleted flags: no bodies). Bodies are read with ``_all_docs?keys=`` in chunks
only for documents with several leaves (to learn the winner and its ``_conflicts``), for
documents that differ (their state; this re-read also drops differences that closed while
the scan ran) and for occurrences recorded in more than one place. Documents whose
revision is the same on both servers are read from one only.

The comparison itself is pure functions over :class:`DocRevs` maps; the fetching goes
through :class:`hub.protocol.couch.Couch`. A farm that is still writing can show differences that
are only replication lag: run it after the farm settles, or run it twice.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from hub.protocol.couch import RECOVERY_MARKER_ID, Couch, CouchError, Forbidden, Unauthorized
from hub.protocol.model import FINAL_STATES
from hub.protocol.names import is_results_db
from hub.replication import PROBE_ID

PAGE = 5000  # _changes rows per request
KEYS_CHUNK = 500  # _all_docs?keys= ids per request
SIDES = ("primary", "standby")
OCC_PREFIX = "occ:"
RES_PREFIX = "res:"
KINDS = ("database", "conflict", "differs", "missing", "two_results")
TITLES = {
    "database": "databases on one server only",
    "conflict": "conflicted documents",
    "differs": "documents whose winning revision differs",
    "missing": "documents missing on one server",
    "two_results": "occurrences with two results",
}


class AuditError(Exception):
    """A server could not be read; the message names it."""


@dataclass(frozen=True)
class DocRevs:
    """One document on one server: its winning revision, whether that is a deletion, and
    its conflicting (non-deleted losing) leaves."""

    rev: str
    deleted: bool = False
    conflicts: tuple[str, ...] = ()


RevMap = dict[str, DocRevs]
Outcome = tuple[str | None, ...]


@dataclass(frozen=True)
class Finding:
    kind: str
    db: str
    id: str
    primary: str
    standby: str
    detail: str = ""

    def line(self) -> str:
        if self.kind == "two_results":
            return f"  {self.id}: {self.detail}"
        if self.kind == "database":
            return f"  {self.db}: primary {self.primary}; standby {self.standby}"
        extra = f" ({self.detail})" if self.detail else ""
        return f"  {self.db} {self.id}: primary {self.primary}; standby {self.standby}{extra}"

    def as_dict(self) -> dict[str, str]:
        return dict(self.__dict__)


@dataclass
class AuditReport:
    db: str
    primary: str = ""
    standby: str = ""
    # database -> side -> number of documents compared there (None: no such database)
    databases: dict[str, dict[str, int | None]] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.findings

    def counts(self) -> dict[str, int]:
        return {kind: sum(f.kind == kind for f in self.findings) for kind in KINDS}

    def lines(self) -> list[str]:
        docs = {
            side: sum(n or 0 for n in (d[side] for d in self.databases.values())) for side in SIDES
        }
        out = [
            f"audit of {self.db}: primary {self.primary}, standby {self.standby}; "
            f"{len(self.databases)} database(s), {docs['primary']} document(s) on the "
            f"primary, {docs['standby']} on the standby"
        ]
        counts = self.counts()
        for kind in KINDS:
            if counts[kind]:
                out.append(f"{TITLES[kind]}: {counts[kind]}")
                out += [f.line() for f in self.findings if f.kind == kind]
        summary = ", ".join(f"{counts[k]} {k}" for k in KINDS if counts[k])
        out.append("clean: the servers agree" if self.clean else f"NOT CLEAN: {summary}")
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "db": self.db,
            "primary": self.primary,
            "standby": self.standby,
            "clean": self.clean,
            "counts": self.counts(),
            "databases": self.databases,
            "findings": [f.as_dict() for f in self.findings],
        }


# ---------------------------------------------------------------- pure comparison


def ignored(doc_id: str) -> bool:
    """Documents expected to differ: ``_local`` ones (among them the recovery marker
    ``hub.protocol.couch.RECOVERY_MARKER_ID``, which only a rebuilt server carries, and which
    ``_changes`` does not list anyway) and the replication probes."""
    if doc_id.startswith("_local/") or doc_id in (RECOVERY_MARKER_ID, PROBE_ID):
        return True
    return doc_id.startswith(PROBE_ID + ":")


def rev_key(rev: str) -> tuple[int, str]:
    pos, _, digest = rev.partition("-")
    return (int(pos) if pos.isdigit() else 0, digest)


def deleted_winner(leaves: Iterable[str]) -> str:
    """The winner among leaves that are all deletions: CouchDB's order (highest position,
    then highest hash)."""
    return max(leaves, key=rev_key)


def from_change(row: dict[str, Any]) -> DocRevs | None:
    """A ``_changes?style=all_docs`` row as :class:`DocRevs`; None when it has several
    live leaves, whose winner only the server can name (read with ``conflicts=true``)."""
    leaves = [str(c["rev"]) for c in row.get("changes", [])]
    if len(leaves) == 1:
        return DocRevs(leaves[0], bool(row.get("deleted")))
    if row.get("deleted"):  # every leaf is a deletion
        return DocRevs(deleted_winner(leaves), True)
    return None


def from_all_docs_row(row: dict[str, Any]) -> DocRevs | None:
    """An ``_all_docs?keys=…&include_docs=true&conflicts=true`` row; None when not found."""
    value = row.get("value")
    if not value or "error" in row:
        return None
    doc = row.get("doc") or {}
    conflicts = tuple(sorted(str(r) for r in doc.get("_conflicts", [])))
    return DocRevs(str(value["rev"]), bool(value.get("deleted")), conflicts)


def live(revs: DocRevs | None) -> bool:
    return revs is not None and not revs.deleted


@dataclass(frozen=True)
class RevDiff:
    missing: list[str]  # live on exactly one side
    differs: list[str]  # live on both, winning revisions differ
    conflicts: list[str]  # conflicted on either side


def compare(primary: RevMap, standby: RevMap) -> RevDiff:
    """The ids of one database that need a look, from both servers' revision maps."""
    missing, differs, conflicts = [], [], []
    for doc_id in sorted(set(primary) | set(standby)):
        if ignored(doc_id):
            continue
        ours, theirs = primary.get(doc_id), standby.get(doc_id)
        if live(ours) != live(theirs):
            missing.append(doc_id)
        elif ours and theirs and live(ours) and ours.rev != theirs.rev:
            differs.append(doc_id)
        if (ours and ours.conflicts) or (theirs and theirs.conflicts):
            conflicts.append(doc_id)
    return RevDiff(missing, differs, conflicts)


def outcome(doc: dict[str, Any] | None) -> Outcome | None:
    """The final outcome a live occurrence or a ``res:`` document records; None when it
    records none (absent, deleted, or an occurrence still active)."""
    if not doc:
        return None
    state = str(doc.get("state", ""))
    if doc.get("type") == "occurrence":
        if state not in FINAL_STATES:
            return None
        run = doc.get("result") or {}
    elif doc.get("type") == "result":
        run = doc
    else:
        return None
    if state == "done":
        return ("done", run.get("worker"), run.get("started_at"), run.get("finished_at"))
    return (state,)


def describe_outcome(result: Outcome) -> str:
    if result[0] == "done":
        _, worker, started, finished = result
        return f"done by {worker} {started}..{finished}"
    return str(result[0])


def occurrence_of(doc_id: str) -> str | None:
    if doc_id.startswith(OCC_PREFIX):
        return doc_id
    if doc_id.startswith(RES_PREFIX + OCC_PREFIX):
        return doc_id[len(RES_PREFIX) :]
    return None


def two_results(records: dict[str, list[tuple[str, Outcome]]]) -> list[Finding]:
    """``records``: occurrence id -> [(place, outcome)]. One finding per occurrence whose
    final records name more than one outcome."""
    findings = []
    for occ_id in sorted(records):
        seen = records[occ_id]
        if len({result for _, result in seen}) < 2:
            continue
        detail = "; ".join(f"{place}: {describe_outcome(result)}" for place, result in seen)
        findings.append(Finding("two_results", "", occ_id, "", "", detail))
    return findings


def result_candidates(live_db: str, maps: dict[str, dict[str, RevMap]]) -> set[str]:
    """Occurrences recorded in more than one place (``maps``: db -> side -> RevMap): the
    only ones that can have two results, so the only ones whose bodies are read."""
    places: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for db, sides in maps.items():
        for side, revs in sides.items():
            for doc_id, doc in revs.items():
                occ_id = occurrence_of(doc_id)
                if occ_id is None or doc.deleted:
                    continue
                if (db == live_db) == doc_id.startswith(OCC_PREFIX):
                    places[occ_id].add((db, side))
    candidates = set()
    for occ_id, where in places.items():
        dbs = {db for db, _ in where}
        if len(dbs) > 1:
            candidates.add(occ_id)  # live and archived, or archived in two months
        elif len(where) == 2:  # one place on both servers: with different revisions?
            (db,) = dbs
            doc_id = _id_in(db, live_db, occ_id)
            if maps[db]["primary"][doc_id].rev != maps[db]["standby"][doc_id].rev:
                candidates.add(occ_id)
    return candidates


def _id_in(db: str, live_db: str, occ_id: str) -> str:
    return occ_id if db == live_db else RES_PREFIX + occ_id


def describe(revs: DocRevs | None, doc: dict[str, Any] | None) -> str:
    """One side of a document, for a finding: revision, and the state for occurrences
    and results."""
    if revs is None:
        return "absent"
    if revs.deleted:
        return f"deleted at {revs.rev}"
    text = revs.rev
    if doc and doc.get("type") in ("occurrence", "result") and doc.get("state"):
        result = outcome(doc)
        text += f" {describe_outcome(result) if result else doc['state']}"
    if revs.conflicts:
        text += f" (conflicts: {', '.join(revs.conflicts)})"
    return text


# ---------------------------------------------------------------- reading


@dataclass
class _Side:
    name: str
    couch: Couch

    @property
    def label(self) -> str:
        return self.couch.active.label

    @contextmanager
    def reading(self, what: str) -> Iterator[None]:
        try:
            yield
        except (Unauthorized, Forbidden) as exc:
            raise AuditError(
                f"the {self.name} ({self.label}) refused {what}: {exc.status} {exc.reason} "
                "(the audit needs server-admin credentials: --user, --password-file)"
            ) from None
        except CouchError as exc:
            where = f"the {self.name} ({self.label})"
            raise AuditError(f"cannot read {what} on {where}: {exc}") from None

    def databases(self, live_db: str) -> list[str]:
        with self.reading("the list of databases"):
            names = self.couch.all_dbs()
        return [n for n in names if n == live_db or is_results_db(live_db, n)]

    def scan(self, db: str, page: int = PAGE) -> tuple[RevMap, dict[str, dict[str, Any]]]:
        """Every document's revisions (deleted ones included), and the bodies read on the
        way (documents with several leaves)."""
        revs: RevMap = {}
        several: list[str] = []
        since = "0"
        with self.reading(f"{db}/_changes"):
            while True:
                rows, since = self.couch.changes(
                    db, since=since, limit=page, params={"style": "all_docs"}
                )
                for row in rows:
                    doc_id = str(row["id"])
                    if ignored(doc_id):
                        continue
                    found = from_change(row)
                    if found is None:
                        several.append(doc_id)
                    else:
                        revs[doc_id] = found
                if len(rows) < page:
                    break
        fresh, bodies = self.read(db, several)
        revs.update(fresh)
        return revs, bodies

    def read(self, db: str, ids: Iterable[str]) -> tuple[RevMap, dict[str, dict[str, Any]]]:
        """Current revisions, conflicts and bodies of ``ids`` (absent ones left out)."""
        revs: RevMap = {}
        bodies: dict[str, dict[str, Any]] = {}
        ids = list(dict.fromkeys(ids))
        with self.reading(f"{db}/_all_docs"):
            for start in range(0, len(ids), KEYS_CHUNK):
                rows = self.couch.all_docs(
                    db, keys=ids[start : start + KEYS_CHUNK], include_docs=True, conflicts=True
                )
                for row in rows:
                    found = from_all_docs_row(row)
                    if found is None:
                        continue
                    revs[str(row["id"])] = found
                    if row.get("doc"):
                        bodies[str(row["id"])] = row["doc"]
        return revs, bodies


def audit(primary: Couch, standby: Couch, db: str, *, page: int = PAGE) -> AuditReport:
    """Compare the farm ``db`` (live and monthly results databases) on two servers.

    ``primary``/``standby``: one server each (``Couch.for_server``), with rights to list
    databases. Raises :class:`AuditError`, naming the server, when one cannot be read."""
    sides = (_Side("primary", primary), _Side("standby", standby))
    report = AuditReport(db, sides[0].label, sides[1].label)
    present = {side.name: set(side.databases(db)) for side in sides}
    names = sorted(present["primary"] | present["standby"], key=lambda n: (n != db, n))
    maps: dict[str, dict[str, RevMap]] = {}
    bodies: dict[tuple[str, str, str], dict[str, Any]] = {}  # (db, id, rev) -> body

    def keep(name: str, got: dict[str, dict[str, Any]]) -> None:
        for doc_id, body in got.items():
            bodies[(name, doc_id, str(body.get("_rev")))] = body

    for name in names:
        maps[name] = {}
        report.databases[name] = {}
        for side in sides:
            if name not in present[side.name]:
                report.databases[name][side.name] = None
                maps[name][side.name] = {}
                continue
            revs, got = side.scan(name, page)
            keep(name, got)
            maps[name][side.name] = revs
            report.databases[name][side.name] = sum(not r.deleted for r in revs.values())
        counts = report.databases[name]
        whole_db_missing = None in counts.values()
        if whole_db_missing:
            report.findings.append(Finding(
                "database", name, "",
                "absent" if counts["primary"] is None else f"{counts['primary']} document(s)",
                "absent" if counts["standby"] is None else f"{counts['standby']} document(s)",
            ))  # fmt: skip
        diff = compare(maps[name]["primary"], maps[name]["standby"])
        look = diff.conflicts + diff.differs + ([] if whole_db_missing else diff.missing)
        if not look:
            continue
        # Re-read what differs, on both sides: current revisions (a difference the scan
        # saw may have closed since) and the bodies, for the state of each side.
        for side in sides:
            if counts[side.name] is None:
                continue
            fresh, got = side.read(name, look)
            keep(name, got)
            for doc_id in look:
                if doc_id in fresh:
                    maps[name][side.name][doc_id] = fresh[doc_id]
                else:
                    maps[name][side.name].pop(doc_id, None)
        diff = compare(maps[name]["primary"], maps[name]["standby"])
        for kind, ids in (("conflict", diff.conflicts), ("differs", diff.differs),
                          ("missing", [] if whole_db_missing else diff.missing)):  # fmt: skip
            for doc_id in ids:
                found = [maps[name][s.name].get(doc_id) for s in sides]
                shown = [
                    describe(r, bodies.get((name, doc_id, r.rev)) if r else None) for r in found
                ]
                report.findings.append(Finding(kind, name, doc_id, shown[0], shown[1]))

    report.findings += two_results(_records(sides, db, maps, bodies))
    return report


def _records(
    sides: tuple[_Side, _Side],
    live_db: str,
    maps: dict[str, dict[str, RevMap]],
    bodies: dict[tuple[str, str, str], dict[str, Any]],
) -> dict[str, list[tuple[str, Outcome]]]:
    """The final records of every occurrence that is recorded in more than one place,
    reading the bodies not read yet (a revision the primary had is not read again on the
    standby)."""
    candidates = result_candidates(live_db, maps)
    if not candidates:
        return {}
    for name, by_side in maps.items():
        for side in sides:
            side_revs = by_side.get(side.name, {})
            wanted = [
                doc_id
                for doc_id in (_id_in(name, live_db, occ) for occ in sorted(candidates))
                if live(side_revs.get(doc_id))
                and (name, doc_id, side_revs[doc_id].rev) not in bodies
            ]
            if wanted:
                _revs, got = side.read(name, wanted)
                for doc_id, body in got.items():
                    bodies[(name, doc_id, str(body.get("_rev")))] = body
    records: dict[str, list[tuple[str, Outcome]]] = defaultdict(list)
    for occ_id in sorted(candidates):
        for name, by_side in maps.items():
            doc_id = _id_in(name, live_db, occ_id)
            for side in sides:
                revs = by_side.get(side.name, {}).get(doc_id)
                if not live(revs):
                    continue
                assert revs is not None
                result = outcome(bodies.get((name, doc_id, revs.rev)))
                if result is not None:
                    records[occ_id].append((f"{side.name} {name}", result))
    return records
