"""Hub time on the wire: one ISO-8601 UTC format everywhere, so view keys sort as time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

WIRE_FORMAT = "%Y-%m-%dT%H:%M:%S.{ms}Z"
ID_FORMAT = "%Y%m%dT%H%M%SZ"


def utcnow() -> datetime:
    return datetime.now(UTC)


def to_wire(moment: datetime) -> str:
    """2026-12-01T00:01:00.000Z. Fixed width, so string order is time order."""
    moment = as_utc(moment)
    return moment.strftime(WIRE_FORMAT).replace("{ms}", f"{moment.microsecond // 1000:03d}")


def from_wire(text: str) -> datetime:
    """Parse any ISO-8601 timestamp with a zone; naive timestamps are refused, not guessed."""
    if not isinstance(text, str):  # a stored value of the wrong type: the same ValueError
        raise ValueError(f"not an ISO-8601 timestamp: {text!r}")
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not an ISO-8601 timestamp: {text!r}") from exc
    if parsed.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no time zone; add 'Z' or an offset")
    return parsed.astimezone(UTC)


def to_id_stamp(moment: datetime) -> str:
    """20261201T000100Z: the due time as it appears in occurrence ids (whole seconds)."""
    return as_utc(moment).strftime(ID_FORMAT)


def as_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("naive datetime: hub time is always timezone-aware UTC")
    return moment.astimezone(UTC)


def month_key(moment: datetime) -> str:
    """2026_12: the suffix of the monthly results database that holds this moment."""
    moment = as_utc(moment)
    return f"{moment.year:04d}_{moment.month:02d}"


def seconds(value: float) -> timedelta:
    return timedelta(seconds=value)
