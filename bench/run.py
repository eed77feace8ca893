"""``make bench``: every Couchfarm benchmark in one run, on one server.

PouchDB Server, started by the run; or, with ``COUCHDB_URL`` (and ``COUCHDB_USER``,
``COUCHDB_PASSWORD`` of a server admin; ``COUCHDB_PID`` if the process listening on the
URL's port cannot be seen), that CouchDB (bench.common.BenchServer).

    make bench                          # BENCH_SCALE=small (default): under 10 minutes
    make bench BENCH_SCALE=full         # the full sizes (10,000 items, longer windows)
    .venv/bin/python -m bench.run --only claim_race,e2e --update-docs

A CouchDB cluster: also ``COUCHDB_NODE_URLS=url1,url2,url3`` (workers spread round-robin
over the nodes, figures summed over them) and the ``cluster`` section runs (bench/cluster.py:
the fleet's load and a check of every occurrence's results; skipped without it):

    COUCHDB_URL=http://127.0.0.1:25984 COUCHDB_USER=admin COUCHDB_PASSWORD=... \
    COUCHDB_NODE_URLS=http://127.0.0.1:25984,http://127.0.0.1:25986,http://127.0.0.1:25988 \
        .venv/bin/python -m bench.run --only cluster

Writes ``bench/results/<date>-<scale>.json`` (every figure and repetition),
``bench/results/<date>-<scale>.md`` (the tables) and PNG plots in
``bench/results/<date>-<scale>/``. With ``--update-docs`` (or ``BENCH_UPDATE_DOCS=1``) the
tables also replace the figures section of docs/BENCHMARKS.md. Method: docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import (
    beanstalk,
    claim_race,
    cluster,
    e2e,
    extras,
    failover,
    fleet,
    hub_capacity,
    latency,
    plots,
    quorum,
    raw_write,
    report,
    server_costs,
)
from bench.common import (
    BENCH_DIR,
    PICAS_PYTHON,
    PICAS_VENV,
    REPO,
    BenchServer,
    Section,
    log,
    scale_from_env,
)
from bench.farm import Credentials

DOCS = REPO / "docs" / "BENCHMARKS.md"
BEGIN, END = "<!-- bench:figures:begin -->", "<!-- bench:figures:end -->"
ORDER = [
    "server_costs",
    "claim_race",
    "raw_write",
    "e2e",
    "latency",
    "fleet",
    "cluster",
    "hub_capacity",
    "beanstalkd",
    "tray_idle",
    "portal_dashboard",
    "failover",
    "quorum",
]


def ensure_picas_venv() -> None:
    """bench/.venv-picas with picas 1.1.2 (its pins clash with ours, so it lives apart)."""
    if PICAS_PYTHON.exists():
        return
    log("creating bench/.venv-picas (picas 1.1.2)")
    base = getattr(sys, "_base_executable", None) or shutil.which("python3") or sys.executable
    subprocess.run([base, "-m", "venv", str(PICAS_VENV)], check=True)
    (PICAS_VENV / ".gitignore").write_text("*\n")
    subprocess.run(
        [str(PICAS_PYTHON), "-m", "pip", "install", "-q", "picas==1.1.2"], check=True, timeout=900
    )


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "n/a"


def meta(scale_name: str, reps: int) -> dict[str, Any]:
    pouch = REPO / "node_modules" / "pouchdb-server" / "package.json"
    commit = _version(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = _version(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"])
    return {
        "scale": scale_name,
        "reps": reps,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "load_start": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "node": _version(["node", "--version"]),
        "pouchdb_server": json.loads(pouch.read_text()).get("version") if pouch.exists() else "n/a",
        "picas": _version(
            [str(PICAS_PYTHON), "-c", "import importlib.metadata as m; print(m.version('picas'))"]
        ),
        "beanstalkd": _version(["beanstalkd", "-v"]).replace("beanstalkd ", ""),
        "commit": commit + (" (with uncommitted changes)" if dirty not in ("", "n/a") else ""),
    }


def update_docs(table: str) -> bool:
    if not DOCS.exists():
        return False
    text = DOCS.read_text()
    if BEGIN not in text or END not in text:
        return False
    head, rest = text.split(BEGIN, 1)
    _old, tail = rest.split(END, 1)
    DOCS.write_text(f"{head}{BEGIN}\n\n{table}\n{END}{tail}")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--only", help="comma-separated sections: " + ",".join(ORDER))
    parser.add_argument("--update-docs", action="store_true")
    args = parser.parse_args(argv)
    only = set(args.only.split(",")) if args.only else set(ORDER)
    scale = scale_from_env()
    began = time.monotonic()
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    # BENCH_RUN_NAME: the results' file name, so a partial run does not replace a day's run.
    name = os.environ.get("BENCH_RUN_NAME", "").strip() or f"{stamp}-{scale.name}"
    results_dir = BENCH_DIR / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="couchfarm-bench-"))
    info = meta(scale.name, scale.reps)
    info["name"] = name
    log(f"scale {scale.name}, work directory {workdir}")
    if "claim_race" in only:
        try:
            ensure_picas_venv()
        except (OSError, subprocess.SubprocessError) as exc:
            log(f"could not create bench/.venv-picas: {exc}")
    server = BenchServer(workdir).start()
    info["server"] = f"{server.kind}: {server.version}"
    info["server_pid_seen"] = server.pid is not None
    log(f"server {server.url} ({info['server']}, pid {server.pid})")
    sections: dict[str, Section] = {}
    state: dict[str, Any] = {}

    def yardstick() -> float:
        raw = sections.get("raw_write")
        return float(raw.data.get("yardstick_docs_per_s", 0.0)) if raw else 0.0

    def credentials() -> Credentials:
        if "credentials" not in state:
            most = max([*scale.e2e_workers, *scale.e2e_inline_workers, scale.latency_workers])
            state["credentials"] = Credentials(server, workdir, most)
        return state["credentials"]

    steps: dict[str, Callable[[], Section]] = {
        "server_costs": lambda: server_costs.run(server, scale, workdir),
        "claim_race": lambda: claim_race.run(server, scale, workdir),
        "raw_write": lambda: raw_write.run(server, scale),
        "e2e": lambda: e2e.run(server, scale, workdir, credentials(), yardstick()),
        "latency": lambda: latency.run(server, scale, workdir, credentials()),
        "fleet": lambda: fleet.run(server, scale, workdir, credentials()),
        "cluster": lambda: cluster.run(server, scale, workdir, credentials()),
        "hub_capacity": lambda: hub_capacity.run(server, scale, workdir, credentials()),
        "beanstalkd": lambda: beanstalk.run(scale, workdir),
        "tray_idle": lambda: extras.tray_idle(server, scale),
        "portal_dashboard": lambda: extras.portal_dashboard(server, scale),
        "failover": lambda: failover.run(scale, workdir),
        "quorum": lambda: quorum.run(server, scale, workdir),
    }
    if "e2e" in only and "raw_write" not in only:
        only.add("raw_write")  # the end-to-end figure is a share of this run's raw write rate
    try:
        for key in ORDER:
            if key not in only:
                continue
            log(f"--- {key}")
            t0 = time.monotonic()
            try:
                section = steps[key]()
            except Exception as exc:
                section = Section(key, "", status="failed", why=f"{type(exc).__name__}: {exc}")
                section.data = {"traceback": traceback.format_exc()[-4000:]}
                log(f"{key} failed: {exc}")
            section.seconds = section.seconds or (time.monotonic() - t0)
            sections[key] = section
            log(f"{key}: {section.status} in {time.monotonic() - t0:.0f} s")
    finally:
        server.stop()
    info["run_seconds"] = time.monotonic() - began
    info["load_end"] = round(os.getloadavg()[0], 2)
    results: dict[str, Any] = {
        "meta": info,
        "sections": {key: section.to_json() for key, section in sections.items()},
    }
    results["targets"] = report.targets(results)
    json_path = results_dir / f"{name}.json"
    json_path.write_text(json.dumps(results, indent=1, default=str))
    try:
        drawn = plots.draw_all(results, results_dir / name)
        results["meta"]["plots"] = [str(Path(p).relative_to(REPO)) for p in drawn]
    except Exception as exc:  # a plot must never lose the figures
        log(f"plots failed: {exc!r}")
        results["meta"]["plots"] = []
    json_path.write_text(json.dumps(results, indent=1, default=str))
    table = report.markdown(results)
    (results_dir / f"{name}.md").write_text(table + "\n")
    print(table)
    if args.update_docs or os.environ.get("BENCH_UPDATE_DOCS") == "1":
        log(
            "docs/BENCHMARKS.md updated"
            if update_docs(table)
            else "docs/BENCHMARKS.md has no markers"
        )
    if os.environ.get("BENCH_KEEP") != "1":
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        log(f"kept {workdir}")
    log(f"wrote {json_path} in {info['run_seconds'] / 60:.1f} min")
    return 0 if all(s.status in ("ok", "pending", "skipped") for s in sections.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
