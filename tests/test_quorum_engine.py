"""Quorum runs end to end with real worker engines against the real server: three
engines (one of them lying) take one slot each of every occurrence of a quorum-3 task,
and the hub's validator keeps the honest result and quarantines the liar."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from desktop_worker.engine import Engine
from desktop_worker.runner import Outcome
from hub.protocol import states
from hub.protocol.model import Occurrence, State, Task, task_id
from hub.protocol.timefmt import to_wire
from hub.validator import Validator
from tests import cluster
from tests.conftest import Farm
from tests.test_engine import config_for


@dataclass
class Lie:
    """A run handle that reports a plausible, wrong result at once."""

    progress: Any = None

    def poll(self) -> Outcome:
        return Outcome(status="ok", output={"slept_ms": 666})

    def cancel(self, reason: str) -> None:
        return None


def _seed(farm: Farm, tube: str, n: int, **task_fields: Any) -> list[str]:
    now = farm.now().replace(microsecond=0)
    slug = f"q{secrets.token_hex(3)}"
    task = Task(
        _id=task_id("acme", slug), client="acme", slug=slug, kind="demo.sleep",
        input={"ms": 20}, schedule={"every": 60}, tube=tube, ttr=30,
        created_at=to_wire(now), updated_at=to_wire(now), **task_fields,
    )  # fmt: skip
    farm.hub.put(farm.db, task.to_doc())
    occs = [
        states.materialize(task, now - timedelta(minutes=i + 1), now, not_before=now)
        for i in range(n)
    ]
    farm.hub.bulk_docs(farm.db, [o.to_doc() for o in occs])
    return [o.id for o in occs]


def _validate_until_final(farm: Farm, ids: list[str], timeout: float) -> dict[str, Occurrence]:
    """The hub's validator, fed as its feed would feed it, until every occurrence ended."""
    validator = Validator(farm.hub, farm.db)
    deadline = time.monotonic() + timeout
    on_cluster = farm.hub.majority(farm.db) > 1
    while True:
        if on_cluster:
            # No hub runs here: merge what its resolver would (two slot writes of one
            # revision, each taken by some copies of a cluster, are two branches).
            cluster.settle(farm.hub, farm.db, ids)
        rows = farm.admin.all_docs(farm.db, keys=ids, include_docs=True)
        docs = {row["key"]: Occurrence.from_doc(row["doc"]) for row in rows}
        if all(occ.is_final for occ in docs.values()):
            return docs
        assert time.monotonic() < deadline, {i: o.state for i, o in docs.items()}
        for row in rows:
            validator.observe(row["doc"])
        validator.run(farm.now())
        time.sleep(0.2)


def test_three_engines_with_one_liar_keep_the_honest_result(farm: Farm, tmp_path) -> None:
    tube = f"q3{secrets.token_hex(2)}"
    ids = _seed(farm, tube, 4, quorum=3)
    engines = []
    for name in ("w1", "w2", "w3"):
        cfg = config_for(farm.server.url, name, farm.passwords[name], farm.db, tube, tmp_path,
                         slots=2, poll_interval_s=0.5)  # fmt: skip
        liar = (lambda *a: Lie()) if name == "w3" else None
        engines.append(Engine(cfg, start_run=liar, feed_wait_s=2.0).start())
    try:
        docs = _validate_until_final(farm, ids, timeout=90)
        for engine in engines:  # every slot result was delivered, none lost
            assert engine.totals["done"] == len(ids) and engine.totals["lost"] == 0
            assert engine.spool is not None and engine.spool.counts()["pending"] == 0
    finally:
        for engine in engines:
            engine.stop(timeout=10)
    for occ in docs.values():
        assert occ.state == State.DONE, occ.id
        assert occ.result is not None and occ.result.output == {"slept_ms": 20}
        assert occ.validation is not None and occ.validation.outcome == "canonical"
        assert occ.validation.agree == ["w1", "w2"] and occ.validation.disagree == ["w3"]
        assert set(occ.slots or {}) == {"w1", "w2", "w3"}  # each ran it once
    rel = Validator(farm.hub, farm.db).reliability(["w1", "w3"])
    assert rel["w3"].quarantined and rel["w3"].disagree_streak >= 3
    assert rel["w3"].score < rel["w1"].score and not rel["w1"].quarantined


def test_hub_dispatches_and_decides_quorum_runs_from_its_feed(farm: Farm, tmp_path) -> None:
    """The hub as ``hub serve`` runs it (its feed, dispatcher and validate duty, no manual
    feeding): offers go to workers without a slot, and every occurrence is decided."""
    import threading

    from hub.dispatch import Dispatcher
    from hub.serve import Hub, HubConfig

    tube = f"qh{secrets.token_hex(2)}"
    hub = Hub(farm.hub, HubConfig(db=farm.db))
    hub.dispatcher = Dispatcher(offer_s=10.0)  # a loaded test machine: no early lapses
    hub.load()

    def loop(duty: Any, every: float) -> None:
        while not hub._stop.is_set():
            try:
                duty()
            except Exception:  # a test server hiccup: go on, as hub serve does
                pass
            hub._stop.wait(every)

    threads = [
        threading.Thread(target=loop, args=(lambda: hub.follow_stream(max_s=2.0), 0.0)),
        threading.Thread(target=loop, args=(hub.dispatch, 0.05)),
        threading.Thread(target=loop, args=(hub.validate, 0.2)),
    ]
    for thread in threads:
        thread.daemon = True
        thread.start()
    engines = []
    try:
        for name in ("w1", "w2"):
            cfg = config_for(farm.server.url, name, farm.passwords[name], farm.db, tube,
                             tmp_path, slots=1)  # fmt: skip
            engines.append(Engine(cfg, feed_wait_s=2.0).start())
        time.sleep(1.0)  # the hub sees both workers online before the work is due
        ids = _seed(farm, tube, 3, quorum=2)
        deadline = time.monotonic() + 90
        while True:
            rows = farm.admin.all_docs(farm.db, keys=ids, include_docs=True)
            docs = {row["key"]: Occurrence.from_doc(row["doc"]) for row in rows}
            if all(occ.is_final for occ in docs.values()):
                break
            assert time.monotonic() < deadline, {i: o.state for i, o in docs.items()}
            time.sleep(0.3)
    finally:
        hub._stop.set()
        for engine in engines:
            engine.stop(timeout=10)
        for thread in threads:
            thread.join(5)
    for occ in docs.values():
        assert occ.state == State.DONE and occ.validation is not None, occ.id
        assert occ.validation.agree == ["w1", "w2"] and occ.result is not None
        assert occ.result.output == {"slept_ms": 20}
