"""Server-side profile: PouchDB Server CPU per request, by kind of request.

On a fresh farm database, the bench sends one kind of request at a time from one client
(keep-alive) and divides the server process's CPU time (psutil) by the number sent. With
the request mix of each scenario (counted from the log) this says where the server's time
goes. Kinds: ``GET /`` without auth (the floor), a document GET by a worker, a new-document
PUT by the server admin on a plain database, a claim PUT by a worker (runs
validate_doc_update), a ``ready`` view read (limit 9, include_docs) with the index current,
the index update a view read pays per document changed since the last read, a hub-style
``_changes`` read (include_docs, conflicts) and ``_bulk_docs`` per document (batches of 100).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests

from bench.common import (
    BenchServer,
    Scale,
    Section,
    add_users,
    bulk,
    log,
    ready_occurrences,
)
from hub import provision
from hub.protocol import states
from hub.protocol.model import Occurrence
from hub.protocol.names import CLAIM_DDOC, WORKER_ROLE


def run(server: BenchServer, scale: Scale, workdir: Path) -> Section:
    n = 150 if scale.name == "full" else 60  # requests per kind and repetition
    section = Section(
        "server_costs", (__doc__ or "").strip().split("\n\n", 1)[1].replace("\n", " ")
    )
    admin = server.admin
    db, plain = "bench_costs", "bench_costs_plain"
    for name in (db, plain):
        server.drop_db(name)
    provision.init(admin, db, now=admin.now(), hub_user="")
    admin.create_db(plain)
    worker_pw = add_users(admin, ["w-cost"], WORKER_ROLE, workdir / "passwords")
    url = server.url
    root = requests.Session()
    root.auth = (server.admin_user, server.admin_password)
    worker = requests.Session()
    worker.auth = ("w-cost", worker_pw["w-cost"].read_text())
    anonymous = requests.Session()
    costs: dict[str, list[float]] = {}
    view = f"{url}/{db}/_design/{CLAIM_DDOC}/_view/ready"
    view_params = {
        "limit": 9,
        "include_docs": "true",
        "startkey": '["default"]',
        "endkey": '["default",{}]',
    }

    def measure(label: str, count: int, action: Callable[[int], Any]) -> None:
        before = server.cpu_seconds()
        for i in range(count):
            action(i)
        costs.setdefault(label, []).append(1000 * (server.cpu_seconds() - before) / count)

    try:
        for rep in range(scale.reps):
            # Each repetition's occurrences are due on another day: other ids, same shape.
            docs = ready_occurrences(datetime.now(UTC) - timedelta(days=rep + 1), n)
            bulk(admin, db, docs)
            worker.get(view, params=view_params).raise_for_status()  # index current
            measure("GET / (no auth)", n, lambda i: anonymous.get(f"{url}/").raise_for_status())
            measure(
                "GET doc (worker)",
                n,
                lambda i, docs=docs: worker.get(f"{url}/{db}/{docs[i]['_id']}").raise_for_status(),
            )
            measure(
                "PUT new doc (plain db, admin)",
                n,
                lambda i, docs=docs: root.put(
                    f"{url}/{plain}/{docs[i]['_id']}", json=docs[i]
                ).raise_for_status(),
            )
            measure(
                "view ready read (index current)",
                n,
                lambda i: worker.get(view, params=view_params).raise_for_status(),
            )
            current = [worker.get(f"{url}/{db}/{d['_id']}").json() for d in docs]
            now = datetime.now(UTC)
            claims = [states.claim(Occurrence.from_doc(d), "w-cost", now).to_doc() for d in current]
            measure(
                "claim PUT (worker, validate_doc_update)",
                n,
                lambda i, claims=claims: worker.put(
                    f"{url}/{db}/{claims[i]['_id']}", json=claims[i]
                ).raise_for_status(),
            )
            measure(
                "view index update, per changed doc",
                1,
                lambda i: worker.get(view, params=view_params).raise_for_status(),
            )
            costs["view index update, per changed doc"][-1] /= n
            # The last 5 changes. CouchDB's seqs are opaque: take the 6th newest's own seq.
            newest = root.get(
                f"{url}/{db}/_changes", params={"descending": "true", "limit": 6}
            ).json()["results"]
            since = newest[-1]["seq"] if len(newest) == 6 else 0
            measure(
                "_changes include_docs+conflicts (hub follow)",
                n,
                lambda i, since=since: root.get(
                    f"{url}/{db}/_changes",
                    params={"since": since, "include_docs": "true", "conflicts": "true"},
                ).raise_for_status(),
            )
            batches = [ready_occurrences(datetime.now(UTC), 100) for _ in range(3)]
            for b, batch in enumerate(batches):
                for doc in batch:
                    doc["_id"] += f"-bulk{rep}-{b}"
            measure(
                "_bulk_docs, per doc (batches of 100)",
                3,
                lambda i, batches=batches: root.post(
                    f"{url}/{plain}/_bulk_docs", json={"docs": batches[i]}
                ).raise_for_status(),
            )
            costs["_bulk_docs, per doc (batches of 100)"][-1] /= 100
    finally:
        for name in (db, plain):
            server.drop_db(name)
    section.data = {
        "server_cpu_ms_per_request": {
            label: {"median": statistics.median(v), "min": min(v), "max": max(v), "values": v}
            for label, v in costs.items()
        }
    }
    log(
        "server CPU ms/request: "
        + ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in costs.items())
    )
    return section
