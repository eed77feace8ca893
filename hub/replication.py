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

A replication that crashed or backs off is *restarted*: its ``_replicator`` document is
deleted and written again with a new ``generation`` (:func:`restart`). On CouchDB that
starts a new job at once, instead of waiting out the scheduler's backoff (30 s x
2^(crashes-1)); PouchDB Server never starts a document whose body equals one it ran
before, so every document written here carries a generation that only grows.

Recovery (:func:`recover`) marks the rebuilt server ``rebuilding`` (``_local`` marker, never
replicated; clients do not fail back to it, ``hub.protocol.couch.Couch._recovered``), copies every
database, restarts the replications towards it, and marks it ``verified`` only once a
probe written on each side has been read on the other.
"""

from __future__ import annotations

import base64
import logging
import random
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from hub import provision, resolver
from hub.protocol.board import board_db
from hub.protocol.couch import RECOVERY_MARKER_ID, Conflict, Couch, CouchError, NotFound, redact_url
from hub.protocol.names import is_results_db, results_db
from hub.protocol.timefmt import from_wire, to_wire
from hub.provision import InitReport

log = logging.getLogger("couchfarm.replication")
PROBE_ID = "hub:probe"
LAG_WARN_SECONDS = 30.0
# Replication states (CouchDB's scheduler, PouchDB's _replication_state, or ours) that
# mean it is not running. "unknown" is not one: a non-admin cannot read states, and a
# replication just created has none for a moment.
FAILED_STATES = frozenset({"crashing", "failed", "error", "missing"})
# States in which a replication that has a document is restarted rather than waited for:
# CouchDB's "crashing" (backing off after consecutive errors), "failed" (terminal: CouchDB
# never retries it) and "error" (the document could not be processed; PouchDB: the
# replication ended with an error and is not retried).
RESTART_STATES = frozenset({"crashing", "failed", "error"})
# The field that makes each written _replicator document differ from the ones before it.
GENERATION = "generation"
# A live database's probe this far behind (both servers answering), and still so on the
# watches of the next STALL_CONFIRM_SECONDS (a probe written just now, after an outage, is
# that far behind until replication carries it), means the replication is stalled even if
# its state says otherwise (PouchDB Server's "triggered" while it backs off its retries, or
# a document it never started): the watch restarts that direction.
STALLED_SECONDS = 60.0
STALL_CONFIRM_SECONDS = 20.0
# The watch restarts one replication at most this often.
RESTART_EVERY_SECONDS = 60.0


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
    body: dict[str, Any]
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
    return ["_users", db, *sorted(n for n in names if is_results_db(db, n))]


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
            current = admin.get_or_none("_replicator", doc_id)
            wanted = {
                "_id": doc_id,
                "source": source.db_spec(name),
                "target": target.db_spec(name),
                "continuous": True,
                GENERATION: next_generation(current),
            }
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


def next_generation(current: dict[str, Any] | None) -> int:
    """A generation for the next ``_replicator`` document of a link: milliseconds since the
    epoch, and above the current document's. A document is compared by its source and
    target only (:func:`setup` stays idempotent); the generation only makes its body new.

    POUCHDB: its replicator remembers the body of every document it started, and a new
    document whose body (``_id`` and ``_rev`` aside) equals one of those is never started
    (docs/POUCHDB_DIFFERENCES.md). A growing generation makes every write a new body,
    including a document re-created after :func:`retire`."""
    previous = int((current or {}).get(GENERATION) or 0)
    return max(previous + 1, int(time.time() * 1000))


def restart(admin: Couch, doc_id: str) -> bool:
    """Restart one replication now: delete its ``_replicator`` document (on ``admin``, the
    server that runs it) and write it again, unchanged but for a new generation. CouchDB
    stops the old job and starts a new one with no crash count (no backoff); PouchDB
    Server cancels the old one and starts the new body. False if there is no document, or
    someone else replaced it meanwhile (that counts as restarted by them)."""
    current = admin.get_or_none("_replicator", doc_id)
    if current is None:
        return False
    fresh = {k: v for k, v in current.items() if not k.startswith("_")}
    fresh |= {"_id": doc_id, GENERATION: next_generation(current)}
    try:
        admin.delete("_replicator", doc_id, current["_rev"])
        admin.put("_replicator", fresh)
    except (Conflict, NotFound):
        return False
    return True


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
    # CouchDB's consecutive crashes of the job (its backoff grows with them); 0 elsewhere.
    error_count: int = 0
    reason: str | None = None  # why the job crashed, as CouchDB's scheduler says
    # The source's probe has never reached the target (no lag to measure, and not healthy).
    probe_missing: bool = False

    @property
    def healthy(self) -> bool:
        return (
            self.error is None
            and (self.lag_seconds or 0) < LAG_WARN_SECONDS
            and self.state not in FAILED_STATES
            and not self.probe_missing
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
        job = scheduler_job(admin, db, source_side, target_side) if admin else None
        state, errors, reason = job or ("unknown", 0, None)
        missing = bool(at_source) and not at_target
        return LinkHealth(
            db, source_side, target_side, lag_docs, lag_seconds, state, None, errors, reason,
            missing,
        )  # fmt: skip
    except CouchError as exc:
        return LinkHealth(db, source_side, target_side, None, None, "unreachable", str(exc))


def scheduler_job(
    admin: Couch, db: str, source_side: str, target_side: str
) -> tuple[str, int, str | None]:
    """(state, error_count, reason) of one replication, read on the server that runs it.

    CouchDB 3: ``GET /_scheduler/docs/_replicator/{id}`` answers ``state`` (``running``,
    ``pending``, ``crashing``, ``failed``, ``error``, ``completed``, ``initializing``),
    ``error_count`` (consecutive crashes: the backoff is 30 s x 2^(error_count-1)) and
    ``info`` (``{"error": reason}`` when crashing). A crashing job always has
    ``error_count`` > 0; a running one may still have one (it is healthy again after
    CouchDB's health threshold)."""
    doc_id = replication_id(db, source_side, target_side)
    try:
        reply = admin.request("GET", f"/_scheduler/docs/_replicator/{doc_id}", timeout=3.0)
        body = reply.body or {}
        info = body.get("info")
        reason = info.get("error") if isinstance(info, dict) else None
        errors = int(body.get("error_count") or 0)
        return str(body.get("state") or "unknown"), errors, None if reason is None else str(reason)
    except (NotFound, CouchError):
        pass
    # POUCHDB: no /_scheduler; it writes _replication_state into the _replicator doc.
    try:
        doc = admin.get_or_none("_replicator", doc_id)
    except CouchError:
        return "unknown", 0, None
    if doc is None:
        return "missing", 0, None  # no replication of this database in this direction at all
    reason = doc.get("_replication_state_reason")
    return str(doc.get("_replication_state", "unknown")), 0, None if reason is None else str(reason)


def _scheduler_state(admin: Couch, db: str, source_side: str, target_side: str) -> str:
    return scheduler_job(admin, db, source_side, target_side)[0]


def needs_restart(link: LinkHealth) -> bool:
    """A replication to restart now rather than wait for: crashed, failed, or backing off
    (CouchDB counts its consecutive crashes; any while it is not running means backoff)."""
    if link.state in RESTART_STATES:
        return True
    return link.error_count > 0 and link.state not in ("running", "unknown", "missing")


def restart_stalled(
    primary: Couch,
    standby: Couch,
    health: Health,
    db: str,
    last: dict[str, float],
    *,
    now: float | None = None,
) -> list[str]:
    """The hub's replication watch: restart every replication that needs it
    (:func:`needs_restart`), and every replication of a direction whose live-database probe
    has been :data:`STALLED_SECONDS` behind for :data:`STALL_CONFIRM_SECONDS`, both servers
    answering (PouchDB Server reports such a stalled replication as ``triggered``).
    ``primary``/``standby``: server-admin clients (the ``_replicator`` documents live on the
    source side). ``last``: the caller keeps it between watches: when each replication was
    last restarted (at most one restart per :data:`RESTART_EVERY_SECONDS`) and since when
    each direction looks stalled. Returns a line per restart."""
    clock = time.monotonic() if now is None else now
    admins = {"primary": primary, "standby": standby}
    behind = {
        link.source
        for link in health.links
        if link.db == db
        and link.error is None
        and (link.probe_missing or (link.lag_seconds or 0.0) >= STALLED_SECONDS)
    }
    stalled = set()
    for side in admins:
        if side not in behind:
            last.pop(f"stalled:{side}", None)
        elif clock - last.setdefault(f"stalled:{side}", clock) >= STALL_CONFIRM_SECONDS:
            stalled.add(side)
            last.pop(f"stalled:{side}", None)  # after the restart, a new period to confirm
    lines = []
    for link in health.links:
        if link.error is not None or link.source not in admins:
            continue  # one side does not answer: a restart would only crash again
        if needs_restart(link):
            why = f"state {link.state}, {link.error_count} error(s)" + (
                f": {link.reason}" if link.reason else ""
            )
        elif link.source in stalled:
            late = f"{STALLED_SECONDS:.0f}+ s behind"
            why = f"the {db} probe from {link.source} stays missing or {late}"
        else:
            continue
        doc_id = replication_id(link.db, link.source, link.target)
        if clock - last.get(doc_id, float("-inf")) < RESTART_EVERY_SECONDS:
            continue
        last[doc_id] = clock
        if restart(admins[link.source], doc_id):
            lines.append(f"{doc_id}: restarted ({why})")
    return lines


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
    month = results_db(db, primary.now())
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
    # What failed, one short line each (which direction, which database), for the summary.
    failures: list[str] = field(default_factory=list)

    def add(self, line: str, ok: bool = True) -> None:
        self.lines.append(line)
        self.ok = self.ok and ok
        if not ok:
            self.failures.append(line)


def read_marker(couch: Couch, db: str) -> dict[str, Any] | None:
    """The recovery marker of ``db`` on this server (``hub.protocol.couch.RECOVERY_MARKER_ID``)."""
    return couch.get_or_none(db, RECOVERY_MARKER_ID)


def write_marker(couch: Couch, db: str, state: str, **fields: Any) -> None:
    """Set the recovery marker: ``rebuilding`` (clients do not fail back to this server) or
    ``verified``. A ``_local`` document: never replicated, so the other server never gets
    it, and not in ``_all_docs`` or ``_changes`` (views, feeds and ``hub audit`` skip it)."""
    for _ in range(3):
        current = read_marker(couch, db) or {}
        doc = {**current, **fields, "_id": RECOVERY_MARKER_ID, "state": state}
        if state == "rebuilding":
            doc.pop("verified_at", None)
        try:
            couch.put(db, doc)
            return
        except Conflict:
            continue
    raise CouchError(f"could not write {RECOVERY_MARKER_ID} in {db}: it kept changing")


def recover(
    source: Endpoint,
    target: Endpoint,
    db: str,
    *,
    sample: int = 50,
    timeout: float = 300.0,
    converge_timeout: float = 120.0,
) -> RecoveryReport:
    """Rebuild ``target`` (a new, empty primary) from ``source`` (the standby) and prove it.

    1. ``target`` is marked ``rebuilding`` before anything else (its live database created
       for it): no client fails back to it until step 5.
    2. Every farm database is copied (one-shot replication), with its ``_security``.
    3. The continuous replications both ways are set up, and those that already ran from
       ``source`` towards ``target`` are restarted: they pointed at a server that died, so
       CouchDB backs them off (or they failed) and PouchDB Server may have stalled them.
    4. A probe is written on each side and must be read on the other within
       ``converge_timeout`` seconds (a direction still silent after a third of it is
       restarted once more); then counts and a sample of bodies are compared.
    5. Only if all of that holds is the marker set to ``verified``. Otherwise it stays
       ``rebuilding`` and the report says which direction or database failed."""
    report = RecoveryReport()
    src, dst = source.couch(read_timeout=60.0), target.couch(read_timeout=60.0)
    live_created = dst.create_db(db)
    started_at = to_wire(dst.now())
    write_marker(dst, db, "rebuilding", started_at=started_at, source=redact_url(source.url))
    report.add(f"{db}: recovery marker on {target.name} says rebuilding (clients stay away)")
    databases = farm_databases(src, db)
    for name in databases:
        created = dst.create_db(name) or (name == db and live_created)
        report.add(f"{name}: {'created' if created else 'exists'} on {target.name}")
        if not name.startswith("_"):
            security = src.get_security(name)
            if security:
                dst.put_security(name, security)
                report.add(f"{name}/_security: copied")
        started = time.monotonic()
        replicate_once(source, target, name, timeout=timeout)
        report.add(f"{name}: copied in {time.monotonic() - started:.1f} s")
    # The dispatch board is not replicated (each server's hub writes its own), so it is
    # made here: without it the hub's offers fail on the rebuilt server.
    board = InitReport()
    provision.ensure_board_db(dst, db, board)
    report.add(f"{board_db(db)}: {'made ready' if board.changes else 'exists'} on {target.name}")
    new_links: set[str] = set()
    for line in setup(target, source, db):
        if line.endswith(": created"):
            new_links.add(line.removesuffix(": created"))
        if "created" in line or "settled" in line:
            report.lines.append(f"replication {line}" if "couchfarm-" in line else line)
    for name in databases:
        doc_id = replication_id(name, source, target)
        if doc_id not in new_links and restart(src, doc_id):
            report.lines.append(f"replication {doc_id}: restarted (towards the rebuilt server)")
    _prove_both_ways(source, target, src, dst, db, databases, converge_timeout, report)
    for name in databases:
        _verify(src, dst, name, sample, report)
    if report.ok:
        write_marker(dst, db, "verified", verified_at=to_wire(dst.now()))
        report.add(f"{db}: recovery marker on {target.name} says verified (clients may fail back)")
    else:
        report.lines.append(
            f"{db}: recovery marker on {target.name} stays rebuilding: no client fails back "
            "to it; fix what failed and run `hub recover` again"
        )
    return report


def _prove_both_ways(
    source: Endpoint,
    target: Endpoint,
    src: Couch,
    dst: Couch,
    db: str,
    databases: list[str],
    timeout: float,
    report: RecoveryReport,
) -> None:
    """Write a probe on each side (``hub:probe:{name}``, the hub's lag probes) and wait
    until each is read on the other side. A direction still silent after a third of
    ``timeout`` gets its replications restarted once; one silent at ``timeout`` fails,
    named with its replications' states."""
    directions = [(source, src, target, dst), (target, dst, source, src)]
    written: dict[str, datetime] = {}
    for writer, couch, _reader, _ in directions:
        write_probe(couch, db, writer.name)
        written[writer.name] = from_wire(couch.get(db, f"{PROBE_ID}:{writer.name}")["at"])
    began = time.monotonic()
    pending = {writer.name for writer, *_ in directions}
    restarted: set[str] = set()
    while True:
        for writer, _couch, reader, reader_couch in directions:
            if writer.name not in pending:
                continue
            copy = reader_couch.get_or_none(db, f"{PROBE_ID}:{writer.name}") or {}
            if "at" in copy and from_wire(copy["at"]) >= written[writer.name]:
                pending.discard(writer.name)
                report.add(
                    f"replication {writer.name} -> {reader.name}: the probe written on "
                    f"{writer.name} was read on {reader.name} after "
                    f"{time.monotonic() - began:.1f} s"
                )
        elapsed = time.monotonic() - began
        if not pending or elapsed > timeout:
            break
        if elapsed > timeout / 3:
            for writer, couch, reader, _ in directions:
                if writer.name in pending and writer.name not in restarted:
                    restarted.add(writer.name)
                    for name in databases:
                        restart(couch, replication_id(name, writer, reader))
                    report.lines.append(
                        f"replication {writer.name} -> {reader.name}: no probe after "
                        f"{elapsed:.0f} s; its replications restarted"
                    )
        time.sleep(0.5)
    for writer, couch, reader, _ in directions:
        if writer.name not in pending:
            continue
        states = []
        for name in databases:
            state, errors, reason = scheduler_job(couch, name, writer.name, reader.name)
            states.append(
                f"{name} {state}" + (f" ({errors} error(s): {reason})" if errors or reason else "")
            )
        report.add(
            f"replication {writer.name} -> {reader.name} FAILED: the probe written on "
            f"{writer.name} at {to_wire(written[writer.name])} was not read on {reader.name} "
            f"within {timeout:.0f} s; replications: {'; '.join(states)}",
            ok=False,
        )


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
