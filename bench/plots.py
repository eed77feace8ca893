"""PNG plots of one run (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt


def _med(s: dict[str, Any] | None) -> float:
    return float(s["median"]) if s and s.get("n") else float("nan")


def _err(s: dict[str, Any] | None) -> tuple[float, float]:
    if not s or not s.get("n"):
        return (0.0, 0.0)
    return (s["median"] - s["min"], s["max"] - s["median"])


def _line(ax: Any, xs: list[int], stats: list[dict[str, Any]], label: str, **kw: Any) -> None:
    errs = [_err(s) for s in stats]
    ax.errorbar(
        xs,
        [_med(s) for s in stats],
        yerr=[[e[0] for e in errs], [e[1] for e in errs]],
        marker="o",
        capsize=4,
        label=label,
        **kw,
    )


def claim_race(section: dict[str, Any], path: Path) -> None:
    rows = section["by_workers"]
    xs = [int(w) for w in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for system, style in (("couchfarm", "-"), ("picas", "--")):
        _line(left, xs, [rows[str(w)][system]["claims_per_s"] for w in xs], system, linestyle=style)
    left.set(
        xscale="log",
        xlabel="concurrent workers",
        ylabel="claims/s",
        title="Claim race: throughput (median, min-max)",
    )
    left.set_xticks(xs, [str(x) for x in xs])
    left.set_ylim(bottom=0)
    left.legend()
    width = 0.2
    for i, (system, metric, label) in enumerate(
        (
            ("couchfarm", "requests_per_claim", "Couchfarm requests/claim"),
            ("picas", "requests_per_claim", "PiCaS requests/claim"),
            ("couchfarm", "lost_per_claim", "Couchfarm lost races/claim"),
            ("picas", "double_claim_rate", "PiCaS double-claimed share"),
        )
    ):
        vals = [_med(rows[str(w)][system][metric]) for w in xs]
        right.bar([j + (i - 1.5) * width for j in range(len(xs))], vals, width, label=label)
    right.set_xticks(range(len(xs)), [str(x) for x in xs])
    right.set(xlabel="concurrent workers", title="Requests, lost races and double claims per claim")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def e2e(section: dict[str, Any], path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    yard = section.get("yardstick_docs_per_s")
    for variant, label in (("spawn", "real worker (child per run)"), ("inline", "runs in-process")):
        rows = (section.get(variant) or {}).get("by_workers") or {}
        if not rows:
            continue
        xs = sorted(int(w) for w in rows)
        _line(left, xs, [rows[str(w)]["completed_per_s"] for w in xs], label)
        _line(right, xs, [rows[str(w)]["requests_per_occurrence"] for w in xs], label)
    if yard:
        left.axhline(0.3 * yard, color="grey", linestyle=":", label="target: 30 % of raw writes")
    left.set(
        xscale="log",
        xlabel="workers",
        ylabel="completed occurrences/s",
        title="End to end (hub + workers, demo.sleep 0 ms)",
    )
    left.set_ylim(bottom=0)
    left.legend(fontsize=8)
    right.axhline(3.5, color="grey", linestyle=":", label="target ≤ 3.5")
    right.set(
        xscale="log",
        xlabel="workers",
        ylabel="requests per completed occurrence",
        title="Requests per occurrence (server log)",
    )
    right.set_ylim(bottom=0)
    right.legend(fontsize=8)
    for ax in (left, right):
        ticks = sorted(
            {
                int(w)
                for v in ("spawn", "inline")
                for w in ((section.get(v) or {}).get("by_workers") or {})
            }
        )
        if ticks:
            ax.set_xticks(ticks, [str(t) for t in ticks])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def requests_mix(mixes: list[tuple[str, dict[str, float]]], path: Path) -> None:
    labels: list[str] = []
    for _name, mix in mixes:
        labels += [k for k in mix if k not in labels]
    fig, ax = plt.subplots(figsize=(11, 4.8))
    bottoms = [0.0] * len(mixes)
    cmap = plt.get_cmap("tab20")
    for i, label in enumerate(labels):
        vals = [mix.get(label, 0.0) for _n, mix in mixes]
        ax.bar(range(len(mixes)), vals, bottom=bottoms, label=label, color=cmap(i % 20))
        bottoms = [b + v for b, v in zip(bottoms, vals, strict=True)]
    ax.axhline(3.5, color="black", linestyle=":", label="target ≤ 3.5")
    ax.set_xticks(range(len(mixes)), [n for n, _ in mixes], fontsize=8)
    ax.set(ylabel="requests per completed occurrence", title="Where the requests go")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def latency(section: dict[str, Any], path: Path) -> None:
    keys = ["created", "claimed", "started", "done", "seen_leased", "seen_done"]
    fig, ax = plt.subplots(figsize=(9, 4.2))
    width = 0.26
    for i, p in enumerate(("p50", "p95", "p99")):
        vals = [section["overall"][k][p] or 0.0 for k in keys]
        ax.bar([j + (i - 1) * width for j in range(len(keys))], vals, width, label=p)
    ax.axhline(1.0, color="grey", linestyle=":", label="target p99 due→claimed ≤ 1 s")
    ax.set_xticks(range(len(keys)), ["due→" + k.replace("_", " ") for k in keys], fontsize=8)
    ax.set(ylabel="seconds", title="Latency with idle workers")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def hub_capacity(section: dict[str, Any], path: Path) -> None:
    levels = section["levels"]
    xs = [lv["tasks"] for lv in levels]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(xs, [lv["lateness_s"]["p99"] for lv in levels], "o-", label="p99 created_at - due")
    left.plot(
        xs,
        [lv["visible_lateness_s"]["p99"] for lv in levels],
        "s--",
        label="p99 visible in _changes - due",
    )
    left.axhline(1.0, color="grey", linestyle=":", label="1 s")
    left.set(xlabel="every-minute tasks", ylabel="seconds", title="Materializing lateness")
    left.set_ylim(bottom=0)
    left.legend(fontsize=8)
    _line(
        right, xs, [lv["hub_cpu_share_of_one_core"] for lv in levels], "hub CPU (share of a core)"
    )
    _line(right, xs, [lv["server_cores"] for lv in levels], "server CPU (cores)")
    right.axhline(0.5, color="grey", linestyle=":", label="target: hub < 50 % at 10,000")
    right.set(xlabel="every-minute tasks", ylabel="cores", title="CPU while materializing")
    right.set_ylim(bottom=0)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def context(sections: dict[str, Any], path: Path) -> None:
    race = sections.get("claim_race") or {}
    bs = sections.get("beanstalkd") or {}
    e2e = sections.get("e2e") or {}
    series = []
    if race.get("status") == "ok":
        for system in ("couchfarm", "picas"):
            rows = race["by_workers"]
            series.append(
                (f"{system} claims/s", {int(w): rows[w][system]["claims_per_s"] for w in rows})
            )
    for variant in ("inline", "spawn"):
        rows = (e2e.get(variant) or {}).get("by_workers") or {}
        if rows:
            series.append(
                (
                    f"Couchfarm end to end ({variant}) occ/s",
                    {int(w): r["completed_per_s"] for w, r in rows.items()},
                )
            )
    if bs.get("status") == "ok":
        rows = bs["by_workers"]
        series.append(
            (
                "beanstalkd reserve+delete/s",
                {int(w): r["reserve_delete_per_s"] for w, r in rows.items()},
            )
        )
    if not series:
        return
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for label, points in series:
        xs = sorted(points)
        _line(ax, xs, [points[x] for x in xs], label)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="workers",
        ylabel="per second (log)",
        title="Context: same server, same run (beanstalkd: fsync every write, no replication)",
    )
    ticks = sorted({x for _label, points in series for x in points})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_all(results: dict[str, Any], out_dir: Path) -> list[str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    s = results["sections"]
    made = []

    def ok(name: str) -> bool:
        return (s.get(name) or {}).get("status") == "ok"

    jobs = []
    if ok("claim_race"):
        jobs.append(("claim_race.png", lambda p: claim_race(s["claim_race"], p)))
    if ok("e2e"):
        jobs.append(("e2e.png", lambda p: e2e(s["e2e"], p)))
    if ok("latency"):
        jobs.append(("latency.png", lambda p: latency(s["latency"], p)))
    if ok("hub_capacity"):
        jobs.append(("hub_capacity.png", lambda p: hub_capacity(s["hub_capacity"], p)))
    mixes = []
    if ok("latency"):
        mixes.append(("hub + idle\nworkers", s["latency"]["requests_per_occurrence_by_endpoint"]))
    for variant in ("spawn", "inline"):
        rows = ((s.get("e2e") or {}).get(variant) or {}).get("by_workers") or {}
        for w in ("1", "4", "16"):
            if w in rows:
                mixes.append(
                    (f"saturated\n{variant} W={w}", rows[w]["requests_per_occurrence_by_endpoint"])
                )
    if mixes:
        jobs.append(("requests.png", lambda p: requests_mix(mixes, p)))
    jobs.append(("context.png", lambda p: context(s, p)))
    for name, draw in jobs:
        path = out_dir / name
        draw(path)
        if path.exists():
            made.append(str(path))
    return made
