"""desktop_worker.lifecycle: start, pause/resume, drain, stop, against the real server."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from desktop_worker.engine import Engine
from desktop_worker.engine_api import EngineState
from desktop_worker.spool import Spool
from hub.protocol.model import worker_id
from tests.collab import worker_config
from tests.conftest import Farm
from tests.waiting import wait_for


def test_pause_resume_then_drain_stops_and_says_so_on_the_hub(farm: Farm, tmp_path: Path) -> None:
    engine = Engine(worker_config(farm, tmp_path, name="w2"))
    engine.start()
    try:
        wait_for(lambda: engine.state == EngineState.IDLE and engine.started_at, timeout=20)
        assert {t.name for t in engine.lifecycle._threads} == {
            f"worker-w2-{name}" for name in ("claim", "changes", "spool", "heartbeat")
        }
        engine.pause("lunch")
        assert (engine.state, engine.why) == (EngineState.PAUSED, "lunch")
        engine.resume()
        assert engine.state == EngineState.IDLE
        engine.drain()
        assert engine.wait(20)  # nothing running: the claim loop stops the engine
    finally:
        engine.stop(timeout=10)
    assert engine.state == EngineState.STOPPED and engine.spool is None
    assert farm.hub.get(farm.db, worker_id("w2"))["state"] == "stopped"


def test_stop_twice_and_start_again(farm: Farm, tmp_path: Path) -> None:
    engine = Engine(worker_config(farm, tmp_path, name="w2"))
    assert engine.start() is engine
    engine.stop(timeout=10)
    engine.stop(timeout=10)  # already stopped: nothing to do
    assert engine.wait(0)
    engine.start()
    try:
        wait_for(lambda: engine.state == EngineState.IDLE, timeout=20)
    finally:
        engine.stop(timeout=10)
    assert engine.state == EngineState.STOPPED


def test_a_worker_stopped_with_results_in_its_spool_says_so_and_takes_them_up_at_start(
    farm: Farm, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A result stored on one server and not yet seen on the other stays in the spool
    across a restart (issue 15): the stop says what it keeps, the next start what it
    takes up again."""
    caplog.set_level(logging.INFO, logger="couchfarm.worker")
    config = worker_config(farm, tmp_path, name="w2")
    spool = Spool(config.resolved_spool_path)
    doc = {"_id": "occ:task:acme:kept:20261201T000000Z", "_rev": "3-a", "state": "done"}
    spool.mark_uploaded(spool.add(doc, op="finish", worker="w2", attempt=1), 0)
    spool.close()
    engine = Engine(config)
    engine.start()
    try:
        wait_for(lambda: engine.state == EngineState.IDLE, timeout=20)
        assert "event=spool_resumed pending=0 uploaded=1" in caplog.text
    finally:
        engine.stop(timeout=10)
    assert "event=spool_kept pending=0 uploaded=1" in caplog.text
    assert str(config.resolved_spool_path) in caplog.text
