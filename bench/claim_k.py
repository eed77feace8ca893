"""Claim throughput and 409 ratio for K (random pick among the first K ready rows).

For each thread count and K: a fresh farm database with N ready ``demo.sleep``
occurrences; T threads, each a separate worker user with its own client, claim one
occurrence at a time with :class:`desktop_worker.claim.Claimer` (the engine's code) until
the view is empty or the time cap is reached. Reports claims/s, the share of claim PUTs
that lost the race (409 on CouchDB; PouchDB Server answers 403 from validate_doc_update),
view reads per claim, and checks that no occurrence was leased twice.

    .venv/bin/python bench/claim_k.py                       # PouchDB Server it starts itself
    COUCHDB_URL=http://127.0.0.1:5984 COUCHDB_USER=admin COUCHDB_PASSWORD=... \\
        .venv/bin/python bench/claim_k.py --threads 4,16 --k 1,3,5,10 --occurrences 1000
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from desktop_worker.claim import Claimer, ClaimStats
from hub import provision
from hub.devserver import DevServer
from hub.protocol import states
from hub.protocol.couch import Couch
from hub.protocol.model import Task, task_id
from hub.protocol.names import WORKER_ROLE
from hub.protocol.timefmt import to_wire


def make_occurrences(admin: Couch, db: str, count: int) -> None:
    now = admin.now().replace(microsecond=0)
    stamp = to_wire(now)
    per_task = 250
    docs = []
    for index in range(count):
        slug = f"bench{index // per_task}"
        task = Task(
            _id=task_id("bench", slug),
            client="bench",
            slug=slug,
            kind="demo.sleep",
            input={"ms": 0},
            schedule={"every": 60},
            ttr=600,
            created_at=stamp,
            updated_at=stamp,
        )
        due = now - timedelta(minutes=index + 1)  # all due, oldest last in the id space
        docs.append(states.materialize(task, due, now).to_doc())
    for start in range(0, len(docs), 500):
        rows = admin.bulk_docs(db, docs[start : start + 500])
        bad = [row for row in rows if "error" in row]
        if bad:
            raise SystemExit(f"could not create occurrences: {bad[:3]}")


def run_one(
    url: str, admin: Couch, passwords: dict[str, str], threads: int, k: int, n: int, cap: float
) -> dict[str, float]:
    db = f"bench_claim_k{k}_t{threads}_{secrets.token_hex(3)}"
    provision.init(admin, db, now=admin.now(), hub_user="")
    make_occurrences(admin, db, n)
    names = [f"bench{i}" for i in range(threads)]
    won: list[list[str]] = [[] for _ in names]
    stats = [ClaimStats() for _ in names]
    latencies: list[list[float]] = [[] for _ in names]
    barrier = threading.Barrier(threads + 1)
    deadline = [0.0]

    def worker(index: int) -> None:
        name = names[index]
        couch = Couch(url, name, passwords[name])
        claimer = Claimer(couch, db, name, ["default"], k=k, rng=random.Random(index))
        couch.session()  # sample the clock, warm the connection
        barrier.wait()
        while time.monotonic() < deadline[0]:
            began = time.monotonic()
            result = claimer.claim(1)
            stats[index].add(result.stats)
            if result.won:
                latencies[index].append(time.monotonic() - began)
                won[index].extend(occ.id for occ in result.won)
            elif result.candidates == 0 and not result.contended:
                return  # the tube is empty

    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for thread in pool:
        thread.start()
    deadline[0] = time.monotonic() + cap
    barrier.wait()
    started = time.monotonic()
    for thread in pool:
        thread.join()
    elapsed = time.monotonic() - started
    total = ClaimStats()
    for item in stats:
        total.add(item)
    claimed = [occ for ids in won for occ in ids]
    doubles = sum(1 for count in Counter(claimed).values() if count > 1)
    flat = sorted(x for lat in latencies for x in lat)
    admin.delete_db(db)
    for month_db in [name for name in admin.all_dbs() if name.startswith(f"{db}_results_")]:
        admin.delete_db(month_db)
    return {
        "threads": threads,
        "k": k,
        "claims": len(claimed),
        "seconds": elapsed,
        "claims_per_s": len(claimed) / elapsed if elapsed else 0.0,
        # PouchDB answers a lost race with 403, CouchDB with 409: count both.
        "conflict_ratio": total.lost_races / total.puts if total.puts else 0.0,
        "puts": total.puts,
        "conflicts": total.lost_races,
        "view_reads_per_claim": total.view_reads / len(claimed) if claimed else 0.0,
        "requests_per_claim": (total.view_reads + total.puts) / len(claimed) if claimed else 0.0,
        "p50_claim_ms": 1000 * statistics.median(flat) if flat else 0.0,
        "p95_claim_ms": 1000 * flat[int(0.95 * (len(flat) - 1))] if flat else 0.0,
        "doubles": doubles,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="4,16")
    parser.add_argument("--k", default="1,3,5,10")
    parser.add_argument("--occurrences", type=int, default=1000)
    parser.add_argument("--cap", type=float, default=20.0, help="seconds per configuration")
    args = parser.parse_args()
    thread_counts = [int(x) for x in args.threads.split(",")]
    ks = [int(x) for x in args.k.split(",")]

    dev = None
    url = os.environ.get("COUCHDB_URL")
    if url:
        admin = Couch(url, os.environ.get("COUCHDB_USER", "admin"), os.environ["COUCHDB_PASSWORD"])
    else:
        dev = DevServer(Path(tempfile.mkdtemp(prefix="claim-k-"))).start()
        url = dev.url
        admin = Couch(url, dev.admin_user, dev.admin_password)
    try:
        passwords = {f"bench{i}": secrets.token_urlsafe(12) for i in range(max(thread_counts))}
        for name, secret in passwords.items():
            provision.add_user(admin, name, [WORKER_ROLE], secret, replace=True)
        print(
            f"server {url}, {args.occurrences} ready occurrences per run, cap {args.cap:g} s",
            flush=True,
        )
        header = (
            f"{'threads':>7} {'K':>3} {'claims':>6} {'claims/s':>9} {'lost/PUT':>9} "
            f"{'reads/claim':>11} {'req/claim':>9} {'p50 ms':>7} {'p95 ms':>7} {'doubles':>7}"
        )
        print(header, flush=True)
        for threads in thread_counts:
            for k in ks:
                r = run_one(url, admin, passwords, threads, k, args.occurrences, args.cap)
                print(
                    f"{r['threads']:>7} {r['k']:>3} {r['claims']:>6} {r['claims_per_s']:>9.1f} "
                    f"{r['conflict_ratio']:>9.3f} {r['view_reads_per_claim']:>11.2f} "
                    f"{r['requests_per_claim']:>9.2f} {r['p50_claim_ms']:>7.0f} "
                    f"{r['p95_claim_ms']:>7.0f} {r['doubles']:>7}",
                    flush=True,
                )
    finally:
        if dev is not None:
            dev.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
