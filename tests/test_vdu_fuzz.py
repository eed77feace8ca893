"""Hypothesis fuzzing of validate_doc_update on the real server.

Random sequences of operations by random actors (three workers and the hub), some legal
and some tampered with, are sent to the server. Whatever the server accepts, the stored
occurrence must always be a valid document (hub.protocol.model), must never carry a result
without the lease that produced it, and must never leave a final state.
"""

from __future__ import annotations

import secrets
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub.protocol import states
from hub.protocol.couch import CouchError
from hub.protocol.model import FINAL_STATES, Occurrence, Task, task_id
from hub.protocol.timefmt import to_wire

ACTORS = ("w1", "w2", "w3", "hub")
OPS = ("claim", "touch", "finish", "fail", "release", "expire", "cancel", "kick")
TAMPER = (None, "client", "worker", "attempt", "result_worker", "state")


def _apply(op: str, occ: Occurrence, actor: str, now) -> Occurrence:
    worker = actor if actor != "hub" else "w1"
    if op == "claim":
        return states.claim(occ, worker, now)
    if op == "touch":
        return states.touch(occ, worker, now)
    if op == "finish":
        return states.finish(occ, worker, now, started_at=now, output={"v": 1})
    if op == "fail":
        return states.fail(occ, worker, now, error="boom")
    if op == "release":
        return states.release(occ, worker, now)
    if op == "expire":
        return states.expire(occ, now + timedelta(hours=1))
    if op == "cancel":
        return states.cancel(occ, now, "fuzz")
    return states.kick(occ, now)


def _tamper(doc: dict, how: str | None, actor: str) -> dict:
    if how == "client":
        return {**doc, "client": "globex"}
    if how == "worker" and doc.get("lease"):
        return {**doc, "lease": {**doc["lease"], "worker": "w3" if actor != "w3" else "w2"}}
    if how == "attempt":
        return {**doc, "attempt": doc.get("attempt", 0) + 2}
    if how == "result_worker" and doc.get("result"):
        return {**doc, "result": {**doc["result"], "worker": "w3"}}
    if how == "state":
        return {**doc, "state": "done" if doc["state"] != "done" else "ready"}
    return doc


step = st.tuples(st.sampled_from(ACTORS), st.sampled_from(OPS), st.sampled_from(TAMPER))


# Each example is a dozen writes to the server: an eighth of the profile's budget (25 under
# "ci", 125 under "fuzz"); the seed, deadline and the rest come from the profile too.
@settings(
    max_examples=settings().max_examples // 8,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(step, min_size=3, max_size=10))
def test_random_actors_never_reach_an_invalid_state(farm, steps):
    now = farm.now().replace(microsecond=0)
    stamp = to_wire(now)
    slug = f"fz{secrets.token_hex(4)}"
    task = Task(
        _id=task_id("acme", slug), client="acme", slug=slug, kind="demo.sleep",
        schedule={"every": 60}, max_attempts=3, created_at=stamp, updated_at=stamp,
    )  # fmt: skip
    occ = states.materialize(task, now, now)
    farm.hub.put(farm.db, occ.to_doc())
    actors = {
        name: (farm.hub if name == "hub" else farm.worker(name, retries=0)) for name in ACTORS
    }
    ever_final = None
    for actor, op, tamper in steps:
        current = Occurrence.from_doc(farm.admin.get(farm.db, occ.id))
        try:
            nxt = _apply(op, current, actor, farm.now())
        except states.InvalidTransition:
            nxt = current  # try to push an illegal move anyway, as a hostile client would
        doc = _tamper(nxt.to_doc(), tamper, actor)
        try:
            actors[actor].put(farm.db, doc)
        except CouchError:
            pass
        stored = farm.admin.get(farm.db, occ.id)
        model = Occurrence.from_doc(stored)  # raises if the server accepted a malformed doc
        assert model.client == "acme" and model.task == task.id
        if model.result is not None:
            assert model.result.worker in ("w1", "w2", "w3")
            # The server's rule (a result may be replaced by an earlier run of this
            # occurrence, decision 10): its attempt is one this occurrence had.
            assert 1 <= model.result.attempt <= model.attempt
        if ever_final is not None:
            assert model.state == ever_final, "a final state changed"
        if model.state in FINAL_STATES:
            ever_final = model.state
