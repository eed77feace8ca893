"""The alert channels: a signed webhook POST and an email over SMTP (docs/ALERTS.md).

Each send either returns a short description of what the other end said ("HTTP 204",
"250 accepted") or raises DeliveryError with a message that names the channel and the
target, so the caller records it in the alert document and logs one line; nothing here
ever lets a network error escape as anything else.

The webhook signature: ``X-Couchfarm-Signature: sha256=<hex>`` where ``<hex>`` is
HMAC-SHA256, keyed with the client's webhook secret, over ``"<timestamp>." + body``
(the body bytes exactly as sent), and ``X-Couchfarm-Timestamp`` is ``<timestamp>``, Unix
seconds. A receiver recomputes it, compares in constant time, and refuses a timestamp more
than a few minutes old (a replayed request): :func:`verify_webhook` does exactly that.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import smtplib
import socket
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any
from urllib.parse import urlsplit

import requests

SIGNATURE_HEADER = "X-Couchfarm-Signature"
TIMESTAMP_HEADER = "X-Couchfarm-Timestamp"
WEBHOOK_TIMEOUT_S = 5.0
SMTP_TIMEOUT_S = 10.0
REPLAY_WINDOW_S = 300


class DeliveryError(Exception):
    """One channel could not deliver; the message names the channel and what to fix."""


# ---------------------------------------------------------------- webhook


def sign_webhook(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Couchfarm-Signature`` value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def verify_webhook(secret: str, body: bytes, signature: str, timestamp: str, now_s: float) -> bool:
    """What a receiver does: the signature matches and the timestamp is recent."""
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if abs(now_s - sent) > REPLAY_WINDOW_S:
        return False
    return hmac.compare_digest(sign_webhook(secret, sent, body), signature)


def check_webhook_url(url: str, *, allow_private: bool) -> None:
    """Refuse what the hub must not POST to: anything but http(s), and (unless the
    operator allows it) a host on a private, loopback or link-local address, so a client
    cannot make the hub reach inside its own network."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DeliveryError(f"webhook: {url!r} is not an http(s) URL")
    if allow_private:
        return
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise DeliveryError(f"webhook: cannot resolve {parts.hostname!r}: {exc}") from None
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]))
        if not address.is_global:
            raise DeliveryError(
                f"webhook: {parts.hostname!r} resolves to {address}, a private address the "
                "hub does not post to (the operator can allow it: alerts_allow_private)"
            )


def post_webhook(
    url: str, secret: str, payload: dict[str, Any], timestamp: int, *, allow_private: bool
) -> str:
    """POST ``payload`` as JSON, signed. Returns "HTTP <status>"; raises DeliveryError for
    a refused URL, a network error or a status outside 2xx."""
    check_webhook_url(url, allow_private=allow_private)
    body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "couchfarm-alerts",
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign_webhook(secret, timestamp, body),
    }
    try:
        reply = requests.post(
            url, data=body, headers=headers, timeout=WEBHOOK_TIMEOUT_S, allow_redirects=False
        )
    except requests.RequestException as exc:
        raise DeliveryError(f"webhook: POST {url} failed: {type(exc).__name__}: {exc}") from None
    if not 200 <= reply.status_code < 300:
        raise DeliveryError(f"webhook: POST {url} answered HTTP {reply.status_code}")
    return f"HTTP {reply.status_code}"


# ---------------------------------------------------------------- email


@dataclass(frozen=True)
class SmtpSettings:
    """The hub operator's mail server (``hub serve --smtp-*`` or COUCHFARM_SMTP_*)."""

    host: str
    port: int = 25
    sender: str = "couchfarm@localhost"
    username: str | None = None
    password: str | None = None
    starttls: bool = False


def send_email(settings: SmtpSettings | None, to: str, subject: str, text: str) -> str:
    """Send one plain-text message. Returns the server's answer; raises DeliveryError."""
    if settings is None:
        raise DeliveryError("email: the hub has no SMTP server configured (COUCHFARM_SMTP_HOST)")
    message = EmailMessage()
    message["From"] = settings.sender
    message["To"] = to
    message["Subject"] = subject
    message.set_content(text)
    try:
        with smtplib.SMTP(settings.host, settings.port, timeout=SMTP_TIMEOUT_S) as smtp:
            if settings.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if settings.username:
                smtp.login(settings.username, settings.password or "")
            refused = smtp.send_message(message)
    except (OSError, smtplib.SMTPException) as exc:
        raise DeliveryError(
            f"email: SMTP {settings.host}:{settings.port} to {to} failed: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    if refused:
        raise DeliveryError(f"email: SMTP {settings.host}:{settings.port} refused {to}")
    return f"accepted by {settings.host}:{settings.port}"


def smtp_from_env(env: dict[str, str]) -> SmtpSettings | None:
    """The mail server from COUCHFARM_SMTP_HOST/_PORT/_FROM/_USER/_PASSWORD/_STARTTLS;
    None without a host. Raises ValueError naming the variable for a bad port."""
    host = env.get("COUCHFARM_SMTP_HOST", "").strip()
    if not host:
        return None
    raw_port = env.get("COUCHFARM_SMTP_PORT", "25").strip() or "25"
    try:
        port = int(raw_port)
    except ValueError:
        raise ValueError(f"COUCHFARM_SMTP_PORT: {raw_port!r} is not a port number") from None
    return SmtpSettings(
        host=host,
        port=port,
        sender=env.get("COUCHFARM_SMTP_FROM", "").strip() or "couchfarm@localhost",
        username=env.get("COUCHFARM_SMTP_USER") or None,
        password=env.get("COUCHFARM_SMTP_PASSWORD") or None,
        starttls=env.get("COUCHFARM_SMTP_STARTTLS", "").lower() in ("1", "true", "yes"),
    )
