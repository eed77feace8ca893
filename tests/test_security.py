"""Role matrix against the real server: who may write what, and why a refusal happens.

Each case is data: who acts, how the document is tampered with, and the words the
refusal must carry. The documents are made by the real state machine first, then
tampered with, so a case fails only for the reason it names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from hub.protocol import states
from hub.protocol.couch import CouchError, Forbidden, Unauthorized
from hub.protocol.model import Occurrence, Task, task_id
from hub.protocol.names import results_db
from hub.protocol.timefmt import to_wire

Doc = dict[str, Any]


def _as_model(doc: Doc) -> Occurrence:
    return Occurrence.from_doc(doc)


def _with(doc: Doc, **changes: Any) -> Doc:
    return {**doc, **changes}


def _claim_by(worker: str) -> Callable[[dict[str, Doc], Any], Doc]:
    def build(world: dict[str, Doc], now: Any) -> Doc:
        claimed = states.claim(_as_model(world["ready"]), worker, now).to_doc()
        return claimed

    return build


def _other_second(occ_id: str) -> str:
    """A second of the same minute that is not ``occ_id``'s: a new occurrence's id, never
    the existing one (that would be a 409 before validate_doc_update is asked)."""
    return "58" if occ_id.endswith("59Z") else "59"


@dataclass(frozen=True)
class Case:
    name: str
    actor: str  # "w1", "hub" or "anonymous"
    build: Callable[[dict[str, Doc], Any], Doc]
    reason: str  # words the refusal must contain
    db: str = "live"
    # CouchDB's own security layer refuses some writes before validate_doc_update runs,
    # with 401 rather than 403 (design documents by non-admins).
    statuses: tuple[int, ...] = (403,)


def _touch_w2_as_w1(world: dict[str, Doc], now: Any) -> Doc:
    doc = world["leased_w2"]
    lease = {**doc["lease"], "expires_at": to_wire(now + timedelta(seconds=50))}
    return _with(doc, lease=lease)


def _finish_w2(world: dict[str, Doc], now: Any) -> Doc:
    doc = world["leased_w2"]
    result = {
        "status": "ok",
        "worker": "w1",
        "attempt": 1,
        "started_at": to_wire(now),
        "finished_at": to_wire(now),
        "output": {},
    }
    return _with(doc, state="done", lease=None, result=result)


def _own_leased(world: dict[str, Doc], **changes: Any) -> Doc:
    return _with(world["leased_w1"], **changes)


ROLE_MATRIX = [
    Case(
        "worker creates a task",
        "w1",
        lambda w, now: _with(w["task"], _id="task:acme:evil", slug="evil", _rev=None),
        "only farm_admin",
    ),
    Case(
        "worker edits a task", "w1", lambda w, now: _with(w["task"], paused=True), "only farm_admin"
    ),
    Case("worker extends another worker's lease", "w1", _touch_w2_as_w1, "leased by w2"),
    Case(
        "worker takes over another worker's lease",
        "w1",
        lambda w, now: _with(w["leased_w2"], lease={**w["leased_w2"]["lease"], "worker": "w1"}),
        "leased by w2",
    ),
    Case("worker finishes an occurrence it does not hold", "w1", _finish_w2, "leased by w2"),
    Case(
        "worker finishes a ready occurrence without claiming",
        "w1",
        lambda w, now: _with(
            _finish_w2(w, now),
            _id=w["ready"]["_id"],
            _rev=w["ready"]["_rev"],
            due_at=w["ready"]["due_at"],
            queue_at=w["ready"]["queue_at"],
            not_before=w["ready"]["not_before"],
            attempt=0,
        ),
        "only claim",
    ),
    Case(
        "worker changes an occurrence's client",
        "w1",
        lambda w, now: _own_leased(w, client="globex"),
        "client",
    ),
    Case(
        "worker changes an occurrence's task",
        "w1",
        lambda w, now: _own_leased(w, task="task:acme:other"),
        "_id must be",
    ),
    Case(
        "worker changes an occurrence's due time",
        "w1",
        lambda w, now: _own_leased(w, due_at=to_wire(now)),
        "_id must be",
    ),
    Case(
        "worker changes an occurrence's input",
        "w1",
        lambda w, now: _own_leased(w, input={"url": "http://10.0.0.1/"}),
        "cannot change occurrence.input",
    ),
    Case(
        "worker raises an occurrence's priority",
        "w1",
        lambda w, now: _own_leased(w, priority=0),
        "cannot change occurrence.priority",
    ),
    Case(
        "worker claims in another worker's name",
        "w1",
        _claim_by("w2"),
        "must name the claiming worker",
    ),
    Case(
        "worker claims without counting the attempt",
        "w1",
        lambda w, now: _with(_claim_by("w1")(w, now), attempt=0),
        "one more attempt",
    ),
    Case(
        "worker creates an occurrence",
        "w1",
        lambda w, now: _with(
            w["ready"],
            _id=w["ready"]["_id"][:-3] + _other_second(w["ready"]["_id"]) + "Z",
            _rev=None,
            due_at=w["ready"]["due_at"][:17] + _other_second(w["ready"]["_id"]) + ".000Z",
        ),
        "workers cannot create occurrences",
    ),
    Case(
        "worker writes a design document",
        "w1",
        lambda w, now: {"_id": "_design/evil", "views": {}},
        "",
        statuses=(401, 403),
    ),
    Case(
        "worker writes another worker's doc",
        "w1",
        lambda w, now: {
            "_id": "worker:w2",
            "type": "worker",
            "name": "w2",
            "version": "0",
            "os": "x",
            "last_seen": to_wire(now),
            "started_at": to_wire(now),
            "tubes": ["default"],
            "current": [],
            "slots": 1,
        },
        "may write only worker:w1",
    ),
    Case(
        "worker deletes an occurrence",
        "w1",
        lambda w, now: {"_id": w["ready"]["_id"], "_rev": w["ready"]["_rev"], "_deleted": True},
        "may delete only its own worker document",
    ),
    Case(
        "worker deletes a task",
        "w1",
        lambda w, now: {"_id": w["task"]["_id"], "_rev": w["task"]["_rev"], "_deleted": True},
        "may delete only its own worker document",
    ),
    Case(
        "worker reopens a done occurrence",
        "w1",
        lambda w, now: _with(w["done"], state="ready", result=None),
        "ready occurrences or on ones it holds",
    ),
    Case(
        "hub moves a done occurrence back to ready",
        "hub",
        lambda w, now: _with(w["done"], state="ready", result=None),
        "final state never changes",
    ),
    Case(
        "worker writes an unknown kind of document",
        "w1",
        lambda w, now: {"_id": "note:1", "type": "note"},
        "unknown document id",
    ),
    Case(
        "worker writes a result into a results database",
        "w1",
        lambda w, now: {
            "_id": "res:" + w["done"]["_id"],
            "type": "result",
            "occurrence": w["done"]["_id"],
            "client": "acme",
        },
        "hub archiver",
        db="results",
    ),
    Case(
        "anonymous user writes an occurrence",
        "anonymous",
        lambda w, now: _own_leased(w, state="ready", lease=None),
        "",
        statuses=(401,),
    ),
]


def _client(farm, actor: str):
    if actor == "anonymous":
        return farm.anonymous()
    if actor == "hub":
        return farm.hub
    return farm.worker(actor, retries=0)


@pytest.mark.parametrize("case", ROLE_MATRIX, ids=[c.name for c in ROLE_MATRIX])
def test_refused_with_reason(farm, world, case: Case):
    doc = {k: v for k, v in case.build(world, farm.now()).items() if v is not None}
    db = farm.db if case.db == "live" else results_db(farm.db, farm.now())
    with pytest.raises(CouchError) as refusal:
        _client(farm, case.actor).put(db, doc)
    assert refusal.value.status in case.statuses, refusal.value
    assert refusal.value.reason.strip(), "a refusal must say why"
    assert case.reason in refusal.value.reason, refusal.value.reason
    # Nothing changed: the stored documents are still the ones the world fixture wrote.
    for key, stored in world.items():
        assert farm.admin.get(farm.db, stored["_id"])["_rev"] == stored["_rev"], key


def test_worker_lifecycle_is_allowed(farm, world):
    """The same server accepts the legitimate path: claim, touch, finish; own worker doc."""
    w1 = farm.worker("w1")
    now = farm.now()
    occ = _as_model(world["ready"])
    claimed = states.claim(occ, "w1", now)
    rev = w1.put(farm.db, claimed.to_doc())
    touched = states.touch(
        claimed.model_copy(update={"rev": rev}),
        "w1",
        now,
        states.Progress(num=1, den=2, msg="half"),
    )
    rev = w1.put(farm.db, touched.to_doc())
    done = states.finish(
        touched.model_copy(update={"rev": rev}), "w1", now, started_at=now, output={"status": 200}
    )
    w1.put(farm.db, done.to_doc())
    assert farm.admin.get(farm.db, occ.id)["state"] == "done"
    me = {
        "_id": "worker:w1",
        "type": "worker",
        "name": "w1",
        "version": "0.1.0",
        "os": "linux",
        "last_seen": to_wire(now),
        "started_at": to_wire(now),
        "tubes": ["default"],
        "current": [],
        "slots": 1,
    }
    rev = w1.put(farm.db, me)
    w1.delete(farm.db, "worker:w1", rev)


def test_worker_fail_and_release_are_allowed(farm):
    now = farm.now().replace(microsecond=0)
    stamp = to_wire(now)
    task = Task(
        _id=task_id("acme", "flaky"),
        client="acme",
        slug="flaky",
        kind="demo.sleep",
        schedule={"every": 60},
        max_attempts=2,
        created_at=stamp,
        updated_at=stamp,
    )
    w2 = farm.worker("w2")
    occ = states.materialize(task, now, now)
    farm.hub.put(farm.db, occ.to_doc())
    current = _as_model(farm.hub.get(farm.db, occ.id))
    for step in (
        lambda o: states.claim(o, "w2", now),
        lambda o: states.release(o, "w2", now),
        lambda o: states.claim(o, "w2", now),
        lambda o: states.fail(o, "w2", now, error="boom"),
    ):
        nxt = step(current)
        rev = w2.put(farm.db, nxt.to_doc())
        current = nxt.model_copy(update={"rev": rev})
    assert farm.admin.get(farm.db, occ.id)["state"] == "scheduled"


@pytest.mark.parametrize(
    "path", ["", "/_all_docs", "/_changes", "/_design/claim/_view/ready", "/task:acme:ping"]
)
def test_anonymous_reads_get_401(farm, world, path):
    with pytest.raises(Unauthorized):
        farm.anonymous().request("GET", f"/{farm.db}{path}")


def test_clients_have_no_database_access(farm, world):
    acme = farm.server.as_user("acme", farm.passwords["acme"], retries=0)
    assert "client:acme" in acme.session()["userCtx"]["roles"]
    with pytest.raises((Unauthorized, Forbidden)):
        acme.get(farm.db, world["task"]["_id"])


def test_a_worker_cannot_claim_an_occurrence_before_its_not_before(farm, world):
    """Occurrences materialized ahead are ready before they are due: the server holds the
    claim to not_before, whatever the worker's own checks say."""
    now = farm.now().replace(microsecond=0)
    task = Task.from_doc(world["task"])
    early = states.materialize(task, now + timedelta(seconds=90), now)  # due in 90 s
    rev = farm.hub.put(farm.db, early.to_doc())
    doc = early.to_doc() | {
        "_rev": rev,
        "state": "leased",
        "attempt": 1,
        "lease": {"worker": "w1", "claimed_at": to_wire(now),
                  "expires_at": to_wire(now + timedelta(seconds=early.ttr))},
    }  # fmt: skip
    with pytest.raises(Forbidden) as refused:
        farm.worker("w1").put(farm.db, doc)
    assert "may not start before" in refused.value.reason
