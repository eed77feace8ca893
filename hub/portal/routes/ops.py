"""The operators' view of the farm: workers, queues, replication, buried runs."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from hub.portal.auth import operator
from hub.portal.rendering import render
from hub.portal.security import Principal
from hub.portal.state import PortalState, portal_state

log = logging.getLogger("couchfarm.portal")

router = APIRouter(dependencies=[Depends(operator)])

# States in which a replication is known to be doing its job (CouchDB's scheduler says
# running; PouchDB Server's _replicator doc says triggered).
GOOD_STATES = frozenset({"running", "triggered", "completed"})
UNKNOWN_STATES = frozenset({"unknown", ""})


def link_verdict(link: dict[str, Any]) -> str:
    """ "yes", "no" or "unknown": a replication whose state could not be read is not
    called healthy, however small its lag."""
    if not link.get("healthy"):
        return "no"
    if str(link.get("state") or "") in UNKNOWN_STATES:
        return "unknown"
    return "yes"


def replication(state: PortalState) -> dict[str, Any]:
    if state.replication_status is None:
        return {"configured": False}
    try:
        status = state.replication_status()
    except Exception as exc:  # another module's fault must not take the ops page down
        log.warning("event=replication_status_failed error=%r", str(exc))
        return {"configured": True, "error": "could not read the replication state"}
    if status is None:
        return {"configured": False}
    links = [{**link, "verdict": link_verdict(link)} for link in status.get("links") or []]
    verdicts = {link["verdict"] for link in links}
    overall = "no" if "no" in verdicts else "unknown" if "unknown" in verdicts else "yes"
    return {"configured": True, **status, "links": links, "healthy": overall if links else None}


def ops_figures(state: PortalState) -> dict[str, Any]:
    return {**state.data.ops(), "replication": replication(state)}


@router.get("/api/ops", summary="Operators: workers, queues, replication, buried runs")
def api_ops(
    who: Principal = Depends(operator), state: PortalState = Depends(portal_state)
) -> dict[str, Any]:
    return ops_figures(state)


@router.get("/ops", include_in_schema=False)
def ops_page(
    request: Request,
    who: Principal = Depends(operator),
    state: PortalState = Depends(portal_state),
) -> Response:
    return render(state.templates, request, "ops.html", who, None, ops=ops_figures(state))
