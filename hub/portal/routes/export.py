"""A task's runs in a time range as CSV or JSON lines, streamed a batch of rows at a time."""

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

router = APIRouter(prefix="/api", dependencies=[Depends(client_scope)])


def export(
    scope: ClientScope, task: Task, since: str | None, until: str | None, fmt: str
) -> StreamingResponse:
    lo = parse_time(since, "since") or "1970-01-01T00:00:00.000Z"
    hi = parse_time(until, "until") or to_wire(scope.now() + timedelta(days=1))
    rows = scope.data.merged(task, lo, hi, descending=False)
    stamp = datetime.now().strftime("%Y%m%d")
    filename = f"{task.client}-{task.slug}-{stamp}.{fmt}"
    media = "text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson"
    body = csv_lines(rows) if fmt == "csv" else json_lines(rows)
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
) -> StreamingResponse:
    return export(scope, scope.task(name), since, until, "csv")


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
) -> StreamingResponse:
    return export(scope, scope.task(name), since, until, "jsonl")


def _export_record(row: dict[str, Any]) -> dict[str, Any]:
    return {column: row["id" if column == "occurrence" else column] for column in EXPORT_COLUMNS}


def csv_lines(rows: Iterator[dict[str, Any]], batch: int = 200) -> Iterator[str]:
    """CSV text, a batch of rows at a time (output as compact JSON in its column)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(EXPORT_COLUMNS)
    for count, row in enumerate(rows, 1):
        record = _export_record(row)
        output = record["output"]
        record["output"] = "" if output is None else json.dumps(output, separators=(",", ":"))
        writer.writerow(["" if record[c] is None else _csv_safe(record[c]) for c in EXPORT_COLUMNS])
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


def json_lines(rows: Iterator[dict[str, Any]], batch: int = 200) -> Iterator[str]:
    chunk: list[str] = []
    for row in rows:
        chunk.append(json.dumps(_export_record(row), separators=(",", ":")))
        if len(chunk) == batch:
            yield "\n".join(chunk) + "\n"
            chunk = []
    if chunk:
        yield "\n".join(chunk) + "\n"
