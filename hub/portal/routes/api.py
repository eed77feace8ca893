"""The client's JSON API (tasks, runs, plots; every route under the client scope) and the
reference both the API and the form use (kinds, schedule preview)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hub import schedules
from hub.portal import forms
from hub.portal.auth import ClientScope, client_scope, principal, with_problems
from hub.portal.data import FILTER_STATES, PortalData, describe_schedule, next_due
from hub.portal.quorum import quorum_view
from hub.portal.security import Principal
from hub.portal.state import PortalState, portal_state
from hub.protocol import kinds
from hub.protocol.model import (
    SLUG_PATTERN,
    AlertChannel,
    Overlap,
    Schedule,
    Task,
    describe_validation_error,
)
from hub.protocol.timefmt import from_wire, to_wire
from hub.results_feed import CursorError
from hub.service import MAX_BACKFILL_RUNS, BackfillReport, FarmService

# ---------------------------------------------------------------- bodies


class TaskFields(BaseModel):
    """Fields of a task a client sets; the hub fills in the rest (see hub.protocol.model.Task)."""

    model_config = ConfigDict(extra="forbid")

    kind: str | None = Field(None, max_length=64, description="kind of work, e.g. http.check")
    input: dict[str, Any] | None = Field(None, description="input, checked by the kind's schema")
    schedule: dict[str, Any] | None = Field(
        None, description="exactly one of every (seconds), cron or at; optional start, end, tz"
    )
    priority: int | None = Field(None, description=forms.EXPLAIN["priority"])
    tube: str | None = Field(None, max_length=64, description=forms.EXPLAIN["tube"])
    ttr: int | None = Field(None, description=forms.EXPLAIN["ttr"])
    max_attempts: int | None = Field(None, description=forms.EXPLAIN["max_attempts"])
    backoff: dict[str, Any] | None = Field(None, description=forms.EXPLAIN["backoff"])
    overlap: Overlap | None = None
    pause_after_failures: int | None = Field(
        None, ge=1, le=1000, description="pause the task after this many failed runs in a row"
    )
    max_runs: int | None = Field(None, description=forms.EXPLAIN["max_runs"])
    alert_after_failures: int | None = Field(
        None, description=forms.EXPLAIN["alert_after_failures"]
    )
    alert_channels: list[AlertChannel] | None = Field(
        None, description=forms.EXPLAIN["alert_channels"]
    )
    quorum: int | None = Field(None, description=forms.EXPLAIN["quorum"])
    quorum_timeout: int | None = Field(None, description=forms.EXPLAIN["quorum_timeout"])
    quorum_on_timeout: Literal["decide", "fail"] | None = Field(
        None, description=forms.EXPLAIN["quorum_on_timeout"]
    )
    adaptive: bool | None = Field(None, description=forms.EXPLAIN["adaptive"])
    spot_check_rate: float | None = Field(None, description=forms.EXPLAIN["spot_check_rate"])
    misfire: Literal["run_all", "run_latest", "skip"] | None = None
    misfire_grace: int | None = Field(None, description=forms.EXPLAIN["misfire_grace"])
    retention_days: int | None = Field(None, description=forms.EXPLAIN["retention_days"])
    paused: bool | None = None

    def spec(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True, exclude={"name"})


class NewTask(TaskFields):
    name: str = Field(pattern=SLUG_PATTERN, max_length=64, description="the task's name (slug)")
    kind: str = Field(max_length=64)
    schedule: dict[str, Any]


class AlertSettingsChange(BaseModel):
    """The client's alert channels; an empty string clears one, a missing field keeps it."""

    model_config = ConfigDict(extra="forbid")

    webhook_url: str | None = Field(None, max_length=2000, description="http(s) URL to POST to")
    email: str | None = Field(None, max_length=254, description="address for alert emails")
    new_secret: bool = Field(False, description="make a new webhook secret (the old one ends)")


class BackfillRequest(BaseModel):
    """A past range of a task's schedule whose missing runs to create (docs/SCHEDULES.md)."""

    model_config = ConfigDict(extra="forbid")

    start: str = Field(
        alias="from", max_length=40,
        description="first due time, inclusive (ISO-8601 with a zone)",
    )  # fmt: skip
    to: str = Field(
        max_length=40,
        description="last due time, inclusive (ISO-8601 with a zone); not in the future",
    )
    overlap: Literal["allow", "queue"] = Field(
        "allow",
        description="allow: the runs all start now (fair share); queue: one at a time, "
        "in due order",
    )


class PreviewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schedule: dict[str, Any]
    count: int = Field(5, ge=1, le=50)


# ---------------------------------------------------------------- shared with the pages


def task_json(task: Task, now: Any = None) -> dict[str, Any]:
    doc = task.to_doc()
    for key in ("_id", "_rev", "type", "slug"):
        doc.pop(key, None)
    doc = {
        "name": task.slug,
        **doc,
        "status": task.status,  # active, paused or ended (max_runs reached; paused_reason)
        "schedule_text": describe_schedule(task),
    }
    if now is not None:
        doc["next_due"] = next_due(task, now)
    return doc


def parse_time(value: str | None, name: str) -> str | None:
    if value is None or value == "":
        return None
    if len(value) > 40:
        raise HTTPException(400, f"{name}: too long for a time")
    try:
        return to_wire(from_wire(value))
    except (ValueError, OverflowError):
        raise HTTPException(
            400, f"{name}: {value[:40]!r} is not an ISO-8601 time with a zone"
        ) from None


def history_page(
    data: PortalData,
    task: Task,
    state: list[str] | None,
    since: str | None,
    until: str | None,
    before: str | None,
    limit: int,
) -> dict[str, Any]:
    wanted = set(state or []) - {""}
    unknown = wanted - set(FILTER_STATES)
    if unknown:
        raise HTTPException(400, f"state: unknown {sorted(unknown)[0][:40]!r}")
    return data.history(
        task,
        before=parse_time(before, "before"),
        since=parse_time(since, "since"),
        until=parse_time(until, "until"),
        states=wanted or None,
        limit=limit,
    )


def schedule_preview(service: FarmService, raw: dict[str, Any], count: int = 5) -> dict[str, Any]:
    try:
        sched = Schedule(**forms.localize_schedule(raw))
    except forms.ExclusionTextError as exc:
        raise with_problems(400, "the schedule is not valid", [str(exc)]) from None
    except ValidationError as exc:
        raise with_problems(
            400, "the schedule is not valid", describe_validation_error(exc, "schedule.")
        ) from None
    except TypeError:
        raise with_problems(400, "the schedule is not valid", ["schedule: not an object"]) from None
    now = service.now()
    try:
        schedules.validate_schedule(sched, now, min_interval=service.min_interval)
        fires = schedules.preview(sched, now, count)
    except schedules.ScheduleError as exc:
        raise with_problems(400, "the schedule is not valid", exc.problems) from None
    from zoneinfo import ZoneInfo

    zone = ZoneInfo(sched.tz)
    # The fires the exclusion windows take out up to the last one shown, so the preview
    # can say which runs a window skips (they are not runs: never missed, never counted).
    excluded = schedules.excluded_fires(sched, now, fires[-1]) if fires else []

    def local(fire: datetime) -> str:
        return fire.astimezone(zone).strftime("%a %Y-%m-%d %H:%M:%S %Z")

    return {
        "tz": sched.tz,
        "fires": [to_wire(f) for f in fires],
        "local": [local(f) for f in fires],
        "excluded": [to_wire(f) for f in excluded],
        "excluded_local": [local(f) for f in excluded],
        "exclusions": len(sched.exclusions or ()),
        "problems": [],
    }


# ---------------------------------------------------------------- reference

reference = APIRouter(prefix="/api")


@reference.get("/kinds", summary="Kinds of work and the JSON Schema of each one's input")
def api_kinds(who: Principal = Depends(principal)) -> dict[str, Any]:
    return {"kinds": kinds.KIND_SCHEMAS}


@reference.post(
    "/schedule/preview",
    summary="The next fire times of a schedule (times without zone read in its tz)",
)
def api_preview(
    body: PreviewRequest,
    who: Principal = Depends(principal),
    state: PortalState = Depends(portal_state),
) -> dict[str, Any]:
    return schedule_preview(state.service, body.schedule, body.count)


# ---------------------------------------------------------------- the client's API

router = APIRouter(prefix="/api", dependencies=[Depends(client_scope)])


@router.get("/tasks", summary="Your tasks with counts by state, success rate, last and next")
def api_tasks(scope: ClientScope = Depends(client_scope)) -> dict[str, Any]:
    return scope.dashboard()


@router.get(
    "/activity",
    summary="Your runs per hour and their success rate, over the last hours (the dashboard's plot)",
)
def api_activity(
    scope: ClientScope = Depends(client_scope),
    hours: int = Query(24, ge=1, le=24 * 14, description="how many hours back"),
) -> dict[str, Any]:
    return scope.activity(hours)


@router.post("/tasks", status_code=201, summary="Create a task")
def api_create(body: NewTask, scope: ClientScope = Depends(client_scope)) -> dict[str, Any]:
    task = scope.add_task(body.name, body.spec())
    return task_json(task, scope.now())


@router.get("/tasks/{name}", summary="One task")
def api_task(name: str, scope: ClientScope = Depends(client_scope)) -> dict[str, Any]:
    return task_json(scope.task(name), scope.now())


@router.patch("/tasks/{name}", summary="Change some fields of a task")
def api_update(
    name: str, body: TaskFields, scope: ClientScope = Depends(client_scope)
) -> dict[str, Any]:
    task = scope.task(name)
    return task_json(scope.update_task(task, body.spec()), scope.now())


@router.delete("/tasks/{name}", summary="Delete a task and cancel its queued runs")
def api_delete(name: str, scope: ClientScope = Depends(client_scope)) -> dict[str, Any]:
    task = scope.task(name)
    return {"deleted": name, "cancelled": scope.delete_task(task)}


@router.post("/tasks/{name}/pause", summary="Pause: no new runs")
def api_pause(name: str, scope: ClientScope = Depends(client_scope)) -> dict[str, Any]:
    return task_json(scope.set_paused(scope.task(name), True))


@router.post("/tasks/{name}/resume", summary="Resume a paused task")
def api_resume(name: str, scope: ClientScope = Depends(client_scope)) -> dict[str, Any]:
    return task_json(scope.set_paused(scope.task(name), False))


@router.post("/tasks/{name}/run-now", status_code=201, summary="Queue an extra run now")
def api_run_now(name: str, scope: ClientScope = Depends(client_scope)) -> dict[str, Any]:
    occ = scope.run_now(scope.task(name))
    return {"occurrence": occ.id, "due_at": occ.due_at, "state": occ.state.value}


@router.post("/tasks/{name}/kick", summary="Put the task's buried runs back in the queue")
def api_kick(name: str, scope: ClientScope = Depends(client_scope)) -> dict[str, Any]:
    return {"kicked": scope.kick(scope.task(name))}


def backfill_json(report: BackfillReport, start: str, end: str, overlap: str) -> dict[str, Any]:
    """What the API answers and the task page shows."""
    existed = len(report.already_live) + len(report.already_archived)
    return {
        "task": report.task.rsplit(":", 1)[-1], "from": start, "to": end, "overlap": overlap,
        "created": len(report.created), "existed": existed,
        "already_live": len(report.already_live),
        "already_archived": len(report.already_archived),
        "occurrences": report.created,
    }  # fmt: skip


@router.post(
    "/tasks/{name}/backfill",
    summary="Create the missing runs of a past range (from, to); a repeat creates none",
    description="Runs due in [from, to] that exist neither live nor archived are created "
    "with the backfill's own overlap policy (allow or queue); `created` counts them and "
    f"`existed` the runs already there. At most {MAX_BACKFILL_RUNS} runs per request; "
    "a range in the future, from after to or too many runs is a 400 naming the field.",
)
def api_backfill(
    name: str, body: BackfillRequest, scope: ClientScope = Depends(client_scope)
) -> dict[str, Any]:
    report = scope.backfill(scope.task(name), body.start, body.to, body.overlap)
    return backfill_json(report, body.start, body.to, body.overlap)


@router.get("/tasks/{name}/occurrences", summary="Runs of a task, newest first, paged")
def api_occurrences(
    name: str,
    scope: ClientScope = Depends(client_scope),
    state: list[str] | None = Query(None, description="only these states (or ok/error)"),
    since: str | None = Query(None, max_length=40, description="due at or after (ISO)"),
    until: str | None = Query(None, max_length=40, description="due at or before (ISO)"),
    before: str | None = Query(None, max_length=40, description="page cursor: next_before"),
    limit: int = Query(50, ge=1, le=200),
) -> dict[str, Any]:
    task = scope.task(name)
    return history_page(scope.data, task, state, since, until, before, limit)


@router.get("/tasks/{name}/occurrences/{occ_id}", summary="One run, with its result")
def api_occurrence(
    name: str, occ_id: str, scope: ClientScope = Depends(client_scope)
) -> dict[str, Any]:
    found = scope.occurrence(scope.task(name), occ_id)
    view = quorum_view(found.get("occurrence") or found.get("result") or {})
    if view is not None:  # a quorum run: its k results, which is canonical and why
        found["quorum"] = view.to_json()
    return found


@router.post("/tasks/{name}/occurrences/{occ_id}/cancel", summary="Cancel a queued run")
def api_cancel(
    name: str, occ_id: str, scope: ClientScope = Depends(client_scope)
) -> dict[str, Any]:
    occ = scope.cancel(scope.task(name), occ_id)
    return {"occurrence": occ.id, "state": occ.state.value}


@router.get("/tasks/{name}/series", summary="Duration, latency and success rate over time")
def api_series(
    name: str,
    scope: ClientScope = Depends(client_scope),
    since: str | None = Query(None, max_length=40),
    until: str | None = Query(None, max_length=40),
    buckets: int = Query(120, ge=1, le=500),
) -> dict[str, Any]:
    task = scope.task(name)
    end = from_wire(parse_time(until, "until") or to_wire(scope.now()))
    start = from_wire(parse_time(since, "since") or to_wire(end - timedelta(days=1)))
    if start >= end:
        raise HTTPException(400, "since: must be before until")
    return scope.data.series(task, start, end, buckets)


@router.get("/tasks/{name}/alerts", summary="The task's alerts, newest first, with every attempt")
def api_task_alerts(name: str, scope: ClientScope = Depends(client_scope)) -> dict[str, Any]:
    task = scope.task(name)
    return {"health": scope.task_health(task), "alerts": scope.task_alerts(task)}


@router.get("/settings/alerts", summary="Your alert channels: webhook URL and secret, email")
def api_alert_settings(scope: ClientScope = Depends(client_scope)) -> dict[str, Any]:
    return scope.alert_settings()


@router.put("/settings/alerts", summary="Change your alert channels (docs/ALERTS.md)")
def api_set_alert_settings(
    body: AlertSettingsChange, scope: ClientScope = Depends(client_scope)
) -> dict[str, Any]:
    changes = body.model_dump(exclude_none=True, exclude={"new_secret"})
    return scope.set_alert_settings(changes, new_secret=body.new_secret)


# ---------------------------------------------------------------- results feed

SINCE_QUERY = Query(
    None, max_length=4000,
    description="the 'next' cursor of the previous page; 'now' for only what comes next; "
    "none: every result of this month and the previous one",
)  # fmt: skip
ALTERNATIVES_QUERY = Query(
    False,
    description="quorum runs: add every worker's result (alternatives) beside the canonical "
    "one and its validation",
)


@router.get("/results", summary="Your results since a cursor, paged; long-polls when none")
def api_results(
    scope: ClientScope = Depends(client_scope),
    since: str | None = SINCE_QUERY,
    limit: int = Query(100, ge=1, le=500),
    wait: float = Query(0, ge=0, le=60, description="seconds to wait for a result if none"),
    alternatives: bool = ALTERNATIVES_QUERY,
    state: PortalState = Depends(portal_state),
) -> dict[str, Any]:
    wait = min(wait, state.settings.results_wait_cap_s)
    try:
        return scope.results_page(since, limit, wait, alternatives)
    except CursorError as exc:
        raise with_problems(400, "bad cursor", [str(exc)]) from None


@router.get(
    "/results/stream",
    summary="Your results as they arrive: NDJSON, one {result} per line and a {next} cursor "
    "line after each batch (also every 25 s)",
    response_class=StreamingResponse,
)
def api_results_stream(
    scope: ClientScope = Depends(client_scope),
    since: str | None = SINCE_QUERY,
    seconds: float = Query(300, ge=1, le=3600, description="end the stream after this long"),
    alternatives: bool = ALTERNATIVES_QUERY,
    state: PortalState = Depends(portal_state),
) -> StreamingResponse:
    try:
        first = scope.results_page(since, 500, 0, alternatives)
    except CursorError as exc:
        raise with_problems(400, "bad cursor", [str(exc)]) from None
    deadline = time.monotonic() + min(seconds, state.settings.results_stream_cap_s)

    def lines() -> Iterator[bytes]:
        page = first
        while True:
            for result in page["results"]:
                yield json.dumps({"result": result}, separators=(",", ":")).encode() + b"\n"
            yield json.dumps({"next": page["next"]}).encode() + b"\n"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            wait = 0 if page["more"] else min(remaining, 25)
            page = scope.results_page(page["next"], 500, wait, alternatives)

    return StreamingResponse(lines(), media_type="application/x-ndjson")
