"""Many real worker engines in one process, runs made in-process: the fleet benchmark's host.

Each worker is ``desktop_worker.engine.Engine`` with its real claim, feed, touch, finish,
spool and heartbeat code, and its own CouchDB user and client. Only the run is replaced
(``start_run=``): :class:`SleepRun` waits out the occurrence's ``demo.sleep`` duration (its
``ms``) and then reports an outcome shaped as the runner's (``runner.Outcome``), so a
200-worker fleet fits on 2 cores. The engine polls the handle as it polls a child process.

Bytes sent to each worker are counted at its client's HTTP sessions (``requests.Session.send``
of each server's ``CouchService``, wrapped here; hub/ and desktop_worker/ are unchanged): the
headers plus the body as read, and for streamed responses (the continuous ``_changes`` feed)
what the engine has read so far. Requests are counted too, by what they did.

Protocol: JSON lines on stdin, answers on stdout (``bench.common.Child`` with pipes):
``{"cmd": "start"}`` → ``{"started": n}``; ``{"cmd": "sample"}`` → bytes and requests per
worker, requests by endpoint, runs, CPU of this process; ``{"cmd": "claims"}`` → each
claimed occurrence's ``lease.claimed_at``; ``{"cmd": "runs"}`` → every run each worker
started and how it ended (``[worker, occ, attempt, claimed_at, status]``, status ``""``
while running: bench/cluster.py counts double claims and double runs from them);
``{"cmd": "stop"}`` → stops every engine (in parallel) and answers ``{"stopped": n}``.

``--urls`` (one per name, comma-separated) gives each worker its own server URL: a
cluster's node URLs, round-robin (bench.common ``BenchServer.worker_url``); else ``--url``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import psutil

from bench.common import LogLine, endpoint
from desktop_worker.config import WorkerConfig
from desktop_worker.engine import Engine, default_couch_factory
from desktop_worker.runner import Outcome
from hub.protocol.couch import Couch


class SleepRun:
    """A run handle (as ``runner.start_run`` returns) whose run sleeps ``ms`` and succeeds."""

    pid = None
    progress = None

    def __init__(self, ms: float) -> None:
        self.started = time.monotonic()
        self.ends = self.started + max(0.0, ms) / 1000.0
        self.cancelled = False

    def poll(self) -> Outcome | None:
        now = time.monotonic()
        if now < self.ends:
            return None
        ms = round((self.ends - self.started) * 1000)
        return Outcome(status="ok", output={"slept_ms": ms}, duration_s=now - self.started)

    def wait(self, timeout: float | None = None) -> Outcome | None:
        left = self.ends - time.monotonic()
        if left > 0:
            time.sleep(left if timeout is None else min(left, timeout))
        return self.poll()

    def cancel(self, reason: str = "cancelled") -> None:
        self.cancelled = True


def start_sleep(kind: str, input: dict, limits: Any, policy: Any) -> SleepRun:
    return SleepRun(float(input.get("ms", 0)) if kind == "demo.sleep" else 0.0)


class Traffic:
    """What one worker's client received: bytes, requests, requests by endpoint."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.bytes = 0
        self.requests = 0
        self.endpoints: Counter[str] = Counter()

    def add(self, n: int) -> None:
        with self.lock:
            self.bytes += n

    def request(self, label: str) -> None:
        with self.lock:
            self.requests += 1
            self.endpoints[label] += 1


class ClaimTimes:
    """Each claim's ``lease.claimed_at`` (hub time, as written), noted when its run starts.

    Read from the engine's run table (``Engine._runs``: no public accessor carries it); the
    bench falls back to revision 2 of the occurrence when this finds nothing."""

    def __init__(self, engine: Engine, claims: dict[str, str], lock: threading.Lock) -> None:
        self.engine = engine
        self.claims = claims
        self.lock = lock

    def __call__(self, event: Any) -> None:
        if event.name != "run_started" or not event.occ_id:
            return
        run = getattr(self.engine, "_runs", {}).get(event.occ_id)
        claimed = getattr(run, "claimed_at", "") if run is not None else ""
        if not claimed and run is not None and getattr(run.occ, "lease", None) is not None:
            claimed = run.occ.lease.claimed_at
        if claimed:
            with self.lock:
                self.claims[event.occ_id] = claimed


class RunLog:
    """Every run a worker started and how it ended (the engine's events, noted in order)."""

    def __init__(self, engine: Engine, name: str, runs: list[list[Any]], lock: threading.Lock):
        self.engine = engine
        self.name = name
        self.runs = runs
        self.lock = lock
        self.open: dict[str, list[Any]] = {}

    def __call__(self, event: Any) -> None:
        if event.name == "run_started" and event.occ_id:
            run = getattr(self.engine, "_runs", {}).get(event.occ_id)
            occ = getattr(run, "occ", None)
            attempt = getattr(occ, "attempt", None)
            claimed = getattr(run, "claimed_at", "") if run is not None else ""
            entry = [self.name, event.occ_id, attempt, claimed, ""]
            with self.lock:
                self.open[event.occ_id] = entry
                self.runs.append(entry)
        elif event.name == "run_finished" and event.occ_id:
            with self.lock:
                entry = self.open.pop(event.occ_id, None)
                if entry is not None:
                    entry[4] = event.status or ""


def _header_bytes(response: Any) -> int:
    # Status line and headers as sent ("Name: value\r\n"), plus the blank line.
    size = len(f"HTTP/1.1 {response.status_code} {response.reason or ''}\r\n") + 2
    for name, value in response.headers.items():
        size += len(name) + len(str(value)) + 4
    return size


def count_traffic(couch: Couch, traffic: Traffic) -> Couch:
    """Count every response this client's sessions receive (one wrap per session)."""
    for server in couch.servers:
        session = server.service.http_client
        original = session.send

        def send(request: Any, _original: Any = original, **kwargs: Any) -> Any:
            response = _original(request, **kwargs)
            split = urlsplit(request.url)
            path = split.path + (f"?{split.query}" if split.query else "")
            label = endpoint(LogLine(0, request.method, path, response.status_code))
            if response.status_code >= 400:
                label += f" -> {response.status_code}"
            traffic.request(label)
            traffic.add(_header_bytes(response))
            if kwargs.get("stream"):
                # Streamed (the _changes feed): count chunks as the engine reads them;
                # .content and iter_lines both read through iter_content.
                inner = response.iter_content

                def iter_content(*args: Any, _inner: Any = inner, **kw: Any) -> Any:
                    for chunk in _inner(*args, **kw):
                        traffic.add(len(chunk))
                        yield chunk

                response.iter_content = iter_content
            else:
                traffic.add(len(response.content or b""))
            return response

        session.send = send
    return couch


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--urls", default="", help="comma-separated, one URL per name")
    parser.add_argument("--db", required=True)
    parser.add_argument("--names", required=True, help="comma-separated worker/user names")
    parser.add_argument("--password-file", required=True)
    parser.add_argument("--spool-dir", required=True)
    args = parser.parse_args()
    # BENCH_WORKER_LOG=INFO: the engines' claim and lapse events, to diagnose a stall.
    level = os.environ.get("BENCH_WORKER_LOG", "").strip().upper() or "WARNING"
    logging.basicConfig(
        level=getattr(logging, level, logging.WARNING),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(threadName)s %(name)s %(message)s",
    )
    password = Path(args.password_file).read_text().strip()
    names = [n for n in args.names.split(",") if n]
    urls = [u for u in args.urls.split(",") if u] or [args.url] * len(names)
    spool_dir = Path(args.spool_dir)
    spool_dir.mkdir(parents=True, exist_ok=True)
    traffic = {name: Traffic() for name in names}
    claims: dict[str, str] = {}
    claims_lock = threading.Lock()
    runs: list[list[Any]] = []
    engines: list[Engine] = []
    for name, url in zip(names, urls, strict=True):
        config = WorkerConfig(
            hub_urls=[url],
            name=name,
            password=password,
            db=args.db,
            tubes=["default"],
            slots=1,
            spool_path=spool_dir / f"spool-{name}.sqlite3",
        )

        def factory(cfg: WorkerConfig, _t: Traffic = traffic[name]) -> Couch:
            return count_traffic(default_couch_factory(cfg), _t)

        engine = Engine(config, couch_factory=factory, start_run=start_sleep)
        engine.add_listener(ClaimTimes(engine, claims, claims_lock))
        engine.add_listener(RunLog(engine, name, runs, claims_lock))
        engines.append(engine)
    me = psutil.Process()

    def reply(message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    for raw in sys.stdin:
        line = raw.strip()
        if not line:
            continue
        cmd = json.loads(line).get("cmd")
        if cmd == "start":
            for engine in engines:
                engine.start()
            reply({"started": len(engines)})
        elif cmd == "sample":
            endpoints: Counter[str] = Counter()
            workers = {}
            for name, t in traffic.items():
                with t.lock:
                    workers[name] = {"bytes": t.bytes, "requests": t.requests}
                    endpoints.update(t.endpoints)
            times = me.cpu_times()
            reply(
                {
                    "at": time.time(),
                    "workers": workers,
                    "endpoints": dict(endpoints),
                    "done": sum(e.totals["done"] for e in engines),
                    "lost": sum(e.totals["lost"] for e in engines),
                    "cpu_s": times.user + times.system,
                    "threads": me.num_threads(),
                }
            )
        elif cmd == "claims":
            with claims_lock:
                reply({"claims": dict(claims)})
        elif cmd == "runs":
            with claims_lock:
                reply({"runs": [list(entry) for entry in runs]})
        elif cmd == "stop":
            stoppers = [
                threading.Thread(target=engine.stop, kwargs={"timeout": 10.0}, daemon=True)
                for engine in engines
            ]
            for thread in stoppers:
                thread.start()
            for thread in stoppers:
                thread.join(30)
            reply({"stopped": len(engines)})
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
