"""Markdown tables of the latest results (bench/results/*.json), for docs/performance.md.

    python bench/report.py                               # print the tables
    python bench/report.py --update docs/performance.md  # replace the block between the markers

The block sits between `<!-- results:begin -->` and `<!-- results:end -->`; everything else in the
page is prose and stays as written.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from verdicts import describe, judge

RESULTS = Path(__file__).resolve().parent / "results"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def load(name: str) -> dict | None:
    p = RESULTS / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def verdict(paired: dict, target: float, at_least: bool) -> str:
    """A target's verdict from the paired ratios' repeats (`runs`): met, not met or not resolved,
    with the interval it rests on (bench/verdicts.py)."""
    return describe(judge(paired.get("runs", []), target, at_least=at_least))


def mmm(st: dict | None, unit: str = "", digits: int = 0) -> str:
    """median (min–max)"""
    if not st or st.get("median") is None:
        return "–"
    f = f"{{:,.{digits}f}}"
    return f"{f.format(st['median'])}{unit} ({f.format(st['min'])}–{f.format(st['max'])})"


def ms(st: dict | None) -> str:
    if not st or st.get("median") is None:
        return "–"
    return f"{st['median'] / 1000:.2f} ({st['min'] / 1000:.2f}–{st['max'] / 1000:.2f})"


def cpu(a: dict, names: tuple[str, ...]) -> str:
    c = a.get("cpu_us_per_op", {})
    parts = []
    for n in names:
        keys = [k for k in c if k.startswith(n)]
        if keys:
            parts.append(" / ".join(f"{c[k]['median']:.0f}" for k in keys))
    return " · ".join(parts) if parts else "–"


def thread_split(d: dict) -> str:
    """The limit's CPU per write at 100 customers split into each process's event-loop thread
    and the rest, relay against lfctl ('' for results written before the split was measured)."""
    parts = []
    for label, prefix in (("primary", "primary"), ("each backup", "backup"), ("client", "client")):
        pair = []
        for name in ("relay", "cluster"):
            a = d[name]["100"]
            total, loop = a.get("cpu_us_per_op", {}), a.get("loop_cpu_us_per_op")
            keys = [k for k in total if k.startswith(prefix)]
            if not loop or not keys:
                return ""
            t = statistics.mean(total[k]["median"] for k in keys)
            m = statistics.mean(loop[k]["median"] for k in keys)
            pair.append(f"{m:.1f} + {t - m:.1f}")
        parts.append(f"{label} {pair[0]} against {pair[1]} µs")
    return "; ".join(parts)


def others(a: dict) -> str:
    o = a.get("others_cpu_percent")
    return f"{o['median']:.0f}%" if o else "–"


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out + [""]


def section_machine() -> list[str]:
    for name in ("limit", "nodes", "saturation", "durability", "memory", "failover", "profile", "path"):
        d = load(name)
        if d:
            m = d["machine"]
            v = m["versions"]
            g = m["git"]
            timings = load("suite_timings")
            lines = [
                f"Measured on: {m['cpu_model']}, {m['logical_cpus']} logical CPUs, {m['memory_gib']} GiB, {m['platform']}; "
                f"CPython {m['python']}, pyzmq {v['pyzmq']} / libzmq {v['libzmq']}, PySyncObj {v.get('pysyncobj')}; "
                f"commit `{str(g['commit'])[:10]}`{' + uncommitted changes in ' + str(len(g['changed_outside_bench'])) + ' files outside bench/ and docs/ (listed in the JSON)' if g.get('changed_outside_bench') else ''}; "
                f"{m['timestamp']}.",
            ]
            if timings:
                lines.append(f"Suite wall time: {timings['total_s']:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in timings['experiments_s'].items())}).")
                stolen = timings.get("steal_percent")
                if stolen:
                    parts = ", ".join(f"{k} {v:.0f} %" for k, v in stolen.items() if k != "total")
                    lines.append(f"CPU time stolen by the hypervisor (other guests) during the run: {stolen.get('total', 0):.0f} % "
                                 f"({parts}); figures from a run with more are noisier.")
            return lines + [""]
    return []


def section_limit() -> list[str]:
    d = load("limit")
    if not d:
        return []
    r = d["ratios"]
    rows = []
    for name, label in (("relay", "bare relay"), ("cluster", "lfctl, 3 nodes"), ("cluster_memory", "lfctl, 3 nodes, `durability = memory`")):
        if name not in d:
            continue
        a100, a1 = d[name]["100"], d[name]["1"]
        rows.append([label, mmm(a100["throughput"]), ms(a100["p50_us"]), ms(a100["p99_us"]), ms(a1["p50_us"]), ms(a1["p99_us"]),
                     cpu(a100, ("primary", "backup", "client")), others(a100)])
    for name, label in (("relay", "bare relay, loadgen client"), ("cluster", "lfctl, loadgen client")):
        a100 = d["loadgen_driver"][name]["100"]
        rows.append([label, mmm(a100["throughput"]), ms(a100["p50_us"]), ms(a100["p99_us"]), "", "",
                     cpu(a100, ("primary", "backup", "client")), others(a100)])
    out = ["### 1. The limit: bare relay vs the 3-node cluster (same run, interleaved)", ""]
    out += table(["", "writes/s, 100 customers", "p50 ms (100)", "p99 ms (100)", "p50 ms, 1 customer", "p99 ms (1)",
                  "CPU µs per write: primary · backups · client (100)", "others' CPU"], rows)
    t = d["targets"]  # the thresholds the suite judged against
    pt, pp = r["throughput_100_cluster_over_relay_paired"], r["p50_1_cluster_over_relay_paired"]
    out += [
        f"- **throughput at 100 customers, lfctl / relay = {r['throughput_100_cluster_over_relay']}** "
        f"(paired per repeat: {pt['median']}, {pt['min']}–{pt['max']}); target ≥ {t['throughput_100_ratio_min']}: {verdict(pt, t['throughput_100_ratio_min'], True)}.",
        f"- **unloaded p50, lfctl / relay = {r['p50_1_cluster_over_relay']}** "
        f"(paired: {pp['median']}, {pp['min']}–{pp['max']}); target ≤ {t['p50_1_ratio_max']}: {verdict(pp, t['p50_1_ratio_max'], False)}.",
    ]
    if "throughput_100_memory_cluster_over_relay" in r:
        mt, mp = r["throughput_100_memory_cluster_over_relay_paired"], r["p50_1_memory_cluster_over_relay_paired"]
        out.append(f"- like for like, a cluster that writes no WAL (as the relay writes nothing): throughput "
                   f"{r['throughput_100_memory_cluster_over_relay']} (paired {mt['median']}, {mt['min']}–{mt['max']}), "
                   f"unloaded p50 {r['p50_1_memory_cluster_over_relay']} (paired {mp['median']}, {mp['min']}–{mp['max']}); "
                   f"the targets are judged on the default (`wal`) cluster above.")
    out += [
        f"- CPU per write, all server processes together (100 customers): relay {mmm(r['server_cpu_us_per_write_100']['relay'], ' µs')}, "
        f"lfctl {mmm(r['server_cpu_us_per_write_100']['cluster'], ' µs')}: **lfctl / relay = {r['server_cpu_per_write_cluster_over_relay']}** "
        f"(the figure least disturbed by neighbours; throughput follows the loaded round trip, see 'What limits').",
    ]
    split = thread_split(d)
    if split:
        out.append(f"- the same CPU per write by thread, event loop (all the Python) + the rest (ZeroMQ's I/O thread), "
                   f"relay against lfctl: {split}.")
    wake = r.get("client_replies_per_wake_100")
    if wake:
        out.append(f"- replies the lean client read per wake-up at 100 customers: relay {mmm(wake['relay'], digits=1)}, "
                   f"lfctl {mmm(wake['cluster'], digits=1)} (fewer per wake-up, more wake-ups and client CPU per order).")
    out += [
        f"- with the project's own client (`loadgen.client.ClientEngine`) instead of the lean driver: "
        f"lfctl / relay = {r['throughput_100_loadgen_cluster_over_relay']} at 100 customers.",
        "",
    ]
    return out


def section_peer() -> list[str]:
    d = load("peer")
    if not d:
        return []
    rows = [["lfctl, 3 nodes (client in its own process)", mmm(d["lfctl_cluster"]["100"]["throughput"]),
             ms(d["lfctl_cluster"]["100"]["p50_us"]), ms(d["lfctl_cluster"]["1"]["p50_us"]), "–"]]
    for c, res in d["pysyncobj"].items():
        conf = {k: v for k, v in d["settings"]["pysyncobj_configs"][c].items() if d["settings"]["pysyncobj_default_conf"].get(k) != v}
        rows.append([f"PySyncObj {c} (writer in the leader)", mmm(res["100"]["throughput"]), ms(res["100"]["p50_us"]),
                     ms(res["1"]["p50_us"]), ", ".join(f"{k}={v}" for k, v in conf.items()) or "library defaults"])
    out = ["### 3. A peer: PySyncObj, 3 processes, same run", ""]
    out += table(["", "writes/s, 100 customers", "p50 ms (100)", "p50 ms, 1 customer", "settings"], rows)
    r = d["ratios"]
    out += ["Ratios lfctl / PySyncObj — throughput at 100: " +
            ", ".join(f"{k.rsplit('_', 1)[-1] if not k.endswith('1ms') else 'tuned_1ms'} {v}" for k, v in r.items() if k.startswith("throughput")) +
            "; unloaded p50: " +
            ", ".join(f"{k.split('pysyncobj_', 1)[1]} {v}" for k, v in r.items() if k.startswith("p50")) + ".", ""]
    return out


def section_nodes() -> list[str]:
    d = load("nodes")
    if not d:
        return []
    rows = []
    for n in sorted(d["cluster"], key=int):
        c, rl = d["cluster"][n], d["relay"][n]
        rows.append([n, ms(c["1"]["p50_us"]), ms(rl["1"]["p50_us"]), mmm(c["100"]["throughput"]),
                     mmm(rl["100"]["throughput"]) if "100" in rl else "(limit: 3 nodes)",
                     ms(c["100"]["p50_us"]), ms(c["100"]["p99_us"])])
    out = ["### 2. The seed's experiment: nodes 1..5", ""]
    out += table(["nodes", "lfctl p50 ms, 1 customer", "relay p50 ms, 1 customer", "lfctl writes/s, 100", "relay writes/s, 100",
                  "lfctl p50 ms (100)", "lfctl p99 ms (100)"], rows)
    r = d["ratios"]
    pair = d.get("paired_2_5")
    if pair:
        pc, pr = pair["cluster_p50_5_over_2_paired"], pair["relay_p50_5_over_2_paired"]
        t = d["targets"]
        pts = pair["points"]
        out += [f"- **lfctl unloaded p50, 5 nodes / 2 nodes = {pair['cluster_p50_5_over_2']}**, measured side by side: "
                f"a 2- and a 5-node cluster (and relay) up at once, {pair['settings']['pairs']} rotations of 1-customer "
                f"points; lfctl {ms(pts['cluster_2']['p50_us'])} → {ms(pts['cluster_5']['p50_us'])} ms (paired per "
                f"rotation: {pc['median']}, {pc['min']}–{pc['max']}); target ≤ {t['p50_5_over_2_max']}: {verdict(pc, t['p50_5_over_2_max'], False)}. "
                f"The bare relay's own 5/2 ratio: {pair['relay_p50_5_over_2']} (paired: {pr['median']}, {pr['min']}–{pr['max']}).",
                f"- The sweep above, whose 2- and 5-node points are half a minute apart: lfctl 5/2 = "
                f"{r['cluster_p50_1_5_over_2']}, the relay's {r['relay_p50_1_5_over_2']}; lfctl 5 nodes / 1 node: "
                f"{r['cluster_p50_1_5_over_1']}."]
    else:
        out += [f"- **lfctl unloaded p50, 5 nodes / 2 nodes = {r['cluster_p50_1_5_over_2']}** (target ≤ 1.3: "
                f"{'met' if d['targets']['met'] else 'not met'}); the bare relay's own 5/2 ratio: {r['relay_p50_1_5_over_2']}; "
                f"lfctl 5 nodes / 1 node: {r['cluster_p50_1_5_over_1']}."]
    out += [f"- lfctl throughput at 100 customers, 5 nodes / 2 nodes = {r['cluster_throughput_100_5_over_2']}.",
            "- lfctl / relay per node count, unloaded p50: " + ", ".join(f"{n}: {v}" for n, v in r["cluster_over_relay_p50_1"].items()) +
            (("; throughput at 100: " + ", ".join(f"{n}: {v}" for n, v in r["cluster_over_relay_throughput_100"].items()))
             if r["cluster_over_relay_throughput_100"] else "") + ".", ""]
    return out


def section_saturation() -> list[str]:
    d = load("saturation")
    if not d:
        return []
    rows = [[c, mmm(a["throughput"]), ms(a["p50_us"]), ms(a["p99_us"]), ms(a["p999_us"]),
             str(sum(a.get("resends", []))) if a.get("resends") else "0"] for c, a in sorted(d["closed_loop"].items(), key=lambda kv: int(kv[0]))]
    out = ["### 4. Saturation and tail (3 nodes)", "", "Closed loop:", ""]
    out += table(["customers", "writes/s", "p50 ms", "p99 ms", "p99.9 ms", "resent after 1 s (all runs)"], rows)
    out += [f"Saturation (best closed-loop median): **{d['saturation_throughput']:,.0f} writes/s**.", "",
            "Open loop (bench/driver.py: Poisson arrivals, latency from the intended start):", ""]
    rows = [[f"{p}%", f"{a['target_rate']:,.0f}", mmm(a["throughput"]), ms(a["p50_us"]), ms(a["p99_us"]), ms(a["p999_us"]),
             str(a["errors"].get("unanswered", 0))] for p, a in sorted(d["open_loop"].items(), key=lambda kv: int(kv[0]))]
    out += table(["load", "target/s", "achieved/s", "p50 ms", "p99 ms", "p99.9 ms", "unanswered"], rows)
    if d.get("open_loop_loadgen"):
        out += ["The same rates through loadgen's own open loop (issue 5: `loadgen.worker.run_spec`, uniform schedule, ClientEngine):", ""]
        rows = [[f"{p}%", f"{a['target_rate']:,.0f}", mmm(a["throughput"]), ms(a["p50_us"]), ms(a["p99_us"]), ms(a["p999_us"])]
                for p, a in sorted(d["open_loop_loadgen"].items(), key=lambda kv: int(kv[0]))]
        out += table(["load", "target/s", "achieved/s", "p50 ms", "p99 ms", "p99.9 ms"], rows)
    return out


def section_durability() -> list[str]:
    d = load("durability")
    if not d:
        return []
    rows = [[p, mmm(a["100"]["throughput"]), ms(a["100"]["p50_us"]), ms(a["1"]["p50_us"]), ms(a["1"]["p99_us"])]
            for p, a in d["policies"].items()]
    out = ["### 7. The fsync policy (3 nodes, same run, interleaved)", ""]
    out += table(["durability", "writes/s, 100 customers", "p50 ms (100)", "p50 ms, 1 customer", "p99 ms (1)"], rows)
    r = d["ratios"]
    pr = r["throughput_100_fsync_over_wal_paired"]
    t = d["targets"]
    out += [f"- **fsync / wal throughput at 100 customers = {r['throughput_100_fsync_over_wal']}** (paired {pr['median']}, "
            f"{pr['min']}–{pr['max']}); target ≥ {t['fsync_over_wal_min']}: {verdict(pr, t['fsync_over_wal_min'], True)}. "
            f"wal / memory = {r['throughput_100_wal_over_memory']}; unloaded p50 fsync / wal = {r['p50_1_fsync_over_wal']}. "
            f"Data dir on {d['settings']['data_dir_filesystem']}.", ""]
    return out


def section_failover() -> list[str]:
    d = load("failover")
    if not d:
        return []
    out = ["### 5. Failover and catch-up (3 nodes)", ""]
    rows = []
    for k, label in (("kill_primary_to_next_commit_client_timeout_50ms", "client attempt timeout 50 ms (the cluster's own failover)"),
                     ("kill_primary_to_next_commit_default_client", "default client (attempt timeout 500 ms)")):
        if k in d:
            v = d[k]
            rows.append([label, str(v["trials"]), f"{v['median_ms']:.0f}", f"{v['min_ms']:.0f}", f"{v['max_ms']:.0f}"])
    out += table(["primary SIGKILL → next committed order", "trials", "median ms", "min ms", "max ms"], rows)
    c = d.get("wiped_node_catch_up_under_load")
    if c:
        out += [f"Wiped backup catching up while {c['load_customers']} customers keep ordering: **{c['entries_at_rejoin']:,} entries in "
                f"{c['catch_up_seconds']:.2f} s = {c['catch_up_entries_per_s']:,} entries/s** (snapshot + log suffix + what was ordered "
                f"meanwhile); the load ran at {c['load_throughput_before_restart']:,.0f} writes/s before the restart and "
                f"{c['load_throughput_during_catch_up']:,.0f} writes/s during the catch-up. Preload: {c['preloaded_entries']:,} orders "
                f"at {c['preload_throughput']:,.0f}/s.", ""]
    return out


def section_memory() -> list[str]:
    d = load("memory")
    if not d:
        return []
    rows = [[i, v["role"], f"{v['rss_empty_mib']:.0f}", f"{v['rss_mib']:.0f}", f"{v['bytes_per_customer']:.0f}", f"{v['applied_index']:,}"]
            for i, v in d["nodes"].items()]
    out = [f"### 6. Memory: {d['loaded_customers']:,} customers (1 order each)", ""]
    out += table(["node", "role", "RSS empty MiB", "RSS loaded MiB", "bytes / customer", "applied index"], rows)
    out += [f"Loaded in {d['load_seconds']:.0f} s ({d['load_throughput']:,.0f} orders/s, {d['settings']['loader']})."]
    if not d.get("complete", True):
        out += [f"**Incomplete**: the suite's time budget ran out at {d['loaded_customers']:,} of {d['settings']['customers']:,} "
                f"customers; linear extrapolation to {d['settings']['customers']:,}: " +
                ", ".join(f"node {i} {v} MiB" for i, v in d["rss_mib_extrapolated_to_total"].items()) + "."]
    out += [""]
    return out


def section_profile() -> list[str]:
    d = load("profile")
    if not d:
        return []
    lp = d.get("load_during_profile", {})
    out = [f"### Profile of the primary (py-spy, 100 customers, {lp.get('throughput')} writes/s while sampled, "
           f"primary at {d.get('primary_cpu_percent')}% CPU)", ""]
    rows = []
    a, b = d["top_self"][:12], d.get("gil_top_self", [])[:12]
    for i in range(max(len(a), len(b))):
        ra = a[i] if i < len(a) else None
        rb = b[i] if i < len(b) else None
        rows.append([f"`{ra['function']}`" if ra else "", f"{ra['percent']}%" if ra else "",
                     f"`{rb['function']}`" if rb else "", f"{rb['percent']}%" if rb else ""])
    out += table(["on CPU (own time)", "%", "holding the GIL (own time)", "%"], rows)
    incl = [r for r in d["top_inclusive"] if not r["function"].startswith(("<module>", "main (", "_run_code", "_run_module"))][:12]
    out += ["Inclusive (function and what it calls): " + "; ".join(f"`{r['function']}` {r['percent']}%" for r in incl) + ".", ""]
    return out


PATH_ROWS = (
    ("to_primary", "client sent → primary's loop awake"),
    ("request_turn", "primary: awake → appends sent"),
    ("request_turn.core", "… drain, decode, the core, its flush"),
    ("request_turn.send", "… encode and send the appends"),
    ("first_backup_wake", "appends sent → first backup awake"),
    ("last_backup_wake", "appends sent → last backup awake"),
    ("backup_turn", "backup: awake → ack sent (mean of the backups)"),
    ("backup_turn.core", "… drain, decode, the core, its flush"),
    ("backup_turn.wal", "… the WAL write"),
    ("backup_turn.send", "… encode and send the ack"),
    ("replication", "appends sent → last ack sent"),
    ("ack_to_primary", "last ack sent → primary's loop awake"),
    ("commit_turn", "primary: awake → replies sent"),
    ("commit_turn.core", "… drain, decode, the core's commit, apply and answer"),
    ("commit_turn.send", "… encode and send the replies"),
    ("to_client", "replies sent → client has the reply"),
    ("total", "**the write, end to end**"),
)
SUMMED = ("to_primary", "request_turn", "replication", "ack_to_primary", "commit_turn", "to_client")


def section_path() -> list[str]:
    d = load("path")
    if not d:
        return []
    st = d["settings"]
    out = [f"### Where an unloaded write waits (`bench/critical_path.py`, {st['nodes']} nodes, 1 customer, "
           f"{st['writes']:,} writes × {st['rounds']} rounds a target)", ""]
    rows = []
    for key, label in PATH_ROWS:
        a, b = d["relay"]["us"].get(key), d["lfctl"]["us"].get(key)
        diff = f"{b['median'] - a['median']:+.0f}" if a and b else "–"
        name = f"**{label}**" if key in SUMMED else label
        rows.append([name, mmm(a, digits=0) if a else "–", mmm(b, digits=0), diff])
    out += table(["segment (µs, median over a round's writes; min–max over rounds)", "relay", "lfctl", "lfctl − relay"], rows)
    matched = {n: f"{sum(d[n]['matched']):,} of {sum(d[n]['writes']):,}" for n in ("relay", "lfctl")}
    out += [f"Bold rows add up to each write's latency. Writes with every step found in the traces: relay "
            f"{matched['relay']}, lfctl {matched['lfctl']}. Primary loop wake-ups for acks per write: relay "
            f"{d['relay']['us']['ack_turns']['median']:.1f}, lfctl {d['lfctl']['us']['ack_turns']['median']:.1f}.", ""]
    return out


def section_path_nodes() -> list[str]:
    """The same segments at 2 and 5 nodes: where the 5/2-node latency ratio comes from."""
    two, five = load("path_2"), load("path_5")
    if not two or not five:
        return []
    out = [f"### Where an unloaded write waits, 2 vs 5 nodes (`bench/critical_path.py --nodes 2|5`, "
           f"{two['settings']['writes']:,} writes × {two['settings']['rounds']} rounds a target)", ""]
    labels = dict(PATH_ROWS)
    keys = [(k, labels[k]) for k in ("to_primary", "request_turn", "last_backup_wake", "backup_turn", "replication",
                                     "ack_to_primary", "commit_turn", "to_client", "total")]
    rows = []
    for key, label in keys:
        cells = []
        for name in ("relay", "lfctl"):
            a, b = two[name]["us"].get(key), five[name]["us"].get(key)
            cells += [mmm(a), mmm(b), f"{b['median'] - a['median']:+.0f}" if a and b else "–"]
        rows.append([label, *cells])
    out += table(["segment (µs, median)", "relay 2", "relay 5", "relay +", "lfctl 2", "lfctl 5", "lfctl +"], rows)
    ratios = {n: five[n]["us"]["total"]["median"] / two[n]["us"]["total"]["median"] for n in ("relay", "lfctl")}
    out += [f"5/2-node ratio of these medians: relay {ratios['relay']:.2f}, lfctl {ratios['lfctl']:.2f} (the target's "
            f"figure is the nodes experiment's side-by-side ratio above).", ""]
    return out


def section_view_changes() -> list[str]:
    """Points during which the cluster changed views (a backup dropped and re-admitted, or a
    primary deposed): under CPU starvation that happens, and the point's figures carry it."""
    rows = []
    for name in ("limit", "nodes", "saturation", "durability"):
        d = load(name)
        if not d:
            continue

        def walk(obj, path):
            if isinstance(obj, dict):
                if "view_changes" in obj:
                    for vc in obj["view_changes"]:
                        rows.append([name, path, f"{vc['from']['number']} → {vc['to']['number']}",
                                     "; ".join(vc.get("supervisor_log", []))[:300] or "–"])
                for k, v in obj.items():
                    if k not in ("raw_runs", "machine", "settings"):
                        walk(v, f"{path}/{k}" if path else k)

        walk(d, "")
    if not rows:
        return []
    out = ["### View changes during measured points", ""]
    out += table(["experiment", "point", "view", "supervisor's reason"], rows)
    return out


def render() -> str:
    lines: list[str] = []
    for sec in (section_machine, section_limit, section_nodes, section_peer, section_saturation, section_failover,
                section_memory, section_durability, section_profile, section_path, section_path_nodes,
                section_view_changes):
        lines += sec()
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--update", type=Path, help="a markdown file holding the markers")
    args = parser.parse_args(argv)
    text = render()
    if not args.update:
        sys.stdout.write(text)
        return 0
    doc = args.update.read_text()
    if BEGIN not in doc or END not in doc:
        print(f"{args.update}: no {BEGIN} ... {END} block", file=sys.stderr)
        return 1
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    args.update.write_text(f"{head}{BEGIN}\n{text}{END}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
