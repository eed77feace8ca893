"""Who is asking, and the walls around the portal.

- Login: the client's CouchDB name and password, checked by ``POST /_session`` against
  the hub's own server list. The password is never stored.
- Sessions: a cookie signed with :mod:`itsdangerous` that carries the user, the client,
  a session id and a CSRF token; HttpOnly, SameSite=Lax, Secure on https. Logging out
  revokes the session id, so a copied cookie dies with the logout. Every session is
  re-checked against CouchDB at least once a minute (:class:`CouchRecheck`), so a user
  deleted, a password changed or a role removed there ends it.
- CSRF: every unsafe request authenticated by the cookie carries the session's token (form
  field ``csrf_token`` or header ``X-CSRF-Token``); a foreign ``Origin`` is refused.
- Rate limits: failed logins per address (and address and user name), in a sliding
  window, never per user alone: the owner logs in at once from any other address. Wrong
  passwords are kept away from CouchDB so its lockout never fires because of the portal
  (:mod:`hub.portal.login_guard`). The counters live in this process: with two hubs each
  counts its own. Kept out of CouchDB on purpose: a write per failed login would let a
  password guesser load the database it is guessing against.
- API tokens: random secrets for scripts (``Authorization: Bearer``); only their SHA-256 is
  stored, as ``hub:token:<sha256>`` in the live database.
- ASGI middlewares: a request-body size limit, security headers, and a last-resort handler
  that turns any crash into a generic 500 and a log line.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException
from itsdangerous import BadSignature, URLSafeTimedSerializer

from hub.protocol.couch import Couch, CouchError, Forbidden, NotFound, Unauthorized, Unavailable
from hub.protocol.model import NAME_PATTERN
from hub.protocol.names import ADMIN_ROLE, CLIENT_ROLE_PREFIX
from hub.protocol.timefmt import to_wire

log = logging.getLogger("couchfarm.portal")

SESSION_COOKIE = "cf_session"
LOGIN_COOKIE = "cf_login"
CSRF_HEADER = "x-csrf-token"
TOKEN_PREFIX = "cft_"
TOKEN_DOC_PREFIX = "hub:token:"
MAX_TOKENS = 50  # per client (or per operator)
USERNAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@+-]{0,99}$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_CLIENT_NAME = re.compile(NAME_PATTERN)


# ---------------------------------------------------------------- who


@dataclass(frozen=True)
class Principal:
    """A logged-in user: a client's user, or an operator (``admin``) who sees every client."""

    user: str
    client: str | None
    admin: bool
    via: str = "session"  # "session" (cookie) or "token" (Authorization: Bearer)
    sid: str | None = None
    csrf: str | None = None

    @property
    def scope(self) -> str:
        """Whose API tokens these are: the client's, or the operator's own."""
        return f"admin:{self.user}" if self.admin else f"client:{self.client}"


def principal_from_roles(user: str, roles: list[str], admin_check: Callable[[list[str]], bool]):
    """The portal identity for a CouchDB user, or None if the roles give no portal access."""
    if admin_check(roles):
        return Principal(user=user, client=None, admin=True)
    clients = [
        role.removeprefix(CLIENT_ROLE_PREFIX)
        for role in roles
        if role.startswith(CLIENT_ROLE_PREFIX)
        and _CLIENT_NAME.match(role.removeprefix(CLIENT_ROLE_PREFIX))
    ]
    if len(clients) != 1:
        return None  # no client role, or an ambiguous user: refuse rather than guess
    return Principal(user=user, client=clients[0], admin=False)


def default_admin_check(roles: list[str]) -> bool:
    return ADMIN_ROLE in roles


def valid_client_name(name: str | None) -> bool:
    return bool(name) and _CLIENT_NAME.match(name or "") is not None


# ---------------------------------------------------------------- login check


Authenticator = Callable[[str, str], dict[str, Any] | None]


class LockedByCouch(Exception):
    """CouchDB itself refused the login: its lockout for this user and address is on."""


def is_lockout(error: Forbidden) -> bool:
    """CouchDB's answer while its lockout holds: 403 "Account is temporarily locked"."""
    return "locked" in str(error).lower()


def couch_authenticator(couch: Couch, timeout: float = 10.0) -> Authenticator:
    """Check a name and password with ``POST /_session`` on ``couch``'s servers.

    Returns CouchDB's ``userCtx`` ({name, roles}) plus ``auth_cookie``, the CouchDB
    session (``AuthSession``) the portal keeps server-side to re-check the user later
    (:class:`CouchRecheck`), or None when the server says 401. Other failures (server
    down) raise :class:`hub.protocol.couch.CouchError`.
    """
    urls = [server.url for server in couch.servers]
    verify = couch.verify

    def check(name: str, password: str) -> dict[str, Any] | None:
        if not name or not password:
            return None
        # A fresh anonymous client per login: its cookie jar must hold nobody else's.
        conn = Couch(urls, retries=0, read_timeout=timeout, verify=verify)
        try:
            reply = conn.request("POST", "/_session", body={"name": name, "password": password})
        except Unauthorized:
            return None
        except Forbidden as error:
            if is_lockout(error):
                raise LockedByCouch(str(error)) from None
            raise
        body = reply.body or {}
        if body.get("name") != name:
            return None
        cookie = auth_cookie(reply.headers)
        if cookie is None:
            raise CouchError("CouchDB answered /_session without an AuthSession cookie")
        return {"name": name, "roles": [str(r) for r in body.get("roles") or []],
                "auth_cookie": cookie}  # fmt: skip

    return check


def auth_cookie(headers: dict[str, str]) -> str | None:
    """The ``AuthSession`` value of a response's ``Set-Cookie`` header, if any."""
    for key, value in headers.items():
        if key.lower() != "set-cookie":
            continue
        for part in re.split(r"[;,]\s*", value):
            if part.startswith("AuthSession="):
                return part.removeprefix("AuthSession=") or None
    return None


@dataclass
class _Held:
    user: str
    roles: tuple[str, ...]
    cookie: str
    checked_at: float
    expires_at: float


class CouchRecheck:
    """Portal sessions re-checked against CouchDB, at most ``every`` seconds apart.

    The portal's signed cookie alone would outlive a user deleted, a password changed or
    a role removed in CouchDB until it expires (hours). So at login the portal keeps the
    user's CouchDB session cookie (server-side, by session id; never sent to the browser)
    and, when its last check is older than ``every`` seconds, asks ``GET /_session`` with
    it. CouchDB signs that cookie with the user's password salt, so a changed password or
    a deleted user ends it; the roles it reports must still give the same portal access.
    CouchDB refreshes the cookie as it is used; an idle session ends after CouchDB's own
    ``[chttpd_auth] timeout`` (600 s by default). Held in this process: a restarted portal
    asks everyone to log in again, and two portals do not share sessions.
    """

    def __init__(
        self,
        couch: Couch,
        admin_check: Callable[[list[str]], bool],
        *,
        every: float = 60.0,
        max_age: float = 12 * 3600,
        clock: Callable[[], float] = time.monotonic,
        max_sessions: int = 100_000,
        timeout: float = 10.0,
    ) -> None:
        self.urls = [server.url for server in couch.servers]
        self.verify = couch.verify
        self.admin_check = admin_check
        self.every = every
        self.max_age = max_age
        self.clock = clock
        self.max_sessions = max_sessions
        self.timeout = timeout
        self._held: OrderedDict[str, _Held] = OrderedDict()
        self._lock = threading.Lock()

    def hold(self, sid: str, user: str, ctx: dict[str, Any]) -> None:
        cookie = ctx.get("auth_cookie")
        if not sid or not isinstance(cookie, str):
            return
        now = self.clock()
        held = _Held(user, tuple(ctx.get("roles") or ()), cookie, now, now + self.max_age)
        with self._lock:
            self._held[sid] = held
            while len(self._held) > self.max_sessions:
                self._held.popitem(last=False)

    def drop(self, sid: str | None) -> None:
        with self._lock:
            self._held.pop(sid or "", None)

    def still_valid(self, who: Principal) -> bool:
        """Whether CouchDB still knows this session's user with the same portal access.

        Raises :class:`hub.protocol.couch.Unavailable` when CouchDB cannot be asked (the session is
        kept: a server outage is not a logout).
        """
        now = self.clock()
        with self._lock:
            held = self._held.get(who.sid or "")
        if held is None or held.user != who.user or now >= held.expires_at:
            return False
        if now - held.checked_at < self.every:
            return True
        conn = Couch(self.urls, retries=0, read_timeout=self.timeout, verify=self.verify)
        try:
            reply = conn.request(
                "GET", "/_session", headers={"Cookie": f"AuthSession={held.cookie}"}
            )
        except Unavailable:
            raise
        except CouchError as exc:
            log.info("event=session_recheck_refused user=%s status=%s", who.user, exc.status)
            self.drop(who.sid)
            return False
        ctx = (reply.body or {}).get("userCtx") or {}
        roles = [str(r) for r in ctx.get("roles") or []]
        again = principal_from_roles(who.user, roles, self.admin_check)
        if (
            ctx.get("name") != who.user
            or again is None
            or (again.client, again.admin) != (who.client, who.admin)
        ):
            log.info("event=session_ended_by_couchdb user=%s name=%r", who.user, ctx.get("name"))
            self.drop(who.sid)
            return False
        with self._lock:
            held.cookie = auth_cookie(reply.headers) or held.cookie
            held.roles = tuple(roles)
            held.checked_at = now
        return True


# ---------------------------------------------------------------- sessions


class Sessions:
    """Signed session cookies, with server-side revocation on logout."""

    def __init__(self, secret_key: str, max_age: int = 12 * 3600) -> None:
        if len(secret_key) < 16:
            raise ValueError("the portal's secret key must be at least 16 characters")
        self.max_age = max_age
        self._signer = URLSafeTimedSerializer(secret_key, salt="couchfarm-portal-session")
        self._login_signer = URLSafeTimedSerializer(secret_key, salt="couchfarm-portal-login")
        self._revoked: dict[str, float] = {}
        self._lock = threading.Lock()

    def issue(self, principal: Principal) -> tuple[str, Principal]:
        sid = secrets.token_urlsafe(16)
        csrf = secrets.token_urlsafe(24)
        payload = {
            "u": principal.user, "c": principal.client, "a": principal.admin,
            "s": sid, "x": csrf,
        }  # fmt: skip
        signed = Principal(principal.user, principal.client, principal.admin, "session", sid, csrf)
        return self._signer.dumps(payload), signed

    def read(self, cookie: str | None) -> Principal | None:
        if not cookie or len(cookie) > 4096:
            return None
        try:
            data = self._signer.loads(cookie, max_age=self.max_age)
        except BadSignature:  # also SignatureExpired
            return None
        if not isinstance(data, dict) or not isinstance(data.get("s"), str):
            return None
        with self._lock:
            if data["s"] in self._revoked:
                return None
        user, client, admin = data.get("u"), data.get("c"), bool(data.get("a"))
        if not isinstance(user, str) or not (admin or valid_client_name(client)):
            return None
        return Principal(user, None if admin else client, admin, "session", data["s"], data["x"])

    def revoke(self, sid: str | None) -> None:
        if not sid:
            return
        now = time.monotonic()
        with self._lock:
            self._revoked[sid] = now + self.max_age
            for old, until in list(self._revoked.items()):
                if until < now:
                    del self._revoked[old]

    # A pre-login token (double-submit) so the login form itself cannot be forged.
    def login_nonce(self) -> tuple[str, str]:
        nonce = secrets.token_urlsafe(18)
        return nonce, self._login_signer.dumps(nonce)

    def login_nonce_ok(self, cookie: str | None, submitted: str | None) -> bool:
        if not cookie or not submitted:
            return False
        try:
            nonce = self._login_signer.loads(cookie, max_age=3600)
        except BadSignature:
            return False
        return isinstance(nonce, str) and hmac.compare_digest(nonce, submitted)


def csrf_ok(principal: Principal, submitted: str | None) -> bool:
    return bool(principal.csrf and submitted) and hmac.compare_digest(
        str(principal.csrf), str(submitted)
    )


# ---------------------------------------------------------------- rate limits


class RateLimiter:
    """At most ``limit`` failures per key in a sliding ``window`` of seconds."""

    def __init__(
        self,
        limit: int = 5,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 10_000,
    ) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self.max_keys = max_keys
        self._fails: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, key: str) -> int | None:
        """Seconds until ``key`` may try again, or None when it may try now."""
        now = self.clock()
        with self._lock:
            fails = self._fails.get(key)
            if not fails:
                return None
            while fails and fails[0] <= now - self.window:
                fails.popleft()
            if len(fails) < self.limit:
                return None
            return max(1, int(fails[-self.limit] + self.window - now + 0.999))

    def fail(self, key: str) -> None:
        now = self.clock()
        with self._lock:
            fails = self._fails.pop(key, None) or deque()
            fails.append(now)
            while len(fails) > self.limit:
                fails.popleft()
            self._fails[key] = fails  # most recent last, so the oldest keys go first
            while len(self._fails) > self.max_keys:
                self._fails.popitem(last=False)

    def reset(self, key: str) -> None:
        with self._lock:
            self._fails.pop(key, None)


# ---------------------------------------------------------------- API tokens


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_doc_id(digest: str) -> str:
    return f"{TOKEN_DOC_PREFIX}{digest}"


def valid_token_id(digest: str) -> bool:
    return _SHA256_HEX.match(digest) is not None


class TooManyTokens(ValueError):
    pass


class TokenStore:
    """API tokens as ``hub:token:<sha256>`` documents (the secret itself is never stored)."""

    def __init__(self, couch: Couch, db: str) -> None:
        self.couch = couch
        self.db = db

    def create(self, principal: Principal, name: str) -> tuple[str, dict[str, Any]]:
        if len(self.list(principal)) >= MAX_TOKENS:
            raise TooManyTokens(f"at most {MAX_TOKENS} API tokens; revoke one first")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        digest = token_hash(token)
        doc = {
            "_id": token_doc_id(digest),
            "type": "hub",
            "kind": "api_token",
            "scope": principal.scope,
            "user": principal.user,
            "client": principal.client,
            "admin": principal.admin,
            "name": name,
            "hint": token[-4:],
            "created_at": to_wire(self.couch.now()),
        }
        self.couch.put(self.db, doc)
        log.info("event=token_created scope=%s name=%r", principal.scope, name)
        return token, self._public(doc)

    def lookup(self, token: str) -> Principal | None:
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        doc = self.couch.get_or_none(self.db, token_doc_id(token_hash(token)))
        if not doc or doc.get("kind") != "api_token":
            return None
        admin = bool(doc.get("admin"))
        client = doc.get("client")
        if not admin and not valid_client_name(client):
            return None
        return Principal(str(doc.get("user")), None if admin else client, admin, "token")

    def list(self, principal: Principal) -> list[dict[str, Any]]:
        rows = self.couch.view(
            self.db, "farm", "api_tokens",
            startkey=[principal.scope], endkey=[principal.scope, {}], include_docs=True,
        )["rows"]  # fmt: skip
        return [self._public(row["doc"]) for row in rows if row.get("doc")]

    def revoke(self, principal: Principal, digest: str) -> bool:
        if not valid_token_id(digest):
            return False
        doc = self.couch.get_or_none(self.db, token_doc_id(digest))
        if not doc or doc.get("kind") != "api_token" or doc.get("scope") != principal.scope:
            return False
        try:
            self.couch.delete(self.db, doc["_id"], doc["_rev"])
        except NotFound:
            return False
        log.info("event=token_revoked scope=%s name=%r", principal.scope, doc.get("name"))
        return True

    @staticmethod
    def _public(doc: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": str(doc["_id"]).removeprefix(TOKEN_DOC_PREFIX),
            "name": doc.get("name", ""),
            "hint": doc.get("hint", ""),
            "user": doc.get("user", ""),
            "created_at": doc.get("created_at", ""),
        }


# ---------------------------------------------------------------- ASGI middlewares


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, declared or streamed."""

    def __init__(self, app: Any, limit: int = 64 * 1024) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.limit
            except ValueError:
                too_big = True
            if too_big:
                await _send_json(send, 413, {"detail": self._message(), "problems": []})
                return
        seen = 0
        limit = self.limit

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            if message.get("type") == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(self._message())
            return message

        await self.app(scope, counted, send)

    def _message(self) -> str:
        return f"request body is larger than {self.limit // 1024} KiB"


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a streamed body passes the limit: a 413."""

    def __init__(self, detail: str) -> None:
        super().__init__(status_code=413, detail=detail)


class SecurityHeaders:
    """Headers every response carries: no framing, no sniffing, scripts only from here."""

    CSP = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
        "object-src 'none'"
    )

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        # Pages and API answers are private and change: never cached. Static files may be.
        cache = b"max-age=300" if scope.get("path", "").startswith("/static/") else b"no-store"

        async def with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                present = {name.lower() for name, _ in headers}
                for name, value in (
                    (b"content-security-policy", self.CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"same-origin"),
                    (b"cache-control", cache),
                ):
                    if name not in present:
                        headers.append((name, value))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


class CatchAll:
    """The last wall: a crash becomes a generic 500 and one log line, never a traceback."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking)
        except BodyTooLarge as exc:
            if not started:
                await _send_json(send, 413, {"detail": exc.detail, "problems": []})
        except Exception:
            log.exception(
                "event=portal_error method=%s path=%s", scope.get("method"), scope.get("path")
            )
            if not started:
                await _send_json(
                    send,
                    500,
                    {"detail": "internal error in the portal; it has been logged", "problems": []},
                )


async def _send_json(send: Callable, status: int, body: dict) -> None:
    import json

    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})
