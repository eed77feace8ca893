"""``http.fetch``: GET a URL; return the body, or one value extracted from it.

``extract.json_pointer`` parses the body as JSON and returns the value at that RFC 6901
pointer; ``extract.regex`` returns the first match (group 1 when the pattern has groups,
plus any named groups). Without ``extract`` the body comes back as text, cut to fit the
output cap (``truncated`` says so).
"""

from __future__ import annotations

import json
import re
from typing import Any

from desktop_worker.handlers import HandlerContext, HandlerError, network_errors
from desktop_worker.handlers.http_check import decode_body
from desktop_worker.netguard import http_request
from hub.protocol.kinds import apply_defaults

_MISSING = object()


def run(input: dict[str, Any], ctx: HandlerContext) -> dict[str, Any]:
    data = apply_defaults("http.fetch", input)
    ctx.progress(0, 1, "fetching")
    with network_errors():
        response = http_request(
            data["url"], ctx.policy, method="GET", timeout_s=float(data["timeout_s"])
        )
    output: dict[str, Any] = {
        "status": response.status,
        "final_url": response.url,
        "content_type": response.headers.get("content-type"),
        "bytes": len(response.body),
        "latency_ms": round(response.elapsed_s * 1000),
    }
    text = decode_body(response.body, response.headers)
    extract = data.get("extract")
    if extract is None:
        budget = max(1024, ctx.max_output_bytes - 2048)
        body, truncated = fit_text(text, budget)
        output.update(body=body, truncated=truncated)
    elif "json_pointer" in extract:
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise HandlerError(
                f"the response from {response.url} is not JSON ({exc}); "
                "json_pointer needs a JSON body",
                permanent=False,
            ) from exc
        value = resolve_pointer(document, extract["json_pointer"])
        output.update(found=value is not _MISSING, value=None if value is _MISSING else value)
    else:
        match = re.search(extract["regex"], text)
        if match is None:
            output.update(found=False, value=None)
        else:
            value = match.group(1) if match.re.groups else match.group(0)
            output.update(found=True, value=value)
            if match.groupdict():
                output["groups"] = match.groupdict()
    ctx.progress(1, 1, str(response.status))
    return output


def resolve_pointer(document: Any, pointer: str) -> Any:
    """The value at an RFC 6901 JSON pointer, or ``_MISSING``."""
    if pointer == "":
        return document
    current = document
    for raw in pointer.split("/")[1:]:
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(current, dict):
            if token not in current:
                return _MISSING
            current = current[token]
        elif isinstance(current, list):
            if not token.isdigit() or (token != "0" and token.startswith("0")):
                return _MISSING
            index = int(token)
            if index >= len(current):
                return _MISSING
            current = current[index]
        else:
            return _MISSING
    return current


def fit_text(text: str, budget: int) -> tuple[str, bool]:
    """``text`` cut so its JSON encoding takes at most ``budget`` bytes."""

    def size(value: str) -> int:
        return len(json.dumps(value, ensure_ascii=False).encode("utf-8"))

    if size(text) <= budget:
        return text, False
    low, high = 0, min(len(text), budget)
    while low < high:
        mid = (low + high + 1) // 2
        if size(text[:mid]) <= budget:
            low = mid
        else:
            high = mid - 1
    return text[:low], True
