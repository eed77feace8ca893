"""The heartbeat's worker document: written without the pydantic model, held to it here.

``Engine.worker_doc`` builds the document as a plain dict so that an idle worker never
builds a pydantic validator (about 2 MB of the idle tray, docs/TRAY.md). These tests keep
that dict exactly what ``WorkerDoc(...).to_doc()`` would write.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from desktop_worker.config import WorkerConfig
from desktop_worker.engine import Engine, EngineState
from hub.protocol.model import WorkerDoc

REPO = Path(__file__).resolve().parent.parent


class ClockOnlyCouch:
    """All ``worker_doc`` asks of the client: hub time."""

    def now(self) -> datetime:
        return datetime(2026, 12, 1, 9, 30, 15, 123000, tzinfo=UTC)


def engine_for(tmp_path: Path, **config: Any) -> Engine:
    cfg = WorkerConfig(
        hub_urls=["http://127.0.0.1:9"],
        name=config.pop("name", "w1"),
        password="pw",
        db="farm",
        spool_path=tmp_path / "spool.sqlite3",
        **config,
    )
    return Engine(cfg, couch_factory=lambda _config: ClockOnlyCouch())  # type: ignore[arg-type,return-value]


def test_worker_doc_is_what_the_model_writes(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, tubes=["default", "gpu.big"], slots=3, kinds=["demo.sleep"])
    doc = engine.worker_doc()
    assert doc == WorkerDoc.from_doc(doc).to_doc()
    assert doc["type"] == "worker" and doc["_id"] == "worker:w1"
    assert doc["kinds"] == ["demo.sleep"] and doc["slots"] == 3
    assert doc["last_seen"] == "2026-12-01T09:30:15.123Z"
    assert doc["totals"] == {"done": 0, "failed": 0, "lost": 0}
    assert "_rev" not in doc


def test_worker_doc_with_rev_runs_totals_and_state(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, name="w-2")
    engine.heartbeat.rev = "3-abc"
    engine.totals.update(done=7, failed=2, lost=1)
    engine.status.runs = {f"occ:task:acme:ping:2026120{i}T000000Z": None for i in range(3)}  # type: ignore[misc]
    engine.status.state = EngineState.DRAINING
    engine.started_at = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    doc = engine.worker_doc()
    assert doc == WorkerDoc.from_doc(doc).to_doc()
    assert doc["_rev"] == "3-abc" and doc["state"] == "draining"
    assert doc["totals"] == {"done": 7, "failed": 2, "lost": 1}
    assert doc["current"] == sorted(engine.status.runs)
    assert doc["started_at"] == "2026-12-01T08:00:00.000Z"


IDLE_CHECK = """
import sys, tempfile
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_worker_doc import engine_for
import hub.protocol.model as model
engine_for(Path(tempfile.mkdtemp())).worker_doc()
built = [name for name, value in vars(model).items()
         if getattr(value, "__pydantic_complete__", False)]
assert not built, built
print("no model built")
"""


def test_the_heartbeat_builds_no_pydantic_model() -> None:
    code = IDLE_CHECK.format(tests=str(REPO / "tests"))
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "no model built" in done.stdout
