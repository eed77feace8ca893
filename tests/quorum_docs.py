"""Quorum runs (issue 18) written straight into the test server, in the document shape the
brief fixes, for the portal's tests and screenshots: the portal reads these fields as
plain dicts, so the tests hold before and after the model classes for them land.

Occurrences and results are written by the server admin (``farm.admin``), past the
``validate_doc_update`` functions: what is tested here is what the portal shows of such
documents, not who may write them (the quorum core's tests own that).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from hub import provision
from hub.protocol import states
from hub.protocol.model import Task
from hub.protocol.names import results_db
from hub.protocol.timefmt import to_wire
from hub.service import build_task

CHECK = {"kind": "http.check", "input": {"url": "https://example.org/"}, "schedule": {"every": 300}}
WHY_CANONICAL = "2 of 3 results agree (http.check: same status class, latency within 500 ms)"
WHY_INCONCLUSIVE = "the 2 results disagree (http.check: status class 2xx against 5xx)"
QUORUM_TASK_FIELDS = {"quorum": 3, "quorum_timeout": None, "quorum_on_timeout": "decide",
                      "adaptive": True, "spot_check_rate": 0.1}  # fmt: skip


def model_has_quorum() -> bool:
    """Whether hub.protocol.model's Task knows the quorum fields yet (the quorum core is
    built in parallel): a task doc may carry them only then (Task forbids extra fields)."""
    return "quorum" in Task.model_fields


def run_result(
    worker: str, due: datetime, *, start_s: float, took_ms: int, output: Any,
    status: str = "ok", error: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    started = due + timedelta(seconds=start_s)
    result = {
        "status": status, "worker": worker, "attempt": 1, "started_at": to_wire(started),
        "finished_at": to_wire(started + timedelta(milliseconds=took_ms)), "output": output,
    }  # fmt: skip
    if error is not None:
        result["error"] = error
    return result


def http(status: int, elapsed_ms: int) -> dict[str, Any]:
    return {"status": status, "elapsed_ms": elapsed_ms, "bytes": 1256 if status < 400 else 0}


def slot(result: dict[str, Any] | None, worker: str, due: datetime, state: str = "done") -> dict:
    claimed = due + timedelta(milliseconds=200)
    out: dict[str, Any] = {
        "worker": worker, "claimed_at": to_wire(claimed),
        "expires_at": to_wire(claimed + timedelta(seconds=60)), "state": state,
    }  # fmt: skip
    if result is not None:
        out["result"] = result
    return out


def validation(
    outcome: str, canonical: str | None, agree: list[str], disagree: list[str], why: str,
    decided: datetime, spot_check: bool = False,
) -> dict[str, Any]:  # fmt: skip
    return {
        "outcome": outcome, "canonical": canonical, "agree": agree, "disagree": disagree,
        "why": why, "decided_at": to_wire(decided), "spot_check": spot_check,
    }  # fmt: skip


def result_doc(occ: dict[str, Any], final: dict[str, Any] | None, **extra: Any) -> dict:
    """An archived ``res:{occ}`` as the archiver writes it, with the quorum fields."""
    due = occ["due_at"]
    doc = {
        "_id": f"res:{occ['_id']}", "type": "result", "occurrence": occ["_id"],
        "task": occ["task"], "client": occ["client"], "kind": occ["kind"], "due_at": due,
        "state": "done", "attempt": 1, "errors": [], "status": "ok",
    }  # fmt: skip
    if final is not None:
        doc.update(
            worker=final["worker"], started_at=final["started_at"],
            finished_at=final["finished_at"], status=final["status"], output=final["output"],
        )  # fmt: skip
        doc["duration_ms"] = ms_between(final["started_at"], final["finished_at"])
        doc["latency_ms"] = ms_between(due, final["started_at"])
    doc.update(extra)
    return doc


def ms_between(a: str, b: str) -> int:
    from hub.protocol.timefmt import from_wire

    return int((from_wire(b) - from_wire(a)).total_seconds() * 1000)


def seed_quorum_task(farm, client: str, slug: str, now: datetime) -> dict[str, Any]:
    """A quorum-3 http.check task with: a live canonical run (3 results, w3 lying), a live
    run still collecting (1 of 3 in), an archived inconclusive run (2 results that
    disagree), an archived spot-checked canonical run, an archived run accepted alone, and
    an archived quorum-1 run from before the task asked for a quorum. Returns the ids."""
    task = build_task(client, slug, CHECK, now - timedelta(days=1))
    if model_has_quorum():  # set on the document: what a client may ask for is not tested here
        task = Task.from_doc({**task.to_doc(), **QUORUM_TASK_FIELDS})
    farm.hub.put(farm.db, task.to_doc())

    def occurrence(minutes: float) -> dict[str, Any]:
        due = now - timedelta(minutes=minutes)
        return states.materialize(task, due, due).to_doc()

    ids: dict[str, Any] = {"task": task}

    # --- live: decided, canonical w1; w2 agrees; w3 lies (a 503 nobody else saw)
    canon = occurrence(2)
    due = task_due(canon)
    r1 = run_result("w1", due, start_s=1.0, took_ms=143, output=http(200, 143))
    r2 = run_result("w2", due, start_s=1.2, took_ms=171, output=http(200, 171))
    r3 = run_result("w3", due, start_s=0.9, took_ms=12, output=http(503, 12))
    canon.update(
        state="done", attempt=1, result=r1, quorum=3,
        slots={"w1": slot(r1, "w1", due), "w2": slot(r2, "w2", due), "w3": slot(r3, "w3", due)},
        validation=validation("canonical", "w1", ["w1", "w2"], ["w3"], WHY_CANONICAL,
                              due + timedelta(seconds=2)),
    )  # fmt: skip
    ids["canonical"] = canon["_id"]

    # --- live: still collecting, 1 of 3 in, w2 running with progress, w4 just claimed
    collecting = occurrence(0.5)
    due = task_due(collecting)
    early = run_result("w1", due, start_s=0.5, took_ms=150, output=http(200, 150))
    w2 = slot(None, "w2", due, "leased")
    w2["progress"] = {"num": 1, "den": 2, "msg": "waiting for the response"}
    collecting.update(  # a quorum run stays ready while workers hold its slots
        state="ready", attempt=1, quorum=3, quorum_deadline=to_wire(due + timedelta(minutes=3)),
        slots={"w1": slot(early, "w1", due), "w2": w2, "w4": slot(None, "w4", due, "leased")},
    )  # fmt: skip
    ids["collecting"] = collecting["_id"]
    for doc in (canon, collecting):
        farm.admin.put(farm.db, doc)

    # --- archived: inconclusive (k = 2 that disagree), a spot check, one accepted alone,
    # and a quorum-1 run
    inconclusive = occurrence(10)
    due = task_due(inconclusive)
    a = run_result("w2", due, start_s=1.1, took_ms=160, output=http(200, 160))
    b = run_result("w3", due, start_s=0.8, took_ms=9, output=http(503, 9))
    res_inconclusive = result_doc(
        inconclusive, None, state="inconclusive", status="inconclusive", alternatives=[a, b],
        validation=validation("inconclusive", None, [], ["w2", "w3"], WHY_INCONCLUSIVE,
                              due + timedelta(seconds=2)),
    )  # fmt: skip
    spot = occurrence(20)
    due = task_due(spot)
    s1 = run_result("w1", due, start_s=1.0, took_ms=140, output=http(200, 140))
    s2 = run_result("w2", due, start_s=1.3, took_ms=180, output=http(204, 180))
    s3 = run_result("w4", due, start_s=1.1, took_ms=155, output=http(200, 155))
    res_spot = result_doc(
        spot, s1, alternatives=[s1, s2, s3],
        validation=validation("canonical", "w1", ["w1", "w2", "w4"], [],
                              "3 of 3 results agree (http.check: same status class, latency "
                              "within 500 ms)", due + timedelta(seconds=2), spot_check=True),
    )  # fmt: skip
    alone = occurrence(30)
    due = task_due(alone)
    solo = run_result("w1", due, start_s=1.0, took_ms=138, output=http(200, 138))
    res_alone = result_doc(
        alone, solo, alternatives=[solo],
        validation=validation("accepted_alone", "w1", ["w1"], [],
                              "w1 is trusted (score 0.97): accepted alone",
                              due + timedelta(seconds=1)),
    )  # fmt: skip
    plain = occurrence(40)
    due = task_due(plain)
    res_plain = result_doc(
        plain, run_result("w2", due, start_s=1.0, took_ms=150, output=http(200, 150))
    )
    ids.update(
        inconclusive=inconclusive["_id"], spot=spot["_id"], alone=alone["_id"],
        plain=plain["_id"],
    )  # fmt: skip
    by_month: dict[str, list[dict[str, Any]]] = {}
    for doc in (res_inconclusive, res_spot, res_alone, res_plain):
        by_month.setdefault(results_db(farm.db, task_due(doc)), []).append(doc)
    for month_db, docs in by_month.items():
        provision.ensure_results_db(farm.admin, month_db)
        rows = farm.admin.bulk_docs(month_db, docs)
        assert all("rev" in row for row in rows), rows
    return ids


def task_due(doc: dict[str, Any]) -> datetime:
    from hub.protocol.timefmt import from_wire

    return from_wire(doc["due_at"])


def seed_reliability(farm, now: datetime) -> None:
    """hub:reliability docs: w3 quarantined, w4 flagged (two disagreements in a row), w1
    and w2 trusted, w5 flagged by its score alone."""

    def doc(worker: str, agree: int, disagree: int, streak: int, quarantined: bool = False):
        return {
            "_id": f"hub:reliability:{worker}", "type": "reliability", "worker": worker,
            "agree": agree, "disagree": disagree, "disagree_streak": streak,
            "score": (agree + 1) / (agree + disagree + 2), "quarantined": quarantined,
            "quarantined_at": to_wire(now - timedelta(minutes=5)) if quarantined else None,
            "updated_at": to_wire(now - timedelta(minutes=1)),
        }  # fmt: skip

    docs = [
        doc("w1", 412, 3, 0), doc("w2", 390, 9, 0), doc("w3", 11, 14, 6, quarantined=True),
        doc("w4", 120, 6, 2), doc("w5", 2, 5, 1),
    ]  # fmt: skip
    rows = farm.admin.bulk_docs(farm.db, docs)
    assert all("rev" in row for row in rows), rows
