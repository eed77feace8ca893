"""``dns.resolve``: the A or AAAA addresses of a name.

Answers that are not public addresses are refused like any other target (unless the worker
allows private networks): otherwise a task could map the volunteer's internal network
through its resolver. A name that does not exist is an answer, not a failure:
``found: false`` with no addresses.
"""

from __future__ import annotations

import ipaddress
import time
from typing import Any

from desktop_worker.handlers import HandlerContext, network_errors
from desktop_worker.netguard import NameNotFound, normalize_host
from hub.protocol.kinds import apply_defaults


def run(input: dict[str, Any], ctx: HandlerContext) -> dict[str, Any]:
    data = apply_defaults("dns.resolve", input)
    name = normalize_host(data["name"])
    rdtype = data["rdtype"]
    version = 4 if rdtype == "A" else 6
    ctx.progress(0, 1, f"resolving {name}")
    started = time.monotonic()
    with network_errors():
        ctx.policy.limit(name, ctx.deadline)
        try:
            answers = ctx.policy.resolve(name)
        except NameNotFound:
            answers = []
        addresses = [ip for ip in answers if ipaddress.ip_address(ip).version == version]
        for ip in addresses:
            ctx.policy.check_ip(ip, name)
    ctx.progress(1, 1, f"{len(addresses)} address(es)")
    return {
        "name": name,
        "rdtype": rdtype,
        "found": bool(addresses),
        "addresses": addresses,
        "latency_ms": round((time.monotonic() - started) * 1000),
    }
