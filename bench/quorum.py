"""Quorum runs: what a run costs at k = 1 and k = 3 (issue 18, docs/DECISIONS.md decision 17).

For each k: a fresh farm database with N ready ``demo.sleep`` occurrences (ms 0) of one
task with ``quorum: k``; three worker engines (in-process, the engine's own code, polling
the ``ready`` view: no dispatcher) run them; the hub's validator (:class:`hub.validator.
Validator`, fed as its feed would feed it) decides each. Reports, per completed run (a
quorum-1 occurrence, or one slot of a quorum occurrence) and per occurrence:

- the workers' requests (claims, slot re-applies after a sibling's write, touches, results,
  view reads; their session checks and heartbeats included);
- the validator's requests (decisions, reliability updates, the reads they need; not the
  bench's own polling, which stands in for the hub's ``_changes`` stream);
- lost slot races (a slot write re-applied on a newer revision).

"Quorum multiplies work by k and nothing else": requests per run should be about equal
at k = 1 and k = 3, requests per occurrence about k times.

    .venv/bin/python -m bench.run --only quorum
    .venv/bin/python bench/quorum.py                  # alone, PouchDB Server it starts
"""

from __future__ import annotations

import secrets
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    BenchServer,
    LogLine,
    Scale,
    Section,
    add_users,
    endpoint,
    log,
    scale_from_env,
)
from desktop_worker.config import WorkerConfig
from desktop_worker.engine import Engine
from hub import provision
from hub.protocol import quorum, states
from hub.protocol.couch import Couch, CouchError
from hub.protocol.model import Occurrence, Task, task_id
from hub.protocol.names import ADMIN_ROLE, WORKER_ROLE
from hub.protocol.timefmt import to_wire
from hub.validator import Validator

WORKERS = ("bq0", "bq1", "bq2")
HUB = "bqhub"


class RequestProfile:
    """Every request a client sends, by what it did (``PUT occ doc -> 409``): the profile
    of a run's cost, counted at the client so it reads the same on PouchDB Server and
    CouchDB. It wraps the client's one sending method; the bench's own clients are not
    wrapped."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def attach(self, couch: Couch) -> None:
        send = couch._send_once

        def counted(server: Any, method: str, path: str, params: Any, *rest: Any) -> Any:
            query = "&".join(f"{k}={v}" for k, v in (params or {}).items())
            label = endpoint(LogLine(0, method, f"{path}?{query}", 0))
            try:
                response = send(server, method, path, params, *rest)
            except CouchError as exc:
                self.counts[f"{label} -> {exc.status or 'error'}"] += 1
                raise
            self.counts[label] += 1
            return response

        couch._send_once = counted  # type: ignore[method-assign]

    def per(self, n: int) -> dict[str, float]:
        return {label: round(c / max(1, n), 2) for label, c in self.counts.most_common()}


def _seed(admin: Couch, db: str, k: int, n: int) -> list[str]:
    now = admin.now().replace(microsecond=0)
    task = Task(
        _id=task_id("bench", f"q{k}"), client="bench", slug=f"q{k}", kind="demo.sleep",
        input={"ms": 0}, schedule={"every": 60}, ttr=60, quorum=k,
        created_at=to_wire(now), updated_at=to_wire(now),
    )  # fmt: skip
    admin.put(db, task.to_doc())
    docs = [
        states.materialize(task, now - timedelta(minutes=i + 1), now, not_before=now).to_doc()
        for i in range(n)
    ]
    for start in range(0, len(docs), 500):
        admin.bulk_docs(db, docs[start : start + 500])
    return [doc["_id"] for doc in docs]


class InProcessHub:
    """The hub as ``hub serve`` runs its feed, dispatcher and validate duties (threads), for
    the rows measured with the dispatcher: workers get offers on the board instead of
    reading the ``ready`` view, and the validator is fed by the hub's own feed."""

    def __init__(self, couch: Couch, db: str) -> None:
        import threading

        from hub.dispatch import Dispatcher
        from hub.serve import Hub, HubConfig

        self.hub = Hub(couch, HubConfig(db=db))
        # Offers lapse 10 s after not_before, not 2 s: on this shared machine a worker may
        # take more than 2 s to act on one, and each lapse rests it (tests do the same).
        self.hub.dispatcher = Dispatcher(offer_s=10.0)
        self.hub.load()
        self.threads = [
            threading.Thread(target=self._loop, args=(duty, every), daemon=True)
            for duty, every in (
                (lambda: self.hub.follow_stream(max_s=2.0), 0.0),
                (self.hub.dispatch, 0.05),
                (self.hub.validate, 0.2),
            )
        ]
        for thread in self.threads:
            thread.start()

    def _loop(self, duty: Callable[[], Any], every: float) -> None:
        while not self.hub._stop.is_set():
            try:
                duty()
            except Exception as exc:  # a loaded machine's hiccup: go on, as hub serve does
                log(f"quorum: hub duty failed: {exc!r}")
            self.hub._stop.wait(every)

    def stop(self) -> None:
        self.hub._stop.set()
        for thread in self.threads:
            thread.join(5)


def measure(
    server: BenchServer,
    workdir: Path,
    k: int,
    n: int,
    timeout_s: float,
    dispatcher: bool = False,
) -> dict[str, Any]:
    """One row: k, and with the hub's dispatcher (``hub serve``'s feed, offers and
    validator in process; the hub's requests are all counted as the validator's then) or
    without (engines polling the view, the validator fed by the bench)."""
    admin = server.admin
    db = f"bench_quorum_k{k}_{secrets.token_hex(3)}"
    provision.init(admin, db, now=admin.now(), hub_user="")
    passwords = add_users(admin, WORKERS, WORKER_ROLE, workdir / "passwords")
    passwords |= add_users(admin, [HUB], ADMIN_ROLE, workdir / "passwords")
    ids = [] if dispatcher else _seed(admin, db, k, n)
    hub = Couch([server.url], user=HUB, password=passwords[HUB].read_text())
    validator = Validator(hub, db)
    worker_profile, validator_profile = RequestProfile(), RequestProfile()
    validator_profile.attach(hub)
    in_process = InProcessHub(hub, db) if dispatcher else None
    engines = []
    for name in WORKERS:
        config = WorkerConfig(
            hub_urls=[server.url], name=name, password=passwords[name].read_text(), db=db,
            tubes=["default"], slots=2, poll_interval_s=0.5,
            spool_path=workdir / f"spool-{name}-{db}.sqlite3",
        )  # fmt: skip
        engines.append(Engine(config, feed_wait_s=2.0))
        worker_profile.attach(engines[-1].couch)
    cpu_before = server.cpu_seconds()
    began = time.monotonic()
    for engine in engines:
        engine.start()
    if in_process is not None:
        time.sleep(1.0)  # the hub sees the workers' docs before the work is there
        ids = _seed(admin, db, k, n)
    validator_requests = 0
    final = 0
    seen: dict[str, Any] = {}
    try:
        while time.monotonic() - began < timeout_s:
            rows = admin.all_docs(db, keys=ids, include_docs=True)
            ended = [row.get("doc", {}).get("state") in ("done", "inconclusive") for row in rows]
            final = sum(ended)
            if final == len(ids):
                break
            if in_process is None:
                for row in rows:  # as the hub's feed would: each new revision once
                    doc = row.get("doc") or {}
                    if seen.get(row["key"]) != doc.get("_rev"):
                        seen[row["key"]] = doc.get("_rev")
                        validator.observe(doc)
                before = hub.requests_sent
                validator.run(hub.now())
                validator_requests += hub.requests_sent - before
            time.sleep(0.2)
        elapsed = time.monotonic() - began
        worker_requests = sum(e.couch.requests_sent for e in engines)
        runs = sum(e.totals["done"] + e.totals["failed"] for e in engines)
        lost = sum(e.totals["lost"] for e in engines)
        # The server's CPU (CouchDB: beam.smp and its couchjs), the bench's polling
        # included: it is the same at k = 1 and k = 3, so read the difference.
        server_cpu_s = server.cpu_seconds() - cpu_before
    finally:
        for engine in engines:
            engine.stop(timeout=10)
        if in_process is not None:
            in_process.stop()
            # Everything the hub sent: its feed, the dispatcher's board, the validator.
            validator_requests = hub.requests_sent
    rows = admin.all_docs(db, keys=ids, include_docs=True)
    docs = [Occurrence.from_doc(row["doc"]) for row in rows]
    slot_workers = [len(occ.slots or {}) for occ in docs if occ.is_quorum]
    admin.delete_db(db)
    return {
        "k": k,
        "dispatcher": dispatcher,
        "occurrences": n,
        "final": final,
        "runs": runs,
        "lost": lost,
        "seconds": round(elapsed, 2),
        "worker_requests": worker_requests,
        "validator_requests": validator_requests,
        "worker_requests_per_run": round(worker_requests / max(1, runs), 2),
        "worker_requests_per_occurrence": round(worker_requests / max(1, n), 2),
        "validator_requests_per_occurrence": round(validator_requests / max(1, n), 2),
        "server_cpu_ms_per_run": round(1000 * server_cpu_s / max(1, runs), 1),
        "slots_per_occurrence": round(sum(slot_workers) / max(1, len(slot_workers)), 2),
        # What the requests were: per completed run (workers), per occurrence (validator).
        "worker_profile_per_run": worker_profile.per(runs),
        "validator_profile_per_occurrence": validator_profile.per(n),
    }


def slot_write_cost(server: BenchServer, workdir: Path, n: int) -> dict[str, Any]:
    """What one slot write costs the server, by way of writing it: ``n`` touches of one
    worker's slot, one after another (no contention, so each figure is one kind of request
    alone): a PUT with the current revision (a slot write that races nobody), a call of
    the ``slot`` update function (every slot write now), and the two extra requests a raced
    PUT cost before: the PUT with a stale revision (409; 403 on PouchDB Server) and the GET
    after it. Server CPU (CouchDB: beam.smp and couchjs) and client wall time per request."""
    admin = server.admin
    db = f"bench_slotcost_{secrets.token_hex(3)}"
    provision.init(admin, db, now=admin.now(), hub_user="")
    name = "bqs0"
    password = add_users(admin, [name], WORKER_ROLE, workdir / "passwords")[name].read_text()
    worker = Couch([server.url], user=name, password=password, retries=0)
    [occ_id] = _seed(admin, db, 3, 1)
    occ = quorum.claim_slot(Occurrence.from_doc(admin.get(db, occ_id)), name, worker.now())
    occ = occ.model_copy(update={"rev": worker.put(db, occ.to_doc())})
    stale = occ.rev

    def touch() -> Occurrence:
        return quorum.touch_slot(occ, name, worker.now())

    def measure_one(label: str, op: Callable[[], None]) -> tuple[str, dict[str, float]]:
        worker.get(db, occ_id)  # warm: the connection, the server's caches
        cpu, began = server.cpu_seconds(), time.perf_counter()
        for _ in range(n):
            op()
        wall, cpu = time.perf_counter() - began, server.cpu_seconds() - cpu
        return label, {
            "server_cpu_ms": round(1000 * cpu / n, 2),
            "wall_ms": round(1000 * wall / n, 2),
        }

    def put_current() -> None:
        nonlocal occ
        occ = occ.model_copy(update={"rev": worker.put(db, touch().to_doc())})

    def update_function() -> None:
        nonlocal occ
        mine = touch()
        slot = (mine.slots or {})[name].model_dump(exclude_none=True, mode="json")
        rev = worker.update(
            db, "farm", "slot", occ_id, {"slot": slot, "updated_at": mine.updated_at}
        )
        occ = mine.model_copy(update={"rev": rev})

    def put_stale() -> None:
        try:
            worker.put(db, {**touch().to_doc(), "_rev": stale})
        except CouchError:
            return
        raise AssertionError("a PUT with a stale revision was taken")

    def get() -> None:
        worker.get(db, occ_id)

    try:
        rows = dict(
            measure_one(label, op)
            for label, op in (
                ("put_current_rev", put_current),
                ("update_function", update_function),
                ("put_stale_rev_refused", put_stale),
                ("get", get),
            )
        )
    finally:
        admin.delete_db(db)
    return {"n": n, **rows}


def run(server: BenchServer, scale: Scale, workdir: Path) -> Section:
    n = 30 if scale.name == "small" else 200
    section = Section(
        "quorum",
        f"{server.kind}; {n} occurrences of demo.sleep (ms 0) per k; 3 in-process engines "
        "(2 slots each), polling the ready view with the hub's validator in process, then "
        "with the hub's feed, dispatcher and validator in process (offers on the board)",
    )
    began = time.monotonic()
    rows = []
    for k in (1, 3):
        log(f"quorum k={k}: {n} occurrences")
        # 240 s: on this shared 2-core machine (load 20-40) 90 runs took over 120 s.
        rows.append(measure(server, workdir, k, n, timeout_s=240.0))
    for k in (1, 3):  # the same with the hub's dispatcher: offers, no view polling
        log(f"quorum k={k} with the dispatcher: {n} occurrences")
        rows.append(measure(server, workdir, k, n, timeout_s=240.0, dispatcher=True))
    section.data["rows"] = rows
    log("quorum: what one slot write costs the server")
    section.data["slot_write_cost"] = slot_write_cost(
        server, workdir, n=100 if scale.name == "small" else 400
    )
    one, three = rows[:2]
    section.data["requests_per_run_ratio_k3_k1"] = round(
        three["worker_requests_per_run"] / max(0.01, one["worker_requests_per_run"]), 2
    )
    section.data["requests_per_occurrence_ratio_k3_k1"] = round(
        three["worker_requests_per_occurrence"] / max(0.01, one["worker_requests_per_occurrence"]),
        2,
    )
    section.seconds = time.monotonic() - began
    if any(r["final"] != r["occurrences"] for r in rows):
        section.status, section.why = "failed", "not every occurrence ended in time"
    return section


def main() -> int:
    import json
    import tempfile

    workdir = Path(tempfile.mkdtemp(prefix="couchfarm-bench-quorum-"))
    server = BenchServer(workdir).start()
    try:
        section = run(server, scale_from_env(), workdir)
    finally:
        server.stop()
    from bench.report import quorum_lines

    print(json.dumps(section.to_json(), indent=2))
    print("\n".join(quorum_lines(section.to_json())))
    return 0 if section.status == "ok" else 1


if __name__ == "__main__":
    raise SystemExit(main())
