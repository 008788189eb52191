"""The run report: a PNG of latency and throughput over time with the faults shaded, and a text
summary.

Top panel: every operation's latency as a point (x = when it was due -- its intended start in
the open loop, its first send in the closed loop; y = latency, log scale), with the p50, p99 and
max of each one-second bucket as lines; failed/unknown operations as red crosses.  Bottom panel:
completions per second (successful orders, successful reads, operations that failed or ended
unknown).  Each nemesis fault is a shaded band across both panels, labelled with what it did.

matplotlib with the Agg backend (no display needed); numpy comes with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["render_png", "samples_from_npz", "save_samples"]

FAULT_COLORS = {
    "kill-primary": "#d62728", "kill-backup": "#ff7f0e", "pause": "#9467bd",
    "restart": "#8c564b", "wipe": "#e377c2", "partition": "#17becf",
}


def save_samples(path: str | Path, start: Any, end: Any, f: Any, outcome: Any, t0_ns: int) -> None:
    """Per-operation arrays (any sequences of ints) to a compressed .npz file."""
    import numpy as np

    np.savez_compressed(path, start=np.asarray(start, dtype=np.int64),
                        end=np.asarray(end, dtype=np.int64), f=np.asarray(f, dtype=np.int8),
                        outcome=np.asarray(outcome, dtype=np.int8),
                        t0=np.array([t0_ns], dtype=np.int64))


def samples_from_npz(path: str | Path) -> dict[str, Any]:
    import numpy as np

    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def _events_from_history(nemesis: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pair start-X / stop-X records of process nemesis into bands."""
    open_: dict[str, dict[str, Any]] = {}
    bands = []
    for rec in sorted(nemesis, key=lambda r: r.get("time", 0)):
        f = str(rec.get("f", ""))
        value = rec.get("value") or {}
        if f.startswith("start-"):
            fault = f[len("start-"):]
            open_[fault] = {"fault": fault, "start": rec["time"], "end": None,
                            "nodes": value.get("nodes", []), "detail": value.get("detail", "")}
        elif f.startswith("stop-"):
            fault = f[len("stop-"):]
            band = open_.pop(fault, None)
            if band is not None:
                band["end"] = rec["time"]
                bands.append(band)
    bands.extend(open_.values())
    return sorted(bands, key=lambda b: b["start"])


def render_png(path: str | Path, samples: dict[str, Any], *, nemesis: Sequence[dict[str, Any]] = (),
               title: str = "", t0_ns: int | None = None) -> None:
    """Write the report PNG.  `samples`: arrays start, end (ns), f (0 order, 1 read, 2 bulk),
    outcome (0 ok, 1 fail, 2 info); `nemesis`: the history's nemesis records."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    start = np.asarray(samples["start"], dtype=np.int64)
    end = np.asarray(samples["end"], dtype=np.int64)
    fcode = np.asarray(samples["f"], dtype=np.int8)
    outcome = np.asarray(samples["outcome"], dtype=np.int8)
    if t0_ns is None:
        t0_ns = int(samples["t0"][0]) if "t0" in samples else (int(start.min()) if start.size else 0)
    x = (start - t0_ns) / 1e9
    xe = (end - t0_ns) / 1e9
    lat_ms = np.maximum(end - start, 1000) / 1e6  # at least 1 us, for the log scale
    ok = outcome == 0

    fig, (ax_lat, ax_tp) = plt.subplots(2, 1, figsize=(13, 8), sharex=True,
                                        gridspec_kw={"height_ratios": [3, 2]})
    # Raw points (subsampled beyond 200k so the file stays small; lines use every point).
    idx = np.arange(x.size)
    if x.size > 200_000:
        idx = np.random.default_rng(0).choice(x.size, 200_000, replace=False)
    sel_ok = idx[ok[idx]]
    for code, name, color in ((0, "order", "#1f77b4"), (1, "read", "#2ca02c"), (2, "bulk read", "#7f7f7f")):
        pts = sel_ok[fcode[sel_ok] == code]
        if pts.size:
            ax_lat.scatter(x[pts], lat_ms[pts], s=3, alpha=0.35, color=color, linewidths=0,
                           label=f"{name} (each op)", rasterized=True)
    bad = idx[~ok[idx]]
    if bad.size:
        ax_lat.scatter(x[bad], lat_ms[bad], s=12, marker="x", color="#d62728", alpha=0.6,
                       label="failed / unknown (info)", rasterized=True)
    if ok.any():
        secs = np.floor(x[ok]).astype(np.int64)
        lats = lat_ms[ok]
        order = np.argsort(secs, kind="stable")
        secs, lats = secs[order], lats[order]
        uniq, first = np.unique(secs, return_index=True)
        groups = np.split(lats, first[1:])
        # One flat step per one-second bucket (x = the second the operations were due in).
        edges = np.append(uniq, uniq[-1] + 1)
        for values, color, style, label in (
            ([np.percentile(g, 50) for g in groups], "black", "-", "p50 / s"),
            ([np.percentile(g, 99) for g in groups], "#ff7f0e", "-", "p99 / s"),
            ([g.max() for g in groups], "#d62728", "--", "max / s"),
        ):
            ax_lat.step(edges, np.append(values, values[-1]), where="post", color=color,
                        lw=1.3, ls=style, label=label)
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("latency (ms)")
    ax_lat.grid(True, which="both", alpha=0.25)
    ax_lat.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), fontsize=8, ncol=7, markerscale=3,
                  frameon=False, borderaxespad=0.2)

    if xe.size:
        lo = int(np.floor(min(x.min(), xe.min())))
        hi = int(np.ceil(xe.max())) + 1
        bins = np.arange(lo, hi + 1)
        for mask, label, color in (
            (ok & (fcode == 0), "orders ok/s", "#1f77b4"),
            (ok & (fcode == 1), "reads ok/s", "#2ca02c"),
            (ok & (fcode == 2), "bulk reads ok/s", "#7f7f7f"),
            (~ok, "failed+unknown/s", "#d62728"),
        ):
            if mask.any():
                counts, _ = np.histogram(xe[mask], bins=bins)
                ax_tp.step(bins[:-1], counts, where="post", color=color, label=label, lw=1.3)
    ax_tp.set_ylabel("completions per second")
    ax_tp.set_xlabel("seconds since the start of the load")
    ax_tp.grid(True, alpha=0.25)
    ax_tp.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), fontsize=8, ncol=4, frameon=False,
                 borderaxespad=0.2)

    bands = _events_from_history(nemesis)
    top = ax_lat.get_ylim()[1]
    right = max(float(xe.max()) if xe.size else 1.0, 1.0)
    for k, band in enumerate(bands):
        b0 = (band["start"] - t0_ns) / 1e9
        b1 = ((band["end"] if band["end"] is not None else t0_ns + right * 1e9) - t0_ns) / 1e9
        color = FAULT_COLORS.get(band["fault"], "#bcbd22")
        for ax in (ax_lat, ax_tp):
            ax.axvspan(b0, max(b1, b0 + 0.05), color=color, alpha=0.18, lw=0)
        nodes = ",".join(map(str, band["nodes"]))
        ax_lat.annotate(f"{band['fault']} {nodes}".strip(), xy=(b0, top), xycoords="data",
                        xytext=(2, -12 - 11 * (k % 3)), textcoords="offset points", fontsize=8,
                        color=color, fontweight="bold", va="top")
    fig.suptitle(title or "lfctl load", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
