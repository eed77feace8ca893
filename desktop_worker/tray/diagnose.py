""" "Test connection": say exactly what is wrong between this PC and the hub.

:func:`test_connection` is a plain function (no Qt; the dialog runs it on a worker thread).
For each hub URL it walks the path a request takes and stops at the first thing that
fails, so the message names it:

1. the URL itself (``bad_url``);
2. DNS (``dns``): the host name does not resolve;
3. TCP (``unreachable``): nothing answers at host:port (refused, timed out);
4. TLS (``tls``): the certificate is not trusted, expired, for another name...;
5. CouchDB ``/_session`` with the worker's name and password: a 401 is a wrong password
   (``unauthorized``); a user without the ``farm_worker`` role is not a worker
   (``not_worker``, with the roles it does have);
6. the live database (``no_database``): it does not exist, or the user may not read it.

Only :mod:`hub.protocol.couch` speaks HTTP to CouchDB; the steps before it use sockets.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from hub.protocol.couch import (
    Couch,
    CouchError,
    Forbidden,
    NotFound,
    Unauthorized,
    Unavailable,
    redact_url,
)

WORKER_ROLE = "farm_worker"
ADMIN_ROLES = ("farm_admin", "_admin")


@dataclass(frozen=True)
class Check:
    url: str
    ok: bool
    problem: str  # ok, bad_url, dns, unreachable, tls, unauthorized, locked, not_worker,
    # no_database
    message: str
    seconds: float = 0.0


@dataclass(frozen=True)
class Diagnosis:
    ok: bool
    problem: str  # the first failure's problem, or "ok"
    message: str  # one paragraph a person can act on
    checks: tuple[Check, ...] = field(default_factory=tuple)


Resolver = Callable[..., list[Any]]


def _check_one(
    url: str,
    name: str,
    password: str,
    db: str,
    verify: bool | str,
    timeout: float,
    resolver: Resolver,
) -> Check:
    label = redact_url(url) if "://" in url else url
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return Check(label, False, "bad_url", f"{label!r} is not an http:// or https:// URL")
    host = parts.hostname
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return Check(label, False, "bad_url", f"{label}: the port is not a number")
    try:
        addresses = resolver(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        return Check(label, False, "dns", f"DNS: the name {host!r} does not resolve ({_why(exc)})")
    if not addresses:
        return Check(label, False, "dns", f"DNS: the name {host!r} has no address")
    sock = None
    last: Exception | None = None
    for family, kind, proto, _canon, address in addresses:
        try:
            sock = socket.socket(family, kind, proto)
            sock.settimeout(timeout)
            sock.connect(address)
            break
        except OSError as exc:
            last = exc
            if sock is not None:
                sock.close()
            sock = None
    if sock is None:
        return Check(
            label,
            False,
            "unreachable",
            f"server unreachable: nothing answers at {host}:{port} ({_why(last)})",
        )
    try:
        if parts.scheme == "https":
            context = ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)
            if verify is False:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            try:
                with context.wrap_socket(sock, server_hostname=host) as tls:
                    tls.do_handshake()
            except ssl.SSLCertVerificationError as exc:
                return Check(
                    label,
                    False,
                    "tls",
                    f"TLS: the certificate of {host} is not trusted ({exc.verify_message}); "
                    "give the hub's CA bundle or fix the certificate",
                )
            except (ssl.SSLError, OSError) as exc:
                return Check(label, False, "tls", f"TLS: the handshake with {host} failed ({exc})")
    finally:
        sock.close()
    couch = Couch(
        [url],
        name,
        password,
        retries=0,
        connect_timeout=timeout,
        read_timeout=timeout,
        verify=verify,
    )
    try:
        ctx = (couch.session() or {}).get("userCtx") or {}
    except Unauthorized:
        return Check(
            label,
            False,
            "unauthorized",
            f"wrong password: the hub answered 401 for worker {name!r} (or no such user)",
        )
    except Unavailable as exc:
        cause = exc.__cause__
        if "SSL" in type(cause).__name__ or "SSL" in str(exc):
            return Check(label, False, "tls", f"TLS: {exc}")
        return Check(label, False, "unreachable", f"server unreachable: {exc}")
    except CouchError as exc:
        if exc.status == 403 and "locked" in (exc.reason or "").lower():
            # CouchDB 3.5: 5 failed logins for this user from this address lock it for a
            # few minutes, the right password included.
            return Check(
                label, False, "locked",
                f"the hub has locked worker {name!r} for a few minutes after failed logins "
                f"from this address; wait, then try again with the right password",
            )  # fmt: skip
        return Check(label, False, "server", f"the hub answered {exc.status}: {exc.reason or exc}")
    if ctx.get("name") != name:
        return Check(
            label,
            False,
            "unauthorized",
            f"wrong password: the hub did not log in worker {name!r} (it sees "
            f"{ctx.get('name') or 'an anonymous user'})",
        )
    roles = list(ctx.get("roles") or [])
    if WORKER_ROLE not in roles and not any(r in roles for r in ADMIN_ROLES):
        have = ", ".join(roles) or "none"
        return Check(
            label,
            False,
            "not_worker",
            f"no such worker: user {name!r} exists but lacks the {WORKER_ROLE!r} role "
            f"(its roles: {have}); ask the hub's operator to add it as a worker",
        )
    try:
        couch.db_info(db)
    except NotFound:
        return Check(label, False, "no_database", f"the hub has no database {db!r}")
    except (Forbidden, Unauthorized) as exc:
        return Check(
            label,
            False,
            "no_database",
            f"worker {name!r} may not read database {db!r} ({exc.reason or exc.status})",
        )
    except CouchError as exc:
        return Check(label, False, "unreachable", f"server unreachable: {exc}")
    return Check(label, True, "ok", f"connected as worker {name!r}; database {db!r} is readable")


def _why(exc: BaseException | None) -> str:
    if exc is None:
        return "no address worked"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def test_connection(
    urls: list[str] | str,
    name: str,
    password: str,
    *,
    db: str = "farm",
    verify: bool | str = True,
    timeout: float = 5.0,
    resolver: Resolver = socket.getaddrinfo,
) -> Diagnosis:
    """Check every hub URL; the Diagnosis names the first problem and lists each URL's."""
    if isinstance(urls, str):
        urls = [u.strip() for u in urls.replace("\n", ",").split(",") if u.strip()]
    if not urls:
        return Diagnosis(False, "bad_url", "no hub URL given")
    if not name:
        return Diagnosis(False, "unauthorized", "no worker name given")
    if not password:
        return Diagnosis(False, "unauthorized", "no password given")
    checks = []
    for url in urls:
        began = time.monotonic()
        check = _check_one(url, name, password, db, verify, timeout, resolver)
        checks.append(
            Check(check.url, check.ok, check.problem, check.message, time.monotonic() - began)
        )
    failed = [c for c in checks if not c.ok]
    message = "; ".join(f"{c.url}: {c.message}" for c in checks)
    if not failed:
        return Diagnosis(True, "ok", message, tuple(checks))
    first = failed[0]
    return Diagnosis(False, first.problem, message, tuple(checks))


# pytest would otherwise collect this module's public function as a test.
test_connection.__test__ = False  # type: ignore[attr-defined]
