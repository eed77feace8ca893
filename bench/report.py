"""Targets (met / not met) and the Markdown figures of one run, from its results JSON."""

from __future__ import annotations

from typing import Any

from bench.common import fmt, fmt_summary


def _get(data: dict[str, Any], *path: Any) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _median(s: Any) -> float | None:
    return s.get("median") if isinstance(s, dict) else None


def _pct(s: Any) -> str:
    if not isinstance(s, dict) or not s.get("n"):
        return "n/a"
    return f"{100 * s['median']:.1f} % ({100 * s['min']:.1f}-{100 * s['max']:.1f})"


def _ok(section: dict[str, Any] | None) -> bool:
    return bool(section) and section.get("status") == "ok"


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    s = results["sections"]
    out: list[dict[str, Any]] = []

    def add(key: str, what: str, target: str, figure: str, met: bool | None) -> None:
        out.append({"id": key, "what": what, "target": target, "figure": figure, "met": met})

    race = s.get("claim_race")
    top = max((int(w) for w in _get(race, "by_workers") or {}), default=None)
    if _ok(race) and top is not None:
        row = race["by_workers"][str(top)]
        ratio = row["ratio_couchfarm_over_picas"]
        add(
            "1a",
            f"claims/s vs PiCaS at {top} workers",
            "≥ 3x",
            f"{fmt_summary(ratio, 2)}x ({fmt(_median(row['couchfarm']['claims_per_s']))} vs "
            f"{fmt(_median(row['picas']['claims_per_s']))} claims/s)",
            (_median(ratio) or 0) >= 3.0,
        )
        waste = row["couchfarm"]["conflict_waste"]
        add(
            "1b",
            f"conflict waste at {top} workers (lost-race PUTs / claim PUTs)",
            "≤ 15 %",
            _pct(waste),
            (_median(waste) or 0) <= 0.15,
        )
        doubles = row["couchfarm"]["double_claimed_items"]
        add(
            "1c",
            "double claims (Couchfarm, all runs)",
            "0",
            f"{doubles} (PiCaS: {row['picas']['double_claimed_items']} items, "
            f"{_pct(row['picas']['double_claim_rate'])} of items at {top} workers)",
            doubles == 0,
        )
    else:
        add("1", "claim race", "≥ 3x PiCaS; waste ≤ 15 %", "not run", None)

    e2e = s.get("e2e")
    if _ok(e2e):
        for variant, label in (("spawn", "real worker"), ("inline", "runs in-process")):
            rows = _get(e2e, variant, "by_workers") or {}
            if not rows:
                continue
            best_w, best = max(rows.items(), key=lambda kv: _median(kv[1]["completed_per_s"]) or 0)
            frac = best["fraction_of_raw_write"]
            add(
                f"2{'a' if variant == 'spawn' else 'b'}",
                f"end to end, {label}: completed/s as share of raw writes (best: {best_w} workers)",
                "≥ 30 %",
                f"{_pct(frac)} = {fmt_summary(best['completed_per_s'])} occ/s of "
                f"{fmt(e2e['yardstick_docs_per_s'])} writes/s",
                (_median(frac) or 0) >= 0.30,
            )
    else:
        add("2", "end to end", "≥ 30 % of raw writes", "not run", None)

    lat = s.get("latency")
    rpo = []
    if _ok(lat) and lat.get("requests_per_occurrence") is not None:
        rpo.append(("hub + idle workers", lat["requests_per_occurrence"], None))
    for variant in ("spawn", "inline"):
        rows = _get(e2e, variant, "by_workers") or {}
        for w in ("4",):
            if w in rows and _median(rows[w]["requests_per_occurrence"]) is not None:
                rpo.append(
                    (
                        f"saturated, {variant}, {w} workers",
                        _median(rows[w]["requests_per_occurrence"]),
                        rows[w]["requests_per_occurrence"],
                    )
                )
    picas = _get(race, "data", "picas_cycle") or _get(race, "picas_cycle")
    picas_text = (
        f"; PiCaS: {fmt_summary(picas['requests_per_token'], 2)} per token"
        if picas and picas.get("requests_per_token", {}).get("n")
        else ""
    )
    if rpo:
        figure = "; ".join(
            f"{name}: {fmt_summary(spread, 2) if spread else fmt(value, 2)}"
            for name, value, spread in rpo
        )
        add(
            "3",
            "requests per completed occurrence, hub + workers (server log)",
            "≤ 3.5",
            figure + picas_text,
            all(value <= 3.5 for _n, value, _s in rpo),
        )
    else:
        add("3", "requests per completed occurrence", "≤ 3.5", "not run", None)

    if _ok(lat):
        claimed = lat["overall"]["claimed"]
        add(
            "4",
            "p99 due → claimed, idle workers",
            "≤ 1 s",
            f"{fmt(claimed['p99'], 3)} s (p50 {fmt(claimed['p50'], 3)}, n={claimed['n']}; "
            f"per-window p99 {fmt_summary(lat['per_rep']['claimed']['p99'], 3)})",
            claimed["p99"] is not None and claimed["p99"] <= 1.0,
        )
    else:
        add("4", "p99 due → claimed", "≤ 1 s", "not run", None)

    cap = s.get("hub_capacity")
    if _ok(cap):
        largest = cap.get("largest_passing_level")
        tried = [lv["tasks"] for lv in cap["levels"]]
        text = (
            f"≥ {largest:,} (largest level tried)"
            if cap.get("all_levels_passed") and largest
            else (f"{largest:,}" if largest else f"< {tried[0]:,}")
        )
        visible = ", ".join(
            f"{lv['tasks']:,}: {fmt(lv['visible_lateness_s']['p99'], 2)} s" for lv in cap["levels"]
        )
        add(
            "5a",
            "every-minute tasks one hub materializes with p99 lateness (created_at - due) < 1 s",
            "report",
            text + f" (levels tried: {', '.join(f'{t:,}' for t in tried)}; p99 until visible "
            f"in _changes: {visible})",
            None,
        )
        share = cap.get("hub_cpu_share_at_10k")
        add(
            "5b",
            "hub CPU at 10,000 every-minute tasks",
            "< 50 % of one core",
            _pct(share) if share else "10,000 not run",
            (_median(share) or 1) < 0.5 if share else None,
        )
    else:
        add("5", "hub capacity", "< 50 % of a core at 10,000", "not run", None)

    bs = s.get("beanstalkd")
    if _ok(bs):
        parts = []
        for w, row in bs["by_workers"].items():
            cf = _median(_get(race, "by_workers", w, "couchfarm", "claims_per_s"))
            ratio = (_median(row["reserve_delete_per_s"]) or 0) / cf if cf else None
            parts.append(
                f"{w} workers: {fmt(_median(row['reserve_delete_per_s']), 0)} reserve+delete/s"
                + (f" = {ratio:.0f}x Couchfarm claims/s" if ratio else "")
            )
        add(
            "6",
            "beanstalkd, fsync every write (context, not like-for-like)",
            "report",
            "; ".join(parts),
            None,
        )
    else:
        add("6", "beanstalkd", "report", (bs or {}).get("why") or "not run", None)

    tray = s.get("tray_idle")
    if tray and tray.get("status") == "ok":
        peak = tray.get("rss_peak_mb")
        add(
            "7",
            "tray app idle footprint (its own target: RSS ≤ 80 MB, CPU ≈ 0)",
            "≤ 80 MB",
            f"peak RSS {fmt(peak)} MB, CPU {fmt(tray.get('cpu_percent_of_one_core'), 2)} % "
            "of a core",
            peak is not None and peak <= 80,
        )
    else:
        add(
            "7",
            "tray app idle footprint",
            "≤ 80 MB",
            (tray or {}).get("status", "pending")
            + (f": {tray.get('why')}" if tray and tray.get("why") else ""),
            None,
        )
    _failover_targets(s.get("failover"), add)
    _fleet_targets(s.get("fleet"), add)
    return out


def _fleet_targets(fleet: dict[str, Any] | None, add: Any) -> None:
    """Issue 20's fleet targets, at the largest W run (200 at full scale)."""
    rows = _get(fleet, "by_workers") or {}
    if not _ok(fleet) or not rows:
        add("9", "fleet", "see issue 20", "not run", None)
        return
    top = max(rows, key=int)
    row, base = rows[top], rows.get("4")
    w = f"W={top}"
    done, offered = row.get("completed_per_s"), row.get("offered_per_s")
    add(
        "9a",
        f"fleet {w}: completed/s vs offered/s",
        "= offered",
        f"{fmt(done, 2)} of {fmt(offered, 2)}",
        None if done is None else done >= 0.97 * offered,
    )
    cpu, cpu4 = row.get("server_cpu_ms_per_occurrence"), _get(base, "server_cpu_ms_per_occurrence")
    add(
        "9b",
        f"fleet {w}: server CPU per occurrence vs W=4",
        "≤ 1.5x",
        f"{fmt(cpu, 1)} ms vs {fmt(cpu4, 1)} ms"
        + (f" = {cpu / cpu4:.2f}x" if cpu is not None and cpu4 else ""),
        None if cpu is None or not cpu4 else cpu <= 1.5 * cpu4,
    )
    rpo = row.get("requests_per_occurrence")
    add(
        "9c",
        f"fleet {w}: requests per occurrence (server)",
        "≤ 3.5",
        fmt(rpo, 2),
        None if rpo is None else rpo <= 3.5,
    )
    idle = _get(row, "idle", "bytes_per_worker_per_s")
    add(
        "9d",
        f"fleet {w}: an idle worker's traffic",
        "≤ 1 KB/s",
        f"{fmt(idle, 0)} B/s (max {fmt(_get(row, 'idle', 'max_bytes_per_worker_per_s'), 0)})",
        None if idle is None else idle <= 1024,
    )
    p99 = _get(row, "due_to_claimed_s", "p99")
    add(
        "9e",
        f"fleet {w}: p99 due → claimed",
        "≤ 1 s",
        f"{fmt(p99, 3)} s ({row.get('unclaimed_due_in_window', 0)} due in the window unclaimed)",
        None if p99 is None else p99 <= 1.0 and not row.get("unclaimed_due_in_window"),
    )


def fleet_lines(fleet: dict[str, Any]) -> list[str]:
    rows = fleet.get("by_workers") or {}
    if not rows:
        return []
    lines = [
        f"#### 9. Fleet ({fleet.get('setup', '')})",
        "",
        "| workers | completed/s (of offered) | server CPU ms/occ | requests/occ (server) | "
        "of which workers / hub / neither | lost races/occ | bytes per worker per occ | "
        "bytes, all workers, per occ | "
        "idle: bytes per worker per s | due → claimed p50 / p95 / p99 s | due, unclaimed | "
        "cores: server / hub / fleet |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for w, row in rows.items():
        claimed = row.get("due_to_claimed_s") or {}
        lines.append(
            f"| {w} | {fmt(row.get('completed_per_s'), 2)} ({fmt(row.get('offered_per_s'), 1)}) "
            f"| {fmt(row.get('server_cpu_ms_per_occurrence'), 1)} "
            f"| {fmt(row.get('requests_per_occurrence'), 2)} "
            f"| {fmt(row.get('worker_requests_per_occurrence'), 2)} / "
            f"{fmt(row.get('hub_requests_per_occurrence'), 2)} / "
            f"{fmt(row.get('unattributed_requests_per_occurrence'), 2)} "
            f"| {fmt(row.get('lost_races_per_occurrence'), 2)} "
            f"| {fmt(row.get('bytes_per_worker_per_occurrence'), 0)} "
            f"| {fmt(row.get('bytes_all_workers_per_occurrence'), 0)} "
            f"| {fmt(_get(row, 'idle', 'bytes_per_worker_per_s'), 0)} "
            f"| {fmt(claimed.get('p50'), 3)} / {fmt(claimed.get('p95'), 3)} / "
            f"{fmt(claimed.get('p99'), 3)} (n={claimed.get('n', 0)}) "
            f"| {row.get('unclaimed_due_in_window', 0)} "
            f"| {fmt(row.get('server_cores'), 2)} / {fmt(row.get('hub_cores'), 2)} / "
            f"{fmt(row.get('fleet_cores'), 2)} |"
        )
    lines.append("")
    for title, key in (
        ("server, by method", "requests_per_occurrence_by_method"),
        ("server, by status", "requests_per_occurrence_by_status"),
        ("server log, by endpoint", "requests_per_occurrence_by_endpoint"),
        (
            "the workers' own requests (client side), by endpoint",
            "worker_requests_per_occurrence_by_endpoint",
        ),
        (
            "the hub's own requests (client side, bench/workers/counted_hub.py), by endpoint",
            "hub_requests_per_occurrence_by_endpoint",
        ),
    ):
        mixes = [(w, row.get(key) or {}) for w, row in rows.items()]
        if not any(m for _w, m in mixes):
            continue
        labels: list[str] = []
        for _w, mix in mixes:
            labels += [k for k in mix if k not in labels]
        lines += [
            f"Fleet requests per completed occurrence, {title}:",
            "",
            "| request | " + " | ".join(f"W={w}" for w, _m in mixes) + " |",
            "|---|" + "---|" * len(mixes),
        ]
        for label in labels:
            lines.append(
                f"| {label} | "
                + " | ".join(fmt(m.get(label), 2) if m.get(label) else "" for _w, m in mixes)
                + " |"
            )
        lines.append("")
    return lines


# ---------------------------------------------------------------- failover (issue 6)


def _failover_targets(fo: dict[str, Any] | None, add: Any) -> None:
    if not _ok(fo):
        add("8", "failover: kill -9 the primary under load", "0 lost",
            (fo or {}).get("why") or "not run", None)  # fmt: skip
        return
    t, m, reps = fo["totals"], fo["median"], fo["config"]["reps"]
    add(
        "8a",
        f"failover, {reps} repetition(s): results lost (of {t['stored_runs']} a worker got a "
        "201 for) / duplicates / documents in conflict / unaccounted occurrences",
        "0 / 0 / 0 / 0",
        f"{t['lost_count']} / {t['duplicates_count']} / {t['conflicts_count']} / "
        f"{t['unaccounted_count']}",
        all(t[k] == 0 for k in ("lost_count", "duplicates_count", "conflicts_count",
                                 "unaccounted_count")) and fo["recovery_ok"],
    )  # fmt: skip
    add(
        "8b",
        "failover time (primary death → first claim on the standby), median",
        "report",
        f"{fmt(m['failover_s'], 2)} s",
        None,
    )
    add(
        "8c",
        "replication lag primary → standby under that load (median of medians; max)",
        "report",
        f"probe {fmt(m['lag_seconds'], 3)} s (max {fmt(m['lag_seconds_max'], 2)} s); "
        f"{fmt(m['lag_docs'], 0)} docs (max {fmt(m['lag_docs_max'], 0)}); at the kill the "
        f"standby lacked {fmt(m.get('exposed_results'), 0)} 201'd results, the oldest "
        f"finished {fmt(m.get('exposed_window_s'))} s before",
        None,
    )


def failover_lines(fo: dict[str, Any]) -> list[str]:
    """The failover section: one row per repetition, then the medians."""
    c = fo["config"]
    lines = [
        f"#### 8. Failover (issue 6): {c['tasks']} tasks of demo.sleep {c['sleep_ms']} ms "
        f"every {c['every_s']} s, {c['workers']} workers, {c['slots']} slots each; kill -9 the "
        f"primary {c['kill_after_s'][0]:g}-{c['kill_after_s'][1]:g} s in, "
        f"{c['on_standby_s']:g} s on the standby, empty new primary, hub recover",
        "",
        "| rep | killed at s | results stored (201) | lost | duplicates | conflicts | "
        "unaccounted | failover s | lag s (median / max) | lag docs (median / max) | "
        "201'd results the standby lacked at the kill (oldest finished s before) | "
        "re-run on standby | rescued | later result replaced | superseded by rule | "
        "recovery |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in fo["reps"]:
        ls, ld = r["lag_seconds"], r["lag_docs"]
        lines.append(
            f"| {r['rep']} | {fmt(r['killed_after_s'])} | {r['stored_runs']} | "
            f"{r['lost_count']} | {r['duplicates_count']} | {r['conflicts_count']} | "
            f"{r['unaccounted_count']} | {fmt(r['failover_s'], 2)} | "
            f"{fmt(ls['median'], 3)} / {fmt(ls['max'], 2)}"
            + (
                f" ({ls['unseen_at_kill']} probe(s) unseen at the kill, up to "
                f"{fmt(ls['unseen_max_age'], 2)} s old)"
                if ls.get("unseen_at_kill")
                else ""
            )
            + f" | {fmt(ld['median'], 0)} / "
            f"{fmt(ld['max'], 0)} | {r.get('exposed_results', 'n/a')} "
            f"({fmt(r.get('exposed_window_s'))}) | "
            f"{r['reruns']} | {r['rescued']} | {r['replaced']} | "
            f"{r['superseded']} | {'ok' if r['recovery_ok'] else 'FAILED'} |"
        )
    m = fo["median"]
    lines += [
        f"| **median** | | | {fmt(m['lost_count'], 0)} | {fmt(m['duplicates_count'], 0)} | "
        f"{fmt(m['conflicts_count'], 0)} | {fmt(m['unaccounted_count'], 0)} | "
        f"{fmt(m['failover_s'], 2)} | {fmt(m['lag_seconds'], 3)} / "
        f"{fmt(m['lag_seconds_max'], 2)} | {fmt(m['lag_docs'], 0)} / "
        f"{fmt(m['lag_docs_max'], 0)} | {fmt(m.get('exposed_results'), 0)} "
        f"({fmt(m.get('exposed_window_s'))}) | | | | | |",
        "",
        "Lost: a result a worker got a 201 for that is neither the stored result nor "
        "beaten by one that finished first (tests/faults.py). Lag: a probe written on the "
        "primary until read on the standby; documents whose winning revision on the primary "
        "the standby lacked, sampled every 1.5 s before the kill. The column after them is "
        "the lag that matters, read from the occurrences themselves: results the primary "
        "had accepted (201) and the standby did not hold when the primary died (the workers' "
        "spools rescued each of them), and how long before the kill the oldest finished.",
        "",
    ]
    return lines


def verdict(met: bool | None) -> str:
    return {True: "**met**", False: "**not met**", None: "—"}[met]


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    s = results["sections"]
    lines = [
        f"### Run {meta['name']} — scale `{meta['scale']}`, {meta['run_seconds'] / 60:.1f} min",
        "",
        f"Machine: {meta['cpus']} cores, load average {meta['load_start']} at start and "
        f"{meta['load_end']} at the end (other work was running); Python {meta['python']}, "
        f"Node {meta['node']}, pouchdb-server {meta['pouchdb_server']}, picas "
        f"{meta.get('picas', 'n/a')}, beanstalkd {meta.get('beanstalkd', 'n/a')}; "
        f"commit {meta['commit']}; server {meta.get('server', 'PouchDB Server')}. "
        f"Figures are medians of {meta['reps']} repetitions with "
        "(min-max), all from this one run on one server.",
        "",
        "| # | what | target | figure | verdict |",
        "|---|---|---|---|---|",
    ]
    for t in results["targets"]:
        lines.append(
            f"| {t['id']} | {t['what']} | {t['target']} | {t['figure']} | {verdict(t['met'])} |"
        )
    lines.append("")

    raw = s.get("raw_write")
    if _ok(raw):
        lines += [
            "#### Raw single-document writes (the yardstick)",
            "",
            "| clients | docs/s |",
            "|---|---|",
        ]
        for c, summ in raw["docs_per_s_by_clients"].items():
            lines.append(f"| {c} | {fmt_summary(summ, 0)} |")
        lines += ["", f"Yardstick: {fmt(raw['yardstick_docs_per_s'], 0)} docs/s.", ""]

    race = s.get("claim_race")
    if _ok(race):
        lines += [
            f"#### 1. Claim race ({race['items_per_run']:,} ready items per run, cap "
            f"{race['cap_s']:g} s)",
            "",
            "| workers | Couchfarm claims/s | PiCaS claims/s | ratio | Couchfarm req/claim | "
            "PiCaS req/claim | Couchfarm lost races/claim | Couchfarm waste | "
            "double-claimed items: Couchfarm / PiCaS | CPU ms per claim, server: Couchfarm / "
            "PiCaS | CPU ms per claim, clients: Couchfarm / PiCaS |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for w, row in race["by_workers"].items():
            cf, pc = row["couchfarm"], row["picas"]
            lines.append(
                f"| {w} | {fmt_summary(cf['claims_per_s'])} | {fmt_summary(pc['claims_per_s'])} | "
                f"{fmt_summary(row['ratio_couchfarm_over_picas'], 2)} | "
                f"{fmt_summary(cf['requests_per_claim'], 2)} | "
                f"{fmt_summary(pc['requests_per_claim'], 2)} | "
                f"{fmt_summary(cf['lost_per_claim'], 2)} | {_pct(cf['conflict_waste'])} | "
                f"{cf['double_claimed_items']} / {pc['double_claimed_items']} "
                f"({_pct(pc['double_claim_rate'])}) | "
                f"{fmt(_median(cf.get('server_cpu_ms_per_claim')))} / "
                f"{fmt(_median(pc.get('server_cpu_ms_per_claim')))} | "
                f"{fmt(_median(cf.get('client_cpu_ms_per_claim')))} / "
                f"{fmt(_median(pc.get('client_cpu_ms_per_claim')))} |"
            )
        pcy = race.get("picas_cycle") or {}
        if pcy.get("tokens_per_s", {}).get("n"):
            lines += [
                "",
                f"PiCaS whole cycle (RunActor: view, GET, PUT lock, PUT done), "
                f"{pcy['workers']} workers: {fmt_summary(pcy['tokens_per_s'])} tokens/s, "
                f"{fmt_summary(pcy['requests_per_token'], 2)} requests per token, "
                f"{pcy['double_claimed_items']} tokens run twice.",
            ]
        lines.append("")

    e2e = s.get("e2e")
    if _ok(e2e):
        lines += [
            "#### 2. End to end (hub serve + workers, demo.sleep 0 ms, saturated)",
            "",
            "| workers | real worker occ/s | % of raw writes | in-process runs occ/s | "
            "% of raw writes | req/occ (real) | req/occ (in-process) | CPU cores, real worker: "
            "server / hub / workers / run processes |",
            "|---|---|---|---|---|---|---|---|",
        ]
        spawn = _get(e2e, "spawn", "by_workers") or {}
        inline = _get(e2e, "inline", "by_workers") or {}
        for w in sorted(set(spawn) | set(inline), key=int):
            a, b = spawn.get(w, {}), inline.get(w, {})
            cores = a.get("cores_by_role", {})
            core_text = (
                " / ".join(
                    fmt(_median(cores.get(role)), 2)
                    for role in ("server", "hub", "workers", "worker_runs")
                )
                if cores
                else "n/a"
            )
            flag = (
                " (backlog ran out)" if a.get("backlog_ran_out") or b.get("backlog_ran_out") else ""
            )
            lines.append(
                f"| {w}{flag} | {fmt_summary(a.get('completed_per_s', {}))} | "
                f"{_pct(a.get('fraction_of_raw_write'))} | "
                f"{fmt_summary(b.get('completed_per_s', {}))} | "
                f"{_pct(b.get('fraction_of_raw_write'))} | "
                f"{fmt_summary(a.get('requests_per_occurrence', {}), 2)} | "
                f"{fmt_summary(b.get('requests_per_occurrence', {}), 2)} | {core_text} |"
            )
        wall = _get(e2e, "spawn", "run_wall_s") or {}
        lines += [
            "",
            f"Real worker: a run of demo.sleep 0 ms takes {fmt(wall.get('p50'), 2)} s "
            f"(p50; p95 {fmt(wall.get('p95'), 2)} s) from result.started_at to finished_at, "
            "most of it in the run's child process and its supervision.",
            "",
        ]

    mixes: list[tuple[str, dict[str, float]]] = []
    lat = s.get("latency")
    if _ok(lat):
        mixes.append(("hub + idle workers", lat.get("requests_per_occurrence_by_endpoint", {})))
    for variant in ("spawn", "inline"):
        for w in ("1", "4", "16"):
            row = _get(e2e, variant, "by_workers", w)
            if row:
                mixes.append(
                    (f"saturated {variant} W={w}", row["requests_per_occurrence_by_endpoint"])
                )
    if mixes:
        labels: list[str] = []
        for _name, mix in mixes:
            labels += [k for k in mix if k not in labels]
        lines += [
            "#### 3. Where the requests go (per completed occurrence, server log)",
            "",
            "| request | " + " | ".join(n for n, _ in mixes) + " |",
            "|---|" + "---|" * len(mixes),
        ]
        for label in labels:
            lines.append(
                f"| {label} | "
                + " | ".join(fmt(m.get(label), 2) if m.get(label) else "" for _n, m in mixes)
                + " |"
            )
        lines.append(
            "| **total** | "
            + " | ".join(
                fmt(sum(v for k, v in m.items() if not k.startswith("status ")), 2)
                for _n, m in mixes
            )
            + " |"
        )
        lines.append("")

    if _ok(lat):
        lines += [
            f"#### 4. Latency ({lat['tasks']} tasks every {lat['every_s']} s, {lat['workers']} "
            f"idle workers, {lat['window_s']} s)",
            "",
            "| from due to | n | p50 s | p95 s | p99 s | max s | p99 per window |",
            "|---|---|---|---|---|---|---|",
        ]
        names = {
            "created": "created (hub)",
            "claimed": "claimed (lease.claimed_at)",
            "started": "started (result.started_at)",
            "done": "done (result.finished_at)",
            "seen_leased": "seen leased by observer",
            "seen_done": "seen done by observer",
        }
        for key, name in names.items():
            o = lat["overall"][key]
            lines.append(
                f"| {name} | {o['n']} | {fmt(o['p50'], 3)} | {fmt(o['p95'], 3)} | "
                f"{fmt(o['p99'], 3)} | {fmt(o['max'], 3)} | "
                f"{fmt_summary(lat['per_rep'][key]['p99'], 3)} |"
            )
        skew = lat.get("observer_minus_stamp_s", {})
        lines += [
            "",
            f"Observer time - lease.claimed_at: p50 {fmt(skew.get('p50'), 3)} s, "
            f"p95 {fmt(skew.get('p95'), 3)} s (the feed's delay plus the workers' clock "
            f"estimate error). States of the occurrences due: {lat['states_of_due_occurrences']}.",
            "",
        ]

    fleet = s.get("fleet")
    if _ok(fleet):
        lines += fleet_lines(fleet)

    cap = s.get("hub_capacity")
    if _ok(cap):
        lines += [
            "#### 5. Hub capacity (every-minute tasks, no workers)",
            "",
            "| tasks | made / due | p99 created - due | p99 visible - due | hub CPU (one core) "
            "| server cores | hub RSS | hub start | passed |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for lv in cap["levels"]:
            made = f"{lv['materialized_in_window']:,} / {lv['due_in_window_expected']:,}"
            lines.append(
                f"| {lv['tasks']:,} | {made} | {fmt(lv['lateness_s']['p99'], 3)} s | "
                f"{fmt(lv['visible_lateness_s']['p99'], 3)} s | "
                f"{_pct(lv['hub_cpu_share_of_one_core'])} | {fmt_summary(lv['server_cores'], 2)} | "
                f"{lv['hub_rss_mb']:.0f} MB | {lv['hub_start_s']:.1f} s | "
                f"{'yes' if lv['passed'] else 'no'} |"
            )
        lines.append("")

    bs = s.get("beanstalkd")
    if _ok(bs):
        lines += [
            f"#### 6. beanstalkd ({bs['jobs']:,} jobs, fsync every write)",
            "",
            "| workers | put/s | reserve+delete/s | put→deleted jobs/s |",
            "|---|---|---|---|",
        ]
        for w, row in bs["by_workers"].items():
            lines.append(
                f"| {w} | {fmt_summary(row['put_per_s'], 0)} | "
                f"{fmt_summary(row['reserve_delete_per_s'], 0)} | "
                f"{fmt_summary(row['jobs_per_s_put_to_deleted'], 0)} |"
            )
        lines.append("")

    tray = s.get("tray_idle")
    if tray:
        lines += ["#### 7. Tray app idle", ""]
        if tray.get("status") == "ok":
            lines.append(
                f"RSS start {fmt(tray.get('rss_start_mb'))} MB, end {fmt(tray.get('rss_end_mb'))} "
                f"MB, peak {fmt(tray.get('rss_peak_mb'))} MB (USS {fmt(tray.get('uss_mb'))} MB); "
                f"CPU {fmt(tray.get('cpu_percent_of_one_core'), 2)} % of one core."
            )
        else:
            lines.append(f"{tray.get('status')}: {tray.get('why')}")
        lines.append("")

    costs = s.get("server_costs")
    if _ok(costs):
        lines += [
            "#### Server CPU per request (PouchDB Server, psutil)",
            "",
            "| request | ms CPU (median, min-max) |",
            "|---|---|",
        ]
        for label, c in costs["server_cpu_ms_per_request"].items():
            lines.append(
                f"| {label} | {fmt(c['median'], 2)} ({fmt(c['min'], 2)}-{fmt(c['max'], 2)}) |"
            )
        lines.append("")

    portal = s.get("portal_dashboard")
    if portal and portal.get("status") == "ok":
        j = portal.get("json", {})
        lines += [
            "#### Portal dashboard (bench/portal_dashboard.py)",
            "",
            f"{portal.get('tasks')} tasks, {portal.get('archived_results')} archived results: "
            f"first call {fmt(j.get('first_s'), 2)} s, then median {fmt(j.get('median_s'), 3)} s, "
            f"p90 {fmt(j.get('p90_s'), 3)} s, {fmt(j.get('couch_requests_per_call'), 0)} CouchDB "
            "requests per dashboard.",
            "",
        ]
    if _ok(s.get("failover")):
        lines += failover_lines(s["failover"])
    if _ok(s.get("quorum")):
        lines += quorum_lines(s["quorum"])
    failed = [
        f"{name}: {sec.get('why')}"
        for name, sec in s.items()
        if sec.get("status") in ("failed", "skipped")
    ]
    if failed:
        lines += ["Not measured in this run: " + "; ".join(failed), ""]
    return "\n".join(lines)


def quorum_lines(section: dict[str, Any]) -> list[str]:
    """Quorum runs (bench/quorum.py): requests per run at k = 1 and k = 3."""
    lines = [
        "#### Quorum runs (bench/quorum.py)",
        "",
        str(section.get("setup", "")),
        "",
        "| k | occurrences | runs | worker requests / run | worker requests / occurrence "
        "| validator requests / occurrence | server CPU ms / run | lost | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in section.get("rows", []):
        lines.append(
            f"| {r['k']}{' (dispatcher)' if r.get('dispatcher') else ''} | {r['occurrences']} "
            f"| {r['runs']} | {r['worker_requests_per_run']} "
            f"| {r['worker_requests_per_occurrence']} | {r['validator_requests_per_occurrence']} "
            f"| {r.get('server_cpu_ms_per_run', '')} | {r['lost']} | {r['seconds']} |"
        )
    for r in section.get("rows", []):
        profile = r.get("worker_profile_per_run") or {}
        if profile:
            kinds = ", ".join(f"{label} {n}" for label, n in profile.items())
            how = " with the dispatcher" if r.get("dispatcher") else ""
            lines.append(f"\nk = {r['k']}{how}, worker requests per run by kind: {kinds}")
    cost = section.get("slot_write_cost") or {}
    if cost:
        lines += [
            "",
            f"One slot write, {cost.get('n')} in a row (server CPU and wall time per request):",
            "",
            "| request | server CPU ms | wall ms |",
            "|---|---|---|",
        ]
        for label, figures in cost.items():
            if isinstance(figures, dict):
                lines.append(f"| {label} | {figures['server_cpu_ms']} | {figures['wall_ms']} |")
    lines += [
        "",
        f"k = 3 against k = 1: {section.get('requests_per_run_ratio_k3_k1')} times the worker "
        f"requests per run, {section.get('requests_per_occurrence_ratio_k3_k1')} times per "
        "occurrence.",
        "",
    ]
    return lines
