"""desktop_worker/slots.py as a unit: how a slot write reads the server's answers.

An in-memory stand-in plays the server: it keeps one document, applies the ``slot`` update
function as the server does (the caller's slot grafted onto the current revision) and
refuses what ``validate_doc_update`` would refuse through the pure rules
(``quorum.apply_own_slot``). The real server's behaviour is covered in
tests/test_quorum_server.py and tests/test_quorum_engine.py.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from desktop_worker import slots
from hub.protocol import quorum
from hub.protocol.couch import Conflict, Forbidden, NotFound
from hub.protocol.model import Occurrence
from hub.protocol.states import InvalidTransition
from tests.test_quorum import at, occurrence


class FakeServer:
    """One occurrence document; ``script`` lists answers to give before applying calls."""

    def __init__(self, doc: dict[str, Any], *, missing: str = "") -> None:
        self.doc = {**doc, "_rev": "1-a"}
        self.missing = missing  # the server's 404 reason when it has no such function
        self.script: list[Exception] = []
        self.calls: list[str] = []
        self.clock = at(2)

    def now(self) -> datetime:
        return self.clock

    def _store(self, doc: dict[str, Any]) -> str:
        generation = int(str(self.doc["_rev"]).split("-")[0]) + 1
        self.doc = {**doc, "_rev": f"{generation}-x"}
        return str(self.doc["_rev"])

    def update(self, db: str, ddoc: str, function: str, doc_id: str, body: dict[str, Any]) -> str:
        self.calls.append("update")
        if self.missing:
            raise NotFound("missing", reason=self.missing)
        if self.script:
            raise self.script.pop(0)
        slot = body["slot"]
        current = Occurrence.from_doc(self.doc)
        mine = Occurrence.from_doc({**self.doc, "slots": {**self.doc["slots"],
                                                          slot["worker"]: slot}})  # fmt: skip
        try:
            applied = quorum.apply_own_slot(current, mine, slot["worker"], self.clock)
        except InvalidTransition as exc:
            raise Forbidden(str(exc), reason=str(exc)) from None
        return self._store({**applied.to_doc(), "updated_at": body["updated_at"]})

    def put(self, db: str, doc: dict[str, Any], **params: Any) -> str:
        self.calls.append("put")
        if doc.get("_rev") != self.doc["_rev"]:
            raise Conflict("conflict", reason="Document update conflict.")
        return self._store(doc)

    def get(self, db: str, doc_id: str, **params: Any) -> dict[str, Any]:
        self.calls.append("get")
        return dict(self.doc)


def _write(server: FakeServer, mine: Occurrence, worker: str) -> tuple[str, Occurrence | None]:
    now: Callable[[], datetime] = server.now
    return slots.write_slot(server, "farm", mine, worker, now)  # type: ignore[arg-type]


def _stored(server: FakeServer) -> Occurrence:
    return Occurrence.from_doc(server.doc)


def test_a_slot_write_after_a_siblings_is_one_request() -> None:
    seen = occurrence()  # all three workers read the same revision
    server = FakeServer(seen.to_doc())
    for worker in ("w1", "w2", "w3"):
        verdict, stored = _write(server, quorum.claim_slot(seen, worker, at(2)), worker)
        assert verdict == "ok" and stored is not None and stored.rev == server.doc["_rev"]
    assert server.calls == ["update"] * 3
    assert sorted(_stored(server).slots or {}) == ["w1", "w2", "w3"]


def test_a_409_is_sent_again_without_a_read() -> None:
    server = FakeServer(occurrence().to_doc())
    server.script = [Conflict("conflict"), Conflict("conflict")]
    verdict, _ = _write(server, quorum.claim_slot(occurrence(), "w1", at(2)), "w1")
    assert verdict == "ok" and server.calls == ["update"] * 3


def test_a_403_is_read_once_a_race_goes_again_a_refusal_is_lost() -> None:
    server = FakeServer(occurrence().to_doc())
    server.script = [Forbidden("raced", reason="may not change the slot of w2")]  # PouchDB
    verdict, _ = _write(server, quorum.claim_slot(occurrence(), "w1", at(2)), "w1")
    assert verdict == "ok" and server.calls == ["update", "get", "update"]
    # A full quorum: the move itself is refused, and the read says so.
    full = occurrence(quorum=2)
    server = FakeServer(full.to_doc())
    for worker in ("w2", "w3"):
        assert _write(server, quorum.claim_slot(full, worker, at(2)), worker)[0] == "ok"
    server.calls.clear()
    assert _write(server, quorum.claim_slot(full, "w1", at(2)), "w1") == ("lost", None)
    assert server.calls == ["update", "get"]


def test_a_result_that_landed_on_a_retried_request_is_ours() -> None:
    server = FakeServer(occurrence().to_doc())
    assert _write(server, quorum.claim_slot(occurrence(), "w1", at(2)), "w1")[0] == "ok"
    done = quorum.finish_slot(_stored(server), "w1", at(3), started_at=at(2), output=1)
    assert _write(server, done, "w1")[0] == "ok"
    # Told it failed, the worker sends it again: refused (one slot, ever), but it is there.
    server.calls.clear()
    verdict, stored = _write(server, done, "w1")
    assert verdict == "ok" and stored is not None and server.calls == ["update", "get"]


def test_a_gone_occurrence_is_lost() -> None:
    server = FakeServer(occurrence().to_doc())
    server.script = [NotFound("gone", reason="no occurrence occ:x")]
    assert _write(server, quorum.claim_slot(occurrence(), "w1", at(2)), "w1") == ("lost", None)


@pytest.mark.parametrize(
    "missing",
    ["missing json key: updates", "missing json key: slot",  # CouchDB 3.5.0
     "missing update function slot on design doc _design/farm"],  # PouchDB Server
)  # fmt: skip
def test_without_the_update_function_the_put_get_put_of_before(missing: str) -> None:
    seen = occurrence().model_copy(update={"rev": "1-a"})  # the revision the server holds
    server = FakeServer(seen.to_doc(), missing=missing)
    assert _write(server, quorum.claim_slot(seen, "w1", at(2)), "w1")[0] == "ok"
    assert server.calls == ["update", "put"]
    server.calls.clear()
    verdict, _ = _write(server, quorum.claim_slot(seen, "w2", at(2)), "w2")  # stale revision
    assert verdict == "ok" and server.calls == ["update", "put", "get", "put"]
    assert sorted(_stored(server).slots or {}) == ["w1", "w2"]
