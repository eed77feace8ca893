"""Log in, log out, who am I."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from hub.portal.auth import principal, safe_next, same_origin, wants_html
from hub.portal.login_guard import LoginGuard
from hub.portal.rendering import render
from hub.portal.security import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    USERNAME_PATTERN,
    LockedByCouch,
    Principal,
    principal_from_roles,
)
from hub.portal.state import PortalSettings, PortalState, portal_state

log = logging.getLogger("couchfarm.portal")

router = APIRouter()


def set_cookie(
    response: Response, request: Request, name: str, value: str, max_age: int,
    settings: PortalSettings,
) -> None:  # fmt: skip
    response.set_cookie(
        name, value, max_age=max_age, path="/", httponly=True, samesite="lax",
        secure=settings.secure_cookies or request.url.scheme == "https",
    )  # fmt: skip


def login_page(
    state: PortalState,
    request: Request,
    error: str | None = None,
    status: int = 200,
    next_: str = "/",
    username: str = "",
) -> Response:
    nonce, signed = state.sessions.login_nonce()
    response = render(
        state.templates, request, "login.html", None, None,
        error=error, nonce=nonce, next=safe_next(next_), username=username[:100],
        status_code=status,
    )  # fmt: skip
    set_cookie(response, request, LOGIN_COOKIE, signed, 3600, state.settings)
    return response


@router.get("/login", include_in_schema=False)
def get_login(
    request: Request, next: str = "/", state: PortalState = Depends(portal_state)
) -> Response:
    return login_page(state, request, next_=next)


class _Refusal:
    """How a refused login answers: the form again with the message, or a JSON error."""

    def __init__(self, state: PortalState, request: Request, next_: str, username: str) -> None:
        self.state, self.request, self.next_, self.username = state, request, next_, username
        self.html = wants_html(request)

    def __call__(self, status: int, message: str, wait: int = 0) -> Response:
        headers = {"Retry-After": str(wait)} if wait else None
        if self.html:
            response = login_page(
                self.state, self.request, message, status, self.next_, self.username
            )
            response.headers.update(headers or {})
            return response
        raise HTTPException(status, message[:1].lower() + message[1:].rstrip("."), headers)


async def _check_password(
    state: PortalState, guard: LoginGuard, ip: str, username: str, password: str,
    refused: _Refusal,
) -> dict[str, Any] | Response | None:  # fmt: skip
    """CouchDB's userCtx for a right password, None for a wrong one, or the refusal."""
    if not (USERNAME_PATTERN.match(username) and 0 < len(password) <= 1024):
        return None
    verdict = await run_in_threadpool(guard.check, username, password)
    if verdict.action == "refuse":
        guard.address_failed(ip, username)
        log.warning("event=login_held ip=%s user=%r retry_after=%d", ip,
                    username[:100], verdict.retry_after)  # fmt: skip
        return refused(429, verdict.message, verdict.retry_after)
    if verdict.action != "ask_couch":
        return None
    try:
        ctx = await run_in_threadpool(state.authenticate, username, password)
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
    return ctx


@router.post(
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
    state: PortalState = Depends(portal_state),
) -> Any:
    html = wants_html(request)
    next_ = safe_next(next)
    origin = request.headers.get("origin")
    if origin is not None and not same_origin(origin, request):
        raise HTTPException(403, "cross-site login refused")
    browserish = html or origin is not None or "sec-fetch-site" in request.headers
    nonce_ok = state.sessions.login_nonce_ok(request.cookies.get(LOGIN_COOKIE), csrf_token)
    if (csrf_token is not None or browserish) and not nonce_ok:
        if html:
            return login_page(state, request, "The form expired; please try again.", 403, next_)
        raise HTTPException(403, "missing or wrong login form token; reload the page")
    ip = request.client.host if request.client else "unknown"
    refused = _Refusal(state, request, next_, username)
    guard = state.guard
    wait = guard.address_wait(ip, username)
    if wait:
        log.warning("event=login_limited ip=%s user=%r", ip, username[:100])
        return refused(429, f"Too many failed logins from your address; try again in "
                            f"{wait} seconds.", wait)  # fmt: skip
    ctx = await _check_password(state, guard, ip, username, password, refused)
    if isinstance(ctx, Response):
        return ctx
    if ctx is None:
        guard.address_failed(ip, username)
        log.info("event=login_failed ip=%s user=%r", ip, username[:100])
        if html:
            return login_page(
                state, request, "Name or password is incorrect.", 401, next_, username
            )
        raise HTTPException(401, "name or password is incorrect")
    return _logged_in(state, request, username, ctx, next_)


def _logged_in(
    state: PortalState, request: Request, username: str, ctx: dict[str, Any], next_: str
) -> Response:
    html = wants_html(request)
    who = principal_from_roles(username, list(ctx.get("roles", [])), state.is_admin)
    if who is None:
        log.info("event=login_refused user=%r roles=%s", username, ctx.get("roles"))
        if html:
            return login_page(state, request, "This user has no access to the portal.", 403, next_)
        raise HTTPException(403, "this user has no access to the portal")
    cookie, who = state.sessions.issue(who)
    if state.recheck is not None:
        state.recheck.hold(str(who.sid), who.user, ctx)
    log.info("event=login user=%s client=%s admin=%s", who.user, who.client, who.admin)
    response: Response
    if html:
        response = RedirectResponse(next_, status_code=303)
    else:
        response = JSONResponse(
            {"user": who.user, "client": who.client, "admin": who.admin, "csrf_token": who.csrf},
        )
    settings = state.settings
    set_cookie(response, request, SESSION_COOKIE, cookie, settings.session_max_age, settings)
    response.delete_cookie(LOGIN_COOKIE, path="/")
    return response


@router.post("/logout", summary="End the session (needs the CSRF token)")
async def post_logout(
    request: Request,
    who: Principal = Depends(principal),
    state: PortalState = Depends(portal_state),
) -> Any:
    state.sessions.revoke(who.sid)
    if state.recheck is not None:
        state.recheck.drop(who.sid)
    response: Response = (
        RedirectResponse("/login", status_code=303)
        if wants_html(request)
        else JSONResponse({"ok": True})
    )
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/api/me", summary="Who you are logged in as")
def api_me(who: Principal = Depends(principal)) -> dict[str, Any]:
    return {"user": who.user, "client": who.client, "admin": who.admin, "via": who.via}
