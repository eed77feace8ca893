"""desktop_worker.runs: one slot thread per run, against the real server; the runner is
stood in for by a handle the test finishes or never finishes."""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

from desktop_worker.delivery import Delivery
from desktop_worker.engine_api import EngineEvent
from desktop_worker.runs import RunSlots, script_specs
from desktop_worker.status import EngineStatus
from tests.collab import leased, worker_config
from tests.conftest import Farm
from tests.waiting import wait_for


class Outcome:
    status = "ok"
    output: Any = {"ok": 1}
    error = None
    permanent = False
    duration_s = 0.01


class Handle:
    """A run that ends when the test says so."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.progress: tuple[float, float, str] | None = (1.0, 2.0, "half")
        self.cancelled: str | None = None

    def poll(self) -> Outcome | None:
        return Outcome() if self.done.is_set() else None

    def cancel(self, reason: str = "cancelled") -> None:
        self.cancelled = reason


def slots_for(farm: Farm, tmp_path: Path, handle: Handle) -> tuple[RunSlots, list[EngineEvent]]:
    config = worker_config(farm, tmp_path)
    status = EngineStatus("w1", config.slots)
    status.is_stopped = False
    events: list[EngineEvent] = []
    status.add_listener(events.append)
    couch = farm.worker("w1")
    delivery = Delivery(couch, config, status)
    delivery.open_spool()
    slots = RunSlots(
        couch, config, status, delivery, rng=random.Random(1), start_run=lambda *a: handle
    )
    return slots, events


def finished(events: list[EngineEvent], occ_id: str) -> str | None:
    found = [e.status for e in events if e.name == "run_finished" and e.occ_id == occ_id]
    return found[0] if found else None


def test_a_run_reports_progress_and_its_finish_reaches_the_hub(farm: Farm, tmp_path: Path) -> None:
    handle = Handle()
    slots, events = slots_for(farm, tmp_path, handle)
    occ = leased(farm, "runs-done")
    slots.start(occ)
    wait_for(lambda: any(e.name == "run_progress" for e in events), timeout=10)
    info = slots.info(occ.id)
    assert info is not None and info["kind"] == "demo.sleep" and info["progress"] == (1, 2, "half")
    assert info["lease_left_s"] is not None and info["lease_left_s"] > 0
    handle.done.set()
    wait_for(lambda: finished(events, occ.id) is not None, timeout=20)
    assert finished(events, occ.id) == "done"
    assert slots.status.runs == {} and slots.info(occ.id) is None
    assert farm.hub.get(farm.db, occ.id)["state"] == "done"
    slots.delivery.close()


def test_a_cancelled_run_hands_its_lease_back(farm: Farm, tmp_path: Path) -> None:
    handle = Handle()
    slots, events = slots_for(farm, tmp_path, handle)
    occ = leased(farm, "runs-cancel")
    slots.start(occ)
    assert slots.cancel(occ.id, "not now")
    assert not slots.cancel("occ:none", "nothing there")
    wait_for(lambda: finished(events, occ.id) is not None, timeout=20)
    assert finished(events, occ.id) == "released" and handle.cancelled == "not now"
    back = farm.hub.get(farm.db, occ.id)
    assert back["state"] == "ready" and back["attempt"] == occ.attempt - 1
    slots.delivery.close()


def test_script_specs_take_a_path_or_a_table() -> None:
    specs = script_specs({"a": "/bin/a", "b": {"path": "/bin/b", "interpreter": ["python3"]}})
    assert specs["a"].path == "/bin/a"
    assert specs["b"].interpreter == ("python3",)
