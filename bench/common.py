"""What every benchmark shares: the scale, the server and its figures, statistics,
child processes, users and documents.

The server is PouchDB Server, started by the run, or with ``COUCHDB_URL`` set any CouchDB
(:class:`BenchServer`). Requests are counted by the server, never from client counters: a
bulk request counts once, and a client cannot forget to count a retry. On PouchDB Server
they come from its request log (``DATA_DIR/log.txt``, one line per HTTP request, written
when the response ends, with a whole-second timestamp, the method, the path with its query
string and the status); on CouchDB from ``/_node/_local/_stats`` (requests by method and by
status, diffed over a window). Every section reads them the same way:
``server.mark()`` at the window's edges, then ``server.figures(start, end)``
(:class:`ServerFigures`: requests by method and status, server CPU seconds including the
server's child processes, e.g. CouchDB's ``couchjs``).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import secrets
import selectors
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import psutil

from hub import provision
from hub.devserver import DevServer
from hub.protocol import states
from hub.protocol.couch import Couch, CouchError
from hub.protocol.model import Task, task_id
from hub.protocol.timefmt import to_wire

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "bench"
PICAS_VENV = BENCH_DIR / ".venv-picas"
PICAS_PYTHON = PICAS_VENV / "bin" / "python"

# ---------------------------------------------------------------- scale


@dataclass(frozen=True)
class Scale:
    name: str
    reps: int = 3
    # raw single-document writes
    raw_docs: int = 400
    raw_clients: tuple[int, ...] = (1, 8)
    # claim race
    race_items: int = 2000
    race_cap_s: float = 3.0
    race_workers: tuple[int, ...] = (1, 4, 16)
    picas_cycle_items: int = 600
    picas_cycle_workers: int = 4
    picas_cycle_cap_s: float = 6.0
    # end to end
    e2e_workers: tuple[int, ...] = (1, 4, 8, 16)
    e2e_inline_workers: tuple[int, ...] = (1, 16)
    e2e_window_s: int = 3
    e2e_warmup_s: float = 2.0
    # latency
    latency_tasks: int = 10
    latency_every: int = 10
    latency_workers: int = 4
    latency_window_s: int = 24
    # hub capacity
    capacity_levels: tuple[int, ...] = (10_000,)
    capacity_window_s: int = 12
    # beanstalkd
    beanstalk_jobs: int = 500
    beanstalk_workers: tuple[int, ...] = (1, 4, 16)
    extra_timeout_s: float = 120.0
    # fleet (W engines, runs in-process, steady offered load)
    fleet_workers: tuple[int, ...] = (4, 16)
    fleet_tasks: int = 60
    fleet_every: int = 10
    fleet_ms: int = 200
    fleet_idle_s: int = 10
    fleet_warmup_s: int = 10
    fleet_window_s: int = 30
    fleet_per_host: int = 50


SCALES = {
    "small": Scale(name="small"),
    "full": Scale(
        name="full",
        raw_docs=2000,
        race_items=10_000,
        race_cap_s=60.0,
        picas_cycle_items=3000,
        picas_cycle_cap_s=30.0,
        e2e_inline_workers=(1, 4, 8, 16),
        e2e_window_s=15,
        e2e_warmup_s=5.0,
        latency_tasks=20,
        latency_window_s=180,
        capacity_levels=(1000, 2500, 5000, 10_000, 20_000, 40_000),
        capacity_window_s=55,
        beanstalk_jobs=10_000,
        extra_timeout_s=600.0,
        fleet_workers=(4, 16, 64, 200),
        fleet_idle_s=60,
        fleet_warmup_s=20,
        fleet_window_s=60,
    ),
}


def scale_from_env() -> Scale:
    name = os.environ.get("BENCH_SCALE", "small").strip().lower() or "small"
    if name not in SCALES:
        raise SystemExit(f"BENCH_SCALE must be one of {', '.join(SCALES)}, not {name!r}")
    return SCALES[name]


# ---------------------------------------------------------------- statistics


def percentile(values: Sequence[float], p: float) -> float | None:
    """Linear-interpolated percentile (as numpy's default); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * p / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))


def summary(values: Iterable[float | None]) -> dict[str, Any]:
    """Median, min, max and quartiles of repeated measurements."""
    data = [float(v) for v in values if v is not None]
    if not data:
        return {"n": 0, "median": None, "min": None, "max": None, "q1": None, "q3": None}
    return {
        "n": len(data),
        "median": statistics.median(data),
        "min": min(data),
        "max": max(data),
        "q1": percentile(data, 25),
        "q3": percentile(data, 75),
        "values": data,
    }


def latency_summary(values: Sequence[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values) if values else None,
    }


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def fmt_summary(s: dict[str, Any], digits: int = 1) -> str:
    """'median (min-max)'."""
    if not s or not s.get("n"):
        return "n/a"
    return f"{fmt(s['median'], digits)} ({fmt(s['min'], digits)}-{fmt(s['max'], digits)})"


# ---------------------------------------------------------------- request log

LOG_LINE = re.compile(
    r"^\[(?P<date>[^\]]+)\] \[\w+\] \[[^\]]*\] \S+ - - (?P<method>[A-Z]+) (?P<path>\S+) "
    r"(?P<status>\d{3})"
)
OBSERVER_MARK = "bench_observer=1"  # query parameter on the runner's own feed requests


@dataclass(frozen=True)
class LogLine:
    ts: int  # epoch seconds (the server writes whole seconds, GMT)
    method: str
    path: str
    status: int

    @property
    def db(self) -> str:
        first = self.path.split("?", 1)[0].split("/")[1] if "/" in self.path else ""
        return unquote(first)

    @property
    def observer(self) -> bool:
        return OBSERVER_MARK in self.path

    @property
    def lost_race(self) -> bool:
        """A write refused because the doc moved on: 409, or PouchDB's 403 from the VDU."""
        return self.method == "PUT" and self.status in (409, 403)


_DATE_CACHE: dict[str, int] = {}


def _epoch(date_text: str) -> int:
    cached = _DATE_CACHE.get(date_text)
    if cached is None:
        cached = int(parsedate_to_datetime(date_text).timestamp())
        if len(_DATE_CACHE) > 100_000:
            _DATE_CACHE.clear()
        _DATE_CACHE[date_text] = cached
    return cached


def parse_log(text: str) -> list[LogLine]:
    lines = []
    for raw in text.splitlines():
        match = LOG_LINE.match(raw)
        if match:
            lines.append(
                LogLine(
                    _epoch(match["date"]),
                    match["method"],
                    match["path"],
                    int(match["status"]),
                )
            )
    return lines


def endpoint(line: LogLine) -> str:
    """A human label for what a request did (for 'where the requests go' tables)."""
    path, _, query = line.path.partition("?")
    parts = [unquote(p) for p in path.split("/")[1:]]
    method = line.method
    if not parts or parts == [""]:
        return f"{method} /"
    if parts[0].startswith("_"):
        return f"{method} /{parts[0]}"
    db = parts[0]
    results = "_results_" in db
    prefix = "results db: " if results else ""
    if len(parts) == 1:
        return f"{prefix}{method} db info"
    rest = parts[1:]
    if rest[0] == "_design" and len(rest) >= 4 and rest[2] == "_view":
        return f"{prefix}{method} view {rest[3]}"
    if rest[0] == "_design" and len(rest) >= 4 and rest[2] == "_update":
        kind = rest[4].split(":", 1)[0] if len(rest) >= 5 else "?"
        return f"{prefix}{method} update {rest[3]} ({kind} doc)"
    if rest[0] == "_design":
        return f"{prefix}{method} design doc"
    if rest[0] == "_changes":
        if "claim_feed" in query:
            return f"{prefix}{method} _changes (claim feed)"
        if "filter=_view" in query:
            return f"{prefix}{method} _changes (worker feed)"
        if "conflicts=true" in query:
            return f"{prefix}{method} _changes (hub follow)"
        return f"{prefix}{method} _changes"
    if rest[0].startswith("_"):
        return f"{prefix}{method} {rest[0]}"
    doc_id = rest[0]
    kind = doc_id.split(":", 1)[0] if ":" in doc_id else doc_id.split("_", 1)[0]
    return f"{prefix}{method} {kind} doc"


def endpoint_counts(lines: Iterable[LogLine]) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for line in lines:
        label = endpoint(line)
        if line.status >= 400:
            label += f" -> {line.status}"
        counts[label] += 1
    return dict(counts.most_common())


# ---------------------------------------------------------------- server


@dataclass(frozen=True)
class ProcCpu:
    name: str
    ppid: int
    own: float  # user + system of the process itself
    reaped: float  # what its exited, waited-for children left in its children_* counters


def process_tree_cpu(pid: int | None) -> dict[int, ProcCpu]:
    """CPU seconds of a process and every descendant, by pid (see :func:`cpu_by_name`)."""
    if pid is None:
        return {}
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return {}
    out: dict[int, ProcCpu] = {}
    for proc in procs:
        try:
            with proc.oneshot():
                times = proc.cpu_times()
                out[proc.pid] = ProcCpu(
                    proc.name(),
                    proc.ppid(),
                    times.user + times.system,
                    times.children_user + times.children_system,
                )
        except psutil.Error:
            continue
    return out


def cpu_by_name(start: dict[int, ProcCpu], end: dict[int, ProcCpu]) -> dict[str, float]:
    """CPU seconds spent between two samples of a process tree, by process name.

    A process that exited in between (CouchDB's ``couchjs``, reaped by ``erl_child_setup``)
    left its whole lifetime in its parent's ``children_*``: that, less what it had used at
    the first sample, is charged to the exited processes' name (when the parent's exited
    children had one name, else to ``exited children of <parent>``). Nothing is counted twice.
    """
    out: dict[str, float] = {}
    for pid, now in end.items():
        before = start.get(pid)
        if before is not None and before.name != now.name:
            before = None  # pid reused
        out[now.name] = out.get(now.name, 0.0) + now.own - (before.own if before else 0.0)
    gone: dict[int, list[ProcCpu]] = {}
    for pid, then in start.items():
        if pid not in end or end[pid].name != then.name:
            gone.setdefault(then.ppid, []).append(then)
    parents = set(gone)
    for pid, now in end.items():
        before = start.get(pid)
        reaped = now.reaped - (before.reaped if before and before.name == now.name else 0.0)
        if reaped <= 0 and pid not in gone:
            continue
        dead = gone.get(pid, [])
        names = {d.name for d in dead}
        label = names.pop() if len(names) == 1 else f"exited children of {now.name}"
        out[label] = out.get(label, 0.0) + reaped - sum(d.own for d in dead)
        parents.discard(pid)
    for ppid in parents:  # exited children whose parent left the tree too: lost
        for dead in gone[ppid]:
            out[dead.name] = out.get(dead.name, 0.0) - dead.own
    return {k: round(v, 3) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}


def pid_listening_on(port: int) -> int | None:
    """The process that listens on a local TCP port (psutil; None if it cannot be seen)."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return None
    for conn in conns:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            return conn.pid
    return None


# CouchDB's /_node/_local/_stats counters a window is diffed on (each is {"value": n}).
STATS_METHODS = ("httpd_request_methods",)
STATS_STATUS = ("httpd_status_codes",)
STATS_COUNTERS = {
    "requests": ("couchdb", "httpd", "requests"),
    "bulk_requests": ("couchdb", "httpd", "bulk_requests"),
    "view_reads": ("couchdb", "httpd", "view_reads"),
    "clients_requesting_changes": ("couchdb", "httpd", "clients_requesting_changes"),
    "database_reads": ("couchdb", "database_reads"),
    "database_writes": ("couchdb", "database_writes"),
    "document_writes": ("couchdb", "document_writes"),
    "auth_cache_hits": ("couchdb", "auth_cache_hits"),
    "auth_cache_misses": ("couchdb", "auth_cache_misses"),
}


@dataclass(frozen=True)
class Mark:
    """The server's own figures at one moment: see :meth:`BenchServer.mark`."""

    at: float  # time.time() when taken
    cpu: dict[int, ProcCpu]  # CPU seconds so far of the server and its descendants, by pid
    log_offset: int = 0  # PouchDB: size of the request log
    stats: dict[str, Any] = field(default_factory=dict)  # CouchDB: flattened counters


@dataclass
class ServerFigures:
    """What the server did between two marks: requests by method and status, CPU seconds.

    ``endpoints`` (requests by what they did, e.g. ``PUT occ doc -> 409``) exists where the
    server logs each request (PouchDB Server); CouchDB's ``_stats`` gives methods, status
    codes and a few kinds (``counters``) only.
    """

    seconds: float
    requests: int
    by_method: dict[str, int]
    by_status: dict[str, int]
    cpu_s: float | None
    cpu_by_process: dict[str, float]
    endpoints: dict[str, int] | None = None
    counters: dict[str, int] = field(default_factory=dict)
    lines: list[LogLine] = field(default_factory=list)

    @property
    def lost_races(self) -> int:
        """PUTs refused because the doc moved on (409; PouchDB's VDU answers 403 first)."""
        if self.lines:
            return sum(1 for ln in self.lines if ln.lost_race)
        return self.by_status.get("409", 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "requests": self.requests,
            "by_method": self.by_method,
            "by_status": self.by_status,
            "cpu_s": self.cpu_s,
            "cpu_by_process": self.cpu_by_process,
            "endpoints": self.endpoints,
            "counters": self.counters,
        }


def by_method_status(figures: ServerFigures) -> dict[str, int]:
    """Where no log names each request (CouchDB): requests by method, then by status."""
    return {
        **{f"{method} (any)": n for method, n in figures.by_method.items()},
        **{f"status {status}": n for status, n in figures.by_status.items()},
    }


class BenchServer:
    """The one server of a run (every figure of a run comes from it).

    Without ``COUCHDB_URL`` it starts PouchDB Server (``hub.devserver.DevServer``) and counts
    requests from its log. With ``COUCHDB_URL`` (and ``COUCHDB_USER``/``COUCHDB_PASSWORD``, a
    server admin) it uses that server as it is, counts requests from
    ``/_node/_local/_stats`` and takes CPU from the process listening on the URL's port (or
    ``COUCHDB_PID``) and all its descendants (CouchDB's ``couchjs`` processes).

    A cluster: ``COUCHDB_NODE_URLS=url1,url2,url3`` names every node (``COUCHDB_URL`` is the
    one the admin, the hub and the section set-ups use). Workers spread round-robin over
    them (:meth:`worker_url`; ``BENCH_PIN_NODE=1`` puts every worker on the first node, one
    coordinator); requests are summed over every cluster node's ``/_node/{name}/_stats``,
    and server CPU over the processes listening on every node URL's port (all the cluster's
    ``beam.smp``; a node whose process cannot be seen is left out, and said so).
    """

    def __init__(self, root: Path, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ if env is None else env)
        self.root = root
        self.external_url = env.get("COUCHDB_URL", "").strip().rstrip("/") or None
        self.dev: DevServer | None = None
        self._pid: int | None = None
        self._env_pid = env.get("COUCHDB_PID", "").strip()
        self._pids: list[int] = []
        self.node_urls = [
            u.strip().rstrip("/") for u in env.get("COUCHDB_NODE_URLS", "").split(",") if u.strip()
        ]
        self.pin_node = env.get("BENCH_PIN_NODE", "").strip() in ("1", "true", "yes")
        self._stats_nodes: list[str] = ["_local"]
        if self.external_url:
            self.admin_user = env.get("COUCHDB_USER", "admin")
            self.admin_password = env.get("COUCHDB_PASSWORD", "")
        else:
            self.dev = DevServer(root / "server")
            self.admin_user = self.dev.admin_user
            self.admin_password = self.dev.admin_password
        self.kind = "couchdb" if self.external_url else "pouchdb"
        self.version = "n/a"
        self.admin: Couch
        self._mark_requests = 0  # requests a CouchDB mark itself costs (measured at start)

    def start(self) -> BenchServer:
        if self.dev is not None:
            self.dev.start()
            self._pid = self.dev.process.pid if self.dev.process else None
        self.admin = Couch(self.url, self.admin_user, self.admin_password, read_timeout=300)
        welcome = self.admin.request("GET", "/").body or {}
        self.version = str(welcome.get("version", "n/a"))
        if self.external_url:
            vendor = (welcome.get("vendor") or {}).get("name", "")
            self.kind = "couchdb" if "couchdb" in welcome else "pouchdb"
            self.version = f"{vendor or 'CouchDB'} {self.version}".strip()
            self._pid = self._find_pid()
            if self._pid is None:
                log(
                    f"cannot see the process serving {self.url}: server CPU is n/a "
                    "(set COUCHDB_PID)"
                )
            if self.cluster:
                self._pids = self._find_node_pids()
                members = self.admin.request("GET", "/_membership").body or {}
                self._stats_nodes = list(members.get("cluster_nodes") or ["_local"])
                log(
                    f"cluster: {len(self.node_urls)} node URLs, {len(self._stats_nodes)} "
                    f"cluster nodes, server CPU from pids {self._pids}; workers "
                    + ("pinned to the first node" if self.pin_node else "round-robin")
                )
            # What one mark's own _stats read adds to a window (1 on CouchDB 3.5): the least
            # of a few back-to-back differences, as other clients may be sending too.
            counts = [self._stats().get("requests", 0) for _ in range(5)]
            self._mark_requests = int(min(b - a for a, b in itertools.pairwise(counts)))
        else:
            self.version = f"PouchDB Server {self.version}"
        return self

    def _find_pid(self) -> int | None:
        if self._env_pid:
            return int(self._env_pid)
        port = urlsplit(self.url).port or (443 if self.url.startswith("https") else 80)
        return pid_listening_on(port)

    def _find_node_pids(self) -> list[int]:
        pids = []
        for url in self.node_urls:
            port = urlsplit(url).port or (443 if url.startswith("https") else 80)
            pid = pid_listening_on(port)
            if pid is None:
                log(f"cannot see the process serving {url}: its CPU is left out")
            elif pid not in pids:
                pids.append(pid)
        return pids

    @property
    def cluster(self) -> bool:
        """``COUCHDB_NODE_URLS`` names the nodes of a cluster (one URL or more)."""
        return bool(self.external_url and self.node_urls)

    def worker_url(self, index: int) -> str:
        """The node URL worker ``index`` talks to: round-robin over ``COUCHDB_NODE_URLS``
        (all on the first with ``BENCH_PIN_NODE=1``); the server's URL without a cluster."""
        if not self.cluster:
            return self.url
        if self.pin_node:
            return self.node_urls[0]
        return self.node_urls[index % len(self.node_urls)]

    def stop(self) -> None:
        if self.dev is not None:
            self.dev.stop()

    @property
    def url(self) -> str:
        if self.external_url:
            return self.external_url
        assert self.dev is not None
        return self.dev.url

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def pids(self) -> list[int]:
        """Every server process CPU is taken from: a cluster's nodes, else the one server."""
        if self._pids:
            return list(self._pids)
        return [self._pid] if self._pid is not None else []

    def _tree_cpu(self) -> dict[int, ProcCpu]:
        out: dict[int, ProcCpu] = {}
        for pid in self.pids:
            out.update(process_tree_cpu(pid))
        return out

    def cpu_seconds(self) -> float:
        """CPU seconds so far of the server(s) and every process under them (JS included)."""
        return sum(p.own + p.reaped for p in self._tree_cpu().values())

    # ------------------------------------------------------------ server figures

    def _stats(self) -> dict[str, Any]:
        """Flattened counters: this node's, or summed over every node of a cluster."""
        flat: dict[str, Any] = {}
        for node in self._stats_nodes:
            for key, value in self._node_stats(node).items():
                flat[key] = flat.get(key, 0) + value
        return flat

    def _node_stats(self, node: str) -> dict[str, Any]:
        body = self.admin.request("GET", f"/_node/{node}/_stats").body or {}
        flat: dict[str, Any] = {}
        for key, path in STATS_COUNTERS.items():
            node: Any = body
            for part in path:
                node = node.get(part, {}) if isinstance(node, dict) else {}
            if isinstance(node, dict) and "value" in node:
                flat[key] = node["value"]
        httpd = body.get("couchdb", {})
        groups = (("httpd_request_methods", "method:"), ("httpd_status_codes", "status:"))
        for group, prefix in groups:
            for name, node in (httpd.get(group) or {}).items():
                if isinstance(node, dict) and "value" in node:
                    flat[prefix + name] = node["value"]
        return flat

    def mark(self, settle: float = 0.0) -> Mark:
        """The server's figures now (after ``settle`` s for responses in flight)."""
        if settle:
            time.sleep(settle)
        at = time.time()
        cpu = self._tree_cpu()
        if self.dev is not None:
            return Mark(at, cpu, log_offset=self.log_size())
        return Mark(at, cpu, stats=self._stats())

    def figures(
        self,
        start: Mark,
        end: Mark,
        *,
        db: str | None = None,
        exclude: int = 0,
        whole_seconds: bool = True,
    ) -> ServerFigures:
        """What the server did between two marks.

        PouchDB: the log lines between the marks (with ``whole_seconds``, the lines stamped
        in seconds [floor(start), floor(end)), read a little before and after the marks'
        offsets, so responses still in flight at a mark land in the right window; call it
        after the end mark has settled), minus the runner's observer, only ``db`` if given.
        CouchDB: the counters' differences, server-wide (``db`` cannot be told apart), minus
        the marks' own ``_stats`` reads and ``exclude`` requests the caller sent itself.
        """
        seconds = end.at - start.at
        cpu_by = cpu_by_name(start.cpu, end.cpu)
        cpu = sum(cpu_by.values()) if (end.cpu or start.cpu) else None
        if self.dev is not None:
            if whole_seconds:
                lo, hi = math.floor(start.at), math.floor(end.at)
                text_lines = self.log_lines(max(0, start.log_offset - 65536))
                lines = [ln for ln in lines_in_window(text_lines, lo, hi)]
            else:
                lines = [
                    ln for ln in self.log_lines(start.log_offset, end.log_offset) if not ln.observer
                ]
            if db is not None:
                lines = [ln for ln in lines if ln.db == db]
            return ServerFigures(
                seconds=seconds,
                requests=len(lines),
                by_method=dict(Counter(ln.method for ln in lines).most_common()),
                by_status=dict(Counter(str(ln.status) for ln in lines).most_common()),
                cpu_s=cpu,
                cpu_by_process=cpu_by,
                endpoints=endpoint_counts(lines),
                lines=lines,
            )
        diff = {
            key: int(end.stats.get(key, 0) - start.stats.get(key, 0))
            for key in set(end.stats) | set(start.stats)
        }
        own = self._mark_requests + exclude  # the end mark's _stats GET (+ the caller's)
        by_method = {k[7:]: v for k, v in diff.items() if k.startswith("method:") and v}
        by_status = {k[7:]: v for k, v in diff.items() if k.startswith("status:") and v}
        if by_method.get("GET"):
            by_method["GET"] = max(0, by_method["GET"] - own)
        if by_status.get("200"):
            by_status["200"] = max(0, by_status["200"] - own)
        counters = {k: v for k, v in diff.items() if ":" not in k}
        return ServerFigures(
            seconds=seconds,
            requests=max(0, counters.get("requests", 0) - own),
            by_method=dict(sorted(by_method.items(), key=lambda kv: -kv[1])),
            by_status=dict(sorted(by_status.items(), key=lambda kv: -kv[1])),
            cpu_s=cpu,
            cpu_by_process=cpu_by,
            counters=counters,
        )

    # ------------------------------------------------------------ PouchDB's request log

    def log_size(self) -> int:
        if self.dev is None:
            return 0
        try:
            return self.dev.request_log.stat().st_size
        except FileNotFoundError:
            return 0

    def log_lines(self, start: int = 0, end: int | None = None) -> list[LogLine]:
        if self.dev is None:
            return []
        with self.dev.request_log.open("rb") as handle:
            partial = False
            if start:  # an offset inside a line: skip to the next one
                handle.seek(start - 1)
                partial = handle.read(1) != b"\n"
            handle.seek(start)
            data = handle.read() if end is None else handle.read(max(0, end - start))
        if partial:
            data = data.split(b"\n", 1)[1] if b"\n" in data else b""
        return parse_log(data.decode("utf-8", errors="replace"))

    def settle_log(self, pause: float = 0.4) -> int:
        """Wait for responses in flight to be logged; return the log size."""
        time.sleep(pause)
        return self.log_size()

    def drop_db(self, db: str) -> None:
        for name in self.admin.all_dbs():
            if name == db or name.startswith(f"{db}_results_"):
                self.admin.delete_db(name)


def lines_in_window(lines: Iterable[LogLine], start: int, end: int) -> list[LogLine]:
    """Lines logged in whole seconds [start, end), minus the runner's own observer."""
    return [ln for ln in lines if start <= ln.ts < end and not ln.observer]


class ChangesObserver(threading.Thread):
    """Follows a database's ``_changes`` from its current end until ``until`` (epoch seconds)
    or :attr:`stop_event`, and hands each batch of rows to :meth:`note` with the local time
    it arrived. Its requests are its own client's (``couch.requests_sent``) and carry
    :data:`OBSERVER_MARK`, so a section can leave them out of the server's figures."""

    include_docs = False

    def __init__(self, server: BenchServer, db: str, until: float, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.couch = Couch(server.url, server.admin_user, server.admin_password)
        self.db = db
        self.until = until
        self.stop_event = threading.Event()
        self.since = self.couch.update_seq(db)

    def run(self) -> None:
        key, value = OBSERVER_MARK.split("=")
        while not self.stop_event.is_set() and time.time() < self.until:
            try:
                rows, self.since = self.couch.changes(
                    self.db,
                    since=self.since,
                    feed="longpoll",
                    wait=2.0,
                    include_docs=self.include_docs,
                    params={key: value},
                )
            except CouchError:
                time.sleep(0.2)
                continue
            self.note(rows, time.time())

    def note(self, rows: list[dict[str, Any]], now: float) -> None:
        raise NotImplementedError


# ---------------------------------------------------------------- processes


class Child:
    """A process this run started. It is only ever stopped by its own pid."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: dict[str, str] | None = None,
        pipes: bool = False,
        cwd: Path | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipes else self._log,
            stderr=self._log,
            env=env,
            cwd=str(cwd or REPO),
        )
        self._selector: selectors.BaseSelector | None = None
        self._buffer = b""
        if pipes:
            assert self.proc.stdout is not None
            os.set_blocking(self.proc.stdout.fileno(), False)
            self._selector = selectors.DefaultSelector()
            self._selector.register(self.proc.stdout, selectors.EVENT_READ)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(message) + "\n").encode())
        self.proc.stdin.flush()

    def recv(self, timeout: float) -> dict[str, Any]:
        """The next JSON line from the child's stdout (other lines are skipped)."""
        assert self._selector is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                text = line.decode(errors="replace").strip()
                if text.startswith("{"):
                    return json.loads(text)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer from {self.argv[:3]} (pid {self.pid})")
            if not self._selector.select(min(left, 1.0)):
                if not self.alive():
                    raise RuntimeError(
                        f"child {self.argv[:3]} exited with {self.proc.returncode}; "
                        f"see {self.log_path}"
                    )
                continue
            chunk = os.read(self.proc.stdout.fileno(), 1 << 20)
            if not chunk:  # end of file: the child closed its output (it is exiting)
                raise RuntimeError(f"child {self.argv[:3]} closed its output; see {self.log_path}")
            self._buffer += chunk

    def terminate(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, wait, then SIGKILL: always this child's own pid."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._selector is not None:
            self._selector.close()
            self._selector = None
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        self._log.close()
        return self.proc.returncode


def stop_all(children: Iterable[Child], timeout: float = 25.0) -> None:
    """SIGTERM every child first (they drain in parallel), then wait for each."""
    children = list(children)
    for child in children:
        if child.alive():
            try:
                child.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    for child in children:
        child.terminate(max(1.0, deadline - time.monotonic()))


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and its waited-for children (e.g. a worker's run processes)."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system + times.children_user + times.children_system


def machine_cpu_seconds() -> float:
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def python_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COUCHFARM_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def sleep_until(moment: float) -> None:
    while True:
        left = moment - time.time()
        if left <= 0:
            return
        time.sleep(min(left, 0.5))


# ---------------------------------------------------------------- users and docs


def add_users(admin: Couch, names: Iterable[str], role: str, workdir: Path) -> dict[str, Path]:
    """Create users with random passwords; return a password file per user."""
    files = {}
    workdir.mkdir(parents=True, exist_ok=True)
    for name in names:
        secret = secrets.token_urlsafe(15)
        provision.add_user(admin, name, [role], secret, replace=True)
        path = workdir / f"{name}.password"
        path.write_text(secret)
        path.chmod(0o600)
        files[name] = path
    return files


def add_users_bulk(
    admin: Couch, names: Sequence[str], role: str, password: str, chunk: int = 500
) -> None:
    """Create (or reset) many users sharing one password in a few ``_bulk_docs`` on ``_users``.

    The server hashes each ``password`` as it stores the doc, as for a single PUT. Users
    cannot be shared: a worker's name is its CouchDB user name (validate_doc_update checks
    ``lease.worker`` and ``worker:{name}`` against ``userCtx.name``).
    """
    stamp = to_wire(admin.now())
    for start in range(0, len(names), chunk):
        part = list(names[start : start + chunk])
        ids = [provision.user_doc_id(name) for name in part]
        revs = {
            row["id"]: row["value"]["rev"]
            for row in admin.all_docs("_users", keys=ids)
            if "value" in row and not row["value"].get("deleted")
        }
        docs = []
        for name, doc_id in zip(part, ids, strict=True):
            doc = {
                "_id": doc_id,
                "name": name,
                "type": "user",
                "roles": [role],
                "password": password,
                "updated_at": stamp,
            }
            if doc_id in revs:
                doc["_rev"] = revs[doc_id]
            docs.append(doc)
        bulk(admin, "_users", docs, chunk=chunk)


def bench_task(
    slug: str,
    *,
    created: datetime,
    every: int = 60,
    start: datetime | None = None,
    client: str = "bench",
    misfire: str = "run_latest",
    overlap: str = "skip",
    ttr: int = 600,
    ms: int = 0,
) -> dict[str, Any]:
    schedule: dict[str, Any] = {"every": every}
    if start is not None:
        schedule["start"] = to_wire(start)
    stamp = to_wire(created)
    return Task(
        _id=task_id(client, slug),
        client=client,
        slug=slug,
        kind="demo.sleep",
        input={"ms": ms},
        schedule=schedule,
        ttr=ttr,
        misfire=misfire,
        overlap=overlap,
        created_at=stamp,
        updated_at=stamp,
    ).to_doc()


def ready_occurrences(now: datetime, count: int, *, per_task: int = 250) -> list[dict[str, Any]]:
    """``count`` ready demo.sleep occurrences, all due (as the materializer writes them)."""
    now = now.replace(microsecond=0)
    stamp = to_wire(now)
    docs = []
    tasks: dict[int, Task] = {}
    for index in range(count):
        group = index // per_task
        task = tasks.get(group)
        if task is None:
            slug = f"race{group}"
            task = tasks[group] = Task(
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
        due = now - timedelta(minutes=index + 1)
        docs.append(states.materialize(task, due, now).to_doc())
    return docs


def bulk(couch: Couch, db: str, docs: list[dict[str, Any]], chunk: int = 1000) -> None:
    for start in range(0, len(docs), chunk):
        rows = couch.bulk_docs(db, docs[start : start + chunk])
        bad = [row for row in rows if "error" in row]
        if bad:
            raise RuntimeError(f"bulk write to {db} failed: {bad[:3]}")


def all_occurrences(couch: Couch, db: str) -> list[dict[str, Any]]:
    docs = []
    startkey = "occ:"
    while True:
        rows = couch.all_docs(
            db, startkey=startkey, endkey="occ:\ufff0", include_docs=True, limit=5001
        )
        page = [row["doc"] for row in rows[:5000] if row.get("doc")]
        docs.extend(page)
        if len(rows) <= 5000:
            return docs
        startkey = rows[5000]["id"]


def wait_for(predicate: Any, timeout: float, what: str, pause: float = 0.25) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(pause)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class Section:
    """One benchmark's results, as written to the JSON file."""

    name: str
    setup: str
    data: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    status: str = "ok"  # ok | skipped | failed | pending
    why: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "setup": self.setup,
            "status": self.status,
            "why": self.why,
            "seconds": round(self.seconds, 1),
            **self.data,
        }


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
