"""One PNG per experiment, drawn from its JSON in bench/results/ (matplotlib, Agg backend).

    python bench/plots.py            # every result file present
    python bench/plots.py limit      # one

Bars and points are medians over the repeated runs; the whiskers span min..max.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _err(st: dict) -> tuple[float, list[float]]:
    m = st["median"] or 0.0
    return m, [m - (st["min"] or 0.0), (st["max"] or 0.0) - m]


def _bars(ax, labels: list[str], sts: list[dict], title: str, ylabel: str, colors=None, fmt="{:.0f}") -> None:
    meds, lo, hi = [], [], []
    for st in sts:
        m, (a, b) = _err(st)
        meds.append(m)
        lo.append(a)
        hi.append(b)
    bars = ax.bar(labels, meds, yerr=[lo, hi], capsize=4, color=colors or "tab:blue")
    for bar, m in zip(bars, meds):
        ax.annotate(fmt.format(m), (bar.get_x() + bar.get_width() / 2, m), ha="center", va="bottom", fontsize=8,
                    xytext=(0, 3), textcoords="offset points")
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    ax.tick_params(axis="x", labelsize=8)


def _footer(fig, d: dict) -> None:
    m = d.get("machine", {})
    git = m.get("git", {})
    fig.text(0.01, 0.005, f"{m.get('cpu_model', '?')} x{m.get('logical_cpus', '?')}, Python {m.get('python', '?')}, "
             f"libzmq {m.get('versions', {}).get('libzmq', '?')}, commit {str(git.get('commit'))[:8]}"
             f"{' (dirty)' if git.get('dirty') else ''}, {m.get('timestamp', '')}", fontsize=6, color="gray")


def plot_limit(d: dict) -> plt.Figure:
    peer = _load("peer")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    labels = ["bare relay", "lfctl 3 nodes"]
    sts_tp = [d["relay"]["100"]["throughput"], d["cluster"]["100"]["throughput"]]
    sts_p50 = [d["relay"]["1"]["p50_us"], d["cluster"]["1"]["p50_us"]]
    colors = ["tab:gray", "tab:blue"]
    if "cluster_memory" in d:
        labels.append("lfctl 3 nodes\nno WAL (memory)")
        sts_tp.append(d["cluster_memory"]["100"]["throughput"])
        sts_p50.append(d["cluster_memory"]["1"]["p50_us"])
        colors.append("tab:cyan")
    if peer:
        for cname, res in peer["pysyncobj"].items():
            labels.append(f"PySyncObj\n{cname}")
            sts_tp.append(res["100"]["throughput"])
            sts_p50.append(res["1"]["p50_us"])
            colors.append("tab:orange")
    r = d["ratios"]
    _bars(axes[0], labels, sts_tp, f"writes/s, 100 customers (lfctl/relay = {r['throughput_100_cluster_over_relay']})",
          "replicated writes / s", colors)
    _bars(axes[1], labels, sts_p50, f"unloaded p50, 1 customer (lfctl/relay = {r['p50_1_cluster_over_relay']})",
          "latency p50 (us)", colors)
    axes[1].set_yscale("log")
    fig.suptitle("The limit: bare ZeroMQ relay vs the 3-node cluster (and the PySyncObj peer), same run")
    return fig


def plot_peer(d: dict) -> plt.Figure:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    labels = ["lfctl 3 nodes", "bare relay"] + [f"PySyncObj\n{c}" for c in d["pysyncobj"]]
    tps = [d["lfctl_cluster"]["100"]["throughput"], d["relay"]["100"]["throughput"]] + [v["100"]["throughput"] for v in d["pysyncobj"].values()]
    p50s = [d["lfctl_cluster"]["1"]["p50_us"], d["relay"]["1"]["p50_us"]] + [v["1"]["p50_us"] for v in d["pysyncobj"].values()]
    colors = ["tab:blue", "tab:gray"] + ["tab:orange"] * len(d["pysyncobj"])
    _bars(axes[0], labels, tps, "writes/s, 100 customers", "writes / s", colors)
    _bars(axes[1], labels, p50s, "unloaded p50, 1 customer", "latency p50 (us)", colors)
    axes[1].set_yscale("log")
    fig.suptitle("A peer: PySyncObj (Raft, writer inside the leader) vs lfctl, 3 processes each")
    return fig


def plot_nodes(d: dict) -> plt.Figure:
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    ns = sorted(d["cluster"], key=int)
    x = [int(n) for n in ns]
    for name, style in (("cluster", "-o"), ("relay", "--s")):
        for customers, ax, key, lab in (("1", axes[0], "p50_us", "p50"), ("100", axes[1], "p50_us", "p50"),
                                         ("100", axes[2], "throughput", "")):
            if any(customers not in d[name][n] for n in ns):
                continue
            sts = [d[name][n][customers][key] for n in ns]
            med = [s["median"] for s in sts]
            err = [[m - s["min"] for m, s in zip(med, sts)], [s["max"] - m for m, s in zip(med, sts)]]
            ax.errorbar(x, med, yerr=err, fmt=style, capsize=3, label="lfctl" if name == "cluster" else "bare relay")
            if key == "p50_us":
                sts99 = [d[name][n][customers]["p99_us"] for n in ns]
                ax.plot(x, [s["median"] for s in sts99], style, alpha=0.35,
                        label=("lfctl" if name == "cluster" else "relay") + " p99")
    pair = d.get("paired_2_5")
    if pair:  # the 2- and 5-node points measured side by side (the target's ratio)
        pts = pair["points"]
        for name, style in (("cluster", "D"), ("relay", "v")):
            axes[0].plot([2, 5], [pts[f"{name}_{n}"]["p50_us"]["median"] for n in (2, 5)], style, markersize=8,
                         label=("lfctl" if name == "cluster" else "relay") + ", 2 and 5 side by side")
    axes[0].set_title("latency, 1 customer", fontsize=10)
    axes[1].set_title("latency, 100 customers", fontsize=10)
    axes[2].set_title("throughput, 100 customers", fontsize=10)
    axes[0].set_ylabel("us")
    axes[1].set_ylabel("us")
    axes[2].set_ylabel("writes / s")
    for ax in axes:
        ax.set_xlabel("nodes")
        ax.set_xticks(x)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    five_two = pair["cluster_p50_5_over_2"] if pair else d["ratios"]["cluster_p50_1_5_over_2"]
    fig.suptitle(f"Replicated writes vs number of nodes (lfctl p50 at 5 nodes / 2 nodes, side by side = {five_two})")
    return fig


def plot_saturation(d: dict) -> plt.Figure:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    cs = sorted(d["closed_loop"], key=int)
    x = [int(c) for c in cs]
    tps = [d["closed_loop"][c]["throughput"] for c in cs]
    med = [s["median"] for s in tps]
    axes[0].errorbar(x, med, yerr=[[m - s["min"] for m, s in zip(med, tps)], [s["max"] - m for m, s in zip(med, tps)]],
                     fmt="-o", capsize=3, label="throughput")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("concurrent customers (closed loop)")
    axes[0].set_ylabel("writes / s")
    axes[0].set_ylim(bottom=0)
    ax2 = axes[0].twinx()
    ax2.plot(x, [d["closed_loop"][c]["p50_us"]["median"] / 1000 for c in cs], "--s", color="tab:red", label="p50 latency")
    ax2.plot(x, [d["closed_loop"][c]["p99_us"]["median"] / 1000 for c in cs], ":^", color="tab:red", alpha=0.6, label="p99 latency")
    ax2.set_yscale("log")
    ax2.set_ylabel("ms", color="tab:red")
    axes[0].set_title(f"closed loop (saturation = {d['saturation_throughput']:.0f}/s)", fontsize=10)
    axes[0].legend(loc="upper left", fontsize=7)
    ax2.legend(loc="lower right", fontsize=7)
    ps = sorted(d["open_loop"], key=int)
    xp = [int(p) for p in ps]
    for key, style in (("p50_us", "-o"), ("p99_us", "-s"), ("p999_us", "-^")):
        sts = [d["open_loop"][p][key] for p in ps]
        med = [s["median"] / 1000 for s in sts]
        axes[1].errorbar(xp, med, yerr=[[m - s["min"] / 1000 for m, s in zip(med, sts)], [s["max"] / 1000 - m for m, s in zip(med, sts)]],
                         fmt=style, capsize=3, label=key.replace("_us", "").replace("p999", "p99.9"))
    axes[1].set_yscale("log")
    axes[1].set_xlabel("offered load, % of saturation (open loop, Poisson)")
    axes[1].set_ylabel("latency from intended start (ms)")
    axes[1].set_xticks(xp)
    axes[1].legend(fontsize=7)
    axes[1].set_title("open loop tail latency", fontsize=10)
    fig.suptitle("Saturation and tail, 3 nodes")
    return fig


def plot_durability(d: dict) -> plt.Figure:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    pol = list(d["policies"])
    _bars(axes[0], pol, [d["policies"][p]["100"]["throughput"] for p in pol],
          f"writes/s, 100 customers (fsync/wal = {d['ratios']['throughput_100_fsync_over_wal']})", "writes / s",
          ["tab:green", "tab:blue", "tab:purple"])
    _bars(axes[1], pol, [d["policies"][p]["1"]["p50_us"] for p in pol], "unloaded p50, 1 customer", "latency p50 (us)",
          ["tab:green", "tab:blue", "tab:purple"])
    fig.suptitle("Durability policy, 3 nodes (fsync = one fdatasync per loop turn: group commit)")
    return fig


def plot_failover(d: dict) -> plt.Figure:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    series = [(k, v) for k, v in d.items() if k.startswith("kill_primary_to_next_commit")]
    for i, (k, v) in enumerate(series):
        vals = v["all_ms"]
        axes[0].scatter([i + 1] * len(vals), vals, alpha=0.6, s=14)
        axes[0].hlines(v["median_ms"], i + 0.7, i + 1.3, color="black")
    axes[0].set_xticks(range(1, len(series) + 1))
    axes[0].set_xticklabels([k.replace("kill_primary_to_next_commit_", "").replace("_", " ") for k, _ in series], fontsize=8)
    axes[0].set_ylabel("ms")
    axes[0].set_ylim(bottom=0)
    axes[0].set_title("primary SIGKILL -> next committed order (each trial; bar = median)", fontsize=10)
    c = d.get("wiped_node_catch_up_under_load")
    if c:
        _bars(axes[1], ["before restart", "during catch-up"],
              [{"median": c["load_throughput_before_restart"], "min": c["load_throughput_before_restart"], "max": c["load_throughput_before_restart"]},
               {"median": c["load_throughput_during_catch_up"], "min": c["load_throughput_during_catch_up"], "max": c["load_throughput_during_catch_up"]}],
              f"load while a wiped node catches up\n{c['entries_at_rejoin']} entries in {c['catch_up_seconds']} s = "
              f"{c['catch_up_entries_per_s']} entries/s", "writes / s", ["tab:blue", "tab:orange"])
    fig.suptitle("Failover and catch-up, 3 nodes")
    return fig


def plot_memory(d: dict) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    cps = d["checkpoints"]
    for node, info in d["nodes"].items():
        ax.plot([c["customers"] for c in cps], [c["rss_mib"][node] for c in cps], "-o", label=f"node {node} ({info['role']})")
    ax.set_xlabel("customers loaded (1 order each)")
    ax.set_ylabel("RSS (MiB)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    bpc = d["bytes_per_customer"]["median"]
    ax.set_title(f"Node RSS vs customers: {d['rss_mib']['median']} MiB at {d['loaded_customers']:,} "
                 f"(~{bpc:.0f} bytes/customer)", fontsize=10)
    return fig


def plot_profile(d: dict) -> plt.Figure:
    fig, axes = plt.subplots(1, 2, figsize=(15, 6))
    for ax, key, what, color in ((axes[0], "top_self", "on CPU (py-spy default, idle dropped)", "tab:red"),
                                 (axes[1], "gil_top_self", "holding the GIL (py-spy --gil)", "tab:purple")):
        rows = d.get(key, [])[:15][::-1]
        ax.barh([r["function"][:70] for r in rows], [r["percent"] for r in rows], color=color)
        ax.set_xlabel("% of samples (own time)")
        ax.tick_params(axis="y", labelsize=7)
        ax.set_title(what, fontsize=10)
    lp = d.get("load_during_profile", {})
    fig.suptitle(f"Where the primary spends its time: 100 customers, {lp.get('throughput')} writes/s while sampled, "
                 f"primary at {d.get('primary_cpu_percent')}% CPU")
    fig.tight_layout(rect=(0, 0.03, 1, 0.95))
    return fig


def plot_path(d: dict) -> plt.Figure:
    import critical_path

    fig, ax = plt.subplots(figsize=(11, 3.6))
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:gray"]
    names = ["lfctl", "relay"]
    for row, name in enumerate(names):
        left = 0.0
        for seg, color in zip(critical_path.SEGMENTS, colors):
            width = d[name]["us"][seg]["median"]
            ax.barh(row, width, left=left, color=color, label=seg.replace("_", " ") if row == 0 else None)
            if width > 25:
                ax.annotate(f"{width:.0f}", (left + width / 2, row), ha="center", va="center", fontsize=8, color="white")
            left += width
        total = d[name]["us"]["total"]["median"]
        ax.annotate(f"p50 {total:.0f} µs", (left, row), xytext=(4, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_xlim(0, max(d[n]["us"]["total"]["median"] for n in names) * 1.15)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(["lfctl 3 nodes", "bare relay"])
    ax.set_xlabel("µs (median of each segment over the writes; the segments of one write add up to its latency)")
    ax.legend(fontsize=8, ncol=6, loc="upper center", bbox_to_anchor=(0.5, -0.3))
    st = d["settings"]
    fig.suptitle(f"Where an unloaded write waits: {st['nodes']} nodes, 1 customer, {st['writes']} writes x {st['rounds']} rounds")
    return fig


PLOTS = {
    "limit": plot_limit,
    "peer": plot_peer,
    "nodes": plot_nodes,
    "saturation": plot_saturation,
    "durability": plot_durability,
    "failover": plot_failover,
    "memory": plot_memory,
    "profile": plot_profile,
    "path": plot_path,
}


def plot(name: str) -> list[Path]:
    """Draw the PNG(s) of one experiment (limit also redraws peer, written by the same run)."""
    names = [name, "peer"] if name == "limit" else [name]
    written = []
    for n in names:
        d = _load(n)
        if d is None or n not in PLOTS:
            continue
        fig = PLOTS[n](d)
        _footer(fig, d)
        if n != "profile":
            fig.tight_layout(rect=(0, 0.03, 1, 0.95))
        path = RESULTS / f"{n}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    names = argv or list(PLOTS)
    for n in names:
        for p in plot(n):
            print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
