"""Hostile writes by a volunteer worker (and others), against the real server.

Written as data: each case names who acts, what they send, and how it must end:
refused with a reason, or made harmless (and why). ``ROLE_MATRIX`` from
test_security.py is part of the suite; the cases here add the rest of issue 10's list.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
import requests

from hub.protocol import states
from hub.protocol.couch import CouchError
from hub.protocol.model import Occurrence
from hub.protocol.timefmt import to_wire
from tests.test_security import ROLE_MATRIX, Case, _client

Doc = dict[str, Any]


def _own(w: dict[str, Doc], **changes: Any) -> Doc:
    return {**w["leased_w1"], **changes}


def _finish_own(w: dict[str, Doc], now, **result_changes: Any) -> Doc:
    occ = Occurrence.from_doc(w["leased_w1"])
    done = states.finish(occ, "w1", now, started_at=now, output={"ok": True}).to_doc()
    done["result"] = {**done["result"], **result_changes}
    return done


def _fail_own(w: dict[str, Doc], now, **changes: Any) -> Doc:
    occ = Occurrence.from_doc(w["leased_w1"])
    failed = states.fail(occ, "w1", now, error="boom").to_doc()
    return {**failed, **changes}


def _nested(depth: int) -> Any:
    value: Any = "deep"
    for _ in range(depth):
        value = {"d": value}
    return value


MORE = [
    Case(
        "worker claims a scheduled (not ready) occurrence",
        "w1",
        lambda w, now: {
            **states.claim(Occurrence.from_doc(w["ready"]), "w1", now).to_doc(),
            "_id": w["scheduled"]["_id"],
            "_rev": w["scheduled"]["_rev"],
            "due_at": w["scheduled"]["due_at"],
            "queue_at": w["scheduled"]["queue_at"],
            "not_before": w["scheduled"]["not_before"],
            "created_at": w["scheduled"]["created_at"],
        },
        "ready occurrences or on ones it holds",
    ),
    Case(
        "worker claims with a lease a year long",
        "w1",
        lambda w, now: {
            **states.claim(Occurrence.from_doc(w["ready"]), "w1", now).to_doc(),
            "lease": {
                "worker": "w1",
                "claimed_at": to_wire(now),
                "expires_at": to_wire(now + timedelta(days=365)),
            },
        },
        "at most one ttr",
    ),
    Case(
        "worker writes a time far from hub time",
        "w1",
        lambda w, now: _own(w, updated_at=to_wire(now + timedelta(hours=6))),
        "hub time",
    ),
    Case(
        "worker claims beyond max_attempts",
        "w1",
        lambda w, now: {
            **states.claim(Occurrence.from_doc(w["ready"]), "w1", now).to_doc(),
            "attempt": 4,
        },
        "past max_attempts",
    ),
    Case(
        "worker finishes with another worker's name on the result",
        "w1",
        lambda w, now: _finish_own(w, now, worker="w2"),
        "result.worker must be w1",
    ),
    Case(
        "worker finishes with a wrong attempt number",
        "w1",
        lambda w, now: _finish_own(w, now, attempt=3),
        "result.attempt must be",
    ),
    Case(
        "worker marks done without a result",
        "w1",
        lambda w, now: {**_finish_own(w, now), "result": None},
        "result is present exactly",
    ),
    Case(
        "worker fails in another worker's name",
        "w1",
        lambda w, now: _fail_own(
            w, now, errors=[{"attempt": 1, "at": to_wire(now), "worker": "w2", "error": "x"}]
        ),
        "must name worker w1",
    ),
    Case(
        "worker erases the error history while failing",
        "w1",
        lambda w, now: {**_fail_own(w, now), "errors": []},
        "appends exactly one",
    ),
    Case(
        "worker releases without giving the attempt back",
        "w1",
        lambda w, now: {
            **states.release(Occurrence.from_doc(w["leased_w1"]), "w1", now).to_doc(),
            "attempt": 1,
        },
        "gives the attempt back",
    ),
    Case(
        "worker cancels its own occurrence",
        "w1",
        lambda w, now: _own(w, state="cancelled", lease=None),
        "from leased to cancelled",
    ),
    Case(
        "worker marks its occurrence missed",
        "w1",
        lambda w, now: _own(w, state="missed", lease=None),
        "from leased to missed",
    ),
    Case(
        "worker buries with attempts left",
        "w1",
        lambda w, now: {**_fail_own(w, now), "state": "buried"},
        "only after the last attempt",
    ),
    Case(
        "worker changes an occurrence's tube",
        "w1",
        lambda w, now: _own(w, tube="windows"),
        "cannot change occurrence.tube",
    ),
    Case(
        "worker stretches its ttr",
        "w1",
        lambda w, now: _own(w, ttr=86400),
        "cannot change occurrence.ttr",
    ),
    Case(
        "worker jumps the queue",
        "w1",
        lambda w, now: {
            **states.claim(Occurrence.from_doc(w["ready"]), "w1", now).to_doc(),
            "queue_at": "2000-01-01T00:00:00.000Z",
        },
        "cannot change occurrence.queue_at",
    ),
    Case(
        "worker turns an occurrence into a task",
        "w1",
        lambda w, now: _own(w, type="task"),
        'must have type "occurrence"',
    ),
    Case(
        "worker sets leased state without a lease",
        "w1",
        lambda w, now: _own(w, lease=None),
        "lease is present exactly",
    ),
    Case(
        "worker writes a 300 KB result",
        "w1",
        lambda w, now: {
            **_finish_own(w, now),
            "result": {**_finish_own(w, now)["result"], "output": "x" * 300_000},
        },
        "the limit is",
    ),
    Case(
        "worker writes deeply nested output",
        "w1",
        lambda w, now: {
            **_finish_own(w, now),
            "result": {**_finish_own(w, now)["result"], "output": _nested(40)},
        },
        "nested deeper",
    ),
    Case(
        "worker deletes an occurrence by putting _deleted with a body",
        "w1",
        lambda w, now: _own(w, _deleted=True),
        "may delete only its own worker document",
    ),
    Case(
        "worker registers with 1,000 tubes",
        "w1",
        lambda w, now: {
            "_id": "worker:w1",
            "type": "worker",
            "name": "w1",
            "version": "0",
            "os": "x",
            "last_seen": to_wire(now),
            "started_at": to_wire(now),
            "tubes": [f"t{n}" for n in range(1000)],
            "current": [],
            "slots": 1,
        },
        "at most 50",
    ),
    Case(
        "hub writes a malformed occurrence",
        "hub",
        lambda w, now: {**w["ready"], "state": "bogus"},
        "occurrence.state must be one of",
    ),
    Case(
        "hub writes a task with a bad client name",
        "hub",
        lambda w, now: {**w["task"], "_id": "task:Bad Name:x", "client": "Bad Name", "_rev": None},
        "task.client is not a valid name",
    ),
    Case(
        "client account writes an occurrence",
        "acme",
        lambda w, now: _own(w, state="ready", lease=None),
        "",
        statuses=(401, 403),
    ),
]

ATTACKS = [*ROLE_MATRIX, *MORE]


@pytest.fixture(scope="module")
def hostile_world(farm, world):
    """The role matrix's world plus a scheduled occurrence."""
    now = farm.now().replace(microsecond=0)
    occ = Occurrence.from_doc(world["ready"])
    task = farm.hub.get(farm.db, occ.task)
    from hub.protocol.model import Task

    scheduled = states.materialize(
        Task.from_doc(task), now + timedelta(minutes=9), now, state=states.State.SCHEDULED,
        not_before=now + timedelta(minutes=30),
    )  # fmt: skip
    farm.hub.put(farm.db, scheduled.to_doc())
    return {**world, "scheduled": farm.hub.get(farm.db, scheduled.id)}


def _actor(farm, name: str):
    if name == "acme":
        return farm.server.as_user("acme", farm.passwords["acme"], retries=0)
    return _client(farm, name)


@pytest.mark.parametrize("case", MORE, ids=[c.name for c in MORE])
def test_hostile_write_is_refused_with_reason(farm, hostile_world, case: Case):
    doc = {k: v for k, v in case.build(hostile_world, farm.now()).items() if v is not None}
    with pytest.raises(CouchError) as refusal:
        _actor(farm, case.actor).put(farm.db, doc)
    assert refusal.value.status in case.statuses, refusal.value
    assert refusal.value.reason.strip()
    assert case.reason in refusal.value.reason, refusal.value.reason
    for key, stored in hostile_world.items():
        assert farm.admin.get(farm.db, stored["_id"])["_rev"] == stored["_rev"], key


def test_the_suite_has_at_least_forty_cases():
    assert len(ATTACKS) >= 40


# ---------------------------------------------------------------- raw HTTP attacks


def _raw(farm, name: str) -> tuple[str, tuple[str, str]]:
    return farm.server.url, (name, farm.passwords[name])


def test_ten_megabyte_document_is_refused(farm, hostile_world):
    url, auth = _raw(farm, "w1")
    body = json.dumps({**hostile_world["leased_w1"], "junk": "x" * 10_000_000})
    reply = requests.put(
        f"{url}/{farm.db}/{hostile_world['leased_w1']['_id']}",
        data=body,
        auth=auth,
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert reply.status_code in (403, 413), reply.text[:200]
    assert (
        farm.admin.get(farm.db, hostile_world["leased_w1"]["_id"])["_rev"]
        == hostile_world["leased_w1"]["_rev"]
    )


def test_non_utf8_body_is_refused(farm, hostile_world):
    url, auth = _raw(farm, "w1")
    reply = requests.put(
        f"{url}/{farm.db}/occ:junk",
        data=b'{"_id": "occ:junk", "x": "\xff\xfe"}',
        auth=auth,
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert 400 <= reply.status_code < 500, reply.text[:200]
    assert farm.admin.get_or_none(farm.db, "occ:junk") is None


def test_new_edits_false_cannot_forge_a_finished_history(farm, hostile_world):
    """A worker posts a fabricated 'done' revision with made-up ancestry. Refused (or, on
    PouchDB Server, silently not stored); either way the stored document is unchanged."""
    target = hostile_world["ready"]
    forged = {
        **_finish_own(
            {"leased_w1": {**states.claim(Occurrence.from_doc(target), "w1", farm.now()).to_doc()}},
            farm.now(),
        ),
        "_rev": "9-" + "f" * 32,
        "_revisions": {"start": 9, "ids": ["f" * 32] + [f"{n:032x}" for n in range(8)]},
    }
    w1 = farm.worker("w1", retries=0)
    try:
        rows = w1.request(
            "POST", f"/{farm.db}/_bulk_docs", body={"docs": [forged], "new_edits": False}
        ).body
    except CouchError as refused:
        assert refused.status in (400, 401, 403)
    else:
        assert not rows or all(row.get("error") for row in rows), rows
    stored = farm.admin.get(farm.db, target["_id"], conflicts="true")
    assert stored["_rev"] == target["_rev"] and stored["state"] == "ready"
    assert not stored.get("_conflicts")


def test_worker_cannot_grant_itself_a_role(farm):
    w1 = farm.worker("w1", retries=0)
    try:
        me = w1.get("_users", "org.couchdb.user:w1")
    except CouchError as hidden:
        # CouchDB 3 keeps _users admin-only: a user cannot even read its own doc. The
        # attacker may still know the current revision; the write must fail all the same.
        assert hidden.status == 403
        me = {k: v for k, v in farm.admin.get("_users", "org.couchdb.user:w1").items()
              if k in ("_id", "_rev", "name", "type", "roles")}  # fmt: skip
    with pytest.raises(CouchError) as refused:
        w1.put("_users", {**me, "roles": ["farm_worker", "farm_admin", "_admin"]})
    assert refused.value.status in (401, 403)
    assert farm.admin.get("_users", "org.couchdb.user:w1")["roles"] == ["farm_worker"]


def test_worker_cannot_rewrite_security_or_design(farm):
    w1 = farm.worker("w1", retries=0)
    before = farm.admin.get_security(farm.db)
    with pytest.raises(CouchError) as refused:
        w1.put_security(farm.db, {"members": {"names": ["w1"], "roles": []}})
    # CouchDB 3.5 answers a member's PUT _security with 500 no_majority (every shard
    # refused it); PouchDB with 401/403. What counts is what is stored.
    assert refused.value.status in (401, 403, 500)
    assert farm.admin.get_security(farm.db) == before
    ddoc = farm.admin.get(farm.db, "_design/farm")
    with pytest.raises(CouchError):
        w1.put(farm.db, {**ddoc, "validate_doc_update": "function(){}"})
    assert "farm_worker" in farm.admin.get_security(farm.db)["members"]["roles"]


def test_mixed_bulk_write_applies_only_the_legitimate_row(farm, hostile_world):
    now = farm.now()
    legit = states.claim(Occurrence.from_doc(hostile_world["ready"]), "w2", now).to_doc()
    hostile = {**hostile_world["leased_w1"], "client": "globex"}
    rows = farm.worker("w2").bulk_docs(farm.db, [legit, hostile])
    assert "rev" in rows[0]
    assert rows[1].get("error") == "forbidden"
