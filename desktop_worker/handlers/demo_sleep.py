"""``demo.sleep``: sleep ``ms`` in small steps reporting progress; fail at ``fail_rate``."""

from __future__ import annotations

import random
import time
from typing import Any

from desktop_worker.handlers import HandlerContext, HandlerError
from hub.protocol.kinds import apply_defaults

STEP_S = 0.1


def run(input: dict[str, Any], ctx: HandlerContext) -> dict[str, Any]:
    data = apply_defaults("demo.sleep", input)
    ms = int(data["ms"])
    fail_rate = float(data["fail_rate"])
    total = ms / 1000
    started = time.monotonic()
    ctx.progress(0, ms, "sleeping")
    while True:
        elapsed = time.monotonic() - started
        if elapsed >= total:
            break
        time.sleep(min(STEP_S, total - elapsed))
        done = min(ms, round((time.monotonic() - started) * 1000))
        ctx.progress(done, ms, f"slept {done} of {ms} ms")
    if fail_rate > 0 and random.random() < fail_rate:
        raise HandlerError(f"demo.sleep failed on purpose (fail_rate {fail_rate:g})")
    return {"slept_ms": ms}
