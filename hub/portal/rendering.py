"""Templates and the filters they use; :func:`render` fills in what every page needs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import Request
from fastapi.templating import Jinja2Templates
from starlette.responses import Response

from hub.portal import forms
from hub.portal.data import ALL_STATES, FILTER_STATES, SHOWN_STATES
from hub.portal.quorum import FLAG_SCORE, FLAG_STREAK
from hub.portal.security import Principal
from hub.protocol.timefmt import as_utc, from_wire

HERE = Path(__file__).resolve().parent

# What "(live)" or "(archived)" beside a run's state means: its tooltip and the legend below.
LIVE_EXPLAINED = (
    "Live: this run is still in the farm's working database (queued, running, or finished "
    "in the last few minutes), so its state can still change; the hub archives it soon "
    "after it ends."
)
ARCHIVED_EXPLAINED = (
    "Archived: this run has ended and its result was moved to the monthly results "
    "database; it no longer changes."
)


def make_templates(title: str, refresh_seconds: int) -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals.update(
        title=title, shown_states=SHOWN_STATES, all_states=ALL_STATES, filter_states=FILTER_STATES,
        explain=forms.EXPLAIN, refresh_seconds=refresh_seconds, live_explained=LIVE_EXPLAINED,
        archived_explained=ARCHIVED_EXPLAINED, flag_score=FLAG_SCORE, flag_streak=FLAG_STREAK,
    )  # fmt: skip
    templates.env.filters["when"] = when
    templates.env.filters["pct"] = pct
    templates.env.filters["pretty"] = lambda v: json.dumps(v, indent=2, sort_keys=True)
    templates.env.filters["compact"] = compact
    templates.env.filters["ms"] = ms
    templates.env.filters["num"] = num
    return templates


def link_maker(who: Principal | None, client: str | None) -> Callable[..., str]:
    """``link(path, **params)``: a local URL that keeps an operator's ``?client=``."""

    def link(path: str, **params: Any) -> str:
        if who is not None and who.admin and client:
            params = {"client": client, **params}
        clean = {k: v for k, v in params.items() if v is not None and v != ""}
        return path + ("?" + urlencode(clean, doseq=True) if clean else "")

    return link


def render(
    templates: Jinja2Templates,
    request: Request,
    name: str,
    who: Principal | None,
    client: str | None,
    *,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> Response:
    return templates.TemplateResponse(
        request, name,
        {"me": who, "client": client, "link": link_maker(who, client), "q": quote, **context},
        status_code=status_code, headers=headers,
    )  # fmt: skip


def when(value: str | None) -> str:
    if not value:
        return "—"
    try:
        return as_utc(from_wire(value)).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return str(value)


def compact(value: Any) -> str:
    """JSON on one line: a result's output in a list of several."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def num(value: Any) -> str:
    """A stored number as a person writes it: CouchDB keeps 3.0 as 3.0 (PouchDB gives 3)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{int(value)} ms"
