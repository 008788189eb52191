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

Writes bench/results/client.json.
Usage: python bench/client_bench.py [--rounds 5] [--duration 4] [--warmup 1] [--customers 100]
                                    [--compare-with FILE] [--profile FILE] [--no-lean] [--out NAME]
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import itertools
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from common import Cluster, log, stats, write_result
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
    args = parser.parse_args()

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
