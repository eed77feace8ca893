"""Shared fixtures.

Qt runs offscreen. Server-facing tests talk HTTP to a real CouchDB-compatible server:
PouchDB Server started once per session on a free loopback port, or the CouchDB 3 named
by ``COUCHDB_URL`` (+ ``COUCHDB_USER``/``COUCHDB_PASSWORD``, ``COUCHDB_STANDBY_URL``).
Each test module gets a fresh farm database on the shared server.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from hub import provision, replication
from hub.devserver import DevServer
from hub.protocol import states
from hub.protocol.couch import Couch
from hub.protocol.model import Occurrence, Task, task_id
from hub.protocol.names import ADMIN_ROLE, CLIENT_ROLE_PREFIX, WORKER_ROLE
from hub.protocol.timefmt import to_wire

# Hypothesis profiles, picked by HYPOTHESIS_PROFILE (issue 21, "Deterministic CI").
# "ci", the default and what `make test` runs: derandomized (the examples are drawn from a
#   seed derived from each test's code, so every run tries the same ones), no database of
#   earlier failures, no deadline or too-slow check (both depend on the machine's speed).
# "fuzz", for `make fuzz`: random examples from the seed the run prints, five times as
#   many (4-6 minutes); a failure prints its @reproduce_failure blob, the seed its run.
# A test that needs a smaller budget (one that calls the server) takes a fraction of the
# profile's max_examples, so it also runs five times as many under "fuzz".
_BASE = {
    "parent": settings.get_profile("default"),  # not Hypothesis's own "ci" when CI is set
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow],
    "print_blob": True,
}
settings.register_profile("ci", derandomize=True, max_examples=200, **_BASE)
settings.register_profile("fuzz", derandomize=False, max_examples=1000, **_BASE)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

WORKERS = ("w1", "w2", "w3")
# Primary and standby dev servers share one admin password, as a real pair usually does.
DEV_ADMIN_PASSWORD = secrets.token_urlsafe(12)


@dataclass
class ServerInfo:
    url: str
    admin_user: str
    admin_password: str
    dev: DevServer | None = None

    @property
    def is_pouchdb(self) -> bool:
        return self.dev is not None

    def admin(self, **kwargs: object) -> Couch:
        return Couch(self.url, self.admin_user, self.admin_password, **kwargs)  # type: ignore[arg-type]

    def as_user(self, name: str | None, password: str | None, **kwargs: object) -> Couch:
        return Couch(self.url, name, password, **kwargs)  # type: ignore[arg-type]

    def endpoint(self, name: str) -> replication.Endpoint:
        return replication.Endpoint(self.url, self.admin_user, self.admin_password, name)


def _server_from_env(url_var: str) -> ServerInfo | None:
    url = os.environ.get(url_var)
    if not url:
        return None
    return ServerInfo(
        url.rstrip("/"),
        os.environ.get("COUCHDB_USER", "admin"),
        os.environ.get("COUCHDB_PASSWORD", "admin"),
    )


def _start_dev(tmp_path_factory: pytest.TempPathFactory, name: str) -> ServerInfo:
    dev = DevServer(tmp_path_factory.mktemp(name), admin_password=DEV_ADMIN_PASSWORD).start()
    return ServerInfo(dev.url, dev.admin_user, dev.admin_password, dev)


@pytest.fixture(scope="session")
def couch_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerInfo]:
    info = _server_from_env("COUCHDB_URL") or _start_dev(tmp_path_factory, "primary")
    yield info
    if info.dev:
        info.dev.stop()


@pytest.fixture(scope="session")
def standby_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerInfo]:
    info = _server_from_env("COUCHDB_STANDBY_URL")
    if info is None and os.environ.get("COUCHDB_URL"):
        # A CouchDB primary replicating to a PouchDB Server standby is no deployment: the two
        # differ in revisions, _scheduler and user handling, so such a pair tests neither.
        pytest.skip("needs COUCHDB_STANDBY_URL: a standby of the same kind as COUCHDB_URL")
    info = info or _start_dev(tmp_path_factory, "standby")
    yield info
    if info.dev:
        info.dev.stop()


@pytest.fixture(scope="session")
def passwords() -> dict[str, str]:
    """One fresh password per test user for this session."""
    return {name: secrets.token_urlsafe(12) for name in ("hub", *WORKERS, "acme", "globex")}


@pytest.fixture()
def farm_on_both(couch_server, standby_server, passwords):
    """Make a fresh farm database on the primary and the standby, not replicating, with
    hub, w1 and w2 written on the primary and copied to the standby, as in production.
    Returns ``make(prefix) -> (db, primary endpoint, standby endpoint)``."""

    def make(prefix: str) -> tuple[str, replication.Endpoint, replication.Endpoint]:
        db = f"{prefix}_{secrets.token_hex(3)}"
        for info in (couch_server, standby_server):
            admin = info.admin()
            provision.init(admin, db, now=admin.now(), hub_user="")
        admin = couch_server.admin()
        for user, role in (("hub", ADMIN_ROLE), ("w1", WORKER_ROLE),
                           ("w2", WORKER_ROLE)):  # fmt: skip
            provision.add_user(admin, user, [role], passwords[user], replace=True)
        primary, standby = couch_server.endpoint("primary"), standby_server.endpoint("standby")
        replication.copy_users(primary, standby)
        return db, primary, standby

    return make


@dataclass
class Farm:
    """A freshly initialised farm database on the shared server, with its users."""

    server: ServerInfo
    db: str
    passwords: dict[str, str]
    admin: Couch = field(init=False)
    hub: Couch = field(init=False)

    def __post_init__(self) -> None:
        self.admin = self.server.admin()
        self.hub = self.server.as_user("hub", self.passwords["hub"])

    def worker(self, name: str = "w1", **kwargs: object) -> Couch:
        return self.server.as_user(name, self.passwords[name], **kwargs)

    def anonymous(self) -> Couch:
        return self.server.as_user(None, None, retries=0)

    def now(self) -> datetime:
        return self.admin.now()


def _fresh_db_name(node: pytest.Item | pytest.Module | None) -> str:
    base = re.sub(r"[^a-z0-9]", "_", (node.name if node else "t").lower().removesuffix(".py"))
    return f"farm_{base[:30]}_{secrets.token_hex(3)}"


@pytest.fixture(scope="module")
def farm(
    couch_server: ServerInfo, passwords: dict[str, str], request: pytest.FixtureRequest
) -> Farm:
    admin = couch_server.admin()
    db = _fresh_db_name(request.node)
    provision.init(admin, db, now=admin.now(), hub_user="")
    provision.add_user(admin, "hub", [ADMIN_ROLE], passwords["hub"], replace=True)
    for name in WORKERS:
        provision.add_user(admin, name, [WORKER_ROLE], passwords[name], replace=True)
    for name in ("acme", "globex"):
        provision.add_user(admin, name, [CLIENT_ROLE_PREFIX + name], passwords[name], replace=True)
    return Farm(couch_server, db, passwords)


@pytest.fixture(scope="module")
def world(farm: Farm) -> dict[str, dict]:
    """A task and occurrences in each interesting state, written by the hub user."""
    now = farm.now().replace(microsecond=0)
    stamp = to_wire(now)
    task = Task(
        _id=task_id("acme", "ping"),
        client="acme",
        slug="ping",
        kind="http.check",
        input={"url": "https://example.org"},
        schedule={"every": 60},
        created_at=stamp,
        updated_at=stamp,
    )
    farm.hub.put(farm.db, task.to_doc())

    def occ(minutes: int) -> Occurrence:
        return states.materialize(task, now - timedelta(minutes=minutes), now)  # due: claimable

    docs = {
        "ready": occ(1),
        "leased_w2": states.claim(occ(2), "w2", now),
        "leased_w1": states.claim(occ(3), "w1", now),
        "done": states.finish(
            states.claim(occ(4), "w1", now), "w1", now, started_at=now, output={"ok": 1}
        ),
    }
    world = {"task": farm.hub.get(farm.db, task.id)}
    for key, model in docs.items():
        farm.hub.put(farm.db, model.to_doc())
        world[key] = farm.hub.get(farm.db, model.id)
    return world


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture
def month(farm: Farm) -> str:
    """A fresh results database for one test, named as a month long past."""
    name = f"{farm.db}_results_{1900 + secrets.randbelow(99)}_{secrets.randbelow(12) + 1:02d}"
    farm.admin.delete_db(name)
    provision.ensure_results_db(farm.admin, name)
    return name
