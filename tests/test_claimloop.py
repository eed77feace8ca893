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
