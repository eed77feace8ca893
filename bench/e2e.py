"""End to end: completed occurrences/s and requests per completed occurrence.

One fresh farm database per variant, ``hub serve`` running, headless workers (one process
each, slots=1, K=5) added in steps 1 → 4 → 8 → 16 on the same database. Work is
``demo.sleep`` with ``ms=0``, materialized by the hub itself: before each step the bench
gives the hub catch-up tasks (every 10 s, created ~2,000 s ago, misfire=run_all,
overlap=allow), so it writes a backlog of ready occurrences in bulk, as after downtime, and
the workers always have work. After a warm-up, ``reps`` back-to-back windows of whole
seconds are measured:

- completed/s = occurrences whose ``result.finished_at`` falls in the window / window;
- requests per completed occurrence = every request in the server's log in those seconds
  (hub and workers together; the bench itself sends none then) / completed.

Variants: ``spawn`` is the real worker (``desktop-worker --headless``), which runs each
occurrence in a child process (the runner's forkserver on Linux, spawn elsewhere);
``inline`` is the same engine with the run made in-process
(bench/workers/inline_worker.py), to show what the protocol alone sustains. CPU per role
(server, hub, workers, their run processes) is sampled with psutil at the window edges:
that is where the time goes.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import (
    BenchServer,
    Scale,
    Section,
    all_occurrences,
    by_method_status,
    log,
    percentile,
    sleep_until,
    summary,
)
from bench.farm import Credentials, Farm
from hub.protocol.timefmt import from_wire

RATE_GUESS = {"spawn": (3.0, 10.0), "inline": (20.0, 40.0)}  # per worker, cap (occ/s)


def run(
    server: BenchServer, scale: Scale, workdir: Path, credentials: Credentials, yardstick: float
) -> Section:
    section = Section(
        "e2e",
        "See bench/e2e.py. "
        + f"Windows of {scale.e2e_window_s} s x {scale.reps} per worker count, after "
        + f"{scale.e2e_warmup_s:g} s warm-up; workers {list(scale.e2e_workers)} (spawn), "
        + f"{list(scale.e2e_inline_workers)} (inline).",
    )
    section.data["yardstick_docs_per_s"] = yardstick
    for variant, levels in (("spawn", scale.e2e_workers), ("inline", scale.e2e_inline_workers)):
        section.data[variant] = run_variant(
            server, scale, workdir, credentials, variant, levels, yardstick
        )
    return section


def run_variant(
    server: BenchServer,
    scale: Scale,
    workdir: Path,
    credentials: Credentials,
    variant: str,
    levels: tuple[int, ...],
    yardstick: float,
) -> dict[str, Any]:
    db = f"bench_e2e_{variant}"
    farm = Farm(server, db, workdir, credentials)
    steps: list[dict[str, Any]] = []
    per_worker, cap = RATE_GUESS[variant]
    window = scale.e2e_window_s
    try:
        farm.start_hub()
        for count in levels:
            farm.add_workers(count, variant)
            log(f"e2e {variant}: {count} worker(s) checked in")
            measured = scale.e2e_warmup_s + scale.reps * window + 6
            farm.top_up_backlog(int(min(per_worker * count, cap) * measured * 1.3) + 50)
            time.sleep(scale.e2e_warmup_s)
            t0 = math.ceil(time.time()) + 1
            edges = [t0 + i * window for i in range(scale.reps + 1)]
            cpu, marks = [], []
            for edge in edges:
                sleep_until(edge)
                marks.append(server.mark())
                cpu.append(farm.cpu())
            ready_left = farm.count_ready()
            steps.append(
                {
                    "workers": count,
                    "edges": edges,
                    "cpu": cpu,
                    "marks": marks,
                    "ready_left": ready_left,
                }
            )
            log(f"e2e {variant} W={count}: windows done, {ready_left} still ready")
    finally:
        farm.stop()
    time.sleep(1.0)  # the last responses reach PouchDB Server's log
    docs = all_occurrences(server.admin, db)
    server.drop_db(db)
    finished: list[float] = []
    run_wall: list[float] = []
    for doc in docs:
        result = doc.get("result") or {}
        if doc.get("state") == "done" and result.get("finished_at"):
            end = from_wire(result["finished_at"]).timestamp()
            finished.append(end)
            run_wall.append(end - from_wire(result["started_at"]).timestamp())
    out: dict[str, Any] = {
        "by_workers": {},
        "run_wall_s": {"p50": percentile(run_wall, 50), "p95": percentile(run_wall, 95)},
    }
    for step in steps:
        rates, req_per_occ, fractions = [], [], []
        endpoints: Counter[str] = Counter()
        cores: dict[str, list[float]] = {}
        total_requests = total_done = 0
        for i in range(scale.reps):
            start, end = step["edges"][i], step["edges"][i + 1]
            done = sum(1 for t in finished if start <= t < end)
            figures = server.figures(step["marks"][i], step["marks"][i + 1])
            rates.append(done / (end - start))
            fractions.append(done / (end - start) / yardstick if yardstick else None)
            req_per_occ.append(figures.requests / done if done else None)
            total_requests += figures.requests
            total_done += done
            endpoints.update(figures.endpoints or by_method_status(figures))
            for role, value in step["cpu"][i + 1].items():
                cores.setdefault(role, []).append((value - step["cpu"][i][role]) / (end - start))
        out["by_workers"][str(step["workers"])] = {
            "completed_per_s": summary(rates),
            "fraction_of_raw_write": summary(fractions),
            "requests_per_occurrence": summary(req_per_occ),
            "cores_by_role": {role: summary(v) for role, v in cores.items()},
            "requests_per_occurrence_by_endpoint": {
                label: count / total_done for label, count in endpoints.most_common()
            }
            if total_done
            else {},
            "requests": total_requests,
            "completed": total_done,
            "ready_left": step["ready_left"],
            "backlog_ran_out": step["ready_left"] == 0,
        }
        log(
            f"e2e {variant} W={step['workers']}: {rates} occ/s, "
            f"{[round(x, 2) if x else x for x in req_per_occ]} req/occ"
        )
    return out
