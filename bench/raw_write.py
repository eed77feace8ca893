"""The server's raw single-document write rate: the yardstick for the end-to-end figure.

Fresh plain database (no design doc, no validate_doc_update), server admin, new documents
shaped like an occurrence (same JSON, about 0.8 KB), one PUT each, from 1 and from 8
client threads (a ``requests.Session`` each, keep-alive). Each repetition writes
``raw_docs`` documents; the rate is documents / wall time.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime

import requests

from bench.common import BenchServer, Scale, Section, log, ready_occurrences, summary


def _one_rep(server: BenchServer, db: str, clients: int, count: int, rep: int) -> float:
    template = ready_occurrences(datetime.now(UTC), 1)[0]
    template.pop("_id", None)
    body_base = json.dumps(template)[1:]  # everything after '{'
    auth = (server.admin_user, server.admin_password)
    per_client = [count // clients + (1 if i < count % clients else 0) for i in range(clients)]
    errors: list[str] = []
    barrier = threading.Barrier(clients + 1)

    def client(index: int) -> None:
        session = requests.Session()
        session.auth = auth
        session.headers["Content-Type"] = "application/json"
        session.get(f"{server.url}/", timeout=10)  # warm the connection
        barrier.wait()
        for n in range(per_client[index]):
            doc_id = f"raw-{rep}-{index}-{n}"
            reply = session.put(
                f"{server.url}/{db}/{doc_id}",
                data='{"_id":"' + doc_id + '",' + body_base,
                timeout=30,
            )
            if reply.status_code != 201:
                errors.append(f"{reply.status_code} {reply.text[:100]}")
                return
        session.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join(120)
    elapsed = time.perf_counter() - began
    if errors:
        raise RuntimeError(f"raw write failed: {errors[:3]}")
    return count / elapsed


def run(server: BenchServer, scale: Scale) -> Section:
    section = Section("raw_write", __doc__.strip().split("\n\n", 1)[1].replace("\n", " "))
    admin = server.admin
    by_clients = {}
    for clients in scale.raw_clients:
        rates = []
        for rep in range(scale.reps):
            db = f"bench_raw_c{clients}_r{rep}"
            server.drop_db(db)
            admin.create_db(db)
            rates.append(_one_rep(server, db, clients, scale.raw_docs, rep))
            server.drop_db(db)
        by_clients[str(clients)] = summary(rates)
        log(f"raw write, {clients} client(s): {[round(r) for r in rates]} docs/s")
    best = max(by_clients.values(), key=lambda s: s["median"])
    section.data = {
        "docs_per_rep": scale.raw_docs,
        "docs_per_s_by_clients": by_clients,
        # The yardstick: the higher of the medians (the less flattering denominator).
        "yardstick_docs_per_s": best["median"],
    }
    return section
