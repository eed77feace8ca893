"""One Couchfarm claim-race worker: desktop_worker.claim.Claimer, the engine's claim code.

Started by bench/claim_race.py as ``python bench/workers/cf_claim.py URL NAME PASSWORD_FILE``.
Commands, one JSON object per line on stdin; one answer per command on stdout:

- ``{"cmd": "prepare", "db": DB, "k": K or null, "seed": N, "feed": bool}`` ->
  ``{"ready": true}`` (client made, credentials checked, connection warm). With ``feed``, as
  the engine does: a worker doc, the ``claim_feed`` stream into a ready set, and claims
  from it (desktop_worker/feed.py, readyset.py); without, a ``ready`` view read per claim;
- ``{"cmd": "go", "cap": SECONDS}`` -> claims as the engine's claim loop does for a worker
  with one slot whose runs end at once: one occurrence per claim, and in a backlog (the
  last read was a full page) one more plus ``claim_ahead`` (the worker's default, or
  ``"ahead"`` from ``prepare``) in one ``_bulk_docs`` (desktop_worker/claimloop.py), until
  the ready view is empty or the cap passes -> ``{"claimed": [ids], "t_end": epoch,
  "stats": {...}}``;
- ``{"cmd": "quit"}``.

``BENCH_COUCH_W`` / ``BENCH_COUCH_R`` in the environment (a cluster's quorum settings):
every write (PUT, ``_bulk_docs``) carries ``?w=``, every document GET ``?r=``, added at
this client's HTTP session (hub/ and desktop_worker/ are unchanged).
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from desktop_worker.claim import Claimer, ClaimStats
from desktop_worker.config import DEFAULT_CLAIM_AHEAD, DEFAULT_CLAIM_K
from desktop_worker.feed import ClaimFeed
from desktop_worker.readyset import ReadySet
from hub.protocol.couch import Couch
from hub.protocol.model import WorkerDoc, worker_id
from hub.protocol.timefmt import to_wire
from hub.protocol.version import __version__


def reply(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def with_quorum(couch: Couch, w: str, r: str) -> Couch:
    """Add ``w`` to writes and ``r`` to document reads (CouchDB cluster quorum options)."""
    if not (w or r):
        return couch
    for server in couch.servers:
        session = server.service.http_client
        original = session.send

        def send(request: Any, _original: Any = original, **kwargs: Any) -> Any:
            parts = urlsplit(request.url)
            name = parts.path.rsplit("/", 1)[-1]
            extra = {}
            if (
                w
                and request.method in ("PUT", "POST")
                and (name == "_bulk_docs" or not name.startswith("_"))
            ):
                extra["w"] = w
            elif r and request.method == "GET" and not name.startswith("_"):
                extra["r"] = r
            if extra:
                query = urlencode([*parse_qsl(parts.query, keep_blank_values=True), *extra.items()])
                request.url = urlunsplit(parts._replace(query=query))
            return _original(request, **kwargs)

        session.send = send
    return couch


def start_feed(couch: Couch, db: str, name: str, ready: ReadySet, stop: threading.Event) -> None:
    """What the engine does at start: say it is online, then follow the claim feed."""
    now = to_wire(couch.now())
    doc = WorkerDoc(
        _id=worker_id(name), name=name, version=__version__, os="bench", last_seen=now,
        started_at=now,
    ).to_doc()  # fmt: skip
    current = couch.get_or_none(db, doc["_id"])
    couch.put(db, {**doc, "_rev": current["_rev"]} if current else doc)
    feed = ClaimFeed(couch, db, name, ["default"], ready, wake=lambda: None, stopping=stop)
    threading.Thread(target=feed.run, daemon=True).start()
    deadline = time.monotonic() + 10
    while not ready.live and time.monotonic() < deadline:
        time.sleep(0.02)


def main() -> int:
    url, name, password_file = sys.argv[1:4]
    couch = Couch(url, name, Path(password_file).read_text().strip())
    with_quorum(couch, os.environ.get("BENCH_COUCH_W", ""), os.environ.get("BENCH_COUCH_R", ""))
    claimer: Claimer | None = None
    ahead = DEFAULT_CLAIM_AHEAD
    feed_stop = threading.Event()
    slept = [0.0]  # seconds this worker waited (turns, back-off) during the last "go"

    def sleep(seconds: float) -> None:
        slept[0] += max(seconds, 0.0)
        time.sleep(seconds)

    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "quit":
            return 0
        if command["cmd"] == "prepare":
            feed_stop.set()  # the previous run's feed, on the previous run's database
            feed_stop = threading.Event()
            ready = None
            if command.get("feed"):
                ready = ReadySet(name, ["default"])
                start_feed(couch, command["db"], name, ready, feed_stop)
            claimer = Claimer(
                couch,
                command["db"],
                name,
                ["default"],
                k=int(command.get("k") or DEFAULT_CLAIM_K),
                rng=random.Random(command.get("seed")),
                ready_set=ready,
                sleep=sleep,
            )
            ahead = int(command.get("ahead", DEFAULT_CLAIM_AHEAD))
            couch.session()  # checks the password, samples the server clock, warms the socket
            reply({"ready": True, "k": claimer.k, "ahead": ahead})
        elif command["cmd"] == "go":
            assert claimer is not None
            deadline = time.monotonic() + float(command["cap"])
            claimed: list[str] = []
            stats = ClaimStats()
            empty = False
            slept[0] = 0.0
            cpu0, wall0 = time.process_time(), time.monotonic()
            while time.monotonic() < deadline:
                result = claimer.claim(1, ahead if claimer.in_backlog() else 0)
                stats.add(result.stats)
                claimed.extend(occ.id for occ in result.won)
                if not result.won and result.retry_in is not None:
                    sleep(result.retry_in)  # held rows are other workers' turn first
                    continue
                if not result.won and result.candidates == 0 and not result.contended:
                    empty = True
                    break
            reply(
                {
                    "claimed": claimed,
                    "t_end": time.time(),
                    "empty": empty,
                    "stats": asdict(stats),
                    "slept_s": slept[0],
                    "cpu_s": time.process_time() - cpu0,
                    "wall_s": time.monotonic() - wall0,
                }
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
