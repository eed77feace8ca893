"""What the engine collaborators' tests share: a worker's config on the shared farm, and
occurrences the hub writes and w1 claims (all against the real server)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from desktop_worker.config import WorkerConfig
from hub.protocol import states
from hub.protocol.couch import Couch
from hub.protocol.model import Occurrence, Task, task_id
from hub.protocol.timefmt import to_wire
from tests.conftest import Farm


def worker_config(farm: Farm, tmp_path: Path, name: str = "w1", **kw: Any) -> WorkerConfig:
    kw.setdefault("spool_path", tmp_path / f"spool-{name}.sqlite3")
    kw.setdefault("password", farm.passwords[name])
    return WorkerConfig(
        hub_urls=[farm.server.url],
        name=name,
        db=farm.db,
        tubes=["default"],
        **kw,
    )


def leased(farm: Farm, slug: str, worker: str = "w1", **task_fields: Any) -> Occurrence:
    """A ready occurrence of task ``slug`` (due a second ago), claimed by ``worker``."""
    hub: Couch = farm.hub
    now = hub.now().replace(microsecond=0)
    stamp = to_wire(now)
    fields: dict[str, Any] = dict(
        _id=task_id("acme", slug),
        client="acme",
        slug=slug,
        kind="demo.sleep",
        input={"ms": 0},
        schedule={"every": 60},
        created_at=stamp,
        updated_at=stamp,
    )
    task = Task(**{**fields, **task_fields})
    if hub.get_or_none(farm.db, task.id) is None:
        hub.put(farm.db, task.to_doc())
    occ = states.materialize(task, now - timedelta(seconds=1), now)
    hub.put(farm.db, occ.to_doc())
    ready = Occurrence.from_doc(hub.get(farm.db, occ.id))
    farm.worker(worker).put(farm.db, states.claim(ready, worker, hub.now()).to_doc())
    return Occurrence.from_doc(hub.get(farm.db, occ.id))
