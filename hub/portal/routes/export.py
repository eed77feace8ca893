"""A task's runs in a time range as CSV or JSON lines, streamed a batch of rows at a time.

A quorum run (issue 18) is exported as its canonical result in the usual columns, plus its
validation (JSON lines: ``validation``, as stored; CSV: ``validation``, ``canonical``,
``why``, ``agree``, ``disagree``, ``spot_check``) and, with ``?alternatives=1``, every
worker's result (``alternatives``: a list of RunResults, in CSV as compact JSON). A
quorum-1 task's export is unchanged: CSV gains the quorum columns only for a task whose
``quorum`` is over 1 or when alternatives are asked for; a JSON line gains ``validation``
only for a run that has one."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse

from hub.portal.auth import ClientScope, client_scope
from hub.portal.routes.api import parse_time
from hub.protocol.model import Task
from hub.protocol.timefmt import to_wire

EXPORT_COLUMNS = (
    "occurrence", "due_at", "state", "status", "attempt", "worker", "started_at", "finished_at",
    "duration_ms", "latency_ms", "error", "output",
)  # fmt: skip

QUORUM_COLUMNS = ("validation", "canonical", "why", "agree", "disagree", "spot_check")

router = APIRouter(prefix="/api", dependencies=[Depends(client_scope)])
ALTERNATIVES_QUERY = Query(
    False, description="quorum runs: add every worker's result (alternatives) to each run"
)


def export(
    scope: ClientScope,
    task: Task,
    since: str | None,
    until: str | None,
    fmt: str,
    alternatives: bool = False,
) -> StreamingResponse:
    lo = parse_time(since, "since") or "1970-01-01T00:00:00.000Z"
    hi = parse_time(until, "until") or to_wire(scope.now() + timedelta(days=1))
    rows = scope.data.merged(task, lo, hi, descending=False)
    stamp = datetime.now().strftime("%Y%m%d")
    filename = f"{task.client}-{task.slug}-{stamp}.{fmt}"
    media = "text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson"
    if fmt == "csv":
        # Read off the task, not the rows: CSV's header comes before the first row.
        quorum = getattr(task, "quorum", 1) or 1
        body = csv_lines(rows, quorum=quorum > 1 or alternatives, alternatives=alternatives)
    else:
        body = json_lines(rows, alternatives=alternatives)
    return StreamingResponse(
        body, media_type=media,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )  # fmt: skip


@router.get(
    "/tasks/{name}/results.csv",
    summary="Every run in a time range as CSV (streamed)",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}}},
)
def api_csv(
    name: str,
    scope: ClientScope = Depends(client_scope),
    since: str | None = Query(None, max_length=40),
    until: str | None = Query(None, max_length=40),
    alternatives: bool = ALTERNATIVES_QUERY,
) -> StreamingResponse:
    return export(scope, scope.task(name), since, until, "csv", alternatives)


@router.get(
    "/tasks/{name}/results.jsonl",
    summary="Every run in a time range as JSON lines (streamed)",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}}}},
)
def api_jsonl(
    name: str,
    scope: ClientScope = Depends(client_scope),
    since: str | None = Query(None, max_length=40),
    until: str | None = Query(None, max_length=40),
    alternatives: bool = ALTERNATIVES_QUERY,
) -> StreamingResponse:
    return export(scope, scope.task(name), since, until, "jsonl", alternatives)


def _export_record(row: dict[str, Any], alternatives: bool = False) -> dict[str, Any]:
    record = {column: row["id" if column == "occurrence" else column] for column in EXPORT_COLUMNS}
    quorum = row.get("quorum")
    if quorum is not None:
        if quorum.get("validation") is not None:
            record["validation"] = quorum["validation"]
        if alternatives:
            record["alternatives"] = [
                slot_result(slot) for slot in quorum.get("slots") or [] if slot.get("status")
            ]
    return record


def slot_result(slot: dict[str, Any]) -> dict[str, Any]:
    """A slot of a quorum view (hub/portal/quorum.py) back as the RunResult it holds (as
    stored: a field without a value is left out)."""
    fields = ("status", "worker", "attempt", "started_at", "finished_at", "output", "error")
    return {name: slot[name] for name in fields if slot.get(name) is not None}


def _quorum_cells(record: dict[str, Any]) -> dict[str, Any]:
    validation = record.get("validation") or {}
    return {
        "validation": validation.get("outcome"),
        "canonical": validation.get("canonical"),
        "why": validation.get("why"),
        "agree": " ".join(validation.get("agree") or []) or None,
        "disagree": " ".join(validation.get("disagree") or []) or None,
        "spot_check": None if not validation else bool(validation.get("spot_check")),
    }


def csv_lines(
    rows: Iterator[dict[str, Any]],
    batch: int = 200,
    *,
    quorum: bool = False,
    alternatives: bool = False,
) -> Iterator[str]:
    """CSV text, a batch of rows at a time (output as compact JSON in its column); with
    ``quorum``, the validation's columns; with ``alternatives``, every worker's result."""
    columns = EXPORT_COLUMNS + (QUORUM_COLUMNS if quorum else ())
    columns += ("alternatives",) if alternatives else ()
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    for count, row in enumerate(rows, 1):
        record = _export_record(row, alternatives)
        if quorum:
            record |= _quorum_cells(record)
        for name in ("output", "alternatives"):
            value = record.get(name)
            record[name] = "" if value is None else json.dumps(value, separators=(",", ":"))
        writer.writerow(["" if record[c] is None else _csv_safe(record[c]) for c in columns])
        if count % batch == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def _csv_safe(value: Any) -> Any:
    """Defuse spreadsheet formulas in text cells (CSV injection)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def json_lines(
    rows: Iterator[dict[str, Any]], batch: int = 200, *, alternatives: bool = False
) -> Iterator[str]:
    chunk: list[str] = []
    for row in rows:
        chunk.append(json.dumps(_export_record(row, alternatives), separators=(",", ":")))
        if len(chunk) == batch:
            yield "\n".join(chunk) + "\n"
            chunk = []
    if chunk:
        yield "\n".join(chunk) + "\n"
