"""Every error as JSON ``{detail, problems}`` for the API, or as a page for a browser.

A page keeps the navigation bar when the user is logged in, so an error is never a dead end.
"""

from __future__ import annotations

import logging
from urllib.parse import urlencode

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from hub.portal.auth import NotLoggedIn, problem_response, wants_html, with_problems
from hub.portal.rendering import render
from hub.portal.state import PortalState
from hub.protocol.couch import Conflict, CouchError, Forbidden, NotFound
from hub.service import ServiceError

log = logging.getLogger("couchfarm.portal")


def _state(request: Request) -> PortalState:
    state: PortalState = request.app.state.portal
    return state


async def not_logged_in(request: Request, exc: Exception) -> Response:
    if wants_html(request):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)
    return problem_response(
        401, "log in first (POST /login) or send an API token",
        headers={"WWW-Authenticate": "Bearer"},
    )  # fmt: skip


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else "request refused"
    problems = getattr(exc, "problems", None) or []
    headers = getattr(exc, "headers", None)
    if wants_html(request):
        who = getattr(request.state, "principal", None)
        return render(
            _state(request).templates, request, "error.html", who, None,
            status=exc.status_code, detail=detail, problems=problems,
            status_code=exc.status_code, headers=headers,
        )  # fmt: skip
    return problem_response(exc.status_code, detail, problems, headers=headers)


async def invalid_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
        problems.append(f"{'.'.join(loc) or 'request'}: {err.get('msg', 'invalid')}")
    return problem_response(422, "the request is not valid", problems[:50])


async def service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    detail = "; ".join(exc.problems)[:500]
    if wants_html(request):
        return await http_error(request, with_problems(exc.status, detail, exc.problems))
    return problem_response(exc.status, detail, exc.problems)


async def couch_error(request: Request, exc: Exception) -> Response:
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
        return await http_error(request, HTTPException(status, detail))
    return problem_response(status, detail)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(NotLoggedIn, not_logged_in)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(CouchError, couch_error)
