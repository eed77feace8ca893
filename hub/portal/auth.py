"""Who is asking, and for which client: the dependencies every route declares.

* :func:`principal`: the logged-in user (session cookie, re-checked against CouchDB, with
  CSRF on changes) or an API token's owner.
* :func:`client_scope`: **the client-isolation rule, in one place.** A client's user always
  acts for their own client (a ``?client=`` is ignored); an operator names the client with
  ``?client=``. Routes of the client area get a :class:`ClientScope` and reach tasks and
  runs only through it, so another client's task or occurrence is simply "not found"
  (404, never 403: existence does not leak). ``tests/test_portal_routes.py`` walks the
  app's routes and fails for a client route that does not declare it.
* :func:`operator`: operators only (the ops page and API).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

from fastapi import Depends, HTTPException, Query, Request, Security
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from hub.portal.data import PortalData
from hub.portal.security import CSRF_HEADER, SESSION_COOKIE, Principal, csrf_ok
from hub.portal.security import valid_client_name as valid_client_name
from hub.portal.state import PortalState, portal_state
from hub.protocol.model import SLUG_PATTERN, Occurrence, Task
from hub.protocol.model import split_occurrence_id as _split_occ
from hub.service import BackfillReport, FarmService

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SLUG_RE = re.compile(SLUG_PATTERN)
OCC_STAMP = re.compile(r"^\d{8}T\d{6}Z$")

bearer = HTTPBearer(auto_error=False, description="an API token from /api/tokens")


class NotLoggedIn(Exception):
    """Pages redirect to the login form; the API answers 401."""


# ---------------------------------------------------------------- request helpers


def wants_html(request: Request) -> bool:
    return not request.url.path.startswith("/api") and "text/html" in request.headers.get(
        "accept", ""
    )


def problem_response(
    status: int, detail: str, problems: list[str] | None = None, **kw: Any
) -> JSONResponse:
    return JSONResponse({"detail": detail, "problems": problems or []}, status_code=status, **kw)


def with_problems(status: int, detail: str, problems: list[str]) -> HTTPException:
    exc = HTTPException(status, detail)
    exc.problems = list(problems)  # type: ignore[attr-defined]
    return exc


def same_origin(origin: str, request: Request) -> bool:
    if origin == "null":
        return False
    parts = urlsplit(origin)
    host = request.headers.get("host", "")
    return parts.netloc == host and parts.scheme in ("http", "https")


def safe_next(target: str | None) -> str:
    """Only local paths: never redirect a login to another site."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target[:500]


# ---------------------------------------------------------------- who is asking


async def principal(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Security(bearer),
    state: PortalState = Depends(portal_state),
) -> Principal:
    if credentials is not None:
        found = await run_in_threadpool(state.tokens.lookup, credentials.credentials)
        if found is None:
            raise HTTPException(
                401, "unknown or revoked API token", headers={"WWW-Authenticate": "Bearer"}
            )
    else:
        session = state.sessions.read(request.cookies.get(SESSION_COOKIE))
        if session is None:
            raise NotLoggedIn()
        recheck = state.recheck
        if recheck is not None and not await run_in_threadpool(recheck.still_valid, session):
            state.sessions.revoke(session.sid)
            raise NotLoggedIn()
        if request.method not in SAFE_METHODS:
            await check_csrf(request, session)
        found = session
    # Error pages of a logged-in user keep the navigation bar (hub.portal.errors).
    request.state.principal = found
    return found


async def check_csrf(request: Request, who: Principal) -> None:
    origin = request.headers.get("origin")
    if origin is not None and not same_origin(origin, request):
        raise HTTPException(403, "cross-site request refused")
    token = request.headers.get(CSRF_HEADER)
    if token is None:
        ctype = request.headers.get("content-type", "")
        if ctype.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            token = (await request.form()).get("csrf_token")  # type: ignore[assignment]
    if not csrf_ok(who, token if isinstance(token, str) else None):
        raise HTTPException(403, "missing or wrong CSRF token; reload the page and retry")


async def operator(request: Request, who: Principal = Depends(principal)) -> Principal:
    """Operators only. The API answers 404 as for anything else not yours; a page says why,
    with the navigation bar, so a client who follows an old link is not stranded."""
    if not who.admin:
        if wants_html(request):
            raise HTTPException(
                403,
                "This page is for the farm's operators only (users with the farm_admin "
                "role): it shows every client's workers and queues.",
            )
        raise HTTPException(404, "not found")
    return who


# ---------------------------------------------------------------- the client scope


@dataclass(frozen=True)
class ClientScope:
    """The acting identity and the one client it may touch.

    Routes of the client area reach tasks, runs and figures only through these methods,
    each of which puts :attr:`client` first in every key it reads or writes.
    """

    who: Principal
    client: str
    service: FarmService
    data: PortalData

    def now(self) -> datetime:
        return self.service.now()

    def task(self, name: str) -> Task:
        """The client's task ``name``; 404 for a name that cannot be one, or is not theirs."""
        if not SLUG_RE.match(name):
            raise HTTPException(404, f"no task {name[:64]!r}")
        return self.service.get_task(self.client, name)

    def occurrence_id(self, task: Task, occ_id: str) -> str:
        """``occ_id`` once it is known to be a run of ``task`` (checked before any read)."""
        try:
            owner, slug, stamp = _split_occ(occ_id)
        except ValueError:
            raise HTTPException(404, "no such occurrence") from None
        if owner != self.client or slug != task.slug or not OCC_STAMP.match(stamp):
            raise HTTPException(404, "no such occurrence")
        return occ_id

    def occurrence(self, task: Task, occ_id: str) -> dict[str, Any]:
        return self.service.occurrence(self.client, self.occurrence_id(task, occ_id))

    def cancel(self, task: Task, occ_id: str) -> Occurrence:
        checked = self.occurrence_id(task, occ_id)
        return self.service.cancel(self.client, checked, f"cancelled by {self.who.user}")

    def dashboard(self) -> dict[str, Any]:
        return self.data.dashboard(self.client)

    def activity(self, hours: int) -> dict[str, Any]:
        return self.data.activity(self.client, hours)

    def add_task(self, name: str, spec: dict[str, Any]) -> Task:
        return self.service.add_task(self.client, name, spec)

    def update_task(self, task: Task, spec: dict[str, Any]) -> Task:
        return self.service.update_task(self.client, task.slug, spec)

    def delete_task(self, task: Task) -> int:
        return self.service.delete_task(self.client, task.slug)

    def set_paused(self, task: Task, paused: bool) -> Task:
        return self.service.set_paused(self.client, task.slug, paused)

    def run_now(self, task: Task) -> Occurrence:
        return self.service.run_now(self.client, task.slug)

    def kick(self, task: Task) -> int:
        return self.service.kick(self.client, task.slug)

    def backfill(self, task: Task, start: str, end: str, overlap: str) -> BackfillReport:
        return self.service.backfill(self.client, task.slug, start, end, overlap)

    def alert_settings(self) -> dict[str, Any]:
        return self.service.alert_settings(self.client)

    def set_alert_settings(self, changes: dict[str, Any], *, new_secret: bool) -> dict[str, Any]:
        return self.service.set_alert_settings(self.client, changes, new_secret=new_secret)

    def task_alerts(self, task: Task) -> list[dict[str, Any]]:
        return self.service.task_alerts(self.client, task.slug)

    def task_health(self, task: Task) -> dict[str, Any]:
        return self.service.task_health(self.client, task.slug)

    def results_page(
        self, since: str | None, limit: int, wait_s: float, alternatives: bool = False
    ) -> dict[str, Any]:
        """The client's own results after ``since`` (hub/results_feed.py; the feed asks
        the server for this client's rows only and checks each one again)."""
        from hub import results_feed

        couch, db, now = self.service.couch, self.service.db, self.now()
        if since == "now":
            cursor: results_feed.Cursor | None = results_feed.current_cursor(couch, db, now)
        elif since:
            cursor = results_feed.Cursor.decode(since)
        else:
            cursor = None
        return results_feed.read_page(
            couch, db, self.client, cursor, now, limit=limit, wait_s=wait_s,
            alternatives=alternatives,
        )  # fmt: skip

    def link(self, path: str, **params: Any) -> str:
        """A local URL for this scope (an operator's keeps ``?client=``)."""
        if self.who.admin:
            params = {"client": self.client, **params}
        return path + ("?" + urlencode(params) if params else "")


CLIENT_QUERY = Query(None, max_length=40, description="operators only: the client to act for")


def _scope(who: Principal, client: str | None, state: PortalState) -> ClientScope | None:
    """The rule itself; None only for an operator who named no client."""
    if not who.admin:
        assert who.client is not None  # principal_from_roles gives every non-admin a client
        return ClientScope(who, who.client, state.service, state.data)
    if client is None:
        return None
    if not valid_client_name(client):
        raise HTTPException(404, "no such client")
    return ClientScope(who, client, state.service, state.data)


async def client_scope(
    who: Principal = Depends(principal),
    client: str | None = CLIENT_QUERY,
    state: PortalState = Depends(portal_state),
) -> ClientScope:
    """The isolation dependency of every client route (see the module's docstring)."""
    scope = _scope(who, client, state)
    if scope is None:
        raise HTTPException(400, "operators name the client: add ?client=NAME")
    return scope


async def client_scope_or_overview(
    who: Principal = Depends(principal),
    client: str | None = CLIENT_QUERY,
    state: PortalState = Depends(portal_state),
) -> ClientScope | None:
    """As :func:`client_scope`, but an operator without ``?client=`` gets None: the
    dashboard then lists every client instead of one client's tasks."""
    if who.admin and not client:
        return None
    return _scope(who, client, state)


# The dependencies that enforce client isolation (the route walk test checks for them).
ISOLATION_DEPENDENCIES = (client_scope, client_scope_or_overview)
