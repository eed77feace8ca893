"""The failover fault scenario, shared by ``tests/test_failover.py`` (small scale, in the
suite) and ``bench/failover.py`` (issue 6's full scale, repeated).

One run (:func:`run_fault`):

1. two servers (primary, standby): new PouchDB Servers by default, or the ones given
   (``tests/servers.py``: a real CouchDB pair faulted through commands); ``hub init`` on
   both, continuous replication both ways; ``tasks`` tasks of ``demo.sleep`` every
   ``every_s`` seconds;
2. ``hub serve`` and four headless workers, all given both URLs;
3. under that load, replication lag is sampled (seconds: a probe written on the primary
   until it is read on the standby; documents: ids whose winning revision on the primary
   the standby does not have yet);
4. ``kill -9`` the primary at a random moment; the farm runs on the standby for the
   outage (fixed, or drawn from ``outage_s``);
5. a new primary on the same address with its data directory deleted; ``hub recover``;
   the farm fails back and runs on it. The fault matrix (``second_kill``) kills the
   primary once more, at a random moment *during* ``hub recover`` or during the fail-back
   that follows it, and rebuilds it again; the hub stops, then the workers (they empty
   their spools first);
6. ``hub audit`` (``hub/audit.py``) must find the two servers equal within
   ``audit_within_s``, with nothing settled by the test; then the audit of runs
   (:func:`audit`), read from both servers and the workers' structured logs.

What "lost" means, precisely. A *stored run* is a result a worker got a 201 for: its log
line ``event=result_stored ... state=done worker= started_at= finished_at=``. A run is
identified by (occurrence, worker, started_at, finished_at); the attempt number is not
part of it (a rescue renumbers it to the survivor's attempt). The rule is "a result: the
first finished wins" (``hub.protocol.states.result_order``: finish time, then worker name). A
stored run is **lost** when, at the end, the occurrence's result (live or archived) is
neither that run nor one that finished before it. A stored run that lost to an earlier
one is *superseded*: that is the rule working, and its worker logs ``result_superseded``.
"""

from __future__ import annotations

import os
import random
import re
import secrets
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

from hub import audit as hub_audit
from hub import provision, replication, resolver
from hub.protocol.board import board_db
from hub.protocol.couch import Couch, CouchError
from hub.protocol.model import Task, task_id
from hub.protocol.names import ADMIN_ROLE, WORKER_ROLE
from hub.protocol.timefmt import from_wire, to_wire
from tests.servers import ControlledServer, fault_servers

REPO = Path(__file__).resolve().parent.parent
DB = "farm"  # on servers of the run's own; a persistent pair gets a new name per run
SECOND_KILLS = ("none", "recover", "failback")
FAILBACK_S = 30.0  # clients look at a recovered primary again within this long
STORED = re.compile(
    r"event=result_stored occ=(\S+) state=done worker=(\S+) started_at=(\S+) finished_at=(\S+)"
)


@dataclass
class FaultConfig:
    tasks: int = 20
    every_s: int = 5
    sleep_ms: int = 200
    workers: tuple[str, ...] = ("w1", "w2", "w3", "w4")
    slots: int = 2
    kill_after_s: tuple[float, float] = (15.0, 25.0)  # the random moment, after the start
    on_standby_s: float = 30.0
    after_recover_s: float = 45.0  # fail back (30 s) and run on the rebuilt primary
    drain_s: float = 20.0  # hub stopped: workers finish what they hold, empty their spools
    lag_every_s: float = 1.5
    seed: int | None = None
    outage_s: tuple[float, float] | None = None  # drawn per run; None: on_standby_s
    second_kill: str = "none"  # "recover": during hub recover; "failback": just after it
    audit_within_s: float = 60.0  # hub audit must be clean this soon after the workers stop

    def __post_init__(self) -> None:
        if self.second_kill not in SECOND_KILLS:
            raise ValueError(f"second_kill must be one of {SECOND_KILLS}, not {self.second_kill!r}")


@dataclass
class StoredRun:
    occ: str
    worker: str
    started_at: str
    finished_at: str

    def result(self) -> dict[str, str]:
        return {"worker": self.worker, "started_at": self.started_at,
                "finished_at": self.finished_at}  # fmt: skip


@dataclass
class FaultReport:
    killed_after_s: float = 0.0
    stored_runs: int = 0  # results some worker got a 201 for
    occurrences: int = 0
    lost: list[str] = field(default_factory=list)
    superseded: int = 0  # stored runs that lost, by the rule, to one that finished first
    superseded_unlogged: list[str] = field(default_factory=list)
    reruns: int = 0  # occurrences with more than one stored run
    replaced: int = 0  # result_replaced: a later result put back under an earlier one
    rescued: int = 0  # result_rescued: re-uploaded to the survivor after failover
    restored: int = 0  # result_restored: put back over the survivor's missed/skipped/...
    not_restored: int = 0  # result_not_restored (ERROR)
    duplicates: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    unaccounted: list[str] = field(default_factory=list)
    not_final: int = 0  # still ready/leased at the end (visible, so accounted for)
    failover_s: float | None = None
    lag_seconds: list[float] = field(default_factory=list)
    lag_docs: list[int] = field(default_factory=list)
    lag_unseen_s: list[float] = field(default_factory=list)
    # 201'd on the primary but missing on the standby when it died (then rescued by the
    # workers' spools): how many, and how long before the kill the oldest one finished.
    exposed_results: int = 0
    exposed_window_s: float | None = None
    recovery_ok: bool = False
    recovery_lines: list[str] = field(default_factory=list)
    outage_s: float = 0.0
    second_kill: str = "none"
    second_kill_after_s: float | None = None  # after hub recover began / returned
    recover_s: float | None = None  # the last hub recover: start to "verified"
    audit_clean_s: float | None = None  # workers stopped -> hub audit clean
    audit_findings: list[str] = field(default_factory=list)  # still there at audit_within_s
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("lost", "duplicates", "conflicts", "unaccounted", "superseded_unlogged",
                    "audit_findings"):  # fmt: skip
            out[f"{key}_count"] = len(out[key])
            out[key] = out[key][:20]
        for key in ("lag_seconds", "lag_docs"):
            values = out.pop(key)
            out[key] = {
                "n": len(values),
                "median": statistics.median(values) if values else None,
                "max": max(values) if values else None,
            }
        unseen = out.pop("lag_unseen_s")
        out["lag_seconds"]["unseen_at_kill"] = len(unseen)
        out["lag_seconds"]["unseen_max_age"] = max(unseen) if unseen else None
        return out


# ---------------------------------------------------------------- processes


def _start(name: str, argv: list[str], env: dict[str, str], tmp: Path) -> subprocess.Popen:
    log = (tmp / f"{name}.log").open("ab")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=REPO)  # fmt: skip
    log.close()
    return proc


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


# ---------------------------------------------------------------- lag under load


def _docs_behind(p_admin: Couch, s_admin: Couch, every: float, stop: threading.Event,
                 report: FaultReport, db: str = DB) -> None:  # fmt: skip
    """Lag in documents: ids whose winning revision on the primary the standby lacks. The
    standby is read first, so a write landing between the two reads counts as lag."""
    while not stop.wait(every):
        try:
            theirs = {r["id"]: r["value"]["rev"] for r in s_admin.all_docs(db)}
            ours = {r["id"]: r["value"]["rev"] for r in p_admin.all_docs(db)}
        except CouchError:
            continue
        report.lag_docs.append(sum(1 for k, rev in ours.items() if theirs.get(k) != rev))


def _probe_lag(p_admin: Couch, s_admin: Couch, every: float, stop: threading.Event,
               report: FaultReport, db: str = DB) -> None:  # fmt: skip
    """Lag in seconds: a new probe document written on the primary every ``every`` s (a
    new id each time: a rewritten document jumps to the end of the changes feed, so while
    replication is behind it would never arrive); the standby is polled every 0.1 s and
    each probe's lag is the time until the standby holds it. Probes still missing when the
    primary dies are kept as lower bounds (``lag_unseen_s``)."""
    sent: dict[str, float] = {}
    number, next_write = 0, 0.0
    while not stop.is_set():
        try:
            if time.monotonic() >= next_write:
                number += 1
                probe_id = f"hub:probe:fault:{number:05d}"
                p_admin.put(db, {"_id": probe_id, "type": "hub", "at": to_wire(p_admin.now())})
                sent[probe_id] = time.monotonic()
                next_write = sent[probe_id] + every
            rows = s_admin.all_docs(db, keys=list(sent)) if sent else []
            arrived = time.monotonic()
            for row in rows:
                if "value" in row and row["key"] in sent:
                    report.lag_seconds.append(round(arrived - sent.pop(row["key"]), 3))
        except CouchError:
            pass
        stop.wait(0.1)
    at_kill = time.monotonic()
    report.lag_unseen_s = [round(at_kill - t, 3) for t in sent.values()]


# ---------------------------------------------------------------- the run


def run_fault(
    tmp: Path, cfg: FaultConfig, servers: Sequence[ControlledServer] | None = None
) -> FaultReport:
    """One kill -9 / run on the standby / rebuild / recover cycle; returns the audit.

    ``servers``: the (primary, standby) to use, kept running by the caller; by default two
    new PouchDB Servers in ``tmp``, stopped at the end. Only the primary is faulted."""
    if servers is None:
        with fault_servers(tmp, "primary", "standby", real=False) as pair:
            return run_fault(tmp, cfg, pair)
    began = time.monotonic()
    rng = random.Random(cfg.seed)
    report = FaultReport()
    primary, standby = servers
    # A persistent pair has earlier runs' databases: this run's get a name of their own.
    db = f"{DB}_fault_{secrets.token_hex(3)}" if primary.persistent else DB
    hub_pw, worker_pw = (secrets.token_urlsafe(12) for _ in range(2))
    procs: list[subprocess.Popen] = []
    ends = [replication.Endpoint(s.url, s.admin_user, s.admin_password, n)
            for s, n in ((primary, "primary"), (standby, "standby"))]  # fmt: skip
    try:
        for end in ends:
            admin = end.couch()
            provision.init(admin, db, now=admin.now(), hub_user="")
        admin = ends[0].couch()
        provision.add_user(admin, "hub", [ADMIN_ROLE], hub_pw, replace=True)
        for name in cfg.workers:
            provision.add_user(admin, name, [WORKER_ROLE], worker_pw, replace=True)
        replication.copy_users(ends[0], ends[1])
        replication.setup(ends[0], ends[1], db)
        hub_couch = Couch([primary.url, standby.url], "hub", hub_pw)
        stamp = to_wire(hub_couch.now())
        docs = [Task(_id=task_id("acme", f"f{n:03d}"), client="acme", slug=f"f{n:03d}",
                     kind="demo.sleep", input={"ms": cfg.sleep_ms},
                     schedule={"every": cfg.every_s}, ttr=15, misfire="run_all",
                     overlap="allow", created_at=stamp, updated_at=stamp).to_doc()
                for n in range(cfg.tasks)]  # fmt: skip
        hub_couch.bulk_docs(db, docs)
        urls = f"{primary.url},{standby.url}"
        # Nothing started here may see the suite's own servers (COUCHDB_URL, ...).
        env = {k: v for k, v in os.environ.items() if not k.startswith("COUCHDB")}
        hub_env = {**env, "COUCHFARM_URL": urls, "COUCHFARM_USER": "hub",
                   "COUCHFARM_PASSWORD": hub_pw, "COUCHFARM_DB": db}  # fmt: skip
        procs.append(_start("hub", [sys.executable, "-m", "hub.cli", "serve", "--portal-port",
                                    "-1"], hub_env, tmp))  # fmt: skip
        pw = tmp / "worker.pw"
        pw.write_text(worker_pw)
        worker_env = {k: v for k, v in env.items() if not k.startswith("COUCHFARM")}
        for name in cfg.workers:
            procs.append(_start(name, [sys.executable, "-m", "desktop_worker.cli", "--headless",
                                       "--hub", urls, "--name", name, "--password-file", str(pw),
                                       "--db", db, "--slots", str(cfg.slots),
                                       "--spool", str(tmp / f"{name}.spool")],
                                worker_env, tmp))  # fmt: skip
        p_admin, s_admin = ends[0].couch(retries=0), ends[1].couch()
        stop_sampling = threading.Event()
        samplers = [
            threading.Thread(target=target, daemon=True,
                             args=(p_admin, s_admin, cfg.lag_every_s, stop_sampling, report, db))
            for target in (_docs_behind, _probe_lag)
        ]  # fmt: skip
        for sampler in samplers:
            sampler.start()
        report.killed_after_s = rng.uniform(*cfg.kill_after_s)
        time.sleep(report.killed_after_s)
        stop_sampling.set()
        primary.kill()  # kill -9 at a random moment
        died_at = hub_couch.for_server(1).now()
        killed_wall = time.time()
        for sampler in samplers:
            sampler.join(35)
        report.outage_s = round(rng.uniform(*cfg.outage_s) if cfg.outage_s else cfg.on_standby_s, 1)
        time.sleep(report.outage_s)
        _rebuild(primary)  # a new primary on the same address, its data gone
        if cfg.second_kill != "none":
            _second_kill(cfg, rng, report, primary, ends, db)
        began_recover = time.monotonic()
        recovery = replication.recover(ends[1], ends[0], db, sample=30)
        report.recover_s = round(time.monotonic() - began_recover, 1)
        report.recovery_ok = recovery.ok
        report.recovery_lines += recovery.lines  # after what an interrupted recover said
        time.sleep(cfg.after_recover_s)
        _stop(procs[:1])  # the hub first: no new occurrences
        time.sleep(cfg.drain_s)
        _stop(procs[1:])
        procs.clear()
        hub_audit_until_clean(ends[0].couch(), ends[1].couch(), db, cfg.audit_within_s, report)
        audit(ends[0].couch(), ends[1].couch(), tmp, cfg, died_at, report, db)
        report.failover_s = first_run_after(tmp, cfg.workers, killed_wall) or report.failover_s
    finally:
        _stop(procs)
        if primary.persistent:
            _drop(ends, db, servers)
    report.seconds = round(time.monotonic() - began, 1)
    return report


def _rebuild(server: ControlledServer) -> None:
    server.wipe()
    server.start()


def _second_kill(
    cfg: FaultConfig,
    rng: random.Random,
    report: FaultReport,
    primary: ControlledServer,
    ends: list[replication.Endpoint],
    db: str,
) -> None:
    """Kill the rebuilt primary again: during ``hub recover`` (which must then say it
    failed, and leave the marker ``rebuilding``), or in the fail-back window after it
    returned ``verified``, with clients on their way back. Then rebuild it once more, after
    a short second outage; the caller's ``hub recover`` must succeed from there."""
    report.second_kill = cfg.second_kill
    if cfg.second_kill == "recover":
        report.second_kill_after_s = round(rng.uniform(0.2, 3.0), 2)
        killer = threading.Timer(report.second_kill_after_s, primary.kill)
        killer.start()
        try:
            interrupted = replication.recover(ends[1], ends[0], db, sample=30, timeout=60.0,
                                              converge_timeout=30.0)  # fmt: skip
            report.recovery_lines += ["(interrupted recover)", *interrupted.lines]
        except (CouchError, OSError) as exc:
            report.recovery_lines.append(f"(interrupted recover raised: {exc})")
        killer.join()
    else:
        first = replication.recover(ends[1], ends[0], db, sample=30)
        report.recovery_lines += ["(recover before the fail-back kill)", *first.lines]
        report.second_kill_after_s = round(rng.uniform(0.0, FAILBACK_S), 2)
        time.sleep(report.second_kill_after_s)
        primary.kill()
    time.sleep(rng.uniform(5.0, 15.0))
    _rebuild(primary)


def hub_audit_until_clean(p_admin: Couch, s_admin: Couch, db: str, within_s: float,
                          report: FaultReport) -> None:  # fmt: skip
    """``hub audit``, again every 2 s until it is clean or ``within_s`` passed; the test
    settles nothing itself first, so this is what ops would see."""
    began = time.monotonic()
    while True:
        found = hub_audit.audit(p_admin, s_admin, db)
        if found.clean:
            report.audit_clean_s = round(time.monotonic() - began, 1)
            return
        if time.monotonic() - began > within_s:
            report.audit_findings = [f"{f.kind} {f.db} {f.id}: {f.primary} | {f.standby} {f.detail}"
                                     for f in found.findings]  # fmt: skip
            return
        time.sleep(2.0)


def _drop(ends: list[replication.Endpoint], db: str, servers: Sequence[ControlledServer]) -> None:
    """The run's databases and their replications off a persistent pair (``_users`` and
    its replications stay: the next run writes its users over them)."""
    for server in servers:
        server.close()  # running again, if the run ended while it was down
    try:
        names = sorted({n for end in ends for n in replication.farm_databases(end.couch(), db)[1:]})
        replication.retire(ends[0], ends[1], names)
        for end in ends:
            admin = end.couch()
            for name in [*names, board_db(db)]:  # the board is not replicated: no link
                admin.delete_db(name)
    except CouchError:
        pass


# ---------------------------------------------------------------- the audit


def stored_runs(tmp: Path, workers: tuple[str, ...]) -> list[StoredRun]:
    """Every result a worker got a 201 for, from the workers' structured logs."""
    runs = []
    for name in workers:
        text = (tmp / f"{name}.log").read_text(errors="replace")
        runs += [StoredRun(*match) for match in STORED.findall(text)]
    return runs


RUN_STARTED = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+ \S+ event=run_started ",
                         re.MULTILINE)  # fmt: skip


def first_run_after(tmp: Path, workers: tuple[str, ...], killed_wall: float) -> float | None:
    """Seconds from the kill to the first run any worker started after it (the primary is
    dead, so that claim was on the standby). Read from the workers' own log lines (local
    time, same machine): the documents cannot tell, because a re-run on the standby whose
    result was replaced by the earlier one no longer shows the standby's claim."""
    firsts = []
    for name in workers:
        text = (tmp / f"{name}.log").read_text(errors="replace")
        for stamp in RUN_STARTED.findall(text):
            at = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if at > killed_wall:
                firsts.append(at - killed_wall)
                break
    return round(min(firsts), 3) if firsts else None


RESCUED = re.compile(r"event=result_rescued occ=(\S+) .*finished_at=(\S+)")


def exposure(worker_logs: str, died_at: datetime) -> tuple[int, float | None]:
    """Results the primary had accepted but the standby lacked at the kill (the workers
    rescued them): their number, and the age at the kill of the oldest. This is the
    replication lag that matters, measured on the occurrences themselves."""
    ages = [
        (died_at - from_wire(finished)).total_seconds()
        for _occ, finished in RESCUED.findall(worker_logs)
        if from_wire(finished) < died_at
    ]
    return len(ages), (round(max(ages), 3) if ages else None)


def _converge(p_admin: Couch, s_admin: Couch, db: str = DB, timeout: float = 90.0) -> None:
    """Settle conflicts on both sides, then wait until both copies hold the same revisions."""
    deadline = time.monotonic() + timeout
    while True:
        for couch in (p_admin, s_admin):
            for name in replication.farm_databases(couch, db)[1:]:
                resolver.resolve_all(couch, name)
        same = all(
            {r["id"]: r["value"]["rev"] for r in p_admin.all_docs(name)}
            == {r["id"]: r["value"]["rev"] for r in s_admin.all_docs(name)}
            for name in replication.farm_databases(p_admin, db)[1:]
        )
        if same or time.monotonic() > deadline:
            return
        time.sleep(1.0)


def _archived(couch: Couch, db: str = DB) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for name in replication.farm_databases(couch, db)[2:]:
        for row in couch.all_docs(name, include_docs=True, conflicts=True):
            doc = row.get("doc") or {}
            if doc.get("occurrence"):
                out[doc["occurrence"]].append(doc)
    return out


def audit(p_admin: Couch, s_admin: Couch, tmp: Path, cfg: FaultConfig, died_at: datetime,
          report: FaultReport, db: str = DB) -> FaultReport:  # fmt: skip
    _converge(p_admin, s_admin, db)
    live: dict[str, dict[str, Any]] = {}
    for couch in (p_admin, s_admin):
        for row in couch.all_docs(db, include_docs=True, conflicts=True):
            doc = row["doc"]
            if doc.get("_conflicts"):
                report.conflicts.append(f"{couch.active.label}/{row['id']}")
            if couch is p_admin and row["id"].startswith("occ:"):
                live[row["id"]] = doc
        for name in replication.farm_databases(couch, db)[2:]:
            report.conflicts += [
                f"{couch.active.label}/{name}/{r['id']}"
                for r in couch.all_docs(name, include_docs=True, conflicts=True)
                if r["doc"].get("_conflicts")
            ]
    standby_live = {r["id"]: r["doc"] for r in s_admin.all_docs(db, include_docs=True)
                    if r["id"].startswith("occ:")}  # fmt: skip
    archived = _archived(p_admin, db)

    # The one stored result of each occurrence; more than one anywhere is a duplicate.
    final: dict[str, dict[str, Any] | None] = {}
    for occ_id in set(live) | set(archived):
        results = []
        if live.get(occ_id, {}).get("result"):
            results.append(live[occ_id]["result"])
        results += [r for r in archived.get(occ_id, []) if r.get("finished_at")]
        other = (standby_live.get(occ_id) or {}).get("result")
        if other:
            results.append(other)
        distinct = []
        for result in results:
            if not any(resolver.same_run(result, seen) for seen in distinct):
                distinct.append(result)
        if len(distinct) > 1:
            report.duplicates.append(occ_id)
        final[occ_id] = distinct[0] if distinct else None

    # 1. Every stored run is the occurrence's result, or lost to one that finished first.
    runs = stored_runs(tmp, cfg.workers)
    report.stored_runs = len(runs)
    logs = {n: (tmp / f"{n}.log").read_text(errors="replace") for n in cfg.workers}
    by_occ: dict[str, list[StoredRun]] = defaultdict(list)
    for run in runs:
        by_occ[run.occ].append(run)
        kept = final.get(run.occ)
        if kept is not None and resolver.same_run(kept, run.result()):
            continue
        if kept is not None and resolver.finished_first(kept, run.result()):
            report.superseded += 1
            if f"event=result_superseded occ={run.occ}" not in logs[run.worker]:
                report.superseded_unlogged.append(f"{run.occ} {run.worker}")
            continue
        report.lost.append(f"{run.occ} {run.worker} finished {run.finished_at}")
    report.reruns = sum(
        1 for rs in by_occ.values() if len({(r.worker, r.started_at) for r in rs}) > 1
    )
    text = "\n".join(logs.values())
    report.exposed_results, report.exposed_window_s = exposure(text, died_at)
    report.replaced = text.count("event=result_replaced ")
    report.rescued = text.count("event=result_rescued ")
    report.restored = text.count("event=result_restored ")
    report.not_restored = text.count("event=result_not_restored ")

    # 2. Every due occurrence accounted for: each task's series has no gap.
    dues: dict[str, set[datetime]] = defaultdict(set)
    for doc in live.values():
        dues[doc["task"]].add(from_wire(doc["due_at"]))
        if doc["state"] in ("ready", "leased", "scheduled"):
            report.not_final += 1
    for occ_id, docs in archived.items():
        if occ_id not in live:
            dues[docs[0]["task"]].add(from_wire(docs[0]["due_at"]))
    step = timedelta(seconds=cfg.every_s)
    for task in (task_id("acme", f"f{n:03d}") for n in range(cfg.tasks)):
        times = sorted(dues.get(task, ()))
        if not times:
            report.unaccounted.append(f"{task}: no occurrence at all")
        for a, b in pairwise(times):
            t = a + step
            while t < b:
                report.unaccounted.append(f"{task} due {to_wire(t)}")
                t += step
    report.occurrences = len(set(live) | set(archived))

    # 3. Failover time from the documents: the first claim on the standby that is still
    # visible (run_fault prefers the workers' logs, which see replaced re-runs too).
    def started(doc: dict[str, Any]) -> datetime | None:
        if doc.get("result"):
            return from_wire(doc["result"]["started_at"])
        if doc.get("lease"):
            return from_wire(doc["lease"]["claimed_at"])
        return None

    after = sorted(t for t in (started(d) for d in live.values()) if t and t > died_at)
    report.failover_s = round((after[0] - died_at).total_seconds(), 3) if after else None
    return report
