"""Benchmarks other engineers own, called when present: bench/tray_idle.py and
bench/portal_dashboard.py. They run as child processes against this run's server
(``COUCHDB_URL``/``COUCHDB_USER``/``COUCHDB_PASSWORD``) and their output is parsed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from typing import Any

from bench.common import BENCH_DIR, REPO, BenchServer, Scale, Section, log


def _run(server: BenchServer, argv: list[str], env_extra: dict[str, str], timeout: float):
    env = {
        **os.environ,
        "COUCHDB_URL": server.url,
        "COUCHDB_USER": server.admin_user,
        "COUCHDB_PASSWORD": server.admin_password,
        "PYTHONPATH": str(REPO),
        **env_extra,
    }
    began = time.monotonic()
    proc = subprocess.run(
        [sys.executable, *argv],
        cwd=str(REPO),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc, time.monotonic() - began


def tray_idle(server: BenchServer, scale: Scale) -> Section:
    path = BENCH_DIR / "tray_idle.py"
    section = Section(
        "tray_idle",
        f"bench/tray_idle.py (owned by the tray app's engineer); "
        f"{'60' if scale.name == 'full' else '10'} s idle window.",
    )
    if not path.exists():
        section.status, section.why = "pending", "bench/tray_idle.py is not there yet"
        return section
    seconds = "60" if scale.name == "full" else "10"
    try:
        proc, took = _run(
            server,
            [str(path), "--seconds", seconds, "--warmup", "5"],
            {"QT_QPA_PLATFORM": "offscreen"},
            scale.extra_timeout_s,
        )
    except subprocess.TimeoutExpired:
        section.status, section.why = "failed", "timed out"
        return section
    text = proc.stdout
    data: dict[str, Any] = {"exit_code": proc.returncode, "output": text.strip()[-1500:]}
    rss = re.search(r"start ([\d.]+) MB, end ([\d.]+) MB, peak ([\d.]+) MB", text)
    uss = re.search(r"USS ([\d.]+) MB", text)
    cpu = re.search(r"= ([\d.]+) % of one core", text)
    if rss:
        data.update(rss_start_mb=float(rss[1]), rss_end_mb=float(rss[2]), rss_peak_mb=float(rss[3]))
    if uss:
        data["uss_mb"] = float(uss[1])
    if cpu:
        data["cpu_percent_of_one_core"] = float(cpu[1])
    if not rss or not cpu:
        section.status = "failed"
        section.why = (proc.stderr or text).strip()[-500:]
    section.data = data
    section.seconds = took
    log(
        f"tray idle: {data.get('rss_peak_mb')} MB peak RSS, {data.get('cpu_percent_of_one_core')} %"
    )
    return section


def portal_dashboard(server: BenchServer, scale: Scale) -> Section:
    path = BENCH_DIR / "portal_dashboard.py"
    env = (
        {}
        if scale.name == "full"
        else {"PORTAL_BENCH_TASKS": "50", "PORTAL_BENCH_RESULTS": "20", "PORTAL_BENCH_REPS": "5"}
    )
    section = Section(
        "portal_dashboard",
        "bench/portal_dashboard.py (owned by the portal's engineer)"
        + (f", small: {env}" if env else ", its defaults")
        + ".",
    )
    if not path.exists():
        section.status, section.why = "pending", "bench/portal_dashboard.py is not there yet"
        return section
    try:
        # Full scale loads 1,000,000 results first (about 8 minutes on PouchDB Server).
        timeout = (
            max(scale.extra_timeout_s, 2400.0) if scale.name == "full" else scale.extra_timeout_s
        )
        proc, took = _run(server, [str(path)], env, timeout)
    except subprocess.TimeoutExpired:
        section.status, section.why = "failed", "timed out"
        return section
    start = proc.stdout.find("{")
    try:
        section.data = json.loads(proc.stdout[start:]) if start >= 0 else {}
    except ValueError:
        section.data = {}
    if not section.data:
        section.status = "failed"
        section.why = (proc.stderr or proc.stdout).strip()[-500:]
    section.seconds = took
    return section
