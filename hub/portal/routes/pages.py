"""The client's pages: the dashboard, a task's page and form, one run. Every route is under
the client scope (an operator's dashboard without ``?client=`` lists the clients)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from hub.portal import forms
from hub.portal.auth import ClientScope, client_scope, client_scope_or_overview, principal
from hub.portal.data import row_from_archive, row_from_live
from hub.portal.rendering import render
from hub.portal.routes.api import backfill_json, history_page, task_json
from hub.portal.security import Principal
from hub.portal.state import PortalState, portal_state
from hub.protocol import kinds
from hub.protocol.model import Task
from hub.service import MAX_BACKFILL_RUNS, ServiceError

ACTIONS = ("pause", "resume", "run-now", "kick", "delete")
DONE_MESSAGES = {
    "created": "Task created.",
    "saved": "Task saved.",
    "pause": "Task paused: no new runs until you resume it.",
    "resume": "Task resumed.",
    "run-now": "An extra run was queued now.",
    "kick": "Buried runs were put back in the queue.",
    "delete": "Task deleted; its queued runs were cancelled.",
    "cancel": "The run was cancelled.",
    "revoked": "The token was revoked.",
    "settings": "Alert settings saved.",
    "secret": "A new webhook secret was made; the old one no longer signs.",
}
# Fields of the form that are not a kind's input (problems naming them go beside them).
FORM_FIELDS = frozenset(
    {"name", "kind", "schedule", "input", "priority", "tube", "ttr", "max_attempts", "overlap",
     "misfire", "misfire_grace", "retention_days", "paused", "backoff", "max_runs",
     "pause_after_failures", "alert_after_failures", "alert_channels", "quorum",
     "quorum_timeout", "quorum_on_timeout", "adaptive", "spot_check_rate"}
    | {f"schedule.{p}" for p in ("every", "cron", "at", "start", "end", "tz", "jitter",
                                 "exclusions")}
    | {f"backoff.{p}" for p in ("base", "factor", "max")}
)  # fmt: skip

router = APIRouter(dependencies=[Depends(client_scope_or_overview)])
tasks = APIRouter(prefix="/tasks", dependencies=[Depends(client_scope)])
settings_pages = APIRouter(prefix="/settings", dependencies=[Depends(client_scope)])


def page(
    state: PortalState, request: Request, name: str, scope: ClientScope, **context: Any
) -> Response:
    return render(state.templates, request, name, scope.who, scope.client, **context)


@router.get("/", include_in_schema=False)
def dashboard_page(
    request: Request,
    who: Principal = Depends(principal),
    scope: ClientScope | None = Depends(client_scope_or_overview),
    state: PortalState = Depends(portal_state),
) -> Response:
    if scope is None:
        overview = state.data.clients_overview()
        return render(state.templates, request, "clients.html", who, None, clients=overview)
    return page(state, request, "dashboard.html", scope, board=scope.dashboard())


def form_page(
    state: PortalState,
    request: Request,
    scope: ClientScope,
    *,
    task: Task | None = None,
    values: dict[str, str] | None = None,
    problems: list[str] | tuple[str, ...] = (),
    status: int = 200,
) -> Response:
    values = values or {}
    kind = values.get("kind") or (task.kind if task else "http.check")
    if kind not in kinds.KIND_SCHEMAS:
        kind = "http.check"
    fields = forms.all_input_fields()
    known = set(FORM_FIELDS) | {item.path for item in fields.get(kind, [])}
    placed, general = forms.problems_by_field(list(problems), known)
    return page(
        state, request, "task_form.html", scope,
        task=task, values=values, kind=kind, fields=fields, errors=placed,
        general=general, overlap_choices=forms.OVERLAP_CHOICES,
        misfire_choices=forms.MISFIRE_CHOICES, status_code=status,
        quorum_supported=forms.quorum_supported(),
        quorum_on_timeout_choices=forms.QUORUM_ON_TIMEOUT_CHOICES,
        schemas=kinds.KIND_SCHEMAS,
    )  # fmt: skip


@tasks.get("/new", include_in_schema=False)
def new_task_page(
    request: Request,
    scope: ClientScope = Depends(client_scope),
    kind: str = Query("http.check", max_length=64),
    state: PortalState = Depends(portal_state),
) -> Response:
    values = {"kind": kind, "schedule_mode": "every", "schedule.every": "60",
              "schedule.tz": "UTC"}  # fmt: skip
    return form_page(state, request, scope, values=values)


async def _form_fields(request: Request) -> dict[str, str]:
    return {k: v for k, v in (await request.form()).items() if isinstance(v, str)}


@tasks.post("/new", include_in_schema=False)
async def new_task_submit(
    request: Request,
    scope: ClientScope = Depends(client_scope),
    state: PortalState = Depends(portal_state),
) -> Response:
    form = await _form_fields(request)
    spec, problems = forms.spec_from_form(form)
    name = form.get("name", "").strip()
    service = state.service
    if not problems:
        try:
            await run_in_threadpool(scope.add_task, name, spec)
        except ServiceError as exc:
            problems = exc.problems
            if exc.status == 409:
                problems = [f"name: {p}" for p in exc.problems]
            else:
                problems = forms.all_problems(spec, problems, service.now(), service.min_interval)
        else:
            return RedirectResponse(scope.link(f"/tasks/{name}", done="created"), 303)
    return form_page(state, request, scope, values=form, problems=problems, status=400)


@tasks.get("/{name}", include_in_schema=False)
def task_page(
    request: Request,
    name: str,
    scope: ClientScope = Depends(client_scope),
    state: PortalState = Depends(portal_state),
    run_state: list[str] | None = Query(None, alias="state"),
    since: str | None = Query(None, max_length=40),
    until: str | None = Query(None, max_length=40),
    before: str | None = Query(None, max_length=40),
    done: str | None = Query(None, max_length=20),
) -> Response:
    task = scope.task(name)
    filters = {"state": [s for s in (run_state or []) if s], "since": since or "",
               "until": until or ""}  # fmt: skip
    return task_view(
        state, request, scope, task, filters, before, message=DONE_MESSAGES.get(done or "")
    )


def task_view(
    state: PortalState,
    request: Request,
    scope: ClientScope,
    task: Task,
    filters: dict[str, Any] | None = None,
    before: str | None = None,
    *,
    message: str | None = None,
    backfill: dict[str, Any] | None = None,
    status: int = 200,
) -> Response:
    """The task's page; ``backfill`` is the backfill form's values, result and problems."""
    filters = filters or {"state": [], "since": "", "until": ""}
    history = history_page(
        scope.data, task, filters["state"], filters["since"], filters["until"], before, 50
    )
    errors = [r for r in history["occurrences"] if r.get("error") or r.get("errors")][:10]
    return page(
        state, request, "task.html", scope,
        task=task, info=task_json(task, scope.now()), history=history,
        running=scope.data.running(task), errors=errors, filters=filters,
        first_run=scope.data.first_run(task), message=message,
        alerts=scope.task_alerts(task) if task.alert_after_failures else [],
        backfill=backfill or {"form": {"overlap": "allow"}, "result": None, "problems": []},
        max_backfill_runs=MAX_BACKFILL_RUNS, status_code=status,
    )  # fmt: skip


@tasks.get("/{name}/edit", include_in_schema=False)
def edit_task_page(
    request: Request,
    name: str,
    scope: ClientScope = Depends(client_scope),
    state: PortalState = Depends(portal_state),
) -> Response:
    task = scope.task(name)
    return form_page(state, request, scope, task=task, values=forms.form_from_task(task))


@tasks.post("/{name}/edit", include_in_schema=False)
async def edit_task_submit(
    request: Request,
    name: str,
    scope: ClientScope = Depends(client_scope),
    state: PortalState = Depends(portal_state),
) -> Response:
    task = await run_in_threadpool(scope.task, name)
    form = await _form_fields(request)
    form["name"] = task.slug
    spec, problems = forms.spec_from_form(form)
    service = state.service
    if not problems:
        try:
            await run_in_threadpool(scope.update_task, task, spec)
        except ServiceError as exc:
            problems = forms.all_problems(spec, exc.problems, service.now(), service.min_interval)
        else:
            return RedirectResponse(scope.link(f"/tasks/{name}", done="saved"), 303)
    return form_page(state, request, scope, task=task, values=form, problems=problems, status=400)


@tasks.post("/{name}/do/{action}", include_in_schema=False)
def task_action(
    name: str, action: str, scope: ClientScope = Depends(client_scope)
) -> RedirectResponse:
    task = scope.task(name)
    if action not in ACTIONS:
        raise HTTPException(404, "no such action")
    if action in ("pause", "resume"):
        scope.set_paused(task, action == "pause")
    elif action == "run-now":
        scope.run_now(task)
    elif action == "kick":
        scope.kick(task)
    else:
        scope.delete_task(task)
        return RedirectResponse(scope.link("/", done="delete"), 303)
    return RedirectResponse(scope.link(f"/tasks/{name}", done=action), 303)


@tasks.post("/{name}/backfill", include_in_schema=False)
async def backfill_submit(
    request: Request,
    name: str,
    scope: ClientScope = Depends(client_scope),
    state: PortalState = Depends(portal_state),
) -> Response:
    """The task page's backfill form: the page again, with the result or the problems."""
    task = await run_in_threadpool(scope.task, name)
    form = await _form_fields(request)
    values = {key: form.get(key, "").strip()[:40] for key in ("from", "to", "overlap")}
    values["overlap"] = values["overlap"] or "allow"
    try:
        report = await run_in_threadpool(
            scope.backfill, task, values["from"], values["to"], values["overlap"]
        )
    except ServiceError as exc:
        outcome = {"form": values, "result": None, "problems": exc.problems}
        return await run_in_threadpool(
            task_view, state, request, scope, task, backfill=outcome, status=exc.status
        )
    result = backfill_json(report, values["from"], values["to"], values["overlap"])
    outcome = {"form": values, "result": result, "problems": []}
    return await run_in_threadpool(task_view, state, request, scope, task, backfill=outcome)


@tasks.get("/{name}/occurrences/{occ_id}", include_in_schema=False)
def occurrence_page(
    request: Request,
    name: str,
    occ_id: str,
    scope: ClientScope = Depends(client_scope),
    state: PortalState = Depends(portal_state),
    done: str | None = Query(None, max_length=20),
) -> Response:
    task = scope.task(name)
    found = scope.occurrence(task, occ_id)
    doc = found.get("occurrence") or found.get("result") or {}
    row = row_from_live(doc) if found["source"] == "live" else row_from_archive(doc)
    return page(
        state, request, "occurrence.html", scope, task=task, row=row, doc=doc,
        source=found["source"], message=DONE_MESSAGES.get(done or ""),
    )  # fmt: skip


@tasks.post("/{name}/occurrences/{occ_id}/cancel", include_in_schema=False)
def occurrence_cancel(
    name: str, occ_id: str, scope: ClientScope = Depends(client_scope)
) -> RedirectResponse:
    scope.cancel(scope.task(name), occ_id)
    return RedirectResponse(scope.link(f"/tasks/{name}/occurrences/{occ_id}", done="cancel"), 303)


# ---------------------------------------------------------------- alert settings


@settings_pages.get("", include_in_schema=False)
def settings_page(
    request: Request,
    scope: ClientScope = Depends(client_scope),
    state: PortalState = Depends(portal_state),
    done: str | None = Query(None, max_length=20),
) -> Response:
    return page(
        state, request, "settings.html", scope, settings=scope.alert_settings(),
        values={}, problems=[], message=DONE_MESSAGES.get(done or ""),
    )  # fmt: skip


@settings_pages.post("", include_in_schema=False)
async def settings_submit(
    request: Request,
    scope: ClientScope = Depends(client_scope),
    state: PortalState = Depends(portal_state),
) -> Response:
    form = await _form_fields(request)
    changes = {name: form.get(name, "").strip() for name in ("webhook_url", "email")}
    new_secret = form.get("new_secret") is not None
    try:
        await run_in_threadpool(scope.set_alert_settings, changes, new_secret=new_secret)
    except ServiceError as exc:
        return page(
            state, request, "settings.html", scope, settings=scope.alert_settings(),
            values=form, problems=exc.problems, status_code=400, message=None,
        )  # fmt: skip
    done = "secret" if new_secret else "settings"
    return RedirectResponse(scope.link("/settings", done=done), 303)
