"""The portal's ASGI app: pages for people, a JSON API for scripts, the same rules for both.

Every route works out who is asking (:class:`~hub.portal.security.Principal`) and which
client it acts for: a client's user always acts for their own client; an operator
(``farm_admin``) names the client with ``?client=``. Everything else goes through
:class:`hub.service.FarmService` and :class:`hub.portal.data.PortalData`, both of which take
that client as the first part of every key, so another client's task or occurrence is
simply "not found" (404, never 403: existence does not leak).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlencode, urlsplit

from fastapi import Depends, FastAPI, Form, HTTPException, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from hub import schedules
from hub.portal import forms
from hub.portal.data import ALL_STATES, SHOWN_STATES, PortalData, describe_schedule, next_due
from hub.portal.login_guard import (
    COUCH_LOCKOUT_LIFETIME,
    LoginGuard,
    UsersDbVerifier,
)
from hub.portal.security import (
    CSRF_HEADER,
    LOGIN_COOKIE,
    SESSION_COOKIE,
    USERNAME_PATTERN,
    Authenticator,
    BodyLimit,
    CatchAll,
    CouchRecheck,
    LockedByCouch,
    Principal,
    SecurityHeaders,
    Sessions,
    TokenStore,
    TooManyTokens,
    couch_authenticator,
    csrf_ok,
    default_admin_check,
    principal_from_roles,
    valid_client_name,
)
from hub.protocol import kinds
from hub.protocol.couch import Conflict, Couch, CouchError, Forbidden, NotFound
from hub.protocol.model import SLUG_PATTERN, Schedule, Task, describe_validation_error
from hub.protocol.model import split_occurrence_id as _split_occ
from hub.protocol.timefmt import as_utc, from_wire, to_wire
from hub.service import FarmService, NotFoundError, ServiceError

log = logging.getLogger("couchfarm.portal")

HERE = Path(__file__).resolve().parent
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SLUG_RE = re.compile(SLUG_PATTERN)
OCC_STAMP = re.compile(r"^\d{8}T\d{6}Z$")
ACTIONS = ("pause", "resume", "run-now", "kick", "delete")
DONE_MESSAGES = {
    "created": "Task created.",
    "saved": "Task saved.",
    "pause": "Task paused: no new runs until you resume it.",
    "resume": "Task resumed.",
    "run-now": "An extra run was queued now.",
    "kick": "Buried runs were put back in the queue.",
    "delete": "Task deleted; its queued runs were cancelled.",
    "cancel": "The run was cancelled.",
    "revoked": "The token was revoked.",
}


@dataclass
class PortalSettings:
    secret_key: str
    secure_cookies: bool = False  # always mark cookies Secure (behind a TLS proxy)
    session_max_age: int = 12 * 3600
    session_recheck: float = 60.0  # seconds a session may go before CouchDB confirms it again
    login_limit: int = 5  # failed logins ...
    login_window: float = 60.0  # ... per this many seconds, per address (and address + user)
    # Wrong passwords per user sent to CouchDB per lockout window when the portal cannot
    # check them itself: fewer than CouchDB's [chttpd_auth_lockout] threshold (5), with
    # room for a second hub behind the same address (hub.portal.login_guard).
    couch_failures_per_user: int = 2
    couch_lockout_window: float = COUCH_LOCKOUT_LIFETIME + 10.0
    max_body: int = 64 * 1024
    refresh_seconds: int = 10
    title: str = "Couchfarm"


class NotLoggedIn(Exception):
    pass


# ---------------------------------------------------------------- API bodies


class TaskFields(BaseModel):
    """Fields of a task a client sets; the hub fills in the rest (see hub.protocol.model.Task)."""

    model_config = ConfigDict(extra="forbid")

    kind: str | None = Field(None, max_length=64, description="kind of work, e.g. http.check")
    input: dict[str, Any] | None = Field(None, description="input, checked by the kind's schema")
    schedule: dict[str, Any] | None = Field(
        None, description="exactly one of every (seconds), cron or at; optional start, end, tz"
    )
    priority: int | None = Field(None, description=forms.EXPLAIN["priority"])
    tube: str | None = Field(None, max_length=64, description=forms.EXPLAIN["tube"])
    ttr: int | None = Field(None, description=forms.EXPLAIN["ttr"])
    max_attempts: int | None = Field(None, description=forms.EXPLAIN["max_attempts"])
    backoff: dict[str, Any] | None = Field(None, description=forms.EXPLAIN["backoff"])
    overlap: Literal["skip", "queue", "allow", "replace"] | None = None
    misfire: Literal["run_all", "run_latest", "skip"] | None = None
    misfire_grace: int | None = Field(None, description=forms.EXPLAIN["misfire_grace"])
    retention_days: int | None = Field(None, description=forms.EXPLAIN["retention_days"])
    paused: bool | None = None

    def spec(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True, exclude={"name"})


class NewTask(TaskFields):
    name: str = Field(pattern=SLUG_PATTERN, max_length=64, description="the task's name (slug)")
    kind: str = Field(max_length=64)
    schedule: dict[str, Any]


class PreviewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schedule: dict[str, Any]
    count: int = Field(5, ge=1, le=50)


class NewToken(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=80)


# ---------------------------------------------------------------- helpers


def task_json(task: Task, now: datetime | None = None) -> dict[str, Any]:
    doc = task.to_doc()
    for key in ("_id", "_rev", "type", "slug"):
        doc.pop(key, None)
    doc = {"name": task.slug, **doc, "schedule_text": describe_schedule(task)}
    if now is not None:
        doc["next_due"] = next_due(task, now)
    return doc


def parse_time(value: str | None, name: str) -> str | None:
    if value is None or value == "":
        return None
    if len(value) > 40:
        raise HTTPException(400, f"{name}: too long for a time")
    try:
        return to_wire(from_wire(value))
    except (ValueError, OverflowError):
        raise HTTPException(
            400, f"{name}: {value[:40]!r} is not an ISO-8601 time with a zone"
        ) from None


def wants_html(request: Request) -> bool:
    return not request.url.path.startswith("/api") and "text/html" in request.headers.get(
        "accept", ""
    )


def problem_response(status: int, detail: str, problems: list[str] | None = None, **kw: Any):
    return JSONResponse({"detail": detail, "problems": problems or []}, status_code=status, **kw)


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


# ---------------------------------------------------------------- the app


def create_app(
    service: FarmService,
    couch_for_login: Couch | Authenticator,
    *,
    secret_key: str,
    admin_check: Callable[[list[str]], bool] | None = None,
    settings: PortalSettings | None = None,
    dbs_couch: Couch | None = None,
    replication_status: Callable[[], dict[str, Any] | None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    users_reader: Couch | None = None,
) -> FastAPI:
    """The portal for ``service``'s farm.

    ``couch_for_login`` checks names and passwords: a :class:`Couch` (its servers answer
    ``/_session``) or a function (name, password) -> userCtx or None. ``admin_check``
    decides from a user's roles whether they operate the farm (default: ``farm_admin``).
    ``replication_status`` returns the ops page's replication health (None: not
    configured). ``users_reader``, a server admin's connection, lets the portal check
    passwords against ``_users`` itself, so no wrong password reaches CouchDB
    (:mod:`hub.portal.login_guard`).
    """
    settings = settings or PortalSettings(secret_key=secret_key)
    settings.secret_key = secret_key
    authenticate = (
        couch_authenticator(couch_for_login)
        if isinstance(couch_for_login, Couch)
        else couch_for_login
    )
    is_admin = admin_check or default_admin_check
    sessions = Sessions(secret_key, settings.session_max_age)
    # Sessions from a CouchDB login are confirmed with CouchDB again every minute or so;
    # a custom authenticator has no CouchDB session to confirm them with.
    recheck = None
    if isinstance(couch_for_login, Couch):
        recheck = CouchRecheck(
            couch_for_login,
            is_admin,
            every=settings.session_recheck,
            max_age=settings.session_max_age,
            clock=clock,
        )
    guard = LoginGuard(
        limit=settings.login_limit,
        window=settings.login_window,
        verify=UsersDbVerifier(users_reader) if users_reader is not None else None,
        couch_failures=settings.couch_failures_per_user,
        couch_window=settings.couch_lockout_window,
        clock=clock,
    )
    tokens = TokenStore(service.couch, service.db)
    data = PortalData(service, dbs_couch=dbs_couch)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals.update(
        title=settings.title, shown_states=SHOWN_STATES, all_states=ALL_STATES,
        explain=forms.EXPLAIN, refresh_seconds=settings.refresh_seconds,
    )  # fmt: skip
    templates.env.filters["when"] = _when
    templates.env.filters["pct"] = _pct
    templates.env.filters["pretty"] = lambda v: json.dumps(v, indent=2, sort_keys=True)
    templates.env.filters["ms"] = _ms
    templates.env.filters["num"] = _num

    app = FastAPI(
        title="Couchfarm portal API",
        version="1",
        description="Tasks, runs and results of one client. Authenticate with a session "
        "cookie (POST /login) plus X-CSRF-Token on changes, or with an API token "
        "(Authorization: Bearer cft_...). Errors are JSON: {detail, problems}.",
        openapi_url="/api/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.login_guard = guard
    app.state.sessions = sessions
    app.state.data = data
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.add_middleware(CatchAll)
    app.add_middleware(BodyLimit, limit=settings.max_body)
    app.add_middleware(SecurityHeaders)
    bearer = HTTPBearer(auto_error=False, description="an API token from /api/tokens")

    # ------------------------------------------------------------ errors

    @app.exception_handler(NotLoggedIn)
    async def _not_logged_in(request: Request, exc: NotLoggedIn):
        if wants_html(request):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)
        return problem_response(
            401, "log in first (POST /login) or send an API token",
            headers={"WWW-Authenticate": "Bearer"},
        )  # fmt: skip

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else "request refused"
        problems = getattr(exc, "problems", None) or []
        headers = getattr(exc, "headers", None)
        if wants_html(request):
            return templates.TemplateResponse(
                request,
                "error.html",
                {"status": exc.status_code, "detail": detail, "problems": problems,
                 "me": None},
                status_code=exc.status_code,
                headers=headers,
            )  # fmt: skip
        return problem_response(exc.status_code, detail, problems, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        problems = []
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
            problems.append(f"{'.'.join(loc) or 'request'}: {err.get('msg', 'invalid')}")
        return problem_response(422, "the request is not valid", problems[:50])

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError):
        detail = "; ".join(exc.problems)[:500]
        if wants_html(request):
            return await _http_error(request, _with_problems(exc.status, detail, exc.problems))
        return problem_response(exc.status, detail, exc.problems)

    @app.exception_handler(CouchError)
    async def _couch_error(request: Request, exc: CouchError):
        if isinstance(exc, NotFound):
            status, detail = 404, "not found"
        elif isinstance(exc, Conflict):
            status, detail = 409, "changed meanwhile; reload and try again"
        elif isinstance(exc, Forbidden):
            status, detail = 400, f"refused by the database: {exc.reason[:300]}"
        else:
            log.warning("event=portal_couch_error error=%r", str(exc))
            status, detail = 503, "the database is not answering; try again shortly"
        if wants_html(request):
            return await _http_error(request, HTTPException(status, detail))
        return problem_response(status, detail)

    # ------------------------------------------------------------ who is asking

    async def principal(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Security(bearer),
    ) -> Principal:
        if credentials is not None:
            found = await run_in_threadpool(tokens.lookup, credentials.credentials)
            if found is None:
                raise HTTPException(
                    401, "unknown or revoked API token", headers={"WWW-Authenticate": "Bearer"}
                )
            return found
        found = sessions.read(request.cookies.get(SESSION_COOKIE))
        if found is None:
            raise NotLoggedIn()
        if recheck is not None and not await run_in_threadpool(recheck.still_valid, found):
            sessions.revoke(found.sid)
            raise NotLoggedIn()
        if request.method not in SAFE_METHODS:
            await check_csrf(request, found)
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

    def acting(who: Principal, client: str | None) -> str:
        """The client this request acts for."""
        if not who.admin:
            assert who.client is not None
            return who.client
        if client is None:
            raise HTTPException(400, "operators name the client: add ?client=NAME")
        if not valid_client_name(client):
            raise HTTPException(404, "no such client")
        return client

    def admin_only(who: Principal) -> None:
        if not who.admin:
            raise HTTPException(404, "not found")

    def find_task(client: str, name: str) -> Task:
        if not SLUG_RE.match(name):
            raise HTTPException(404, f"no task {name[:64]!r}")
        return service.get_task(client, name)

    def check_occurrence(client: str, task: Task, occ_id: str) -> None:
        try:
            owner, slug, stamp = _split_occ(occ_id)
        except ValueError:
            raise HTTPException(404, "no such occurrence") from None
        if owner != client or slug != task.slug or not OCC_STAMP.match(stamp):
            raise HTTPException(404, "no such occurrence")

    ClientQ = Query(None, max_length=40, description="operators only: the client to act for")

    # ------------------------------------------------------------ login / logout

    def login_page(
        request: Request,
        error: str | None = None,
        status: int = 200,
        next_: str = "/",
        username: str = "",
    ) -> HTMLResponse:
        nonce, signed = sessions.login_nonce()
        response = templates.TemplateResponse(
            request, "login.html",
            {"error": error, "nonce": nonce, "next": safe_next(next_), "me": None,
             "username": username[:100]},
            status_code=status,
        )  # fmt: skip
        _set_cookie(response, request, LOGIN_COOKIE, signed, 3600, settings)
        return response

    @app.get("/login", include_in_schema=False)
    def get_login(request: Request, next: str = "/") -> HTMLResponse:
        return login_page(request, next_=next)

    @app.post(
        "/login",
        summary="Log in with your CouchDB user; sets the session cookie",
        responses={401: {}, 403: {}, 429: {}},
    )
    async def post_login(
        request: Request,
        username: str = Form("", max_length=200),
        password: str = Form("", max_length=2048),
        csrf_token: str | None = Form(None, max_length=200, description="the login form's"),
        next: str = Form("/", max_length=500, description="where to go after (pages)"),
    ) -> Any:
        html = wants_html(request)
        next_ = safe_next(next)
        origin = request.headers.get("origin")
        if origin is not None and not same_origin(origin, request):
            raise HTTPException(403, "cross-site login refused")
        submitted = csrf_token
        browserish = html or origin is not None or "sec-fetch-site" in request.headers
        nonce_ok = sessions.login_nonce_ok(request.cookies.get(LOGIN_COOKIE), submitted)
        if (submitted is not None or browserish) and not nonce_ok:
            if html:
                return login_page(request, "The form expired; please try again.", 403, next_)
            raise HTTPException(403, "missing or wrong login form token; reload the page")
        ip = request.client.host if request.client else "unknown"

        def refused(status: int, message: str, wait: int = 0) -> Any:
            headers = {"Retry-After": str(wait)} if wait else None
            if html:
                response = login_page(request, message, status, next_, username)
                response.headers.update(headers or {})
                return response
            raise HTTPException(status, message[:1].lower() + message[1:].rstrip("."), headers)

        wait = guard.address_wait(ip, username)
        if wait:
            log.warning("event=login_limited ip=%s user=%r", ip, username[:100])
            return refused(429, f"Too many failed logins from your address; try again in "
                                f"{wait} seconds.", wait)  # fmt: skip
        ctx = None
        if USERNAME_PATTERN.match(username) and 0 < len(password) <= 1024:
            verdict = await run_in_threadpool(guard.check, username, password)
            if verdict.action == "refuse":
                guard.address_failed(ip, username)
                log.warning("event=login_held ip=%s user=%r retry_after=%d", ip,
                            username[:100], verdict.retry_after)  # fmt: skip
                return refused(429, verdict.message, verdict.retry_after)
            if verdict.action == "ask_couch":
                try:
                    ctx = await run_in_threadpool(authenticate, username, password)
                except LockedByCouch:
                    log.error("event=login_locked_by_couchdb user=%r", username[:100])
                    return refused(
                        503,
                        "CouchDB has locked this account for a few minutes "
                        "after failed logins; please try again later.",
                        300,
                    )
                if ctx is None:
                    guard.couch_refused(username)
                else:
                    guard.couch_accepted(username, password)
        if ctx is None:
            guard.address_failed(ip, username)
            log.info("event=login_failed ip=%s user=%r", ip, username[:100])
            if html:
                return login_page(request, "Name or password is incorrect.", 401, next_, username)
            raise HTTPException(401, "name or password is incorrect")
        who = principal_from_roles(username, list(ctx.get("roles", [])), is_admin)
        if who is None:
            log.info("event=login_refused user=%r roles=%s", username, ctx.get("roles"))
            if html:
                return login_page(request, "This user has no access to the portal.", 403, next_)
            raise HTTPException(403, "this user has no access to the portal")
        cookie, who = sessions.issue(who)
        if recheck is not None:
            recheck.hold(str(who.sid), who.user, ctx)
        log.info("event=login user=%s client=%s admin=%s", who.user, who.client, who.admin)
        response: Any
        if html:
            response = RedirectResponse(next_, status_code=303)
        else:
            response = JSONResponse(
                {"user": who.user, "client": who.client, "admin": who.admin,
                 "csrf_token": who.csrf},
            )  # fmt: skip
        _set_cookie(response, request, SESSION_COOKIE, cookie, settings.session_max_age, settings)
        response.delete_cookie(LOGIN_COOKIE, path="/")
        return response

    @app.post("/logout", summary="End the session (needs the CSRF token)")
    async def post_logout(request: Request, who: Principal = Depends(principal)) -> Any:
        sessions.revoke(who.sid)
        if recheck is not None:
            recheck.drop(who.sid)
        response: Any = (
            RedirectResponse("/login", status_code=303)
            if wants_html(request)
            else JSONResponse({"ok": True})
        )
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @app.get("/api/me", summary="Who you are logged in as")
    def api_me(who: Principal = Depends(principal)) -> dict[str, Any]:
        return {"user": who.user, "client": who.client, "admin": who.admin, "via": who.via}

    # ------------------------------------------------------------ JSON API: reference

    @app.get("/api/kinds", summary="Kinds of work and the JSON Schema of each one's input")
    def api_kinds(who: Principal = Depends(principal)) -> dict[str, Any]:
        return {"kinds": kinds.KIND_SCHEMAS}

    @app.post(
        "/api/schedule/preview",
        summary="The next fire times of a schedule (times without zone read in its tz)",
    )
    def api_preview(body: PreviewRequest, who: Principal = Depends(principal)) -> dict[str, Any]:
        return schedule_preview(body.schedule, body.count)

    def schedule_preview(raw: dict[str, Any], count: int = 5) -> dict[str, Any]:
        try:
            sched = Schedule(**forms.localize_schedule(raw))
        except ValidationError as exc:
            raise _with_problems(
                400, "the schedule is not valid", describe_validation_error(exc, "schedule.")
            ) from None
        except TypeError:
            raise _with_problems(
                400, "the schedule is not valid", ["schedule: not an object"]
            ) from None
        now = service.now()
        try:
            schedules.validate_schedule(sched, now, min_interval=service.min_interval)
            fires = schedules.preview(sched, now, count)
        except schedules.ScheduleError as exc:
            raise _with_problems(400, "the schedule is not valid", exc.problems) from None
        zone = _zone(sched.tz)
        return {
            "tz": sched.tz,
            "fires": [to_wire(f) for f in fires],
            "local": [f.astimezone(zone).strftime("%a %Y-%m-%d %H:%M:%S %Z") for f in fires],
            "problems": [],
        }

    # ------------------------------------------------------------ JSON API: tasks

    @app.get("/api/tasks", summary="Your tasks with counts by state, success rate, last and next")
    def api_tasks(
        who: Principal = Depends(principal), client: str | None = ClientQ
    ) -> dict[str, Any]:
        return data.dashboard(acting(who, client))

    @app.post("/api/tasks", status_code=201, summary="Create a task")
    def api_create(
        body: NewTask, who: Principal = Depends(principal), client: str | None = ClientQ
    ) -> dict[str, Any]:
        task = service.add_task(acting(who, client), body.name, body.spec())
        return task_json(task, service.now())

    @app.get("/api/tasks/{name}", summary="One task")
    def api_task(
        name: str, who: Principal = Depends(principal), client: str | None = ClientQ
    ) -> dict[str, Any]:
        task = find_task(acting(who, client), name)
        return task_json(task, service.now())

    @app.patch("/api/tasks/{name}", summary="Change some fields of a task")
    def api_update(
        name: str,
        body: TaskFields,
        who: Principal = Depends(principal),
        client: str | None = ClientQ,
    ) -> dict[str, Any]:
        owner = acting(who, client)
        find_task(owner, name)
        return task_json(service.update_task(owner, name, body.spec()), service.now())

    @app.delete("/api/tasks/{name}", summary="Delete a task and cancel its queued runs")
    def api_delete(
        name: str, who: Principal = Depends(principal), client: str | None = ClientQ
    ) -> dict[str, Any]:
        owner = acting(who, client)
        find_task(owner, name)
        return {"deleted": name, "cancelled": service.delete_task(owner, name)}

    @app.post("/api/tasks/{name}/pause", summary="Pause: no new runs")
    def api_pause(
        name: str, who: Principal = Depends(principal), client: str | None = ClientQ
    ) -> dict[str, Any]:
        owner = acting(who, client)
        find_task(owner, name)
        return task_json(service.set_paused(owner, name, True))

    @app.post("/api/tasks/{name}/resume", summary="Resume a paused task")
    def api_resume(
        name: str, who: Principal = Depends(principal), client: str | None = ClientQ
    ) -> dict[str, Any]:
        owner = acting(who, client)
        find_task(owner, name)
        return task_json(service.set_paused(owner, name, False))

    @app.post("/api/tasks/{name}/run-now", status_code=201, summary="Queue an extra run now")
    def api_run_now(
        name: str, who: Principal = Depends(principal), client: str | None = ClientQ
    ) -> dict[str, Any]:
        owner = acting(who, client)
        find_task(owner, name)
        occ = service.run_now(owner, name)
        return {"occurrence": occ.id, "due_at": occ.due_at, "state": occ.state.value}

    @app.post("/api/tasks/{name}/kick", summary="Put the task's buried runs back in the queue")
    def api_kick(
        name: str, who: Principal = Depends(principal), client: str | None = ClientQ
    ) -> dict[str, Any]:
        owner = acting(who, client)
        find_task(owner, name)
        return {"kicked": service.kick(owner, name)}

    @app.get("/api/tasks/{name}/occurrences", summary="Runs of a task, newest first, paged")
    def api_occurrences(
        name: str,
        who: Principal = Depends(principal),
        client: str | None = ClientQ,
        state: list[str] | None = Query(None, description="only these states (or ok/error)"),
        since: str | None = Query(None, max_length=40, description="due at or after (ISO)"),
        until: str | None = Query(None, max_length=40, description="due at or before (ISO)"),
        before: str | None = Query(None, max_length=40, description="page cursor: next_before"),
        limit: int = Query(50, ge=1, le=200),
    ) -> dict[str, Any]:
        task = find_task(acting(who, client), name)
        return history_page(task, state, since, until, before, limit)

    def history_page(task, state, since, until, before, limit) -> dict[str, Any]:
        wanted = set(state or []) - {""}
        unknown = wanted - set(ALL_STATES) - {"ok", "error"}
        if unknown:
            raise HTTPException(400, f"state: unknown {sorted(unknown)[0][:40]!r}")
        return data.history(
            task,
            before=parse_time(before, "before"),
            since=parse_time(since, "since"),
            until=parse_time(until, "until"),
            states=wanted or None,
            limit=limit,
        )

    @app.get("/api/tasks/{name}/occurrences/{occ_id}", summary="One run, with its result")
    def api_occurrence(
        name: str, occ_id: str, who: Principal = Depends(principal), client: str | None = ClientQ
    ) -> dict[str, Any]:
        owner = acting(who, client)
        task = find_task(owner, name)
        check_occurrence(owner, task, occ_id)
        return service.occurrence(owner, occ_id)

    @app.post("/api/tasks/{name}/occurrences/{occ_id}/cancel", summary="Cancel a queued run")
    def api_cancel(
        name: str, occ_id: str, who: Principal = Depends(principal), client: str | None = ClientQ
    ) -> dict[str, Any]:
        owner = acting(who, client)
        task = find_task(owner, name)
        check_occurrence(owner, task, occ_id)
        occ = service.cancel(owner, occ_id, f"cancelled by {who.user}")
        return {"occurrence": occ.id, "state": occ.state.value}

    @app.get("/api/tasks/{name}/series", summary="Duration, latency and success rate over time")
    def api_series(
        name: str,
        who: Principal = Depends(principal),
        client: str | None = ClientQ,
        since: str | None = Query(None, max_length=40),
        until: str | None = Query(None, max_length=40),
        buckets: int = Query(120, ge=1, le=500),
    ) -> dict[str, Any]:
        task = find_task(acting(who, client), name)
        now = service.now()
        end = from_wire(parse_time(until, "until") or to_wire(now))
        start = from_wire(parse_time(since, "since") or to_wire(end - timedelta(days=1)))
        if start >= end:
            raise HTTPException(400, "since: must be before until")
        return data.series(task, start, end, buckets)

    def export(task: Task, since: str | None, until: str | None, fmt: str) -> StreamingResponse:
        lo = parse_time(since, "since") or "1970-01-01T00:00:00.000Z"
        hi = parse_time(until, "until") or to_wire(service.now() + timedelta(days=1))
        rows = data.merged(task, lo, hi, descending=False)
        stamp = datetime.now().strftime("%Y%m%d")
        filename = f"{task.client}-{task.slug}-{stamp}.{fmt}"
        media = "text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson"
        body = csv_lines(rows) if fmt == "csv" else json_lines(rows)
        return StreamingResponse(
            body, media_type=media,
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )  # fmt: skip

    @app.get(
        "/api/tasks/{name}/results.csv",
        summary="Every run in a time range as CSV (streamed)",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/csv": {}}}},
    )
    def api_csv(
        name: str,
        who: Principal = Depends(principal),
        client: str | None = ClientQ,
        since: str | None = Query(None, max_length=40),
        until: str | None = Query(None, max_length=40),
    ) -> StreamingResponse:
        return export(find_task(acting(who, client), name), since, until, "csv")

    @app.get(
        "/api/tasks/{name}/results.jsonl",
        summary="Every run in a time range as JSON lines (streamed)",
        response_class=StreamingResponse,
        responses={200: {"content": {"application/x-ndjson": {}}}},
    )
    def api_jsonl(
        name: str,
        who: Principal = Depends(principal),
        client: str | None = ClientQ,
        since: str | None = Query(None, max_length=40),
        until: str | None = Query(None, max_length=40),
    ) -> StreamingResponse:
        return export(find_task(acting(who, client), name), since, until, "jsonl")

    # ------------------------------------------------------------ JSON API: tokens, ops

    @app.get("/api/tokens", summary="Your API tokens (never the secrets)")
    def api_tokens(who: Principal = Depends(principal)) -> dict[str, Any]:
        return {"tokens": tokens.list(who)}

    @app.post("/api/tokens", status_code=201, summary="Create an API token (shown once)")
    def api_new_token(body: NewToken, who: Principal = Depends(principal)) -> dict[str, Any]:
        try:
            secret, info = tokens.create(who, body.name)
        except TooManyTokens as exc:
            raise HTTPException(409, str(exc)) from None
        return {**info, "token": secret}

    @app.delete("/api/tokens/{token_id}", summary="Revoke an API token")
    def api_revoke(token_id: str, who: Principal = Depends(principal)) -> dict[str, Any]:
        if not tokens.revoke(who, token_id):
            raise HTTPException(404, "no such token")
        return {"revoked": token_id}

    @app.get("/api/ops", summary="Operators: workers, queues, replication, buried runs")
    def api_ops(who: Principal = Depends(principal)) -> dict[str, Any]:
        admin_only(who)
        return {**data.ops(), "replication": replication()}

    def replication() -> dict[str, Any]:
        if replication_status is None:
            return {"configured": False}
        try:
            status = replication_status()
        except Exception as exc:  # another module's fault must not take the ops page down
            log.warning("event=replication_status_failed error=%r", str(exc))
            return {"configured": True, "error": "could not read the replication state"}
        return {"configured": status is not None, **(status or {})}

    # ------------------------------------------------------------ pages

    def page(request: Request, name: str, who: Principal, client: str | None, **context: Any):
        def link(path: str, **params: Any) -> str:
            if who.admin and client:
                params = {"client": client, **params}
            clean = {k: v for k, v in params.items() if v is not None and v != ""}
            return path + ("?" + urlencode(clean, doseq=True) if clean else "")

        status = context.pop("status_code", 200)
        return templates.TemplateResponse(
            request, name,
            {"me": who, "client": client, "link": link, "q": quote, **context},
            status_code=status,
        )  # fmt: skip

    @app.get("/", include_in_schema=False)
    def dashboard_page(
        request: Request, who: Principal = Depends(principal), client: str | None = ClientQ
    ) -> HTMLResponse:
        if who.admin and not client:
            return page(request, "clients.html", who, None, clients=data.clients_overview())
        owner = acting(who, client)
        return page(request, "dashboard.html", who, owner, board=data.dashboard(owner))

    def form_page(request, who, owner, *, task=None, values=None, problems=(), status=200):
        values = values or {}
        kind = values.get("kind") or (task.kind if task else "http.check")
        if kind not in kinds.KIND_SCHEMAS:
            kind = "http.check"
        fields = forms.all_input_fields()
        known = {"name", "kind", "schedule", "input"}
        known |= {f"schedule.{p}" for p in ("every", "cron", "at", "start", "end", "tz", "jitter")}
        known |= {"priority", "tube", "ttr", "max_attempts", "overlap", "misfire"}
        known |= {"misfire_grace", "retention_days", "paused", "backoff"}
        known |= {f"backoff.{p}" for p in ("base", "factor", "max")}
        known |= {item.path for item in fields.get(kind, [])}
        placed, general = forms.problems_by_field(list(problems), known)
        return page(
            request, "task_form.html", who, owner,
            task=task, values=values, kind=kind, fields=fields, errors=placed,
            general=general, overlap_choices=forms.OVERLAP_CHOICES,
            misfire_choices=forms.MISFIRE_CHOICES, status_code=status,
            schemas=kinds.KIND_SCHEMAS,
        )  # fmt: skip

    @app.get("/tasks/new", include_in_schema=False)
    def new_task_page(
        request: Request,
        who: Principal = Depends(principal),
        client: str | None = ClientQ,
        kind: str = Query("http.check", max_length=64),
    ) -> HTMLResponse:
        owner = acting(who, client)
        values = {"kind": kind, "schedule_mode": "every", "schedule.every": "60",
                  "schedule.tz": "UTC"}  # fmt: skip
        return form_page(request, who, owner, values=values)

    @app.post("/tasks/new", include_in_schema=False)
    async def new_task_submit(
        request: Request, who: Principal = Depends(principal), client: str | None = ClientQ
    ) -> Any:
        owner = acting(who, client)
        form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        spec, problems = forms.spec_from_form(form)
        name = form.get("name", "").strip()
        if not problems:
            try:
                await run_in_threadpool(service.add_task, owner, name, spec)
            except ServiceError as exc:
                problems = exc.problems
                if exc.status == 409:
                    problems = [f"name: {p}" for p in exc.problems]
                else:
                    problems = forms.all_problems(
                        spec, problems, service.now(), service.min_interval
                    )
            else:
                return RedirectResponse(_link(who, owner, f"/tasks/{name}", done="created"), 303)
        return form_page(request, who, owner, values=form, problems=problems, status=400)

    @app.get("/tasks/{name}", include_in_schema=False)
    def task_page(
        request: Request,
        name: str,
        who: Principal = Depends(principal),
        client: str | None = ClientQ,
        state: list[str] | None = Query(None),
        since: str | None = Query(None, max_length=40),
        until: str | None = Query(None, max_length=40),
        before: str | None = Query(None, max_length=40),
        done: str | None = Query(None, max_length=20),
    ) -> HTMLResponse:
        owner = acting(who, client)
        task = find_task(owner, name)
        now = service.now()
        history = history_page(task, state, since, until, before, 50)
        errors = [r for r in history["occurrences"] if r.get("error") or r.get("errors")][:10]
        return page(
            request, "task.html", who, owner,
            task=task, info=task_json(task, now), history=history,
            running=data.running(task), errors=errors, filters={
                "state": [s for s in (state or []) if s], "since": since or "",
                "until": until or "",
            },
            message=DONE_MESSAGES.get(done or ""),
        )  # fmt: skip

    @app.get("/tasks/{name}/edit", include_in_schema=False)
    def edit_task_page(
        request: Request, name: str, who: Principal = Depends(principal),
        client: str | None = ClientQ,
    ) -> HTMLResponse:  # fmt: skip
        owner = acting(who, client)
        task = find_task(owner, name)
        return form_page(request, who, owner, task=task, values=forms.form_from_task(task))

    @app.post("/tasks/{name}/edit", include_in_schema=False)
    async def edit_task_submit(
        request: Request, name: str, who: Principal = Depends(principal),
        client: str | None = ClientQ,
    ) -> Any:  # fmt: skip
        owner = acting(who, client)
        task = await run_in_threadpool(find_task, owner, name)
        form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        form["name"] = task.slug
        spec, problems = forms.spec_from_form(form)
        if not problems:
            try:
                await run_in_threadpool(service.update_task, owner, name, spec)
            except ServiceError as exc:
                problems = forms.all_problems(
                    spec, exc.problems, service.now(), service.min_interval
                )
            else:
                return RedirectResponse(_link(who, owner, f"/tasks/{name}", done="saved"), 303)
        return form_page(request, who, owner, task=task, values=form, problems=problems,
                         status=400)  # fmt: skip

    @app.post("/tasks/{name}/do/{action}", include_in_schema=False)
    def task_action(
        name: str, action: str, who: Principal = Depends(principal), client: str | None = ClientQ
    ) -> RedirectResponse:
        owner = acting(who, client)
        find_task(owner, name)
        if action not in ACTIONS:
            raise HTTPException(404, "no such action")
        if action in ("pause", "resume"):
            service.set_paused(owner, name, action == "pause")
        elif action == "run-now":
            service.run_now(owner, name)
        elif action == "kick":
            service.kick(owner, name)
        else:
            service.delete_task(owner, name)
            return RedirectResponse(_link(who, owner, "/", done="delete"), 303)
        return RedirectResponse(_link(who, owner, f"/tasks/{name}", done=action), 303)

    @app.get("/tasks/{name}/occurrences/{occ_id}", include_in_schema=False)
    def occurrence_page(
        request: Request, name: str, occ_id: str, who: Principal = Depends(principal),
        client: str | None = ClientQ, done: str | None = Query(None, max_length=20),
    ) -> HTMLResponse:  # fmt: skip
        owner = acting(who, client)
        task = find_task(owner, name)
        check_occurrence(owner, task, occ_id)
        found = service.occurrence(owner, occ_id)
        from hub.portal.data import row_from_archive, row_from_live

        doc = found.get("occurrence") or found.get("result") or {}
        row = row_from_live(doc) if found["source"] == "live" else row_from_archive(doc)
        return page(
            request, "occurrence.html", who, owner, task=task, row=row, doc=doc,
            source=found["source"], message=DONE_MESSAGES.get(done or ""),
        )  # fmt: skip

    @app.post("/tasks/{name}/occurrences/{occ_id}/cancel", include_in_schema=False)
    def occurrence_cancel(
        name: str, occ_id: str, who: Principal = Depends(principal), client: str | None = ClientQ
    ) -> RedirectResponse:
        owner = acting(who, client)
        task = find_task(owner, name)
        check_occurrence(owner, task, occ_id)
        service.cancel(owner, occ_id, f"cancelled by {who.user}")
        return RedirectResponse(
            _link(who, owner, f"/tasks/{name}/occurrences/{occ_id}", done="cancel"), 303
        )

    @app.get("/tokens", include_in_schema=False)
    def tokens_page(
        request: Request, who: Principal = Depends(principal),
        done: str | None = Query(None, max_length=20),
    ) -> HTMLResponse:  # fmt: skip
        return page(
            request, "tokens.html", who, who.client, tokens=tokens.list(who), created=None,
            message=DONE_MESSAGES.get(done or ""), error=None,
        )  # fmt: skip

    @app.post("/tokens", include_in_schema=False)
    async def tokens_create(request: Request, who: Principal = Depends(principal)) -> Any:
        name = str((await request.form()).get("name") or "").strip()
        if not 1 <= len(name) <= 80:
            listed = await run_in_threadpool(tokens.list, who)
            return page(
                request, "tokens.html", who, who.client, tokens=listed, created=None,
                message=None, error="Give the token a name of 1 to 80 characters.",
                status_code=400,
            )  # fmt: skip
        try:
            secret, info = await run_in_threadpool(tokens.create, who, name)
        except TooManyTokens as exc:
            raise HTTPException(409, str(exc)) from None
        listed = await run_in_threadpool(tokens.list, who)
        return page(
            request, "tokens.html", who, who.client, tokens=listed,
            created={**info, "token": secret}, message=None, error=None,
        )  # fmt: skip

    @app.post("/tokens/{token_id}/revoke", include_in_schema=False)
    def tokens_revoke(token_id: str, who: Principal = Depends(principal)) -> RedirectResponse:
        if not tokens.revoke(who, token_id):
            raise HTTPException(404, "no such token")
        return RedirectResponse("/tokens?done=revoked", 303)

    @app.get("/ops", include_in_schema=False)
    def ops_page(request: Request, who: Principal = Depends(principal)) -> HTMLResponse:
        admin_only(who)
        ops = {**data.ops(), "replication": replication()}
        return page(request, "ops.html", who, None, ops=ops)

    return app


# ---------------------------------------------------------------- small pieces


def _with_problems(status: int, detail: str, problems: list[str]) -> HTTPException:
    exc = HTTPException(status, detail)
    exc.problems = list(problems)  # type: ignore[attr-defined]
    return exc


def _link(who: Principal, client: str, path: str, **params: Any) -> str:
    if who.admin:
        params = {"client": client, **params}
    return path + ("?" + urlencode(params) if params else "")


def _set_cookie(response, request: Request, name: str, value: str, max_age: int, settings) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path="/", httponly=True, samesite="lax",
        secure=settings.secure_cookies or request.url.scheme == "https",
    )  # fmt: skip


def _zone(name: str):
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)


def _when(value: str | None) -> str:
    if not value:
        return "—"
    try:
        return as_utc(from_wire(value)).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return str(value)


def _num(value: Any) -> str:
    """A stored number as a person writes it: CouchDB keeps 3.0 as 3.0 (PouchDB gives 3)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def _ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{int(value)} ms"


# ---------------------------------------------------------------- export


EXPORT_COLUMNS = (
    "occurrence", "due_at", "state", "status", "attempt", "worker", "started_at", "finished_at",
    "duration_ms", "latency_ms", "error", "output",
)  # fmt: skip


def _export_record(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "occurrence": row["id"],
        "due_at": row["due_at"],
        "state": row["state"],
        "status": row["status"],
        "attempt": row["attempt"],
        "worker": row["worker"],
        "started_at": row["started_at"],
        "finished_at": row["finished_at"],
        "duration_ms": row["duration_ms"],
        "latency_ms": row["latency_ms"],
        "error": row["error"],
        "output": row["output"],
    }


def csv_lines(rows: Iterator[dict[str, Any]], batch: int = 200) -> Iterator[str]:
    """CSV text, a batch of rows at a time (output as compact JSON in its column)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(EXPORT_COLUMNS)
    for count, row in enumerate(rows, 1):
        record = _export_record(row)
        output = record["output"]
        record["output"] = "" if output is None else json.dumps(output, separators=(",", ":"))
        writer.writerow(["" if record[c] is None else _csv_safe(record[c]) for c in EXPORT_COLUMNS])
        if count % batch == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def _csv_safe(value: Any) -> Any:
    """Defuse spreadsheet formulas in text cells (CSV injection)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def json_lines(rows: Iterator[dict[str, Any]], batch: int = 200) -> Iterator[str]:
    chunk: list[str] = []
    for row in rows:
        chunk.append(json.dumps(_export_record(row), separators=(",", ":")))
        if len(chunk) == batch:
            yield "\n".join(chunk) + "\n"
            chunk = []
    if chunk:
        yield "\n".join(chunk) + "\n"


def new_secret_key() -> str:
    return secrets.token_urlsafe(32)


__all__ = ["NotFoundError", "PortalSettings", "create_app", "new_secret_key"]
