"""Issue 6 at full scale: kill -9 the primary under load, run on the standby, rebuild the
primary empty, ``hub recover``, resume; repeated, with the audit of ``tests/faults.py``.

    .venv/bin/python -m bench.failover                 # 5 repetitions, 100 tasks, 60 s
    .venv/bin/python -m bench.failover --reps 1 --tasks 20 --standby-s 30
    .venv/bin/python -m bench.failover --matrix --reps 20   # issue 15's fault matrix

``--matrix``: issue 15's scenario (30 tasks of demo.sleep 300 ms every 10 s, 2 workers),
the kill at a random moment 20-60 s in, an outage drawn from 5-90 s, and in turn no
second kill, a second kill during ``hub recover``, and one during the fail-back after it.
With ``COUCHDB_FAULT_PRIMARY_URL``/``COUCHDB_FAULT_STANDBY_URL`` and the fault commands
set (tests/servers.py), it faults that real CouchDB pair instead of new PouchDB Servers.

Per repetition and as medians: results lost (of those a worker got a 201 for; "lost" is
defined in tests/faults.py), duplicate results, documents left in conflict, unaccounted
occurrences, failover time (primary death -> first claim on the standby) and replication
lag under that load before the kill (seconds and documents). Each repetition runs its own
two PouchDB Servers, so this section does not use the shared bench server.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import BENCH_DIR, Scale, Section, log
from tests.faults import SECOND_KILLS, FaultConfig, run_fault
from tests.servers import fault_servers

FULL = FaultConfig(tasks=100, every_s=5, on_standby_s=60.0, kill_after_s=(20.0, 40.0))
# `make bench` at the small scale: one shorter repetition of the same scenario.
SMALL = replace(FULL, tasks=40, on_standby_s=30.0)
REPS = {"small": 1, "full": 5}
FIGURES = ("lost_count", "duplicates_count", "conflicts_count", "unaccounted_count")
MATRIX = FaultConfig(tasks=30, every_s=10, sleep_ms=300, workers=("w1", "w2"),
                     kill_after_s=(20.0, 60.0), outage_s=(5.0, 90.0), after_recover_s=30.0,
                     drain_s=15.0)  # fmt: skip
MATRIX_FIGURES = (*FIGURES, "audit_findings_count", "not_restored")


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def run_reps(cfg: FaultConfig, reps: int, workdir: Path) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for rep in range(1, reps + 1):
        log(f"failover repetition {rep}/{reps}: {cfg.tasks} tasks, {cfg.on_standby_s:g} s "
            "on the standby")  # fmt: skip
        report = run_fault(workdir / f"rep{rep}", replace(cfg, seed=rep))
        row = {"rep": rep, **report.as_dict()}
        rows.append(row)
        log(f"rep {rep}: lost {row['lost_count']}, duplicates {row['duplicates_count']}, "
            f"conflicts {row['conflicts_count']}, unaccounted {row['unaccounted_count']}, "
            f"failover {row['failover_s']} s, lag {row['lag_seconds']['median']} s / "
            f"{row['lag_docs']['median']} docs, {row['stored_runs']} results, "
            f"{row['seconds']:.0f} s")  # fmt: skip
    median = {key: _median([r[key] for r in rows]) for key in FIGURES}
    median["failover_s"] = _median([r["failover_s"] for r in rows])
    median["lag_seconds"] = _median([r["lag_seconds"]["median"] for r in rows])
    median["lag_seconds_max"] = max(
        (r["lag_seconds"]["max"] for r in rows if r["lag_seconds"]["max"] is not None),
        default=None,
    )
    median["lag_docs"] = _median([r["lag_docs"]["median"] for r in rows])
    median["lag_docs_max"] = max(
        (r["lag_docs"]["max"] for r in rows if r["lag_docs"]["max"] is not None), default=None
    )
    median["exposed_results"] = _median([r.get("exposed_results") for r in rows])
    median["exposed_window_s"] = _median([r.get("exposed_window_s") for r in rows])
    totals = {key: sum(r[key] for r in rows) for key in FIGURES}
    for key in ("stored_runs", "reruns", "rescued", "replaced", "superseded", "not_restored"):
        totals[key] = sum(r[key] for r in rows)
    return {
        "config": {
            "tasks": cfg.tasks,
            "every_s": cfg.every_s,
            "sleep_ms": cfg.sleep_ms,
            "workers": len(cfg.workers),
            "slots": cfg.slots,
            "kill_after_s": list(cfg.kill_after_s),
            "on_standby_s": cfg.on_standby_s,
            "reps": reps,
        },
        "reps": rows,
        "median": median,
        "totals": totals,
        "recovery_ok": all(r["recovery_ok"] for r in rows),
    }


def run_matrix(reps: int, workdir: Path, tasks: int = MATRIX.tasks) -> dict[str, Any]:
    """Issue 15's fault matrix: rep n has seed n and second kill ``SECOND_KILLS[n % 3]``."""
    real = bool(os.environ.get("COUCHDB_FAULT_PRIMARY_URL"))
    rows: list[dict[str, Any]] = []
    for rep in range(1, reps + 1):
        cfg = replace(MATRIX, tasks=tasks, seed=rep, second_kill=SECOND_KILLS[rep % 3])
        tmp = workdir / f"rep{rep}"
        tmp.mkdir(parents=True, exist_ok=True)
        with fault_servers(tmp, "primary", "standby", real=real) as pair:
            report = run_fault(tmp, cfg, pair)
        row = {"rep": rep, **report.as_dict()}
        rows.append(row)
        log(f"matrix rep {rep}/{reps} ({cfg.second_kill}): " + ", ".join(
            f"{k} {row[k]}" for k in (*MATRIX_FIGURES, "stored_runs", "outage_s",
                                      "second_kill_after_s", "recover_s", "audit_clean_s")
        ))  # fmt: skip
    return {
        "server": "CouchDB (COUCHDB_FAULT_*)" if real else "PouchDB Server",
        "config": {
            "tasks": tasks,
            "every_s": MATRIX.every_s,
            "sleep_ms": MATRIX.sleep_ms,
            "workers": len(MATRIX.workers),
            "kill_after_s": list(MATRIX.kill_after_s),
            "outage_s": list(MATRIX.outage_s or ()),
            "reps": reps,
        },
        "reps": rows,
        "totals": {
            k: sum(r[k] for r in rows)
            for k in (
                *MATRIX_FIGURES,
                "stored_runs",
                "rescued",
                "restored",
                "replaced",
                "superseded",
            )
        },
        "recovery_ok": all(r["recovery_ok"] for r in rows),
        "median": {
            k: _median([r[k] for r in rows])
            for k in ("failover_s", "recover_s", "audit_clean_s", "outage_s")
        },
    }


def matrix_lines(data: dict[str, Any]) -> list[str]:
    c = data["config"]
    lines = [
        f"Fault matrix on {data['server']}: {c['tasks']} tasks of demo.sleep {c['sleep_ms']} ms "
        f"every {c['every_s']} s, {c['workers']} workers; kill -9 the primary "
        f"{c['kill_after_s'][0]:g}-{c['kill_after_s'][1]:g} s in, outage "
        f"{c['outage_s'][0]:g}-{c['outage_s'][1]:g} s, wipe, hub recover",
        "",
        "| rep | second kill | killed at s | outage s | second kill s in | results 201'd | "
        "lost | hub audit | conflicts | two results | unaccounted | failover s | "
        "last recover s | rescued / restored / replaced | not restored | recovery |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["reps"]:
        audit = (f"clean after {r['audit_clean_s']} s" if r["audit_clean_s"] is not None
                 else f"{r['audit_findings_count']} finding(s)")  # fmt: skip
        lines.append(
            f"| {r['rep']} | {r['second_kill']} | {r['killed_after_s']:.1f} | {r['outage_s']} | "
            f"{r['second_kill_after_s'] if r['second_kill_after_s'] is not None else ''} | "
            f"{r['stored_runs']} | {r['lost_count']} | {audit} | {r['conflicts_count']} | "
            f"{r['duplicates_count']} | {r['unaccounted_count']} | {r['failover_s']} | "
            f"{r['recover_s']} | {r['rescued']} / {r['restored']} / {r['replaced']} | "
            f"{r['not_restored']} | {'ok' if r['recovery_ok'] else 'FAILED'} |"
        )
    t, m = data["totals"], data["median"]
    lines.append(
        f"| **total / median** | | | {m['outage_s']} | | {t['stored_runs']} | {t['lost_count']} | "
        f"{t['audit_findings_count']} finding(s); clean after {m['audit_clean_s']} s | "
        f"{t['conflicts_count']} | {t['duplicates_count']} | {t['unaccounted_count']} | "
        f"{m['failover_s']} | {m['recover_s']} | {t['rescued']} / {t['restored']} / "
        f"{t['replaced']} | {t['not_restored']} | "
        f"{'all ok' if data['recovery_ok'] else 'FAILED'} |"
    )
    return lines


def run(scale: Scale, workdir: Path) -> Section:
    cfg = FULL if scale.name == "full" else SMALL
    reps = REPS.get(scale.name, 1)
    data = run_reps(cfg, reps, workdir / "failover")
    setup = (
        f"hub serve + {len(cfg.workers)} workers ({cfg.slots} slots), {cfg.tasks} tasks of "
        f"demo.sleep {cfg.sleep_ms} ms every {cfg.every_s} s; kill -9 the primary "
        f"{cfg.kill_after_s[0]:g}-{cfg.kill_after_s[1]:g} s in, {cfg.on_standby_s:g} s on the "
        f"standby, new empty primary, hub recover, resume; {reps} repetition(s)"
    )
    clean = all(data["totals"][k] == 0 for k in FIGURES) and data["recovery_ok"]
    return Section("failover", setup, data=data, status="ok", why="" if clean else "faults found")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.failover", description=__doc__)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=FULL.tasks)
    parser.add_argument("--standby-s", type=float, default=FULL.on_standby_s)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--matrix", action="store_true", help="issue 15's fault matrix")
    args = parser.parse_args(argv)
    import tempfile

    from bench import report

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="couchfarm-failover-"))
    if args.matrix:
        began = time.monotonic()
        data = run_matrix(args.reps, workdir, tasks=args.tasks if args.tasks != FULL.tasks
                          else MATRIX.tasks)  # fmt: skip
        stamp = datetime.now(UTC).strftime("%Y-%m-%d-%H%M")
        out = BENCH_DIR / "results" / f"{stamp}-fault-matrix.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(data, indent=1, default=str))
        print("\n".join(matrix_lines(data)))
        log(f"wrote {out} in {(time.monotonic() - began) / 60:.1f} min (work directory {workdir})")
        clean = all(data["totals"][k] == 0 for k in MATRIX_FIGURES) and data["recovery_ok"]
        return 0 if clean else 1
    cfg = replace(FULL, tasks=args.tasks, on_standby_s=args.standby_s)
    began = time.monotonic()
    data = run_reps(cfg, args.reps, workdir)
    section = Section("failover", "", data=data, seconds=time.monotonic() - began)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    out = BENCH_DIR / "results" / f"{stamp}-failover.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(section.to_json(), indent=1, default=str))
    print("\n".join(report.failover_lines(section.to_json())))
    log(f"wrote {out} in {(time.monotonic() - began) / 60:.1f} min (work directory {workdir})")
    return 0 if all(data["totals"][k] == 0 for k in FIGURES) else 1


if __name__ == "__main__":
    sys.exit(main())
