"""What every request of one portal shares: settings, connections, the login guard, templates.

One :class:`PortalState` per app, kept on ``app.state.portal`` and handed to routes by the
:func:`portal_state` dependency, so routers are plain modules with no closure over
``create_app``'s locals.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.templating import Jinja2Templates

from hub.portal.data import PortalData
from hub.portal.login_guard import COUCH_LOCKOUT_LIFETIME, LoginGuard
from hub.portal.security import Authenticator, CouchRecheck, Sessions, TokenStore
from hub.service import FarmService


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
    # The results feed (docs/PORTAL.md): the longest a request may wait for a result, and
    # the longest one stream lasts (the client reconnects with its cursor).
    results_wait_cap_s: float = 60.0
    results_stream_cap_s: float = 3600.0
    title: str = "Couchfarm"


ReplicationReader = Callable[[], dict[str, Any] | None]


@dataclass
class PortalState:
    """The portal's shared objects; built once by :func:`hub.portal.app.create_app`."""

    settings: PortalSettings
    service: FarmService
    data: PortalData
    sessions: Sessions
    tokens: TokenStore
    guard: LoginGuard
    templates: Jinja2Templates
    authenticate: Authenticator
    is_admin: Callable[[list[str]], bool]
    recheck: CouchRecheck | None = None  # None: a custom authenticator, nothing to re-check
    replication_status: ReplicationReader | None = None
    clock: Callable[[], float] = field(default=time.monotonic)


def portal_state(request: Request) -> PortalState:
    """The dependency every route uses to reach the shared state."""
    state: PortalState = request.app.state.portal
    return state
