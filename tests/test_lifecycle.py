"""desktop_worker.lifecycle: start, pause/resume, drain, stop, against the real server."""

from __future__ import annotations

from pathlib import Path

from desktop_worker.engine import Engine
from desktop_worker.engine_api import EngineState
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
