"""API tokens: a user's own (never another's), as a page and as API."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from hub.portal.auth import principal
from hub.portal.rendering import render
from hub.portal.routes.pages import DONE_MESSAGES
from hub.portal.security import Principal, TooManyTokens
from hub.portal.state import PortalState, portal_state

router = APIRouter()


class NewToken(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=80)


@router.get("/api/tokens", summary="Your API tokens (never the secrets)")
def api_tokens(
    who: Principal = Depends(principal), state: PortalState = Depends(portal_state)
) -> dict[str, Any]:
    return {"tokens": state.tokens.list(who)}


@router.post("/api/tokens", status_code=201, summary="Create an API token (shown once)")
def api_new_token(
    body: NewToken,
    who: Principal = Depends(principal),
    state: PortalState = Depends(portal_state),
) -> dict[str, Any]:
    try:
        secret, info = state.tokens.create(who, body.name)
    except TooManyTokens as exc:
        raise HTTPException(409, str(exc)) from None
    return {**info, "token": secret}


@router.delete("/api/tokens/{token_id}", summary="Revoke an API token")
def api_revoke(
    token_id: str,
    who: Principal = Depends(principal),
    state: PortalState = Depends(portal_state),
) -> dict[str, Any]:
    if not state.tokens.revoke(who, token_id):
        raise HTTPException(404, "no such token")
    return {"revoked": token_id}


def _tokens_page(
    state: PortalState, request: Request, who: Principal, listed: list[Any], **context: Any
) -> Response:
    context = {"created": None, "message": None, "error": None, **context}
    return render(state.templates, request, "tokens.html", who, who.client, tokens=listed,
                  **context)  # fmt: skip


@router.get("/tokens", include_in_schema=False)
def tokens_page(
    request: Request,
    who: Principal = Depends(principal),
    state: PortalState = Depends(portal_state),
    done: str | None = Query(None, max_length=20),
) -> Response:
    listed = state.tokens.list(who)
    return _tokens_page(state, request, who, listed, message=DONE_MESSAGES.get(done or ""))


@router.post("/tokens", include_in_schema=False)
async def tokens_create(
    request: Request,
    who: Principal = Depends(principal),
    state: PortalState = Depends(portal_state),
) -> Response:
    name = str((await request.form()).get("name") or "").strip()
    if not 1 <= len(name) <= 80:
        listed = await run_in_threadpool(state.tokens.list, who)
        return _tokens_page(
            state, request, who, listed, status_code=400,
            error="Give the token a name of 1 to 80 characters.",
        )  # fmt: skip
    try:
        secret, info = await run_in_threadpool(state.tokens.create, who, name)
    except TooManyTokens as exc:
        raise HTTPException(409, str(exc)) from None
    listed = await run_in_threadpool(state.tokens.list, who)
    return _tokens_page(state, request, who, listed, created={**info, "token": secret})


@router.post("/tokens/{token_id}/revoke", include_in_schema=False)
def tokens_revoke(
    token_id: str,
    who: Principal = Depends(principal),
    state: PortalState = Depends(portal_state),
) -> RedirectResponse:
    if not state.tokens.revoke(who, token_id):
        raise HTTPException(404, "no such token")
    return RedirectResponse("/tokens?done=revoked", 303)
