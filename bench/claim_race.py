"""Claim race: Couchfarm's claim protocol against PiCaS's, same server, same run.

For each worker count W, W Couchfarm worker processes and W PiCaS worker processes are
started once. Couchfarm: ``desktop_worker.claim.Claimer`` (the engine's code) with the
worker's default K, one CouchDB user each with role farm_worker, validate_doc_update on.
PiCaS: ``picas`` 1.1.2 in its own venv, ``TaskViewIterator`` / ``_claim_task`` with its
``CouchDB`` client, server admin, no validate_doc_update. Each repetition gives each system
a fresh database holding N ready items (occurrences as the hub writes them / PiCaS tokens
with the ``Monitor/todo`` view), warms the view index, then says "go" to all W workers at
once; they claim until the view is empty or the time cap passes. Repetitions alternate
which system goes first.

Figures per run: claims/s (claims / time from go to the last worker's stop); requests per
claim and lost races per claim, both from the server's request log (lost race = a PUT
answered 409, or 403 from PouchDB's validate_doc_update, which checks the stored doc before
the revision); conflict waste = lost-race PUTs / claim PUTs; double claims = items locked
successfully more than once (PiCaS re-GETs the doc and locks whatever comes back).

On a cluster (``COUCHDB_NODE_URLS=url1,url2,url3``), worker i of each system talks to node
i mod 3 (``BenchServer.worker_url``; ``BENCH_PIN_NODE=1``: all to the first node), and the
server's figures sum every node. CouchDB answers a write that some but fewer than ``w``
copies took with 202 Accepted, also when the other copies refused it as a conflict, so two
claims of one item through two coordinators can both succeed; each run also counts the 202
answers. Overrides for such runs: ``BENCH_RACE_ITEMS``, ``BENCH_RACE_WORKERS`` (e.g.
``3,12``), ``BENCH_RACE_CAP_S``, ``BENCH_RACE_REPS``, ``BENCH_RACE_PICAS_CYCLE=0`` (skip
the PiCaS cycle), ``BENCH_RACE_AHEAD`` (Couchfarm's claims ahead per batch), and
``BENCH_COUCH_W``/``BENCH_COUCH_R`` (Couchfarm workers send ``?w=``/``?r=`` on their
writes/document reads: bench/workers/cf_claim.py).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import (
    BENCH_DIR,
    PICAS_PYTHON,
    BenchServer,
    Child,
    Scale,
    Section,
    add_users,
    bulk,
    cpu_seconds,
    log,
    python_env,
    ready_occurrences,
    summary,
    wait_for,
)
from hub import designdocs, provision
from hub.protocol.names import CLAIM_DDOC, WORKER_ROLE

TODO_VIEW = (
    "function (doc) {\n"
    "  if (doc.type == 'task' && doc.lock == 0 && doc.done == 0) {\n"
    "    emit(doc._id, doc._id);\n"
    "  }\n"
    "}"
)


def picas_tokens(count: int) -> list[dict[str, Any]]:
    """Tokens as ``picas.documents.Task`` makes them (its base fields), input included."""
    return [
        {
            "_id": f"token_{index:06d}",
            "type": "task",
            "lock": 0,
            "done": 0,
            "hostname": "",
            "scrub_count": 0,
            "input": {"kind": "demo.sleep", "ms": 0, "task": f"bench{index // 250}"},
            "exit_code": "",
            "output": {},
            "uploads": {},
            "error": [],
        }
        for index in range(count)
    ]


def prepare_couchfarm(server: BenchServer, db: str, count: int) -> None:
    admin = server.admin
    server.drop_db(db)
    provision.init(admin, db, now=admin.now(), hub_user="")
    bulk(admin, db, ready_occurrences(admin.now(), count))
    # Build the index before the clock. On a cluster a view reads one copy of each shard,
    # which may not hold the bulk write yet (it was acknowledged by 2 of 3): wait for all.
    wait_for(
        lambda: admin.view(db, CLAIM_DDOC, "ready", limit=0).get("total_rows", 0) >= count,
        120,
        "the ready view to hold every item",
    )
    # The workers read who is online too (ranking backlog rows): on PouchDB Server every
    # view has its own index, built at its first query, which must not fall in the clock.
    admin.view(db, CLAIM_DDOC, "workers_by_last_seen", limit=0)
    admin.view(db, CLAIM_DDOC, "ready_buckets", limit=0)  # the backlog's pages (claim.py)
    # On CouchDB the hub's views (_design/farm, one index) too, as a running hub keeps them
    # current: ken, CouchDB's background indexer, would otherwise build that index from
    # scratch in the clock. (PouchDB Server indexes each view at its first query: none of
    # them is queried in a race.)
    if server.kind == "couchdb":
        admin.view(db, designdocs.FARM_DDOC, "leases_by_expiry", limit=0)


def prepare_picas(server: BenchServer, db: str, count: int) -> None:
    admin = server.admin
    server.drop_db(db)
    admin.create_db(db)
    admin.put(
        db,
        {"_id": "_design/Monitor", "language": "javascript", "views": {"todo": {"map": TODO_VIEW}}},
    )
    bulk(admin, db, picas_tokens(count))
    wait_for(
        lambda: admin.view(db, "Monitor", "todo", limit=0).get("total_rows", 0) >= count,
        120,
        "the todo view to hold every token",
    )


# Couchfarm claims as its engine does: from the claim feed's ready set, taking turns by
# rendezvous rank (desktop_worker/readyset.py). BENCH_CLAIM_FEED=0: one view read per claim.
FEED = os.environ.get("BENCH_CLAIM_FEED", "1") != "0"
# BENCH_RACE_AHEAD=N: Couchfarm workers claim N ahead in a backlog instead of the worker's
# default (desktop_worker.config.DEFAULT_CLAIM_AHEAD), to measure the batch size.
AHEAD = int(os.environ["BENCH_RACE_AHEAD"]) if os.environ.get("BENCH_RACE_AHEAD") else None


def race_once(
    server: BenchServer,
    system: str,
    workers: list[Child],
    db: str,
    cap: float,
    count: int,
    mode: str = "claim",
) -> dict[str, Any]:
    if system == "couchfarm":
        prepare_couchfarm(server, db, count)
    else:
        prepare_picas(server, db, count)
    for index, worker in enumerate(workers):
        prepare = {"cmd": "prepare", "db": db, "k": None, "seed": index, "mode": mode, "feed": FEED}
        if AHEAD is not None:
            prepare["ahead"] = AHEAD
        worker.send(prepare)
    readies = [worker.recv(60) for worker in workers]
    k = readies[0].get("k")
    start = server.mark(settle=0.3)
    client_cpu = sum(cpu_seconds(w.pid) for w in workers)
    t_go = time.time()
    for worker in workers:
        worker.send({"cmd": "go", "cap": cap})
    answers = [worker.recv(cap + 120) for worker in workers]
    elapsed = max(a["t_end"] for a in answers) - t_go
    client_cpu = sum(cpu_seconds(w.pid) for w in workers) - client_cpu
    figures = server.figures(start, server.mark(settle=0.5), db=db, whole_seconds=False)
    server_cpu = figures.cpu_s
    accepted_202 = figures.by_status.get("202", 0)
    requests = figures.requests
    claimed = [occ for a in answers for occ in a["claimed"]]
    # Lost races as the workers counted them, per document: a claim lost inside a
    # _bulk_docs is a row with error "conflict" in a 201 answer, which the server's status
    # counts cannot see. Couchfarm workers report ClaimStats; PiCaS workers do not.
    stats = [a.get("stats") or {} for a in answers]
    client_writes = sum(int(s.get("puts", 0)) for s in stats)
    client_lost = sum(
        int(s.get("conflicts", 0)) + int(s.get("refused", 0)) + int(s.get("abandoned", 0))
        for s in stats
    )
    locks = Counter(claimed)
    claims = len(claimed)
    # Where a claim's requests and the workers' time went, summed over the workers (their
    # own counts, load-independent: see desktop_worker.claim.ClaimStats).
    totals: Counter[str] = Counter()
    for s in stats:
        totals.update({key: int(value) for key, value in s.items()})
    per_claim = {key: value / claims for key, value in totals.items()} if claims else {}
    worker_wall = sum(float(a.get("wall_s", 0.0)) for a in answers)
    worker_slept = sum(float(a.get("slept_s", 0.0)) for a in answers)
    puts = figures.by_method.get("PUT", 0)
    lost = figures.lost_races
    if client_writes:
        lost, puts = max(lost, client_lost), max(puts, client_writes)
    conflicts_409 = figures.by_status.get("409", 0)
    server.drop_db(db)
    return {
        "claims": claims,
        "k": k,
        "distinct_items": len(locks),
        "seconds": elapsed,
        "claims_per_s": claims / elapsed if elapsed > 0 else 0.0,
        "requests": requests,
        "requests_per_claim": requests / claims if claims else None,
        "lost_races": lost,
        "http_409": conflicts_409,
        "claim_writes": puts,
        "client_lost_races": client_lost if client_writes else None,
        "http_202": accepted_202,
        "lost_per_claim": lost / claims if claims else None,
        "conflict_waste": lost / puts if puts else 0.0,
        "server_cpu_ms_per_claim": 1000 * server_cpu / claims
        if claims and server_cpu is not None
        else None,
        "client_cpu_ms_per_claim": 1000 * client_cpu / claims if claims else None,
        "client_counts": dict(totals),
        "client_counts_per_claim": per_claim,
        "client_slept_share": worker_slept / worker_wall if worker_wall else None,
        "double_claimed_items": sum(1 for n in locks.values() if n > 1),
        "double_claim_rate": sum(1 for n in locks.values() if n > 1) / len(locks) if locks else 0.0,
        "drained": all(a.get("empty") for a in answers),
        "gave_up": sum(a.get("gave_up", 0) for a in answers),
        "endpoints": figures.endpoints
        or {**figures.by_method, **{f"-> {k}": v for k, v in figures.by_status.items()}},
        "server": figures.to_json(),
    }


def start_workers(
    server: BenchServer, system: str, count: int, passwords: dict[str, Path], logs: Path
) -> list[Child]:
    children = []
    for index in range(count):
        if system == "couchfarm":
            name = f"race-{index}"
            argv = [
                sys.executable,
                str(BENCH_DIR / "workers" / "cf_claim.py"),
                server.worker_url(index),
                name,
                str(passwords[name]),
            ]
            env = python_env()
        else:
            argv = [
                str(PICAS_PYTHON),
                str(BENCH_DIR / "workers" / "picas_claim.py"),
                server.worker_url(index),
                server.admin_user,
                str(passwords["admin"]),
            ]
            env = {"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}
        children.append(
            Child(argv, log_path=logs / f"{system}-{count}-{index}.log", env=env, pipes=True)
        )
    return children


def quit_all(children: list[Child]) -> None:
    for child in children:
        try:
            child.send({"cmd": "quit"})
        except (BrokenPipeError, OSError):
            pass
    for child in children:
        child.terminate(10)


def overridden(scale: Scale, env: dict[str, str] | None = None) -> Scale:
    """The scale with the claim race's BENCH_RACE_* overrides applied."""
    env = dict(os.environ if env is None else env)
    changes: dict[str, Any] = {}
    if env.get("BENCH_RACE_ITEMS", "").strip():
        changes["race_items"] = int(env["BENCH_RACE_ITEMS"])
    if env.get("BENCH_RACE_WORKERS", "").strip():
        changes["race_workers"] = tuple(
            int(x) for x in env["BENCH_RACE_WORKERS"].split(",") if x.strip()
        )
    if env.get("BENCH_RACE_CAP_S", "").strip():
        changes["race_cap_s"] = float(env["BENCH_RACE_CAP_S"])
    if env.get("BENCH_RACE_REPS", "").strip():
        changes["reps"] = int(env["BENCH_RACE_REPS"])
    return dataclasses.replace(scale, **changes) if changes else scale


def run(server: BenchServer, scale: Scale, workdir: Path) -> Section:
    scale = overridden(scale)
    quorum = {k: os.environ[k] for k in ("BENCH_COUCH_W", "BENCH_COUCH_R") if os.environ.get(k)}
    where = ""
    if server.cluster:
        where = (
            f" Cluster of {len(server.node_urls)} node URLs, workers "
            + ("pinned to the first node" if server.pin_node else "round-robin over them")
            + (f", Couchfarm workers with {quorum}" if quorum else "")
            + "."
        )
    section = Section(
        "claim_race",
        "See bench/claim_race.py. "
        + f"N = {scale.race_items:,} ready items per run, cap {scale.race_cap_s:g} s per run, "
        + f"{scale.reps} repetitions, workers {list(scale.race_workers)}."
        + where,
    )
    if not PICAS_PYTHON.exists():
        section.status, section.why = "skipped", "bench/.venv-picas is missing (make bench)"
        return section
    admin = server.admin
    names = [f"race-{i}" for i in range(max(scale.race_workers))]
    passwords = add_users(admin, names, WORKER_ROLE, workdir / "passwords")
    admin_file = workdir / "passwords" / "admin.password"
    admin_file.write_text(server.admin_password)
    admin_file.chmod(0o600)
    passwords["admin"] = admin_file
    logs = workdir / "logs"
    by_workers: dict[str, Any] = {}
    for count in scale.race_workers:
        runs: dict[str, list[dict[str, Any]]] = {"couchfarm": [], "picas": []}
        pools = {
            system: start_workers(server, system, count, passwords, logs)
            for system in ("couchfarm", "picas")
        }
        try:
            for rep in range(scale.reps):
                order = ("couchfarm", "picas") if rep % 2 == 0 else ("picas", "couchfarm")
                for system in order:
                    db = f"bench_race_{system}_w{count}_r{rep}"
                    result = race_once(
                        server, system, pools[system], db, scale.race_cap_s, scale.race_items
                    )
                    runs[system].append(result)
                    log(
                        f"claim race {system:9s} W={count:2d} rep {rep}: "
                        f"{result['claims_per_s']:.1f} claims/s, "
                        f"{result['requests_per_claim'] or 0:.2f} req/claim, "
                        f"waste {result['conflict_waste']:.1%}, "
                        f"doubles {result['double_claimed_items']}, "
                        f"202s {result['http_202']}, "
                        f"{result['claims']} claims of {result['distinct_items']} items, "
                        f"server {result['server_cpu_ms_per_claim'] or 0:.2f} / client "
                        f"{result['client_cpu_ms_per_claim'] or 0:.2f} ms CPU per claim, "
                        f"slept {result['client_slept_share'] or 0:.0%}, per claim "
                        + ", ".join(
                            f"{key} {value:.3f}"
                            for key, value in result["client_counts_per_claim"].items()
                            if value
                        )
                    )
        finally:
            for pool in pools.values():
                quit_all(pool)
        by_workers[str(count)] = {
            system: {
                "claims_per_s": summary(r["claims_per_s"] for r in results),
                "requests_per_claim": summary(r["requests_per_claim"] for r in results),
                "lost_per_claim": summary(r["lost_per_claim"] for r in results),
                "conflict_waste": summary(r["conflict_waste"] for r in results),
                "double_claim_rate": summary(r["double_claim_rate"] for r in results),
                "server_cpu_ms_per_claim": summary(r["server_cpu_ms_per_claim"] for r in results),
                "client_cpu_ms_per_claim": summary(r["client_cpu_ms_per_claim"] for r in results),
                "double_claimed_items": sum(r["double_claimed_items"] for r in results),
                "double_claimed_per_run": [r["double_claimed_items"] for r in results],
                "http_202_per_run": [r["http_202"] for r in results],
                "claims_total": sum(r["claims"] for r in results),
                "runs": results,
            }
            for system, results in runs.items()
        }
        cf = by_workers[str(count)]["couchfarm"]["claims_per_s"]["values"]
        pc = by_workers[str(count)]["picas"]["claims_per_s"]["values"]
        # Ratio per repetition (the two systems ran back to back), then the median.
        by_workers[str(count)]["ratio_couchfarm_over_picas"] = summary(
            a / b for a, b in zip(cf, pc, strict=True) if b
        )
    section.data = {
        "items_per_run": scale.race_items,
        "cap_s": scale.race_cap_s,
        "by_workers": by_workers,
        "nodes": server.node_urls if server.cluster else [server.url],
        "pinned": server.pin_node,
        "quorum": quorum,
    }
    if os.environ.get("BENCH_RACE_PICAS_CYCLE", "1") != "0":
        section.data["picas_cycle"] = picas_cycle(server, scale, passwords, logs)
    return section


def picas_cycle(
    server: BenchServer, scale: Scale, passwords: dict[str, Path], logs: Path
) -> dict[str, Any]:
    """PiCaS's whole cycle per token (RunActor: view, GET, PUT lock, PUT done)."""
    count = scale.picas_cycle_workers
    pool = start_workers(server, "picas", count, passwords, logs)
    results = []
    try:
        for rep in range(scale.reps):
            db = f"bench_picas_cycle_r{rep}"
            result = race_once(
                server,
                "picas",
                pool,
                db,
                scale.picas_cycle_cap_s,
                scale.picas_cycle_items,
                mode="cycle",
            )
            results.append(result)
            log(
                f"picas cycle W={count} rep {rep}: {result['claims_per_s']:.1f} tokens/s, "
                f"{result['requests_per_claim'] or 0:.2f} req/token"
            )
    finally:
        quit_all(pool)
    return {
        "workers": count,
        "items_per_run": scale.picas_cycle_items,
        "tokens_per_s": summary(r["claims_per_s"] for r in results),
        "requests_per_token": summary(r["requests_per_claim"] for r in results),
        "double_claimed_items": sum(r["double_claimed_items"] for r in results),
        "runs": results,
    }
