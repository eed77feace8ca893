"""Fleet: W workers under a steady offered load, on the real claim path.

For each W (4 and 16 at the small scale; 4, 16, 64 and 200 at full): a fresh farm database,
``hub serve`` (the real hub: materialize, reap, archive, as a process, bench/farm.py) and W
workers, each ``desktop_worker.engine.Engine`` with its real claim, feed, touch, finish,
spool and heartbeat code and its own CouchDB user (a worker's name is its user name:
validate_doc_update checks it; the users are written in bulk with ``_bulk_docs`` on
``_users``). Only the run is in-process (bench/workers/fleet_host.py: a handle that waits
the ``demo.sleep`` ``ms`` and returns a runner-shaped outcome), and up to
``fleet_per_host`` workers share one host process, so 200 workers fit on 2 cores.

Phases, per W, once every worker has checked in:

1. **idle** (``fleet_idle_s``): no tasks. Bytes sent to each worker per second, the
   server's requests and CPU per second.
2. **load**: ``fleet_tasks`` tasks of ``demo.sleep`` (``fleet_ms``) every ``fleet_every``
   s, their start times spread evenly over the interval (``fleet_tasks / fleet_every``
   occurrences/s offered, steadily), ``overlap: allow``. After ``fleet_warmup_s`` a window
   of ``fleet_window_s`` is measured:

   - completed/s: occurrences whose ``result.finished_at`` (hub time) falls in the window
     (live database and results databases) / window, against offered/s;
   - server CPU per completed occurrence (the server process and all its descendants:
     CouchDB's ``couchjs`` included), and requests per completed occurrence by method and
     status, from the server's own figures (bench.common ``BenchServer.mark``/``figures``:
     PouchDB Server's log, CouchDB's ``_stats``); hub and workers together;
   - bytes sent to each worker per completed occurrence (all workers' bytes / W /
     completed), counted at each worker's HTTP sessions, and its requests by endpoint;
   - due → claimed (``lease.claimed_at`` of revision 2 - ``due_at``) of the occurrences
     due in the window, p50/p95/p99, and how many of them were never claimed.

On a cluster (``COUCHDB_NODE_URLS``) the workers spread round-robin over the node URLs
(``BENCH_PIN_NODE=1``: all on the first); the hub uses ``COUCHDB_URL``.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import requests

from bench.common import (
    BENCH_DIR,
    BenchServer,
    Child,
    Mark,
    Scale,
    Section,
    add_users_bulk,
    all_occurrences,
    cpu_seconds,
    latency_summary,
    log,
    python_env,
    sleep_until,
    wait_for,
)
from bench.farm import Credentials, Farm
from bench.latency import claimed_at
from hub.protocol.names import WORKER_ROLE
from hub.protocol.timefmt import from_wire

NAME = "fleet-{}"


def worker_names(count: int) -> list[str]:
    return [NAME.format(i) for i in range(count)]


class Fleet:
    """W engines in ``ceil(W / per_host)`` host processes (bench/workers/fleet_host.py)."""

    def __init__(
        self,
        server: BenchServer,
        db: str,
        names: list[str],
        password_file: Path,
        workdir: Path,
        per_host: int,
    ) -> None:
        self.names = names
        self.hosts: list[Child] = []
        hosts = max(1, math.ceil(len(names) / per_host))
        size = math.ceil(len(names) / hosts)
        env = python_env()
        env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.null.Keyring"
        for index in range(hosts):
            part = names[index * size : (index + 1) * size]
            if not part:
                continue
            # On a cluster each worker talks to its own node, round-robin over the fleet.
            urls = [server.worker_url(index * size + i) for i in range(len(part))]
            argv = [
                sys.executable,
                str(BENCH_DIR / "workers" / "fleet_host.py"),
                "--url",
                server.url,
                "--db",
                db,
                "--names",
                ",".join(part),
                "--urls",
                ",".join(urls),
                "--password-file",
                str(password_file),
                "--spool-dir",
                str(workdir / "spools"),
            ]
            self.hosts.append(
                Child(argv, log_path=workdir / f"host-{index}.log", env=env, pipes=True)
            )

    def start(self) -> None:
        for host in self.hosts:
            host.send({"cmd": "start"})
        for host in self.hosts:
            host.recv(120)

    def sample(self) -> dict[str, Any]:
        """Bytes and requests per worker, requests by endpoint, runs, host CPU: all hosts."""
        for host in self.hosts:
            host.send({"cmd": "sample"})
        workers: dict[str, dict[str, int]] = {}
        endpoints: Counter[str] = Counter()
        cpu = 0.0
        done = lost = 0
        for host in self.hosts:
            answer = host.recv(60)
            workers.update(answer["workers"])
            endpoints.update(answer["endpoints"])
            cpu += answer["cpu_s"]
            done += answer["done"]
            lost += answer["lost"]
        return {
            "at": time.time(),
            "workers": workers,
            "endpoints": dict(endpoints),
            "cpu_s": cpu,
            "done": done,
            "lost": lost,
        }

    def claims(self) -> dict[str, str]:
        """``lease.claimed_at`` of every claim the engines made (from their run tables)."""
        out: dict[str, str] = {}
        for host in self.hosts:
            host.send({"cmd": "claims"})
        for host in self.hosts:
            out.update(host.recv(60)["claims"])
        return out

    def runs(self) -> list[list[Any]]:
        """Every run the engines started: ``[worker, occ, attempt, claimed_at, status]``."""
        out: list[list[Any]] = []
        for host in self.hosts:
            host.send({"cmd": "runs"})
        for host in self.hosts:
            out.extend(host.recv(60)["runs"])
        return out

    def stop(self) -> None:
        for host in self.hosts:
            try:
                if host.alive():
                    host.send({"cmd": "stop"})
            except OSError:
                pass
        for host in self.hosts:
            try:
                if host.alive():
                    host.recv(60)
            except (TimeoutError, RuntimeError, OSError):
                pass
            host.terminate(20)
        self.hosts = []


def _diff_traffic(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    per_worker = {
        name: b["workers"][name]["bytes"] - a["workers"].get(name, {}).get("bytes", 0)
        for name in b["workers"]
    }
    requests = sum(
        b["workers"][n]["requests"] - a["workers"].get(n, {}).get("requests", 0)
        for n in b["workers"]
    )
    endpoints = Counter(b["endpoints"])
    endpoints.subtract(Counter(a["endpoints"]))
    return {
        "seconds": b["at"] - a["at"],
        "bytes_per_worker": per_worker,
        "bytes": sum(per_worker.values()),
        "requests": requests,
        "endpoints": {k: v for k, v in endpoints.most_common() if v},
        "cpu_s": b["cpu_s"] - a["cpu_s"],
        "done": b["done"] - a["done"],
        "lost": b["lost"] - a["lost"],
    }


def _finished_times(server: BenchServer, db: str, docs: list[dict[str, Any]]) -> dict[str, float]:
    """Finish time of every done occurrence, live or already archived."""
    out = {}
    for doc in docs:
        result = doc.get("result") or {}
        if doc.get("state") == "done" and result.get("finished_at"):
            out[doc["_id"]] = from_wire(result["finished_at"]).timestamp()
    for name in server.admin.all_dbs():
        if not name.startswith(f"{db}_results_"):
            continue
        rows = server.admin.all_docs(name, startkey="res:", endkey="res:\ufff0", include_docs=True)
        for row in rows:
            res = row.get("doc") or {}
            if res.get("status") == "ok" and res.get("finished_at"):
                out.setdefault(res["occurrence"], from_wire(res["finished_at"]).timestamp())
    return out


def run_level(
    server: BenchServer,
    scale: Scale,
    workdir: Path,
    credentials: Credentials,
    workers: int,
    password_file: Path,
) -> dict[str, Any]:
    db = f"bench_fleet_{workers}"
    farm = Farm(server, db, workdir, credentials)
    names = worker_names(workers)
    fleet = Fleet(server, db, names, password_file, workdir / db, scale.fleet_per_host)
    offered = scale.fleet_tasks / scale.fleet_every
    hub_cpu: list[float] = []
    hub_counts_path = workdir / db / "hub-counts.json"
    hub_counts: list[dict[str, Any]] = []
    engine_claims: dict[str, str] = {}
    try:
        farm.start_hub(counts=hub_counts_path)
        began = time.monotonic()
        fleet.start()
        farm.wait_checked_in(names, timeout=60 + workers)
        log(f"fleet W={workers}: checked in after {time.monotonic() - began:.1f} s")
        time.sleep(3.0)  # feeds connected, first heartbeats written
        # 1. idle
        idle_a, idle_m0 = fleet.sample(), server.mark()
        time.sleep(scale.fleet_idle_s)
        idle_m1, idle_b = server.mark(), fleet.sample()
        # 2. steady load
        base = farm.add_spread_tasks(
            "fleet",
            scale.fleet_tasks,
            scale.fleet_every,
            lead_s=3,
            ms=scale.fleet_ms,
            overlap="allow",
        )
        t0 = base + scale.fleet_warmup_s
        t1 = t0 + scale.fleet_window_s
        sleep_until(t0)
        load_a, load_m0 = fleet.sample(), server.mark()
        hub_counts.append(_read_counts(hub_counts_path))
        hub_cpu.append(cpu_seconds(farm.hub.pid) if farm.hub else 0.0)
        sleep_until(t1)
        load_m1, load_b = server.mark(), fleet.sample()
        hub_counts.append(_read_counts(hub_counts_path))
        hub_cpu.append(cpu_seconds(farm.hub.pid) if farm.hub else 0.0)
        hosts_rss = sum(_rss(host.pid) for host in fleet.hosts)
        time.sleep(3.0)  # runs in flight at the window's end finish
        engine_claims = fleet.claims()
    finally:
        fleet.stop()
        farm.stop()
    time.sleep(1.0)  # the last responses reach PouchDB Server's log
    docs = all_occurrences(server.admin, db)
    finished = _finished_times(server, db, docs)
    # Claim times as the engines wrote them; revision 2 of the occurrence for any they did
    # not report (CouchDB may have compacted old revisions away).
    claims = claimed_at(server.admin, db, [d for d in docs if d.get("state") == "done"])
    claims.update(engine_claims)
    server.drop_db(db)
    return summarize(
        server,
        workers=workers,
        offered=offered,
        window=(load_m0, load_m1),
        idle=(idle_m0, idle_m1),
        idle_traffic=_diff_traffic(idle_a, idle_b),
        load_traffic=_diff_traffic(load_a, load_b),
        docs=docs,
        finished=finished,
        claims=claims,
        hub_cpu_s=hub_cpu[1] - hub_cpu[0],
        hosts_rss=hosts_rss,
        hub_endpoints=_counts_diff(hub_counts[0], hub_counts[1]),
    )


def _read_counts(path: Path) -> dict[str, Any]:
    """The hub's own requests by endpoint so far (bench/workers/counted_hub.py)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {"endpoints": {}}


def _counts_diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, int]:
    diff = Counter(b.get("endpoints", {}))
    diff.subtract(Counter(a.get("endpoints", {})))
    return {k: v for k, v in diff.most_common() if v}


def _rss(pid: int) -> int:
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0


def summarize(
    server: BenchServer,
    *,
    workers: int,
    offered: float,
    window: tuple[Mark, Mark],
    idle: tuple[Mark, Mark],
    idle_traffic: dict[str, Any],
    load_traffic: dict[str, Any],
    docs: list[dict[str, Any]],
    finished: dict[str, float],
    claims: dict[str, str],
    hub_cpu_s: float,
    hosts_rss: int,
    hub_endpoints: dict[str, int],
) -> dict[str, Any]:
    start, end = window
    seconds = end.at - start.at
    load = server.figures(start, end)
    quiet = server.figures(*idle)
    done = sum(1 for t in finished.values() if start.at <= t < end.at)
    delays, started, unclaimed = [], [], 0
    for doc in docs:
        due = from_wire(doc["due_at"]).timestamp()
        if not start.at <= due < end.at:
            continue
        run = doc.get("result") or {}
        if run.get("started_at"):
            started.append(from_wire(run["started_at"]).timestamp() - due)
        if doc["_id"] in claims:
            delays.append(from_wire(claims[doc["_id"]]).timestamp() - due)
        elif doc.get("state") in ("ready", "retry"):
            unclaimed += 1  # waiting at the end, never (or no longer) claimed
    states = Counter(
        d.get("state") for d in docs if start.at <= from_wire(d["due_at"]).timestamp() < end.at
    )

    def per_occ(n: float | None) -> float | None:
        return None if n is None or not done else n / done

    idle_s = idle_traffic["seconds"] or 1.0
    per_worker_idle = [b / idle_s for b in idle_traffic["bytes_per_worker"].values()]
    out = {
        "workers": workers,
        "offered_per_s": offered,
        "completed_per_s": done / seconds if seconds else None,
        "completed": done,
        "window_s": seconds,
        "server_cpu_ms_per_occurrence": per_occ(None if load.cpu_s is None else 1000 * load.cpu_s),
        "server_cores": None if load.cpu_s is None else load.cpu_s / seconds,
        "requests_per_occurrence": per_occ(load.requests),
        "requests_per_occurrence_by_method": {k: v / done for k, v in load.by_method.items()}
        if done
        else {},
        "requests_per_occurrence_by_status": {k: v / done for k, v in load.by_status.items()}
        if done
        else {},
        "requests_per_occurrence_by_endpoint": {
            k: v / done for k, v in (load.endpoints or {}).items()
        }
        if done
        else {},
        "server": load.to_json(),
        "worker_requests_per_occurrence": per_occ(load_traffic["requests"]),
        "worker_requests_per_occurrence_by_endpoint": {
            k: v / done for k, v in load_traffic["endpoints"].items()
        }
        if done
        else {},
        "hub_requests_per_occurrence": per_occ(sum(hub_endpoints.values())),
        # Requests the server counted that neither the workers nor the hub sent: on a shared
        # CouchDB, someone else's traffic (its CPU is in the server's figure too).
        "unattributed_requests_per_occurrence": per_occ(
            load.requests - load_traffic["requests"] - sum(hub_endpoints.values())
        ),
        "hub_requests_per_occurrence_by_endpoint": {k: v / done for k, v in hub_endpoints.items()}
        if done
        else {},
        "bytes_per_worker_per_occurrence": per_occ(load_traffic["bytes"] / workers),
        "bytes_all_workers_per_occurrence": per_occ(load_traffic["bytes"]),
        "bytes_per_worker_per_s_loaded": load_traffic["bytes"] / workers / seconds
        if seconds
        else None,
        "idle": {
            "seconds": idle_s,
            "bytes_per_worker_per_s": sum(per_worker_idle) / len(per_worker_idle)
            if per_worker_idle
            else None,
            "max_bytes_per_worker_per_s": max(per_worker_idle) if per_worker_idle else None,
            "worker_requests_per_s": idle_traffic["requests"] / idle_s,
            "worker_endpoints": idle_traffic["endpoints"],
            "server_requests_per_s": quiet.requests / (quiet.seconds or 1.0),
            "server_by_method": quiet.by_method,
            "server_by_status": quiet.by_status,
            "server_cores": None if quiet.cpu_s is None else quiet.cpu_s / (quiet.seconds or 1),
        },
        "due_to_claimed_s": latency_summary(delays),
        "due_to_started_s": latency_summary(started),
        "unclaimed_due_in_window": unclaimed,
        "states_of_due_in_window": dict(states),
        "lost_races": load.lost_races,
        "lost_races_per_occurrence": per_occ(load.lost_races),
        "hub_cores": hub_cpu_s / seconds if seconds else None,
        "fleet_cores": load_traffic["cpu_s"] / seconds if seconds else None,
        "fleet_rss_mb": hosts_rss / 2**20,
        "runs_lost_by_workers": load_traffic["lost"],
    }
    claimed = out["due_to_claimed_s"]
    log(
        f"fleet W={workers}: {out['completed_per_s']:.2f} of {offered:g} occ/s, "
        f"{_f(out['server_cpu_ms_per_occurrence'])} server CPU ms/occ, "
        f"{_f(out['requests_per_occurrence'])} req/occ, "
        f"{_f(out['bytes_per_worker_per_occurrence'], 0)} B/worker/occ, "
        f"idle {_f(out['idle']['bytes_per_worker_per_s'], 0)} B/worker/s, "
        f"p99 due→claimed {_f(claimed['p99'], 3)} s ({unclaimed} unclaimed)"
    )
    return out


def _f(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def levels(scale: Scale) -> tuple[int, ...]:
    """The scale's W, or BENCH_FLEET_WORKERS (e.g. ``4,16,64``)."""
    chosen = os.environ.get("BENCH_FLEET_WORKERS", "")
    return tuple(int(x) for x in chosen.split(",") if x.strip()) or scale.fleet_workers


def run(server: BenchServer, scale: Scale, workdir: Path, credentials: Credentials) -> Section:
    workers_levels = levels(scale)
    section = Section(
        "fleet",
        "See bench/fleet.py. "
        + f"W = {list(workers_levels)} engines (runs in-process, up to "
        + f"{scale.fleet_per_host} per host process); {scale.fleet_tasks} tasks of demo.sleep "
        + f"{scale.fleet_ms} ms every {scale.fleet_every} s, starts spread "
        + f"({scale.fleet_tasks / scale.fleet_every:g} occ/s offered); idle "
        + f"{scale.fleet_idle_s} s, then {scale.fleet_warmup_s} s warm-up and a "
        + f"{scale.fleet_window_s} s window; server {server.kind} {server.version}.",
    )
    most = max(workers_levels)
    password = secrets.token_urlsafe(15)
    password_file = workdir / "passwords" / "fleet.password"
    password_file.parent.mkdir(parents=True, exist_ok=True)
    password_file.write_text(password)
    password_file.chmod(0o600)
    began = time.monotonic()
    add_users_bulk(server.admin, worker_names(most), WORKER_ROLE, password)
    section.data["users_created_s"] = time.monotonic() - began
    # The new users must be able to log in before their engines start.
    wait_for(
        lambda: _can_log_in(server, worker_names(most)[-1], password), 60, "fleet users to log in"
    )
    section.data["server"] = {"kind": server.kind, "version": server.version}
    section.data["by_workers"] = {}
    for count in workers_levels:
        log(f"fleet: W={count}")
        section.data["by_workers"][str(count)] = run_level(
            server, scale, workdir, credentials, count, password_file
        )
    return section


def _can_log_in(server: BenchServer, name: str, password: str) -> bool:
    try:
        return requests.get(f"{server.url}/_session", auth=(name, password), timeout=10).ok
    except requests.RequestException:
        return False
