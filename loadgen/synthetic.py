"""Synthetic histories that are linearizable by construction (for tests and for timing the checker).

Each process runs operations back to back; every operation gets a random linearization point
inside its [invoke, complete] interval, and reads return the record at that point.  An `info`
order (its client gave up) takes effect at its point or never, at random, and its process is
replaced by a fresh one, as in a real history.

`python -m loadgen.synthetic --ops 100000` makes such a history and times the checker on it;
`python -m loadgen.synthetic --stale-copy RUN_DIR DEST` copies a run directory with one read of its
history edited to return an older order number (which the checker must reject).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["SyntheticOp", "legal_history"]


@dataclass
class SyntheticOp:
    process: int
    f: str
    customer: int
    value: int | None  # order number; read value filled in by the simulation
    type: str  # ok | info | fail
    start: int
    end: int
    point: int  # linearization point (start <= point <= end)
    applied: bool = True  # info orders: did it take effect


def legal_history(ops: int, *, customers: int = 10, processes: int = 20, seed: int = 0,
                  read_fraction: float = 0.5, info_fraction: float = 0.0,
                  fail_fraction: float = 0.0, max_latency: int = 1000, max_gap: int = 500,
                  ) -> tuple[list[dict[str, Any]], dict[str, Any], list[SyntheticOp]]:
    """(history records ordered by time, final state, the operations) -- a legal history."""
    rng = random.Random(seed)
    next_order = [0] * customers
    made: list[SyntheticOp] = []
    clock = [rng.randrange(max_gap + 1) for _ in range(processes)]
    pids = list(range(processes))
    fresh = processes
    for k in range(ops):
        slot = k % processes
        start = clock[slot] + rng.randrange(max_gap + 1)
        end = start + 1 + rng.randrange(max_latency)
        point = rng.randint(start, end)
        c = rng.randrange(customers)
        if rng.random() < read_fraction:
            f, value = "read", None
        else:
            f, value = "order", next_order[c]
            next_order[c] += 1
        kind = "ok"
        r = rng.random()
        if r < info_fraction:
            kind = "info"
        elif r < info_fraction + fail_fraction:
            kind = "fail"
        op = SyntheticOp(pids[slot], f, c, value, kind, start, end, point)
        if kind == "fail":
            op.applied = False
        elif kind == "info" and f == "order":
            op.applied = rng.random() < 0.5
        made.append(op)
        clock[slot] = end
        if kind == "info":
            pids[slot] = fresh
            fresh += 1
    state = [-1] * customers
    for op in sorted(made, key=lambda o: o.point):
        if op.f == "order":
            if op.applied:
                state[op.customer] = op.value  # type: ignore[assignment]
        elif op.type == "ok":
            op.value = state[op.customer]
    records: list[tuple[int, int, dict[str, Any]]] = []
    for n, op in enumerate(made):
        records.append((op.start, 2 * n, {"process": op.process, "type": "invoke", "f": op.f,
                                          "customer": op.customer,
                                          "value": op.value if op.f == "order" else None,
                                          "time": op.start}))
        done_value = op.value if (op.f == "order" or op.type == "ok") else None
        records.append((op.end, 2 * n + 1, {"process": op.process, "type": op.type, "f": op.f,
                                            "customer": op.customer, "value": done_value,
                                            "time": op.end}))
    records.sort(key=lambda r: (r[0], r[1]))
    final = {"time": max((op.end for op in made), default=0) + 1,
             "customers": list(range(customers)),
             "nodes": {"1": {"settled": True,
                             "records": {str(c): v for c, v in enumerate(state) if v != -1}}}}
    return [r for _, _, r in records], final, made


def stale_read(records: list[dict[str, Any]], rng: random.Random | None = None
               ) -> tuple[list[dict[str, Any]], str] | None:
    """A copy of `records` with one ok read edited to return an older order number: one whose
    order completed before a newer order of the same customer began, which itself completed
    before the read began -- so the edited read is stale whatever the interleaving.  None when
    the history has no such read."""
    from loadgen.history import pair_operations

    ops, _ = pair_operations(records)
    acked: dict[int, list[Any]] = {}
    for op in ops:
        if op.f == "order" and op.type == "ok":
            acked.setdefault(op.customer, []).append(op)
    candidates = []
    for r in ops:
        if r.f != "read" or r.type != "ok" or r.end_line is None:
            continue
        for new in acked.get(r.customer, []):
            if new.end < r.start:  # type: ignore[operator]
                olds = [o for o in acked[r.customer] if o.end < new.start and o.value != r.value]  # type: ignore[operator]
                if olds:
                    candidates.append((r, new, olds[-1]))
    if not candidates:
        return None
    r, new, old = (rng or random.Random(0)).choice(candidates)
    out = [dict(rec) for rec in records]
    for rec in out:
        if rec.get("_line") == r.end_line or (rec.get("process") == r.process and rec.get("time") == r.end
                                             and rec.get("type") == "ok" and rec.get("f") == "read"):
            rec["value"] = old.value
            break
    for rec in out:
        rec.pop("_line", None)
    return out, (f"read of customer {r.customer} by process {r.process} (history line {r.end_line}) "
                 f"edited from {r.value} to {old.value}; order {new.value} was acknowledged before "
                 "the read began")


def main(argv: list[str] | None = None) -> int:
    from loadgen.checker import check_history

    parser = argparse.ArgumentParser(prog="python -m loadgen.synthetic", description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=100_000)
    parser.add_argument("--customers", type=int, default=100)
    parser.add_argument("--processes", type=int, default=50)
    parser.add_argument("--info", type=float, default=0.001, help="fraction of info outcomes")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--time-limit", type=float, default=300.0)
    parser.add_argument("--write", metavar="FILE", help="also write the history as JSON lines")
    parser.add_argument("--stale-copy", nargs=2, metavar=("RUN_DIR", "DEST"),
                        help="copy RUN_DIR to DEST with one read made stale, and say which")
    args = parser.parse_args(argv)
    if args.stale_copy:
        import json
        import shutil
        from pathlib import Path

        from loadgen.history import load_history

        src, dest = map(Path, args.stale_copy)
        records = load_history(src / "history.jsonl")
        mutated = stale_read(records, random.Random(args.seed))
        if mutated is None:
            print("no read in that history can be made stale", file=sys.stderr)
            return 1
        shutil.copytree(src, dest, ignore=shutil.ignore_patterns("logs", "report.png", "samples.npz"))
        with open(dest / "history.jsonl", "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in mutated[0])
        print(mutated[1])
        return 0
    t = time.monotonic()
    records, final, _ = legal_history(args.ops, customers=args.customers, processes=args.processes,
                                      seed=args.seed, info_fraction=args.info)
    gen = time.monotonic() - t
    if args.write:
        import json
        with open(args.write, "w") as fh:
            for r in records:
                fh.write(json.dumps(r) + "\n")
    res = check_history(records, final_state=final, time_limit=args.time_limit)
    print(f"{args.ops} operations, {args.customers} customers, {args.processes} processes: "
          f"generated in {gen:.2f} s; checker {res.verdict} in {res.elapsed_s:.2f} s "
          f"({res.checked_ops} operations searched)")
    return res.exit_code


if __name__ == "__main__":
    sys.exit(main())
