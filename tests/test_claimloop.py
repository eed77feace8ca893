"""desktop_worker.claimloop: the first requests (session, version policy) and claiming,
against the real server, through the engine that wires the loop up."""

from __future__ import annotations

from pathlib import Path

from desktop_worker.engine import Engine
from hub.protocol.version import POLICY_DOC_ID
from tests.collab import worker_config
from tests.conftest import Farm
from tests.waiting import wait_for


def test_a_refused_password_is_an_auth_error_and_no_claim(farm: Farm, tmp_path: Path) -> None:
    config = worker_config(farm, tmp_path, password="wrong")
    engine = Engine(config)
    assert not engine.claim_loop._check_session()
    assert "auth" in engine.status.errors  # (an engine not started stays "stopped")
    assert engine.claim_stats.view_reads == 0


def test_a_hub_that_asks_for_a_newer_worker_stops_claims_until_it_no_longer_does(
    farm: Farm, tmp_path: Path
) -> None:
    engine = Engine(worker_config(farm, tmp_path))
    policy = farm.hub.get_or_none(farm.db, POLICY_DOC_ID) or {"_id": POLICY_DOC_ID, "type": "hub"}
    farm.hub.put(farm.db, {**policy, "min_worker_version": "999.0.0"})
    try:
        assert not engine.claim_loop._check_session()
        assert "version" in engine.status.errors and engine.started_at is not None
    finally:
        current = farm.hub.get(farm.db, POLICY_DOC_ID)
        farm.hub.put(farm.db, {**current, "min_worker_version": "0.0.1"})
    assert engine.claim_loop._check_version()
    assert "version" not in engine.status.errors


def test_the_loop_claims_a_ready_occurrence_and_runs_it(farm: Farm, tmp_path: Path) -> None:
    from tests.test_engine import seed

    engine = Engine(worker_config(farm, tmp_path))
    ids = seed(farm.hub, farm.db, "claimloop", "default", ms=0)
    engine.start()
    try:
        wait_for(lambda: engine.totals["done"] >= 1, timeout=30)
        assert engine.claim_stats.wins >= 1
        assert farm.hub.get(farm.db, ids[0])["state"] == "done"
    finally:
        engine.stop(timeout=10)


def test_in_a_backlog_the_loop_claims_ahead_in_batches_and_runs_each_once(
    farm: Farm, tmp_path: Path
) -> None:
    from tests.test_engine import seed

    engine = Engine(worker_config(farm, tmp_path, claim_ahead=4))
    # More than one page of the ready view (16 rows per worker + 4): a backlog.
    ids = seed(farm.hub, farm.db, "ahead", "default", count=60, ms=0)
    engine.start()
    try:
        wait_for(lambda: engine.totals["done"] >= 60, timeout=120)
    finally:
        engine.stop(timeout=10)
    stored = [row["doc"] for row in farm.hub.all_docs(farm.db, keys=ids, include_docs=True)]
    assert all(doc["state"] == "done" and doc["attempt"] == 1 for doc in stored)
    stats = engine.claim_stats
    # One slot, yet claims went out several per _bulk_docs (without claiming ahead a
    # one-slot worker sends one PUT per claim and no batch at all).
    assert stats.batches >= 1 and stats.puts > stats.batches


def test_claims_held_ahead_are_released_when_the_worker_stops(farm: Farm, tmp_path: Path) -> None:
    from tests.test_engine import seed

    engine = Engine(worker_config(farm, tmp_path, claim_ahead=4))
    ids = seed(farm.hub, farm.db, "held", "default", count=40, ms=5000, ttr=60)
    engine.start()
    try:
        wait_for(lambda: len(engine.claim_loop.held) >= 2, timeout=60)
        held = [h.occ.id for h in engine.claim_loop.held]
    finally:
        engine.stop(timeout=15)
    assert set(held) <= set(ids)
    for occ_id in held:
        doc = farm.hub.get(farm.db, occ_id)
        assert doc["state"] == "ready" and doc["attempt"] == 0 and not doc.get("lease")
    assert engine.claim_loop.released_ahead >= len(held)


def test_a_claim_held_too_long_to_start_safely_is_released_not_run(
    farm: Farm, tmp_path: Path
) -> None:
    from desktop_worker.claimloop import Held
    from tests.collab import leased

    engine = Engine(worker_config(farm, tmp_path))
    started: list[tuple[str, float | None]] = []
    engine.slots.start = lambda occ, leased_at=None: started.append((occ.id, leased_at))  # type: ignore[method-assign]
    loop = engine.claim_loop
    old, fresh = leased(farm, "held-old"), leased(farm, "held-fresh")
    now = loop.monotonic()
    # The first touch would come half a TTR after the claim: past that, the lease may run
    # out before the run touches it, so the claim goes back instead of running.
    loop.held = [Held(old, now - old.ttr * 0.5 - 1), Held(fresh, now - 1)]
    assert loop._start_held(2) == 1
    assert started == [(fresh.id, now - 1)]  # touched half a TTR after its claim
    doc = farm.hub.get(farm.db, old.id)
    assert doc["state"] == "ready" and doc["attempt"] == old.attempt - 1


def test_the_session_check_learns_the_claims_majority_before_any_claim(
    farm: Farm, tmp_path: Path
) -> None:
    engine = Engine(worker_config(farm, tmp_path))
    assert farm.db not in engine.couch._copies
    assert engine.claim_loop._check_session()
    assert farm.db in engine.couch._copies  # not read in the first claim's way
