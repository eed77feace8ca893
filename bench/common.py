"""What every benchmark shares: the scale, the server and its request log, statistics,
child processes, users and documents.

Requests are counted from PouchDB Server's own request log (``DATA_DIR/log.txt``, one line
per HTTP request, written when the response ends), never from client counters: a bulk
request counts once, and a client cannot forget to count a retry. Each line carries a
whole-second timestamp, the method, the path with its query string and the status.
"""

from __future__ import annotations

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
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import psutil

from hub import provision, states
from hub.couch import Couch
from hub.devserver import DevServer
from hub.model import Task, task_id
from hub.timefmt import to_wire

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
    if rest[0] == "_design":
        return f"{prefix}{method} design doc"
    if rest[0] == "_changes":
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


class BenchServer:
    """One PouchDB Server for the whole run (every figure of a run comes from it)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dev = DevServer(root / "server")
        self.admin: Couch

    def start(self) -> BenchServer:
        self.dev.start()
        self.admin = Couch(
            self.dev.url, self.dev.admin_user, self.dev.admin_password, read_timeout=300
        )
        return self

    def stop(self) -> None:
        self.dev.stop()

    @property
    def url(self) -> str:
        return self.dev.url

    @property
    def pid(self) -> int:
        assert self.dev.process is not None
        return self.dev.process.pid

    def log_size(self) -> int:
        try:
            return self.dev.request_log.stat().st_size
        except FileNotFoundError:
            return 0

    def log_lines(self, start: int = 0, end: int | None = None) -> list[LogLine]:
        with self.dev.request_log.open("rb") as handle:
            handle.seek(start)
            data = handle.read() if end is None else handle.read(max(0, end - start))
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
