"""Hub capacity: how many every-minute tasks one ``hub serve`` materializes on time.

For each level T (ascending): a fresh farm database with T demo.sleep tasks, ``every: 60``,
whose start seconds are spread over the minute (T/60 fall due each second, as cron-like
tasks created at random times do), then ``hub serve`` is started (it loads them all), and
no workers run. Over a window of whole seconds the bench measures, for every occurrence due
in it:

- lateness = ``created_at`` - ``due_at`` (hub time, stamped when the hub's tick began), and
- visible lateness = when a bench observer following ``_changes`` first saw the document
  (local clock, same machine) - ``due_at``: that includes the bulk write;

and the hub process's CPU (psutil, user+system) and RSS. A level passes when p99 lateness is
under 1 s; the levels stop at the first that fails. The window is split into ``reps``
back-to-back parts for the spread.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil

from bench.common import (
    BenchServer,
    ChangesObserver,
    Scale,
    Section,
    all_occurrences,
    bench_task,
    cpu_seconds,
    latency_summary,
    log,
    sleep_until,
    summary,
)
from bench.farm import Credentials, Farm
from hub.protocol.timefmt import from_wire


class IdObserver(ChangesObserver):
    """Notes the local time each document id first shows up in ``_changes``."""

    def __init__(self, server: BenchServer, db: str, until: float) -> None:
        super().__init__(server, db, until, name="bench-id-observer")
        self.seen: dict[str, float] = {}

    def note(self, rows: list[dict[str, Any]], now: float) -> None:
        for row in rows:
            self.seen.setdefault(str(row.get("id")), now)


def one_level(
    server: BenchServer, scale: Scale, workdir: Path, credentials: Credentials, tasks: int
) -> dict[str, Any]:
    db = f"bench_cap_{tasks}"
    farm = Farm(server, db, workdir, credentials)
    admin = server.admin
    window = scale.capacity_window_s
    try:
        now = admin.now()
        lead = 8 + tasks / 1000  # loading T tasks takes the hub about a second per 1,000 here
        base = math.ceil(now.timestamp() + lead)
        created = datetime.fromtimestamp(now.timestamp() - 1, UTC)
        start0 = datetime.fromtimestamp(base, UTC)
        farm.add_tasks(
            [
                bench_task(
                    f"cap{i}",
                    created=created,
                    every=60,
                    start=start0 + timedelta(seconds=i % 60),
                )
                for i in range(tasks)
            ]
        )
        began = time.time()
        farm.start_hub(timeout=300)
        loaded = time.time()
        assert farm.hub is not None
        hub_pid = farm.hub.pid
        first = max(base, math.ceil(loaded) + 2)
        edges = [first + i * window / scale.reps for i in range(scale.reps + 1)]
        observer = IdObserver(server, db, until=edges[-1] + 20)
        observer.start()
        cpu = []
        for edge in edges:
            sleep_until(edge)
            cpu.append((cpu_seconds(hub_pid), server.cpu_seconds()))
        rss = psutil.Process(hub_pid).memory_info().rss
        time.sleep(2.0)
        observer.stop_event.set()
        observer.join(10)
    finally:
        farm.stop()
    docs = all_occurrences(admin, db)
    server.drop_db(db)
    late: list[list[float]] = [[] for _ in range(scale.reps)]
    visible: list[list[float]] = [[] for _ in range(scale.reps)]
    states: dict[str, int] = {}
    for doc in docs:
        due = from_wire(doc["due_at"]).timestamp()
        if not edges[0] <= due < edges[-1]:
            continue
        rep = min(scale.reps - 1, int((due - edges[0]) // (window / scale.reps)))
        states[doc["state"]] = states.get(doc["state"], 0) + 1
        late[rep].append(from_wire(doc["created_at"]).timestamp() - due)
        if doc["_id"] in observer.seen:
            visible[rep].append(observer.seen[doc["_id"]] - due)
    expected = round(tasks * window / 60)
    part = window / scale.reps
    hub_cores = [(cpu[i + 1][0] - cpu[i][0]) / part for i in range(scale.reps)]
    server_cores = [(cpu[i + 1][1] - cpu[i][1]) / part for i in range(scale.reps)]
    all_late = [x for rep in late for x in rep]
    all_visible = [x for rep in visible for x in rep]
    result = {
        "tasks": tasks,
        "window_s": window,
        "hub_start_s": loaded - began,
        "due_in_window_expected": expected,
        "materialized_in_window": len(all_late),
        "states": states,
        "lateness_s": latency_summary(all_late),
        "visible_lateness_s": latency_summary(all_visible),
        "p99_lateness_per_rep": summary(latency_summary(rep)["p99"] for rep in late),
        "p99_visible_per_rep": summary(latency_summary(rep)["p99"] for rep in visible),
        "hub_cpu_share_of_one_core": summary(hub_cores),
        "server_cores": summary(server_cores),
        "hub_rss_mb": rss / 2**20,
    }
    p99 = result["lateness_s"]["p99"]
    result["passed"] = (
        p99 is not None and p99 < 1.0 and len(all_late) >= 0.95 * expected
    )  # every one due was made, on time
    visible_p99 = result["visible_lateness_s"]["p99"]
    log(
        f"hub capacity T={tasks}: p99 lateness {p99 and round(p99, 3)} s "
        f"(visible {visible_p99 and round(visible_p99, 3)} s), "
        f"hub CPU {result['hub_cpu_share_of_one_core']['median']:.0%} of a core, "
        f"{len(all_late)}/{expected} made"
    )
    return result


def run(server: BenchServer, scale: Scale, workdir: Path, credentials: Credentials) -> Section:
    section = Section(
        "hub_capacity",
        "See bench/hub_capacity.py. "
        + f"Levels {list(scale.capacity_levels)} every-minute tasks, window "
        + f"{scale.capacity_window_s} s per level (about Txwindow/60 occurrences due in it).",
    )
    levels = []
    capacity = None
    failed = False
    for tasks in scale.capacity_levels:
        if failed and tasks != 10_000:
            continue  # past the first failure, only the 10,000 level (for its CPU share) runs
        result = one_level(server, scale, workdir, credentials, tasks)
        levels.append(result)
        if result["passed"] and not failed:
            capacity = tasks
        failed = failed or not result["passed"]
    at_10k = next((lv for lv in levels if lv["tasks"] == 10_000), None)
    section.data = {
        "levels": levels,
        "largest_passing_level": capacity,
        "all_levels_passed": not failed,
        "hub_cpu_share_at_10k": at_10k["hub_cpu_share_of_one_core"] if at_10k else None,
    }
    return section
