"""Structured log lines for the worker: one event per line, ``event=name key=value ...``.

Values with spaces or quotes are quoted, so a line splits unambiguously. Nothing here ever
receives a password: the engine passes only ids, names, counts and redacted URLs.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("couchfarm.worker")


def format_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    text = str(value)
    if text == "" or any(ch in text for ch in ' "=\n\t'):
        escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    return text


def event_line(event: str, **fields: Any) -> str:
    parts = [f"event={event}"]
    parts.extend(f"{key}={format_value(value)}" for key, value in fields.items())
    return " ".join(parts)


def log_event(event: str, level: int = logging.INFO, **fields: Any) -> None:
    if log.isEnabledFor(level):
        log.log(level, "%s", event_line(event, **fields))


def setup_logging(level: str | int = "INFO") -> None:
    """Log to stderr, one line per event, with UTC-free local timestamps for the operator."""
    logging.basicConfig(
        level=level if isinstance(level, int) else level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
