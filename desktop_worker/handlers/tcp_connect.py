"""``tcp.connect``: open a TCP connection to a checked address and time it."""

from __future__ import annotations

from typing import Any

from desktop_worker.handlers import HandlerContext, network_errors
from desktop_worker.netguard import tcp_connect
from hub.protocol.kinds import apply_defaults


def run(input: dict[str, Any], ctx: HandlerContext) -> dict[str, Any]:
    data = apply_defaults("tcp.connect", input)
    host, port = data["host"], int(data["port"])
    ctx.progress(0, 1, f"connecting to {host}:{port}")
    with network_errors():
        ip, seconds = tcp_connect(host, port, ctx.policy, timeout_s=float(data["timeout_s"]))
    ctx.progress(1, 1, "connected")
    return {
        "host": host,
        "port": port,
        "ip": ip,
        "connected": True,
        "connect_ms": round(seconds * 1000, 3),
    }
