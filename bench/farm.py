"""A whole farm on the bench server: ``hub serve`` and headless workers, as processes.

The hub runs as ``python -m hub.cli serve --portal-port -1`` (user with role farm_admin);
each worker as ``python -m desktop_worker.cli --headless`` (the real worker, which spawns a
child process per run) or ``bench/workers/inline_worker.py`` (the same engine, runs made
in-process). Every process is one this module started, and it stops them by their pids.
"""

from __future__ import annotations

import math
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil

from bench.common import (
    BENCH_DIR,
    BenchServer,
    Child,
    add_users,
    bench_task,
    bulk,
    cpu_seconds,
    log,
    python_env,
    stop_all,
    wait_for,
)
from hub import provision
from hub.protocol.model import worker_id
from hub.protocol.names import ADMIN_ROLE, CLAIM_DDOC, WORKER_ROLE

WORKER_NAMES = [f"w-{i}" for i in range(32)]
HUB_USER = "hub-bench"


class Credentials:
    """Users shared by every farm of a run (users live in the server-wide _users db)."""

    def __init__(self, server: BenchServer, workdir: Path, workers: int) -> None:
        admin = server.admin
        self.hub = add_users(admin, [HUB_USER], ADMIN_ROLE, workdir / "passwords")[HUB_USER]
        self.workers = add_users(admin, WORKER_NAMES[:workers], WORKER_ROLE, workdir / "passwords")


class Farm:
    def __init__(
        self, server: BenchServer, db: str, workdir: Path, credentials: Credentials
    ) -> None:
        self.server = server
        self.db = db
        self.workdir = workdir / db
        self.credentials = credentials
        self.hub: Child | None = None
        self.workers: list[tuple[str, Child]] = []
        self._task_seq = 0
        server.drop_db(db)
        provision.init(server.admin, db, now=server.admin.now(), hub_user="")

    # ------------------------------------------------------------ processes

    def start_hub(self, timeout: float = 120.0, counts: Path | None = None) -> Child:
        """``hub serve``; with ``counts``, under bench/workers/counted_hub.py, which writes the
        hub's own requests by endpoint to that file."""
        env = python_env()
        env.update(
            {
                "COUCHFARM_URL": self.server.url,
                "COUCHFARM_USER": HUB_USER,
                "COUCHFARM_PASSWORD_FILE": str(self.credentials.hub),
                "COUCHFARM_DB": self.db,
            }
        )
        log_path = self.workdir / "hub.log"
        if counts is None:
            argv = [sys.executable, "-m", "hub.cli"]
        else:
            argv = [sys.executable, str(BENCH_DIR / "workers" / "counted_hub.py"), str(counts)]
        self.hub = Child(
            [*argv, "serve", "--portal-port", "-1"],
            log_path=log_path,
            env=env,
        )
        hub = self.hub
        wait_for(
            lambda: "event=hub_started" in log_path.read_text(errors="replace") or not hub.alive(),
            timeout,
            "hub serve to start",
        )
        if not hub.alive():
            raise RuntimeError(f"hub serve exited; see {log_path}")
        return hub

    def add_workers(self, count: int, variant: str = "spawn") -> list[str]:
        """Start workers until ``count`` run; return the new names once each has checked in."""
        new = []
        while len(self.workers) < count:
            name = WORKER_NAMES[len(self.workers)]
            if variant == "inline":
                argv = [sys.executable, str(BENCH_DIR / "workers" / "inline_worker.py")]
            else:
                argv = [sys.executable, "-m", "desktop_worker.cli", "--headless"]
            argv += [
                "--hub",
                self.server.url,
                "--name",
                name,
                "--password-file",
                str(self.credentials.workers[name]),
                "--db",
                self.db,
                "--spool",
                str(self.workdir / f"spool-{name}.sqlite3"),
            ]
            env = python_env()
            env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.null.Keyring"
            child = Child(argv, log_path=self.workdir / f"{name}.log", env=env)
            self.workers.append((name, child))
            new.append(name)
        if new:
            self.wait_checked_in(new)
        return new

    def wait_checked_in(self, names: list[str], timeout: float = 120.0) -> None:
        keys = [worker_id(name) for name in names]

        def all_in() -> bool:
            for _name, child in self.workers:
                if not child.alive():
                    raise RuntimeError(f"worker exited; see {child.log_path}")
            rows = self.server.admin.all_docs(self.db, keys=keys)
            return all("value" in row and not row["value"].get("deleted") for row in rows)

        wait_for(all_in, timeout, f"{len(names)} worker(s) to check in", pause=0.5)

    def stop(self) -> None:
        stop_all([child for _name, child in self.workers], timeout=30)
        self.workers = []
        if self.hub is not None:
            self.hub.terminate(30)
            self.hub = None

    # ------------------------------------------------------------ measuring

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far: server, hub, workers, and the workers' run processes."""
        workers = children = 0.0
        for _name, child in self.workers:
            try:
                process = psutil.Process(child.pid)
                times = process.cpu_times()
                descendants = process.children(recursive=True)
            except psutil.Error:
                continue
            workers += times.user + times.system
            # Runs happen in descendants (the runner's forkserver and its forks): their CPU
            # while alive, plus what was reaped into their parents' children_* counters.
            children += times.children_user + times.children_system
            for descendant in descendants:
                try:
                    d = descendant.cpu_times()
                except psutil.Error:
                    continue
                children += d.user + d.system + d.children_user + d.children_system
        return {
            "server": self.server.cpu_seconds(),
            "hub": cpu_seconds(self.hub.pid) if self.hub else 0.0,
            "workers": workers,
            "worker_runs": children,
        }

    def count_ready(self) -> int:
        """Ready occurrences: ``total_rows`` of the ready view, which workers keep indexed."""
        body = self.server.admin.view(self.db, CLAIM_DDOC, "ready", limit=0)
        return int(body.get("total_rows", 0))

    # ------------------------------------------------------------ work

    def add_tasks(self, docs: list[dict[str, Any]]) -> None:
        bulk(self.server.admin, self.db, docs)

    def add_spread_tasks(
        self,
        prefix: str,
        count: int,
        every: int,
        *,
        lead_s: int,
        ms: int = 0,
        overlap: str = "skip",
    ) -> int:
        """Add ``count`` demo.sleep tasks (``prefix0``, ``prefix1``...) that run every ``every``
        seconds, created a second ago, their starts spread evenly over the interval from
        ``lead_s`` whole seconds after now (hub time), so that one falls due every
        ``every / count`` seconds. Returns the first start, epoch seconds."""
        now = self.server.admin.now()
        base = math.ceil(now.timestamp()) + lead_s
        step = every / count
        created = datetime.fromtimestamp(now.timestamp() - 1, UTC)
        self.add_tasks(
            [
                bench_task(
                    f"{prefix}{i}",
                    created=created,
                    every=every,
                    start=datetime.fromtimestamp(base, UTC) + timedelta(seconds=i * step),
                    ttr=60,
                    ms=ms,
                    overlap=overlap,
                )
                for i in range(count)
            ]
        )
        return base

    def top_up_backlog(self, target: int, timeout: float = 180.0) -> int:
        """Make sure about ``target`` occurrences are ready, by giving the hub tasks to catch up.

        Each task runs every 10 s and was created far enough in the past to owe ~200 runs;
        with misfire=run_all and overlap=allow the hub materializes all of them as ready in
        its next tick (one bulk write), as it would after downtime.
        """
        have = self.count_ready()
        missing = target - have
        if missing <= 0:
            return have
        per_task = 200
        now = self.server.admin.now()
        docs = []
        for _ in range(math.ceil(missing / per_task)):
            self._task_seq += 1
            docs.append(
                bench_task(
                    f"backlog{self._task_seq}",
                    created=now - timedelta(seconds=10 * per_task),
                    every=10,
                    misfire="run_all",
                    overlap="allow",
                )
            )
        self.add_tasks(docs)
        goal = have + int(missing * 0.8)
        wait_for(lambda: self.count_ready() >= goal, timeout, "the hub to materialize")
        got = self.count_ready()
        log(f"{self.db}: backlog {have} -> {got} ready ({len(docs)} catch-up tasks)")
        return got
