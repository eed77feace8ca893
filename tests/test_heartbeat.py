"""desktop_worker.heartbeat: the worker doc written to the real server."""

from __future__ import annotations

from pathlib import Path

from desktop_worker.engine_api import EngineEvent, EngineState
from desktop_worker.heartbeat import Heartbeat
from desktop_worker.status import EngineStatus
from hub.protocol.couch import Couch
from hub.protocol.model import WorkerDoc, worker_id
from tests.collab import worker_config
from tests.conftest import Farm
from tests.test_netguard import closed_port


def test_a_write_creates_the_doc_and_a_stale_rev_is_written_over(
    farm: Farm, tmp_path: Path
) -> None:
    config = worker_config(farm, tmp_path)
    status = EngineStatus("w1", config.slots)
    events: list[EngineEvent] = []
    status.add_listener(events.append)
    beat = Heartbeat(farm.worker("w1"), config, status, keepalive_s=60)
    status.is_stopped = False
    status.refresh()
    status.started_at = farm.now()
    assert beat.write() and beat.rev is not None and not beat.dirty
    stored = farm.hub.get(farm.db, worker_id("w1"))
    assert WorkerDoc.from_doc(stored).state == "running"
    beat.rev = "1-0000000000000000000000000000dead"  # another process of ours wrote since
    assert beat.write() and beat.written == 2
    assert farm.hub.get(farm.db, worker_id("w1"))["_rev"] == beat.rev
    assert [e.detail for e in events if e.name == "heartbeat"] == [{"state": "running"}] * 2


def test_a_state_the_hub_acts_on_marks_the_doc_dirty(farm: Farm, tmp_path: Path) -> None:
    config = worker_config(farm, tmp_path)
    status = EngineStatus("w1", config.slots)
    beat = Heartbeat(farm.worker("w1"), config, status, keepalive_s=60)
    beat.dirty = False
    status.is_stopped = False
    status.refresh()  # stopped -> idle: "running" in the doc
    assert beat.dirty and beat.wake.is_set()
    beat.dirty = False
    status.paused = "lunch"
    status.refresh()
    assert status.state == EngineState.PAUSED and beat.dirty
    assert beat.worker_doc()["state"] == "paused"


def test_no_server_leaves_the_doc_dirty_and_the_engine_offline(farm: Farm, tmp_path: Path) -> None:
    config = worker_config(farm, tmp_path)
    status = EngineStatus("w1", config.slots)
    status.is_stopped = False
    nowhere = Couch(f"http://127.0.0.1:{closed_port()}", "w1", "pw", retries=0, connect_timeout=1)
    beat = Heartbeat(nowhere, config, status, keepalive_s=60)
    assert not beat.write()
    assert beat.dirty and status.state == EngineState.OFFLINE


def test_the_keep_alive_stretches_when_the_hub_asks_never_shrinks_below_its_own(
    farm: Farm, tmp_path: Path
) -> None:
    config = worker_config(farm, tmp_path)
    status = EngineStatus("w1", config.slots)
    hint: list[float | None] = [None]
    beat = Heartbeat(farm.worker("w1"), config, status, keepalive_s=60,
                     keepalive_hint=lambda: hint[0])  # fmt: skip
    assert beat.period() == 60
    hint[0] = 400.0  # a fleet of 200: the hub's beat asks for 400 s
    assert beat.period() == 400.0
    hint[0] = 10.0
    assert beat.period() == 60
