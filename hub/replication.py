"""Continuous replication between primary and standby, its health, and recovery.

Replications are ``_replicator`` documents, one per direction and database, each kept
on the server it pushes *from* (primary -> standby lives on the primary, standby ->
primary on the standby), so the survivor of a failure keeps retrying towards the dead
one and catches it up when it returns. They cover the live database, ``_users`` (so
workers and clients can log in on the standby) and every monthly results database;
:func:`setup` is idempotent and the hub calls it again as new months appear.

Design documents replicate like any document because the replications run with
server-admin credentials. ``_security`` does not replicate (CouchDB keeps it outside the
document store): ``hub init`` sets it on each server, and ``hub recover`` copies it.

Health is measured the same way on CouchDB 3 and on PouchDB Server (which has neither
``_scheduler`` nor ``_active_tasks``): a probe document ``hub:probe`` written on each
side with hub time, read on the other side (lag in seconds), and the difference in
document counts (lag in documents). On CouchDB 3 the scheduler's state is added.
"""

from __future__ import annotations

import base64
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from hub import provision, resolver
from hub.couch import Conflict, Couch, CouchError, NotFound
from hub.timefmt import from_wire, to_wire

log = logging.getLogger("couchfarm.replication")
PROBE_ID = "hub:probe"
LAG_WARN_SECONDS = 30.0
# Replication states (CouchDB's scheduler, PouchDB's _replication_state, or ours) that
# mean it is not running. "unknown" is not one: a non-admin cannot read states, and a
# replication just created has none for a moment.
FAILED_STATES = frozenset({"crashing", "failed", "error", "missing"})


@dataclass(frozen=True)
class Endpoint:
    """One server as a replication endpoint: its URL and server-admin credentials."""

    url: str
    user: str
    password: str
    name: str

    def couch(self, **kwargs: Any) -> Couch:
        return Couch(self.url, self.user, self.password, **kwargs)

    def db_url(self, db: str) -> str:
        """The database URL with credentials in it: the only form PouchDB Server's one-shot
        ``_replicate`` accepts (see :func:`replicate_once`)."""
        parts = urlsplit(self.url.rstrip("/"))
        auth = f"{quote(self.user, safe='')}:{quote(self.password, safe='')}@"
        return urlunsplit((parts.scheme, auth + parts.netloc, f"{parts.path}/{db}", "", ""))

    def db_spec(self, db: str) -> dict[str, Any]:
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        return {
            "url": f"{self.url.rstrip('/')}/{db}",
            "headers": {"Authorization": f"Basic {token}"},
        }


_POUCHDB: dict[str, bool] = {}


def is_pouchdb(end: Endpoint) -> bool:
    if end.url not in _POUCHDB:
        welcome = end.couch().request("GET", "/").body or {}
        _POUCHDB[end.url] = "express-pouchdb" in welcome
    return _POUCHDB[end.url]


def replicate_once(
    source: Endpoint, target: Endpoint, db: str, *, run_on: Endpoint | None = None,
    timeout: float = 300.0,
) -> dict[str, Any]:  # fmt: skip
    """One-shot ``POST /_replicate`` of ``db`` from ``source`` to ``target``, run by
    ``run_on`` (default: the target). Returns the replication's report.

    POUCHDB: its ``_replicate`` rejects the ``{"url", "headers"}`` endpoint form (500
    "Missing/invalid DB name") and needs the credentials in the URL. CouchDB 3.2+ does not
    decode credentials in a URL (a password with ``@`` or ``%`` would fail), so it gets
    the headers form, which every CouchDB 3 accepts."""
    runner = run_on or target
    if is_pouchdb(runner):
        body = {"source": source.db_url(db), "target": target.db_url(db)}
    else:
        body = {"source": source.db_spec(db), "target": target.db_spec(db)}
    reply = runner.couch(read_timeout=timeout).request("POST", "/_replicate", body=body)
    return dict(reply.body or {})


def replication_id(db: str, source: Endpoint | str, target: Endpoint | str) -> str:
    """The ``_replicator`` doc id of ``db`` from ``source`` to ``target`` (endpoints, or
    their names: "primary", "standby")."""
    source_name = source if isinstance(source, str) else source.name
    target_name = target if isinstance(target, str) else target.name
    return f"couchfarm-{db}-{source_name}-to-{target_name}"


def farm_databases(admin: Couch, db: str) -> list[str]:
    names = admin.all_dbs()
    return ["_users", db, *sorted(n for n in names if provision.is_results_db(db, n))]


def setup(
    primary: Endpoint, standby: Endpoint, db: str, *, replace: bool = True,
    skip: frozenset[str] = frozenset(),
) -> list[str]:  # fmt: skip
    """Create (or keep) continuous replications both ways for every farm database.

    ``replace=False`` (the hub's hourly pass) only adds what is missing: a replication
    that points somewhere else than this caller's URLs is reported and kept, because the
    caller's URLs are its own view of the servers, not necessarily what each server can
    reach. ``skip``: databases being retired. A database one side lacks is created there
    with the other side's ``_security``, which does not replicate."""
    lines = []
    primary_admin, standby_admin = primary.couch(), standby.couch()
    databases = sorted(
        (set(farm_databases(primary_admin, db)) | set(farm_databases(standby_admin, db))) - skip
    )
    for source, target, admin in (
        (primary, standby, primary_admin),
        (standby, primary, standby_admin),
    ):
        target_admin = target.couch()
        for name in databases:
            if target_admin.create_db(name) and not name.startswith("_"):
                security = admin.get_security(name)
                if security:
                    target_admin.put_security(name, security)
                lines.append(f"{name}: created on {target.name} with {source.name}'s _security")
            doc_id = replication_id(name, source, target)
            wanted = {
                "_id": doc_id,
                "source": source.db_spec(name),
                "target": target.db_spec(name),
                "continuous": True,
            }
            current = admin.get_or_none("_replicator", doc_id)
            if (
                current is not None
                and current.get("source") == wanted["source"]
                and current.get("target") == wanted["target"]
            ):
                lines.append(f"{doc_id}: exists")
                continue
            if current is not None and not replace:
                lines.append(
                    f"{doc_id}: points elsewhere than this hub's URLs; kept (run `hub "
                    "replication setup` to replace it)"
                )
                continue
            if current is not None:
                admin.delete("_replicator", doc_id, current["_rev"])
            try:
                admin.put("_replicator", wanted)
                lines.append(f"{doc_id}: created")
            except Conflict:
                lines.append(f"{doc_id}: exists")
    return lines + settle_users(primary_admin, standby_admin)


def retire(
    primary: Endpoint, standby: Endpoint, databases: list[str]
) -> tuple[list[str], set[str]]:
    """Remove both replications of each database about to be dropped (a replication whose
    source is gone only fails, and one towards a dropped target would re-fill it).
    Returns the lines and the databases whose replications could not all be removed:
    those must not be dropped yet."""
    lines: list[str] = []
    kept: set[str] = set()
    for name in databases:
        for source, target in ((primary, standby), (standby, primary)):
            doc_id = replication_id(name, source, target)
            try:
                admin = source.couch()
                current = admin.get_or_none("_replicator", doc_id)
                if current is not None:
                    admin.delete("_replicator", doc_id, current["_rev"])
                    lines.append(f"{doc_id}: removed")
            except CouchError as exc:
                kept.add(name)
                lines.append(f"{doc_id}: could not be removed ({exc}); {name} is kept")
    return lines, kept


def copy_users(source: Endpoint, target: Endpoint) -> list[str]:
    """Copy ``_users`` one way now, then settle conflicts on both servers.

    Users are written on one server only (the primary) and reach the other by
    replication: the same user written on both would be two branches once ``_users``
    replicates (password hashes are salted, so never the same revision), and CouchDB
    refuses to log a conflicted user in."""
    replicate_once(source, target, "_users", run_on=source)
    return settle_users(source.couch(), target.couch())


def settle_users(*admins: Couch) -> list[str]:
    """Settle conflicted user documents on each server (see ``resolver.settle_users``)."""
    lines = []
    for admin in admins:
        settled = resolver.settle_users(admin)
        if settled:
            where = admin.active.label
            lines.append(f"_users: {settled} conflicted user document(s) settled on {where}")
    return lines


# ---------------------------------------------------------------- health


@dataclass
class LinkHealth:
    db: str
    source: str
    target: str
    lag_docs: int | None
    lag_seconds: float | None
    state: str = "unknown"
    error: str | None = None

    @property
    def healthy(self) -> bool:
        return (
            self.error is None
            and (self.lag_seconds or 0) < LAG_WARN_SECONDS
            and self.state not in FAILED_STATES
        )


@dataclass
class Health:
    links: list[LinkHealth] = field(default_factory=list)
    at: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "links": [link.__dict__ | {"healthy": link.healthy} for link in self.links],
        }


def write_probe(couch: Couch, db: str, side: str) -> None:
    """Stamp ``hub:probe`` with this side's hub time (farm_admin may write hub:* docs)."""
    doc_id = f"{PROBE_ID}:{side}"
    for _ in range(3):
        current = couch.get_or_none(db, doc_id) or {"_id": doc_id, "type": "hub"}
        try:
            couch.put(db, {**current, "at": to_wire(couch.now()), "side": side})
            return
        except Conflict:
            continue


def link_health(
    source: Couch,
    target: Couch,
    db: str,
    source_side: str,
    target_side: str,
    admin: Couch | None = None,
    *,
    probe: bool = True,
) -> LinkHealth:
    try:
        src_info, dst_info = source.db_info(db), target.db_info(db)
        lag_docs = abs(
            (src_info["doc_count"] + src_info.get("doc_del_count", 0))
            - (dst_info["doc_count"] + dst_info.get("doc_del_count", 0))
        )
        probe_id = f"{PROBE_ID}:{source_side}"
        at_source = source.get_or_none(db, probe_id) if probe else None
        at_target = target.get_or_none(db, probe_id) if probe else None
        lag_seconds: float | None = None
        if at_source and at_target:
            behind = from_wire(at_source["at"]) - from_wire(at_target["at"])
            lag_seconds = max(0.0, behind.total_seconds())
        # The replication's own state needs server-admin rights; lag does not.
        state = _scheduler_state(admin, db, source_side, target_side) if admin else "unknown"
        return LinkHealth(db, source_side, target_side, lag_docs, lag_seconds, state)
    except CouchError as exc:
        return LinkHealth(db, source_side, target_side, None, None, "unreachable", str(exc))


def _scheduler_state(admin: Couch, db: str, source_side: str, target_side: str) -> str:
    doc_id = replication_id(db, source_side, target_side)
    try:
        reply = admin.request("GET", f"/_scheduler/docs/_replicator/{doc_id}", timeout=3.0)
        return str(reply.body.get("state", "unknown"))
    except (NotFound, CouchError):
        pass
    # POUCHDB: no /_scheduler; it writes _replication_state into the _replicator doc.
    try:
        doc = admin.get_or_none("_replicator", doc_id)
    except CouchError:
        return "unknown"
    if doc is None:
        return "missing"  # no replication of this database in this direction at all
    return str(doc.get("_replication_state", "unknown"))


def watched_databases(primary: Couch, standby: Couch, db: str, *, admin: bool) -> list[str]:
    """The databases whose replication is reported: every farm database for server admins;
    for the hub (a farm_admin, which may not list databases) the live one and this month's
    results database once it exists."""
    if admin:
        for couch in (primary, standby):
            try:
                return farm_databases(couch, db)
            except CouchError:
                continue
        return [db]
    month = provision.results_db(db, primary.now())
    for couch in (primary, standby):
        try:
            couch.db_info(month)
            return [db, month]
        except NotFound:
            return [db]
        except CouchError:
            continue
    return [db]


def status(primary: Couch, standby: Couch, db: str, *, admin: bool = False) -> Health:
    """Health of both directions of each watched database (:func:`watched_databases`).

    Lag in seconds comes from the probe documents, which live in the live database (the
    one that matters for work); every database reports its lag in documents. With
    ``admin`` (the connections are server admins) the replications' own states are read
    too; the hub service, a farm_admin, reports lag only."""
    health = Health(at=to_wire(primary.now()))
    directions = ((primary, standby, "primary", "standby"),
                  (standby, primary, "standby", "primary"))  # fmt: skip
    for name in watched_databases(primary, standby, db, admin=admin):
        for source, target, source_side, target_side in directions:
            reader = source if admin else None
            link = link_health(source, target, name, source_side, target_side, reader,
                               probe=name == db)  # fmt: skip
            health.links.append(link)
    for link in health.links:
        if not link.healthy:
            log.warning(
                "event=replication_lag db=%s from=%s to=%s lag_seconds=%s lag_docs=%s error=%s",
                link.db,
                link.source,
                link.target,
                link.lag_seconds,
                link.lag_docs,
                link.error,
            )
    return health


# ---------------------------------------------------------------- recovery


@dataclass
class RecoveryReport:
    lines: list[str] = field(default_factory=list)
    ok: bool = True

    def add(self, line: str, ok: bool = True) -> None:
        self.lines.append(line)
        self.ok = self.ok and ok


def recover(
    source: Endpoint, target: Endpoint, db: str, *, sample: int = 50, timeout: float = 300.0
) -> RecoveryReport:
    """Rebuild ``target`` (a new, empty primary) from ``source`` (the standby) and check it."""
    report = RecoveryReport()
    src, dst = source.couch(read_timeout=60.0), target.couch(read_timeout=60.0)
    databases = farm_databases(src, db)
    for name in databases:
        created = dst.create_db(name)
        report.add(f"{name}: {'created' if created else 'exists'} on {target.name}")
        if not name.startswith("_"):
            security = src.get_security(name)
            if security:
                dst.put_security(name, security)
                report.add(f"{name}/_security: copied")
        started = time.monotonic()
        replicate_once(source, target, name, timeout=timeout)
        report.add(f"{name}: copied in {time.monotonic() - started:.1f} s")
    report.lines += [
        f"replication {line}" if "couchfarm-" in line else line
        for line in setup(target, source, db)
        if "created" in line or "settled" in line
    ]
    for name in databases:
        _verify(src, dst, name, sample, report)
    return report


def _verify(
    src: Couch, dst: Couch, name: str, sample: int, report: RecoveryReport, settle: float = 60.0
) -> None:
    """Counts and a sample of bodies must match. The farm may still be writing to the
    standby, and continuous replication carries those writes over, so a difference gets
    up to ``settle`` seconds to close before it counts as a failure."""
    deadline = time.monotonic() + settle
    while True:
        src_info, dst_info = src.db_info(name), dst.db_info(name)
        same_count = src_info["doc_count"] == dst_info["doc_count"]
        rows = src.all_docs(name)
        picks = random.sample(rows, min(sample, len(rows)))
        mismatched = []
        in_flight = 0
        for row in picks:
            theirs = dst.get_or_none(name, row["id"], revs="true")
            ours = src.get_or_none(name, row["id"], revs="true")
            if ours is None and theirs is None:
                continue  # deleted meanwhile, on both sides
            if _body(theirs) == _body(ours):
                continue
            if _same_history(ours, theirs):
                in_flight += 1  # one side is a revision or two behind: replication lag
            else:
                mismatched.append(row["id"])
        if (same_count and not mismatched) or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    report.add(
        f"{name}: {dst_info['doc_count']} docs on the new primary, {src_info['doc_count']} on "
        f"the standby ({'match' if same_count else 'MISMATCH'})",
        same_count,
    )
    report.add(
        f"{name}: sampled {len(picks)} bodies, {len(mismatched)} differ, {in_flight} a "
        "revision behind on the same history (still being written)"
        + (f" ({', '.join(mismatched[:5])})" if mismatched else ""),
        not mismatched,
    )


def _body(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if doc is None else {k: v for k, v in doc.items() if k != "_revisions"}


def _same_history(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """True when one document's current revision is in the other's ancestry."""
    if a is None or b is None:
        return False

    def ancestry(doc: dict[str, Any]) -> set[str]:
        revs = doc.get("_revisions") or {}
        start = int(revs.get("start", 0))
        return {f"{start - i}-{rev}" for i, rev in enumerate(revs.get("ids", []))}

    return a["_rev"] in ancestry(b) or b["_rev"] in ancestry(a)
