"""The portal's ASGI app: pages for people, a JSON API for scripts, the same rules for both.

:func:`create_app` builds the shared state (:class:`hub.portal.state.PortalState`), the
middlewares and error handlers, and includes one router per area (``hub/portal/routes/``).
Who is asking and for which client are dependencies (:mod:`hub.portal.auth`): every route
of the client area declares :func:`hub.portal.auth.client_scope`, the one place the
isolation rule lives. Everything else goes through :class:`hub.service.FarmService` and
:class:`hub.portal.data.PortalData`, both of which take that client as the first part of
every key, so another client's task or occurrence is simply "not found" (404, never 403:
existence does not leak).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from hub.portal.data import PortalData
from hub.portal.errors import install_error_handlers
from hub.portal.login_guard import LoginGuard, UsersDbVerifier
from hub.portal.rendering import HERE, make_templates
from hub.portal.routes import api, export, login, ops, pages, tokens
from hub.portal.routes.export import csv_lines, json_lines
from hub.portal.security import (
    Authenticator,
    BodyLimit,
    CatchAll,
    CouchRecheck,
    SecurityHeaders,
    Sessions,
    TokenStore,
    couch_authenticator,
    default_admin_check,
)
from hub.portal.state import PortalSettings, PortalState, ReplicationReader
from hub.protocol.couch import Couch
from hub.service import FarmService, NotFoundError

log = logging.getLogger("couchfarm.portal")


def create_app(
    service: FarmService,
    couch_for_login: Couch | Authenticator,
    *,
    secret_key: str,
    admin_check: Callable[[list[str]], bool] | None = None,
    settings: PortalSettings | None = None,
    dbs_couch: Couch | None = None,
    replication_status: ReplicationReader | None = None,
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
    state = _portal_state(
        service, couch_for_login, settings, admin_check or default_admin_check,
        dbs_couch, replication_status, clock, users_reader,
    )  # fmt: skip
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
    app.state.portal = state
    # Kept for callers that read these directly (tests, benches).
    app.state.settings = settings
    app.state.login_guard = state.guard
    app.state.sessions = state.sessions
    app.state.data = state.data
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.add_middleware(CatchAll)
    app.add_middleware(BodyLimit, limit=settings.max_body)
    app.add_middleware(SecurityHeaders)
    install_error_handlers(app)
    for router in (
        login.router, api.reference, api.router, export.router, tokens.router, ops.router,
        pages.router, pages.tasks, pages.settings_pages,
    ):  # fmt: skip
        app.include_router(router)
    return app


def _portal_state(
    service: FarmService,
    couch_for_login: Couch | Authenticator,
    settings: PortalSettings,
    is_admin: Callable[[list[str]], bool],
    dbs_couch: Couch | None,
    replication_status: ReplicationReader | None,
    clock: Callable[[], float],
    users_reader: Couch | None,
) -> PortalState:
    authenticate: Authenticator = (
        couch_authenticator(couch_for_login)
        if isinstance(couch_for_login, Couch)
        else couch_for_login
    )
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
    return PortalState(
        settings=settings,
        service=service,
        data=PortalData(service, dbs_couch=dbs_couch),
        sessions=Sessions(settings.secret_key, settings.session_max_age),
        tokens=TokenStore(service.couch, service.db),
        guard=guard,
        templates=make_templates(settings.title, settings.refresh_seconds),
        authenticate=authenticate,
        is_admin=is_admin,
        recheck=recheck,
        replication_status=replication_status,
        clock=clock,
    )


def new_secret_key() -> str:
    return secrets.token_urlsafe(32)


__all__ = [
    "NotFoundError",
    "PortalSettings",
    "create_app",
    "csv_lines",
    "json_lines",
    "new_secret_key",
]
