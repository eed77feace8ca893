"""``hub init``: databases, design documents, ``_security`` and users. Idempotent.

Needs server-admin credentials. Every step reports what it changed, so running it twice
shows the second run changed nothing.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime

from hub import designdocs
from hub.protocol.board import board_db
from hub.protocol.couch import Conflict, Couch, NotFound
from hub.protocol.names import ADMIN_ROLE, DEFAULT_DB, WORKER_ROLE, results_db
from hub.protocol.timefmt import to_wire
from hub.protocol.version import MIN_WORKER_VERSION, POLICY_DOC_ID, at_least

LIVE_SECURITY = {
    "admins": {"names": [], "roles": [ADMIN_ROLE]},
    "members": {"names": [], "roles": [ADMIN_ROLE, WORKER_ROLE]},
}
# Workers read results databases only to confirm their results reached the standby.
RESULTS_SECURITY = LIVE_SECURITY


@dataclass
class InitReport:
    lines: list[str] = field(default_factory=list)
    changes: int = 0

    def changed(self, line: str) -> None:
        self.lines.append(line)
        self.changes += 1

    def unchanged(self, line: str) -> None:
        self.lines.append(line)


def ensure_database(couch: Couch, db: str, security: dict, report: InitReport) -> None:
    if couch.create_db(db):
        report.changed(f"{db}: created")
    else:
        report.unchanged(f"{db}: exists")
    current = couch.get_security(db)
    if _same_security(current, security):
        report.unchanged(f"{db}/_security: unchanged")
    else:
        couch.put_security(db, security)
        report.changed(f"{db}/_security: set (members: roles {security['members']['roles']})")


def _same_security(a: dict, b: dict) -> bool:
    def norm(sec: dict) -> tuple:
        return tuple(
            (
                part,
                tuple(sorted(sec.get(part, {}).get("names", []))),
                tuple(sorted(sec.get(part, {}).get("roles", []))),
            )
            for part in ("admins", "members")
        )

    return norm(a) == norm(b)


def init(
    couch: Couch,
    db: str = DEFAULT_DB,
    *,
    now: datetime,
    hub_user: str = "hub",
    hub_password: str | None = None,
) -> tuple[InitReport, str | None]:
    """Create or check everything the farm needs. Returns (report, generated hub password)."""
    report = InitReport()
    for system_db in ("_users", "_replicator"):
        if couch.create_db(system_db):
            report.changed(f"{system_db}: created")
    ensure_database(couch, db, LIVE_SECURITY, report)
    for ddoc in designdocs.LIVE_DDOCS:
        push = designdocs.push(couch, db, ddoc)
        (report.changed if push.action != "unchanged" else report.unchanged)(str(push))
    for month_db in (results_db(db, now),):
        ensure_results_db(couch, month_db, report)
    ensure_board_db(couch, db, report)
    ensure_policy(couch, db, report)
    generated = None
    if hub_user:
        created, generated = ensure_user(couch, hub_user, [ADMIN_ROLE], hub_password)
        if created:
            report.changed(f"user {hub_user}: created with role {ADMIN_ROLE}")
        else:
            report.unchanged(f"user {hub_user}: exists")
    return report, generated


def ensure_policy(
    couch: Couch, db: str, report: InitReport, minimum: str = MIN_WORKER_VERSION
) -> None:
    """``hub:policy`` with ``min_worker_version``: created, or raised to ``minimum``; never
    lowered (an operator may have raised it by hand). Workers older than it refuse to claim.

    The body holds no timestamp, so a primary and a standby initialised apart write the same
    document.
    """
    current = couch.get_or_none(db, POLICY_DOC_ID)
    stored = (current or {}).get("min_worker_version")
    if isinstance(stored, str) and at_least(stored, minimum):
        report.unchanged(f"{db}/{POLICY_DOC_ID}: min_worker_version {stored}")
        return
    doc = {**(current or {}), "_id": POLICY_DOC_ID, "type": "hub", "min_worker_version": minimum}
    try:
        couch.put(db, doc)
    except Conflict:  # another init raced us: its write stands
        report.unchanged(f"{db}/{POLICY_DOC_ID}: written meanwhile by someone else")
        return
    was = f" (was {stored})" if stored else ""
    report.changed(f"{db}/{POLICY_DOC_ID}: min_worker_version {minimum}{was}")


def ensure_results_db(couch: Couch, name: str, report: InitReport | None = None) -> None:
    report = report or InitReport()
    ensure_database(couch, name, RESULTS_SECURITY, report)
    push = designdocs.push(couch, name, designdocs.RESULTS_DDOC)
    (report.changed if push.action != "unchanged" else report.unchanged)(str(push))


def ensure_board_db(couch: Couch, db: str, report: InitReport | None = None) -> None:
    """The dispatch board (hub/dispatch.py): not replicated, each server's hub writes its own."""
    report = report or InitReport()
    name = board_db(db)
    ensure_database(couch, name, LIVE_SECURITY, report)
    push = designdocs.push(couch, name, designdocs.BOARD_DDOC)
    (report.changed if push.action != "unchanged" else report.unchanged)(str(push))


# ---------------------------------------------------------------- users


def user_doc_id(name: str) -> str:
    return f"org.couchdb.user:{name}"


def generate_password() -> str:
    return secrets.token_urlsafe(18)


def ensure_user(
    couch: Couch, name: str, roles: list[str], password: str | None = None
) -> tuple[bool, str | None]:
    """Create the user if missing. Returns (created, generated password or None)."""
    if couch.get_or_none("_users", user_doc_id(name)) is not None:
        return False, None
    created, generated = add_user(couch, name, roles, password)
    return created, generated


def add_user(
    couch: Couch, name: str, roles: list[str], password: str | None = None, *, replace: bool = False
) -> tuple[bool, str | None]:
    """Create (or with ``replace`` reset) a user. Returns (created, generated password)."""
    generated = None
    if password is None:
        password = generated = generate_password()
    doc = {
        "_id": user_doc_id(name),
        "name": name,
        "type": "user",
        "roles": roles,
        "password": password,
        # The conflict resolver keeps the latest edit of a user edited on both servers.
        "updated_at": to_wire(couch.now()),
    }
    try:
        couch.put("_users", doc)
        return True, generated
    except Conflict:
        if not replace:
            raise UserExists(
                f"user {name!r} already exists; use --reset to set a new password"
            ) from None
    current = couch.get("_users", user_doc_id(name))
    couch.put("_users", {**doc, "_rev": current["_rev"]})
    return False, generated


def user_roles(couch: Couch, name: str) -> list[str] | None:
    try:
        return list(couch.get("_users", user_doc_id(name)).get("roles", []))
    except NotFound:
        return None


class UserExists(ValueError):
    pass
