"""``http.check``: request a URL; report status, latency, size, TLS expiry, keyword."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from desktop_worker.handlers import HandlerContext, network_errors
from desktop_worker.netguard import http_request
from hub.protocol.kinds import apply_defaults


def run(input: dict[str, Any], ctx: HandlerContext) -> dict[str, Any]:
    data = apply_defaults("http.check", input)
    url = data["url"]
    method = data["method"]
    ctx.progress(0, 1, f"{method} {urlsplit(url).hostname}")
    with network_errors():
        response = http_request(
            url,
            ctx.policy,
            method=method,
            headers=data.get("headers"),
            timeout_s=float(data["timeout_s"]),
        )
    expect = data.get("expect_status")
    if expect is None:
        ok = response.status < 400
    else:
        ok = response.status in (expect if isinstance(expect, list) else [expect])
    keyword = data.get("keyword")
    keyword_found = None
    if keyword is not None and method != "HEAD":
        keyword_found = keyword in decode_body(response.body, response.headers)
    ctx.progress(1, 1, f"{response.status}")
    return {
        "status": response.status,
        "ok": ok,
        "latency_ms": round(response.elapsed_s * 1000),
        "bytes": len(response.body),
        "tls_expires_at": response.tls_expires_at,
        "keyword_found": keyword_found,
        "final_url": response.url,
        "redirects": len(response.redirects),
        "ip": response.ip,
    }


def decode_body(body: bytes, headers: dict[str, str]) -> str:
    """The body as text: the charset the server names, else UTF-8; bad bytes replaced."""
    charset = "utf-8"
    for part in headers.get("content-type", "").split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.lower() == "charset" and value:
            charset = value.strip().strip('"')
    try:
        return body.decode(charset, errors="replace")
    except LookupError:
        return body.decode("utf-8", errors="replace")
