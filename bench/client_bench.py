"""What the client costs: CPU microseconds of the client process per order, `ClientEngine` vs the
lean driver, against a real 3-node cluster on loopback.

Why it exists: `lfctl load` runs `loadgen.client.ClientEngine`; if the client spends more CPU per
order than the cluster does, the load generator measures itself.  The lean driver
(`bench/driver.closed_loop`) is the floor a Python client can reach, so the ratio says how much
the engine's generality (sessions, retries, timers, results) costs.

Method: one cluster (`bench/common.Cluster(3)`), then R rounds; each round runs every client in
turn (the order alternates per round, so drift on this 2-core machine favours none) as a closed
loop of C customers for `warmup + duration` seconds.  Every run orders for a fresh range of
customer ids: a repeated (customer, order) pair would be answered from the primary's idempotency
table without replication and flatter the throughput.  The figure is process CPU time
(`time.process_time()`: every thread of this process, the ZeroMQ I/O thread included) over the
orders completed inside the measurement window, sampled every 100 completions.  Throughput is
reported too but is far noisier than CPU per op on a shared machine.

`--compare-with FILE` also runs a `ClientEngine` loaded from FILE (for example
`git show HEAD:loadgen/client.py > /tmp/client_head.py`), interleaved with the current one: a
before/after comparison on the same cluster in the same minutes.  `--profile FILE` writes a
cProfile of one extra run of the current engine (for finding hot spots; it inflates the costs).

`--open-loop RATE [RATE ...]` measures loadgen's open loop instead (`loadgen.worker.run_spec`,
mode "open", with the parameters of bench/suite.py's saturation rows: one process, 1000
customers, max in-flight 1000, orders only, no history, samples or telemetry) for `--duration`
seconds per point.  Each point runs in a fresh child process whose own CPU time over `run_spec`
is the figure (CPU µs per issued request), next to p50/p99 from the intended start, the sender's
lag (first send - intended start: is the sender falling behind?), the service time and the
nodes' CPU per request.  `--tree DIR` (repeatable; default: this checkout) runs the loadgen of
another checkout, e.g. `git archive BASE | tar -x -C /tmp/base`, interleaved with the others
per round; the order alternates per round.

Writes bench/results/client.json (open loop: client_open_loop.json).
Usage: python bench/client_bench.py [--rounds 5] [--duration 4] [--warmup 1] [--customers 100]
                                    [--compare-with FILE] [--profile FILE] [--no-lean] [--out NAME]
       python bench/client_bench.py --open-loop 23300 27900 [--tree DIR ...] [--rounds 5]
                                    [--duration 2] [--out NAME]
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import itertools
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from common import ROOT, Cluster, log, stats, write_result
from driver import closed_loop

Mark = tuple[float, float, float, int]  # (monotonic s, process CPU s, this thread's CPU s, orders so far)
_bases = itertools.count(1)


def next_base() -> int:
    """A customer range no earlier run of this process used (1M ids apart; ids are i32)."""
    return 100_000_000 + next(_bases) * 1_000_000


def load_engine_class(path: Path) -> type:
    """`ClientEngine` from a copy of loadgen/client.py at `path` (imported under its own name,
    so it does not replace the current module)."""
    spec = importlib.util.spec_from_file_location("client_under_comparison", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {path}")
    module: ModuleType = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.ClientEngine


def window(marks: Sequence[Mark], m_from: float, m_to: float) -> dict[str, Any]:
    """CPU µs per order and orders/s between the first and last mark inside [m_from, m_to].

    `python_thread_us_per_op` is the share of the thread running the client (the rest of the
    process CPU is mostly ZeroMQ's I/O thread moving the frames)."""
    inside = [m for m in marks if m_from <= m[0] <= m_to]
    if len(inside) < 2 or inside[-1][3] == inside[0][3]:
        return {"cpu_us_per_op": float("nan"), "python_thread_us_per_op": float("nan"),
                "throughput": 0.0, "ops": 0}
    (t0, c0, th0, n0), (t1, c1, th1, n1) = inside[0], inside[-1]
    return {"cpu_us_per_op": 1e6 * (c1 - c0) / (n1 - n0),
            "python_thread_us_per_op": 1e6 * (th1 - th0) / (n1 - n0),
            "throughput": (n1 - n0) / (t1 - t0), "ops": n1 - n0}


def engine_run(engine_cls: type, nodes: list[tuple[int, str]], customers: int, duration: float,
               warmup: float, attempt_timeout: float = 0.5) -> dict[str, Any]:
    """A closed loop through `engine_cls`: one session per customer, orders 0, 1, 2, ...

    The sessions do as little as possible (one clock read per order, a mark every 100 orders)
    so the figure is the engine's cost, not the benchmark's."""
    base = next_base()
    marks: list[Mark] = []
    done = [0]
    failed = [0]
    clock, cpu, thread_cpu = time.monotonic, time.process_time, time.thread_time
    with engine_cls(nodes, attempt_timeout=attempt_timeout, deadline=30.0) as engine:
        start = clock()
        m_from, end = start + warmup, start + warmup + duration

        def session(c: int):
            k = 0
            while True:
                r = yield (1, base + c, k)
                k += 1
                if r.ok:
                    done[0] += 1
                    if done[0] % 100 == 0:
                        marks.append((clock(), cpu(), thread_cpu(), done[0]))
                else:
                    failed[0] += 1
                if clock() >= end:
                    return

        engine.run([session(c) for c in range(customers)], max_duration=warmup + duration + 10.0)
        engine_stats = dict(engine.stats)
    out = window(marks, m_from, end)
    out.update(failed=failed[0], engine_stats=engine_stats)
    return out


def lean_run(nodes: dict[int, str], customers: int, duration: float, warmup: float) -> dict[str, Any]:
    """The same closed loop through the lean driver (bench/driver.closed_loop)."""
    marks: list[Mark] = []
    clock, cpu, thread_cpu = time.monotonic, time.process_time, time.thread_time
    start = clock()
    r = closed_loop(nodes, customers, duration, warmup=warmup, customer_base=next_base(),
                    progress=lambda done: marks.append((clock(), cpu(), thread_cpu(), done)),
                    progress_every=100)
    out = window(marks, start + warmup, start + warmup + duration)
    out.update(failed=sum(r["errors"].values()))
    return out


# One open-loop point, run as `python -c OPEN_POINT TREE CONFIG RATE DURATION BASE` so that TREE's
# loadgen and protocol are imported (nothing of this checkout's bench is), in a fresh process
# whose CPU time is the client's alone.
OPEN_POINT = r"""
import json, os, sys, time
tree, config, rate, duration, base = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
sys.path.insert(0, tree)
os.chdir(tree)
from protocol.config import load_config
import loadgen.worker
from loadgen.worker import LoadSpec, run_spec
assert os.path.realpath(loadgen.worker.__file__).startswith(os.path.realpath(tree)), loadgen.worker.__file__
spec = LoadSpec(mode="open", config=load_config(config), customer_ids=list(range(base, base + 1000)),
                rate=rate, duration=duration, read_fraction=0.0, max_inflight=1000, drain=5.0, procs=1,
                record_history=False, keep_samples=False, push_telemetry=False)
cpu0 = time.process_time()
out = run_spec(spec)
cpu = time.process_time() - cpu0
col = out.collector
lat, lag, svc = col.latency.summary(), col.lag.summary(), col.service.summary()
print(json.dumps({"issued": col.issued, "ok": col.ok, "failed": col.failed,
                  "cpu_us_per_op": 1e6 * cpu / max(1, col.issued),
                  "p50_ms": lat["p50"] / 1e3, "p99_ms": lat["p99"] / 1e3, "max_ms": lat["max"] / 1e3,
                  "lag_p50_ms": lag["p50"] / 1e3, "lag_max_ms": lag["max"] / 1e3,
                  "service_p50_ms": svc["p50"] / 1e3, "errors": dict(col.errors),
                  "engine_stats": dict(col.engine_stats)}))
"""


def open_loop_main(args: argparse.Namespace) -> None:
    """Loadgen's open loop at each rate, every tree in turn per round, on one cluster."""
    import psutil

    trees = [str(Path(t).resolve()) for t in (args.tree or [str(ROOT)])]
    runs: dict[str, list[dict[str, Any]]] = {}
    with Cluster(3) as cl:
        config = str(cl.data_dir / "cluster.toml")
        for rnd in range(args.rounds):
            for rate in args.open_loop:
                for tree in (trees if rnd % 2 == 0 else trees[::-1]):
                    cl.settle()
                    nodes = [psutil.Process(n["pid"]) for n in cl.status()["nodes"] if n.get("pid")]
                    node_cpu0 = sum(sum(p.cpu_times()[:2]) for p in nodes)
                    child = subprocess.run(
                        [sys.executable, "-c", OPEN_POINT, tree, config, str(rate), str(args.duration),
                         str(next_base())], capture_output=True, text=True, timeout=args.duration + 120)
                    node_cpu = sum(sum(p.cpu_times()[:2]) for p in nodes) - node_cpu0
                    if child.returncode != 0:
                        log(f"round {rnd} {rate:g}/s {tree}: failed\n{child.stderr[-2000:]}")
                        continue
                    r = json.loads(child.stdout.strip().splitlines()[-1])
                    r["nodes_cpu_us_per_op"] = 1e6 * node_cpu / max(1, r["ok"])
                    runs.setdefault(f"{tree} @ {rate:g}/s", []).append(r)
                    log(f"round {rnd} {rate:7g}/s {tree}: client {r['cpu_us_per_op']:5.1f} us/op, "
                        f"p50 {r['p50_ms']:8.1f} p99 {r['p99_ms']:8.1f} ms, lag p50 {r['lag_p50_ms']:7.1f} "
                        f"max {r['lag_max_ms']:7.1f} ms, service p50 {r['service_p50_ms']:5.1f} ms, "
                        f"nodes {r['nodes_cpu_us_per_op']:5.1f} us/op ({r['ok']} ok, {r['failed']} failed)")
    keys = ("cpu_us_per_op", "p50_ms", "p99_ms", "lag_p50_ms", "lag_max_ms", "service_p50_ms",
            "nodes_cpu_us_per_op")
    summary = {name: {k: stats([r[k] for r in rs]) for k in keys} | {"failed": sum(r["failed"] for r in rs)}
               for name, rs in runs.items()}
    for name, s in summary.items():
        log(f"{name}: client us/op {s['cpu_us_per_op']['median']} [{s['cpu_us_per_op']['min']}.."
            f"{s['cpu_us_per_op']['max']}], p50 ms {s['p50_ms']['median']} [{s['p50_ms']['min']}.."
            f"{s['p50_ms']['max']}], p99 ms {s['p99_ms']['median']} [{s['p99_ms']['min']}.."
            f"{s['p99_ms']['max']}], lag max ms {s['lag_max_ms']['median']}")
    path = write_result(args.out if args.out != "client" else "client_open_loop", {
        "settings": {"rounds": args.rounds, "duration_s": args.duration, "rates": args.open_loop,
                     "trees": trees, "nodes": 3, "customers": 1000, "max_inflight": 1000,
                     "clock": "process CPU time of the client process over run_spec per issued request"},
        "summary": summary,
        "runs": runs,
    })
    log(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--customers", type=int, default=100)
    parser.add_argument("--compare-with", type=Path, help="a loadgen/client.py to compare against")
    parser.add_argument("--profile", type=Path, help="write a cProfile of one engine run here")
    parser.add_argument("--no-lean", action="store_true", help="skip the lean driver")
    parser.add_argument("--out", default="client", help="result name under bench/results/")
    parser.add_argument("--open-loop", type=float, nargs="+", metavar="RATE",
                        help="measure loadgen's open loop at these rates (requests/s) instead")
    parser.add_argument("--tree", action="append",
                        help="with --open-loop: a checkout whose loadgen to run (repeatable)")
    args = parser.parse_args()
    if args.open_loop:
        open_loop_main(args)
        return

    from loadgen.client import ClientEngine

    clients: dict[str, Callable[[Cluster], dict[str, Any]]] = {
        "engine": lambda cl: engine_run(ClientEngine, cl.client_nodes(), args.customers,
                                        args.duration, args.warmup),
    }
    if args.compare_with:
        other = load_engine_class(args.compare_with)
        clients["engine_compared"] = lambda cl: engine_run(other, cl.client_nodes(), args.customers,
                                                          args.duration, args.warmup)
    if not args.no_lean:
        clients["lean"] = lambda cl: lean_run(cl.endpoints(), args.customers, args.duration,
                                              args.warmup)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in clients}
    with Cluster(3) as cl:
        names = list(clients)
        for rnd in range(args.rounds):
            for name in (names if rnd % 2 == 0 else names[::-1]):
                cl.settle()
                r = clients[name](cl)
                runs[name].append(r)
                log(f"round {rnd} {name:16s} {r['cpu_us_per_op']:6.1f} us/op "
                    f"(python thread {r['python_thread_us_per_op']:5.1f})  "
                    f"{r['throughput']:8.1f} ops/s  ({r['ops']} ops, {r['failed']} failed)")
        if args.profile:
            cl.settle()
            prof = cProfile.Profile(time.thread_time)  # CPU of this thread, not wall time
            prof.enable()
            clients["engine"](cl)
            prof.disable()
            prof.dump_stats(str(args.profile))
            log(f"profile written to {args.profile}")
    summary = {name: {"cpu_us_per_op": stats([r["cpu_us_per_op"] for r in rs]),
                      "python_thread_us_per_op": stats([r["python_thread_us_per_op"] for r in rs]),
                      "throughput": stats([r["throughput"] for r in rs]),
                      "failed": sum(r["failed"] for r in rs)} for name, rs in runs.items()}
    for name, s in summary.items():
        c = s["cpu_us_per_op"]
        log(f"{name:16s} client CPU us/op min {c['min']} median {c['median']} max {c['max']} "
            f"(python thread median {s['python_thread_us_per_op']['median']}); "
            f"ops/s median {s['throughput']['median']}")
    path = write_result(args.out, {
        "settings": {"rounds": args.rounds, "duration_s": args.duration, "warmup_s": args.warmup,
                     "customers": args.customers, "nodes": 3,
                     "compare_with": str(args.compare_with) if args.compare_with else None,
                     "clock": "process CPU time of the client process per completed order"},
        "summary": summary,
        "runs": runs,
    })
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
