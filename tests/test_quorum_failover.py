"""Quorum runs across a failover, on two real servers (decision 17, "Failover").

1. Two servers' copies of a collecting occurrence, each with slot writes of its own, are
   replicated into a real conflict; the resolver writes the union of the slots (a worker
   in both keeps the slot further along), and a copy that was decided keeps its decision.
2. A slot's result stays in the worker's spool until the standby's copy carries it; after a
   failover the worker puts it on the survivor's copy, in its own slot only.

Workers write as themselves (farm_worker), the hub and the resolver as farm_admin, so
every write here passes ``validate_doc_update`` as in production.
"""

from __future__ import annotations

import logging
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from desktop_worker.config import WorkerConfig
from desktop_worker.confirm import SLOT_OP, Confirmer
from desktop_worker.delivery import Delivery
from desktop_worker.spool import Spool
from desktop_worker.status import EngineStatus
from hub import provision, replication, resolver
from hub.protocol import quorum, states
from hub.protocol.couch import Couch
from hub.protocol.model import Occurrence, Task, task_id
from hub.protocol.names import WORKER_ROLE
from hub.protocol.timefmt import to_wire


@pytest.fixture()
def split(farm_on_both, couch_server, passwords):
    """The farm database on a primary and a standby, not replicating, with w3 as well."""
    db, primary, standby = farm_on_both("farm_qfail")
    provision.add_user(couch_server.admin(), "w3", [WORKER_ROLE], passwords["w3"], replace=True)
    replication.copy_users(primary, standby)
    return db, primary, standby


def _both_ways(db: str, primary, standby) -> None:
    for source, target in ((primary, standby), (standby, primary)):
        replication.replicate_once(source, target, db)


def _quorum_occurrence(db: str, primary, standby, passwords, k: int) -> Occurrence:
    """A quorum-k occurrence, due a few seconds back, on both servers."""
    hub = Couch(primary.url, "hub", passwords["hub"])
    now = hub.now().replace(microsecond=0)
    slug = f"qf{secrets.token_hex(3)}"
    task = Task(_id=task_id("acme", slug), client="acme", slug=slug, kind="demo.sleep",
                input={"ms": 1}, schedule={"every": 3600}, ttr=60, quorum=k,
                created_at=to_wire(now), updated_at=to_wire(now))  # fmt: skip
    hub.put(db, task.to_doc())
    occ = states.materialize(task, now - timedelta(seconds=5), now)
    hub.put(db, occ.to_doc())
    replication.replicate_once(primary, standby, db)
    return Occurrence.from_doc(hub.get(db, occ.id))


class Side:
    """One server as the workers and the hub see it."""

    def __init__(self, endpoint, db: str, passwords: dict[str, str]) -> None:
        self.endpoint, self.db, self.passwords = endpoint, db, passwords
        self.hub = Couch(endpoint.url, "hub", passwords["hub"])

    def read(self, occ_id: str) -> Occurrence:
        return Occurrence.from_doc(self.hub.get(self.db, occ_id))

    def claim(self, occ_id: str, worker: str) -> Occurrence:
        couch = Couch(self.endpoint.url, worker, self.passwords[worker])
        mine = quorum.claim_slot(self.read(occ_id), worker, couch.now())
        couch.put(self.db, mine.to_doc())
        return self.read(occ_id)

    def finish(self, occ_id: str, worker: str, output: Any) -> dict[str, Any]:
        couch = Couch(self.endpoint.url, worker, self.passwords[worker])
        now = couch.now()
        done = quorum.finish_slot(self.read(occ_id), worker, now,
                                  started_at=now - timedelta(seconds=1), output=output)  # fmt: skip
        couch.put(self.db, done.to_doc())
        return self.hub.get(self.db, occ_id)

    def run(self, occ_id: str, worker: str, output: Any) -> dict[str, Any]:
        self.claim(occ_id, worker)
        return self.finish(occ_id, worker, output)


def _slot_states(doc: dict[str, Any]) -> dict[str, str]:
    return {name: slot["state"] for name, slot in sorted(doc["slots"].items())}


# ------------------------------------------------------------------ 1. the resolver merges


def test_two_copies_collecting_slots_are_merged_into_their_union(split, passwords, caplog):
    """Cut apart, each server took slot writes: w1 finished and w2 claimed on the primary;
    w2 claimed again and finished, and w3 claimed, on the standby. After replication both
    ways the occurrence is conflicted; the resolver (as the hub, farm_admin) keeps one leaf
    and writes the union on it: w1's and w2's results, w3's live lease. Both servers
    converge on it, and w3 finishes on top of it with no rerun."""
    caplog.set_level(logging.INFO, logger="couchfarm.resolver")
    db, primary, standby = split
    occ = _quorum_occurrence(db, primary, standby, passwords, k=3)
    p, s = Side(primary, db, passwords), Side(standby, db, passwords)
    w1_done = p.run(occ.id, "w1", {"slept_ms": 1})
    p.claim(occ.id, "w2")
    w2_done = s.run(occ.id, "w2", {"slept_ms": 1})
    w3_leased = s.claim(occ.id, "w3")
    _both_ways(db, primary, standby)
    conflicted = p.hub.get(db, occ.id, conflicts="true")
    assert conflicted.get("_conflicts"), "each server's slot writes should stand as a branch"

    settled = resolver.resolve(p.hub, db, conflicted)
    assert isinstance(settled, resolver.Resolution) and settled.merged and settled.complete
    merged = p.hub.get(db, occ.id, conflicts="true")
    assert not merged.get("_conflicts") and merged["state"] == "ready"
    assert _slot_states(merged) == {"w1": "done", "w2": "done", "w3": "leased"}
    assert merged["slots"]["w1"] == w1_done["slots"]["w1"]
    assert merged["slots"]["w2"] == w2_done["slots"]["w2"]  # the result beats the lease
    assert merged["slots"]["w3"] == (w3_leased.to_doc()["slots"]["w3"])
    assert f"event=slots_merged doc={occ.id}" in caplog.text

    replication.replicate_once(primary, standby, db)
    on_standby = s.hub.get(db, occ.id, conflicts="true")
    assert on_standby["_rev"] == merged["_rev"] and not on_standby.get("_conflicts")

    # w3 finishes its slot on the primary from what it last saw (the standby's leaf, maybe
    # deleted): a 409/403, then its slot re-applied to the merged document.
    from desktop_worker import slots

    w3 = Couch(primary.url, "w3", passwords["w3"])
    now = w3.now()
    done = quorum.finish_slot(w3_leased, "w3", now, started_at=now, output={"slept_ms": 1})
    status, stored = slots.write_slot(w3, db, done, "w3", w3.now)
    assert status == "ok" and stored is not None
    assert _slot_states(p.hub.get(db, occ.id)) == {"w1": "done", "w2": "done", "w3": "done"}
    decision = quorum.decide(p.read(occ.id), p.hub.now())
    assert decision is not None and decision.occurrence.validation is not None
    assert decision.occurrence.validation.agree == ["w1", "w2", "w3"]


def test_a_decided_copy_keeps_its_decision_and_gains_the_other_copys_results(split, passwords):
    """Both servers saw w1's and w2's claims. The primary then took both results and the
    hub decided (done, canonical). The standby never got them: its validator expired w2's
    slot and w3 ran in its place. The resolver, run on the standby, keeps the decision and
    the slots it compared, and adds w3's result beside them (not re-validated)."""
    db, primary, standby = split
    occ = _quorum_occurrence(db, primary, standby, passwords, k=2)
    p, s = Side(primary, db, passwords), Side(standby, db, passwords)
    p.claim(occ.id, "w1")
    p.claim(occ.id, "w2")
    replication.replicate_once(primary, standby, db)
    p.finish(occ.id, "w1", {"slept_ms": 1})
    p.finish(occ.id, "w2", {"slept_ms": 1})
    decision = quorum.decide(p.read(occ.id), p.hub.now())
    assert decision is not None
    p.hub.put(db, decision.occurrence.to_doc())
    decided = p.hub.get(db, occ.id)
    assert decided["state"] == "done" and decided["validation"]["outcome"] == "canonical"

    later = s.hub.now() + timedelta(seconds=120)  # the leases ran out on the standby
    expired = quorum.expire_slots(s.read(occ.id), later)
    assert expired is not None
    s.hub.put(db, expired.to_doc())
    w3_done = s.run(occ.id, "w3", {"slept_ms": 1})
    _both_ways(db, primary, standby)
    conflicted = s.hub.get(db, occ.id, conflicts="true")
    assert conflicted.get("_conflicts")

    settled = resolver.resolve(s.hub, db, conflicted)
    assert isinstance(settled, resolver.Resolution) and settled.merged and settled.complete
    final = s.hub.get(db, occ.id, conflicts="true")
    assert not final.get("_conflicts")
    assert final["state"] == "done"
    for kept in ("result", "validation", "attempt"):
        assert final[kept] == decided[kept], kept
    assert final["slots"]["w1"] == decided["slots"]["w1"]
    assert final["slots"]["w2"] == decided["slots"]["w2"]  # done beats the standby's expiry
    assert final["slots"]["w3"] == w3_done["slots"]["w3"]
    alternatives = quorum.alternatives(Occurrence.from_doc(final))
    assert sorted(r.worker for r in alternatives) == ["w1", "w2", "w3"]


# ------------------------------------------------------------------ 2. the spool holds slots


def _slot_entry(tmp: Path, name: str, doc: dict[str, Any], server: int) -> Spool:
    spool = Spool(tmp / f"{name}-{secrets.token_hex(3)}.sqlite3")
    seq = spool.add(doc, op=SLOT_OP, worker=name, attempt=doc["attempt"],
                    claimed_at=doc["slots"][name]["claimed_at"])  # fmt: skip
    spool.mark_uploaded(seq, server)
    return spool


def _confirmer(name: str, primary, standby, db, passwords, spool, events) -> Confirmer:
    couch = Couch([primary.url, standby.url], name, passwords[name], retries=0)
    return Confirmer(couch, db, name, spool, lambda event, **f: events.append((event, f)))


def test_a_slot_result_waits_for_the_standby_and_is_put_on_our_own_slot_after_a_failover(
    split, passwords, tmp_path, caplog
):
    """w1's claim replicated, its result did not (the primary died after its 201). While
    w1 is on the primary the result waits in its spool; after failing over, w1 finishes
    its own leased slot on the survivor with the run's own times, and the entry is
    confirmed once the primary has it too. w2's slot on the survivor is left as it was."""
    caplog.set_level(logging.INFO, logger="couchfarm.worker")
    db, primary, standby = split
    occ = _quorum_occurrence(db, primary, standby, passwords, k=2)
    p, s = Side(primary, db, passwords), Side(standby, db, passwords)
    p.claim(occ.id, "w1")
    replication.replicate_once(primary, standby, db)
    ours = p.finish(occ.id, "w1", {"slept_ms": 1})
    theirs = s.claim(occ.id, "w2").to_doc()["slots"]["w2"]
    events: list = []
    spool = _slot_entry(tmp_path, "w1", ours, 0)
    w1 = _confirmer("w1", primary, standby, db, passwords, spool, events)
    assert not w1.run() and spool.counts()["uploaded"] == 1  # still on the primary: wait
    assert s.hub.get(db, occ.id)["slots"]["w1"]["state"] == "leased"

    w1.couch._active = 1  # failed over: the primary "died" after its 201
    w1.run()
    rescued = s.hub.get(db, occ.id)
    slot, run = rescued["slots"]["w1"], ours["slots"]["w1"]["result"]
    assert slot["state"] == "done" and slot["claimed_at"] == run_claimed(ours)
    for same in ("started_at", "finished_at", "output", "worker"):
        assert slot["result"][same] == run[same], same
    assert rescued["slots"]["w2"] == theirs
    assert "event=result_rescued" in caplog.text and "slot=True" in caplog.text
    [entry] = spool.awaiting_confirmation()
    assert entry.uploaded_to == 1  # now waits to be seen on the primary, which has it
    assert w1.run() and spool.counts()["uploaded"] == 0
    assert ("result_confirmed", {"occ_id": occ.id}) in events


def run_claimed(doc: dict[str, Any]) -> str:
    return doc["slots"]["w1"]["claimed_at"]


def test_a_slot_whose_claim_never_replicated_is_claimed_again_and_finished(
    split, passwords, tmp_path
):
    """Neither the claim nor the result reached the standby: w1 takes a slot there (a new
    claim, the only slot write a worker may add) and finishes it with its run."""
    db, primary, standby = split
    occ = _quorum_occurrence(db, primary, standby, passwords, k=2)
    p, s = Side(primary, db, passwords), Side(standby, db, passwords)
    ours = p.run(occ.id, "w1", {"slept_ms": 1})
    assert "w1" not in s.hub.get(db, occ.id)["slots"]
    spool = _slot_entry(tmp_path, "w1", ours, 0)
    w1 = _confirmer("w1", primary, standby, db, passwords, spool, [])
    w1.couch._active = 1
    w1.run()
    slot = s.hub.get(db, occ.id)["slots"]["w1"]
    run = ours["slots"]["w1"]["result"]
    assert slot["state"] == "done" and slot["claimed_at"] != run_claimed(ours)
    assert (slot["result"]["started_at"], slot["result"]["finished_at"]) == (
        run["started_at"], run["finished_at"],
    )  # fmt: skip
    assert w1.run() and spool.counts()["uploaded"] == 0  # the primary has the run: confirmed


def test_a_decision_on_the_survivor_without_our_slot_result_supersedes_it(
    split, passwords, tmp_path, caplog
):
    """The survivor decided (w2 and w3 agreed) without w1's run. Still on the primary,
    w1 waits (replication or the resolver's merge may bring its run there); failed over,
    the decision stands: dropped, logged ``result_superseded`` naming the canonical run."""
    caplog.set_level(logging.INFO, logger="couchfarm.worker")
    db, primary, standby = split
    occ = _quorum_occurrence(db, primary, standby, passwords, k=2)
    p, s = Side(primary, db, passwords), Side(standby, db, passwords)
    ours = p.run(occ.id, "w1", {"slept_ms": 1})
    s.run(occ.id, "w2", {"slept_ms": 1})
    s.run(occ.id, "w3", {"slept_ms": 1})
    decision = quorum.decide(s.read(occ.id), s.hub.now())
    assert decision is not None
    s.hub.put(db, decision.occurrence.to_doc())
    events: list = []
    spool = _slot_entry(tmp_path, "w1", ours, 0)
    w1 = _confirmer("w1", primary, standby, db, passwords, spool, events)
    assert not w1.run() and spool.counts()["uploaded"] == 1
    w1.couch._active = 1
    assert w1.run() and spool.counts()["uploaded"] == 0
    assert f"event=result_superseded occ={occ.id}" in caplog.text
    assert events[-1][0] == "result_dropped" and "decided without this run" in events[-1][1]["why"]
    assert "w1" not in s.hub.get(db, occ.id)["slots"]  # a decision is never reopened


def test_a_slot_that_expired_on_the_survivor_cannot_take_the_result(
    split, passwords, tmp_path, caplog
):
    """One slot per worker, ever: a slot of ours that the survivor's validator expired
    cannot be finished there. Logged at ERROR (``result_not_restored``), then dropped."""
    caplog.set_level(logging.INFO, logger="couchfarm.worker")
    db, primary, standby = split
    occ = _quorum_occurrence(db, primary, standby, passwords, k=2)
    p, s = Side(primary, db, passwords), Side(standby, db, passwords)
    p.claim(occ.id, "w1")
    replication.replicate_once(primary, standby, db)
    ours = p.finish(occ.id, "w1", {"slept_ms": 1})
    expired = quorum.expire_slots(s.read(occ.id), s.hub.now() + timedelta(seconds=120))
    assert expired is not None
    s.hub.put(db, expired.to_doc())
    spool = _slot_entry(tmp_path, "w1", ours, 0)
    w1 = _confirmer("w1", primary, standby, db, passwords, spool, [])
    w1.couch._active = 1
    assert w1.run() and spool.counts()["uploaded"] == 0
    assert "event=result_not_restored" in caplog.text and "our slot there is expired" in caplog.text
    assert s.hub.get(db, occ.id)["slots"]["w1"]["state"] == "expired"


def test_delivery_keeps_a_slot_result_until_the_standby_has_it(split, passwords, tmp_path):
    """Through the worker's own path: the spool keeps the uploaded slot result (it used to
    drop it at the primary's 201), and lets it go once replication brought it across."""
    db, primary, standby = split
    occ = _quorum_occurrence(db, primary, standby, passwords, k=2)
    p = Side(primary, db, passwords)
    claimed = p.claim(occ.id, "w1")
    config = WorkerConfig(hub_urls=[primary.url, standby.url], name="w1", db=db,
                          tubes=["default"], spool_path=tmp_path / "w1.sqlite3",
                          password=passwords["w1"])  # fmt: skip
    couch = Couch(config.hub_urls, "w1", passwords["w1"], retries=0)
    delivery = Delivery(couch, config, EngineStatus("w1", config.slots))
    delivery.open_spool()
    assert delivery.spool is not None
    now = couch.now()
    final = quorum.finish_slot(claimed, "w1", now, started_at=now, output={"slept_ms": 1})
    slot = (claimed.slots or {})["w1"]
    assert delivery.deliver(final.to_doc(), SLOT_OP, claimed, slot.claimed_at) == "done"
    assert delivery.spool.counts()["uploaded"] == 1
    delivery._confirm_on_standby()
    assert delivery.spool.counts()["uploaded"] == 1  # the standby has not got it yet
    replication.replicate_once(primary, standby, db)
    delivery._confirm_on_standby()
    assert delivery.spool.counts()["uploaded"] == 0
    delivery.close()
