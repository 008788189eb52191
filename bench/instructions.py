"""Instructions executed per order and per backup append, counted by valgrind's callgrind, and
what one unloaded write costs with cold caches, counted by cachegrind's cache simulation.

Why it exists: on this shared 2-core VM a cluster's throughput moves +-30 % between minutes and
even in-process CPU timings move 10 %, so a change worth 3 % cannot be seen by timing it.
callgrind counts the instructions the interpreter executes, which do not depend on what the
neighbours are doing: two runs of the same code gave counts within 0.2 % of each other (the
collector runs at slightly different moments), where a timing moves 10 %.  It cannot see the
kernel or ZeroMQ's I/O threads, so it measures the Python work of the sans-IO core, the codec
and the WAL encoding, nothing else.

Each workload runs twice in a fresh interpreter: once with the work and once with the set-up
only; the difference divided by the count is the figure.  Workloads:

* `core`: bench/core_bench.py's loop (a primary and two backups in one process, every message
  through the codec), instructions per order;
* `backup`: one backup handling appends of `--entries` entries, by cumulative stage (decode,
  the core's `on_message` -- in a tree whose core takes the frame, the rest of `on_peer_frame`
  --, its `flush`, `Storage.write` under `wal`, encoding the ack, and
  at every tick applying what the primary committed),
  instructions per append for each stage;
* `cold`: `--writes` unloaded writes, one at a time, through a primary and two backups
  (bench/unloaded_write.py) with the caches wiped before every loop turn, as the other
  processes on the cores wipe them in the cluster, where a turn takes ~3x its warm time.
  Instructions, L1 and last-level misses per write on a simulated cache like one core's here
  (the wiping's own cost subtracted) and the cycles they add up to: a turn-shortening change
  shows up in these within 1 % where the cluster's latency resolves 10 %.

`--tree DIR` runs the same workloads on another checkout as well (e.g. a `git worktree` of the
commit before a change), so a before/after is two numbers from one command.

Usage: python bench/instructions.py [--orders 10000] [--batch 17] [--appends 3000] [--entries 12]
           [--writes 300] [--only core,backup,cold] [--tree DIR ...]  -> bench/results/instructions.json
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("decode", "on_message", "flush", "storage", "encode_ack", "apply")
WORKLOADS = ("core", "backup", "cold")


# --------------------------------------------------------------------------- child side


def _child_core(orders: int, batch: int) -> None:
    sys.path.insert(0, str(Path.cwd() / "bench"))
    import core_bench  # noqa: PLC0415  (the tree under test's own copy)

    if orders:
        core_bench.run(orders, batch)


def _child_backup(appends: int, entries: int, stage: int) -> None:
    # bench/backup_workload.py of *this* checkout, loaded by path (an older tree under test may not
    # have it); it imports the project's modules from the tree under test, first on sys.path.
    spec = importlib.util.spec_from_file_location("backup_workload", Path(__file__).with_name("backup_workload.py"))
    assert spec is not None and spec.loader is not None
    workload = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(workload)
    from node.storage import Storage  # noqa: PLC0415
    from protocol import codec  # noqa: PLC0415

    backup, frames = workload.backup_and_appends(entries, appends)
    with tempfile.TemporaryDirectory() as tmp:
        storage = Storage(tmp, "wal")
        storage.load()
        # A tree whose core takes the frame itself (`on_peer_frame`) decodes it into fields
        # there: stage 1 is that decode alone, stage 2 the whole call.
        take_frame = getattr(backup, "on_peer_frame", None)
        for n, frame in enumerate(frames if stage else (), 1):
            if take_frame is None:
                msg = codec.decode(frame)
                if stage < 2:
                    continue
                backup.on_message(msg, 1.0)
            elif stage < 2:
                codec.decode_append(frame)
                continue
            else:
                take_frame(frame, 1.0)
            if stage < 3:
                backup.outbox.clear()
                continue
            out = backup.flush(1.0)
            if stage >= 4:
                storage.write(out.persist)
            if stage >= 5:
                for _peer, ack in out.messages:
                    codec.encode(ack)
            out.clear()
            if stage >= 6 and n % workload.APPENDS_PER_TICK == 0 and hasattr(backup, "apply_committed"):
                backup.apply_committed()  # at a tick (older trees apply in on_message)
        storage.close()


def _child_cold(writes: int, write: bool) -> None:
    spec = importlib.util.spec_from_file_location("unloaded_write", Path(__file__).with_name("unloaded_write.py"))
    assert spec is not None and spec.loader is not None
    workload = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(workload)
    workload.polluted_writes(writes, write)


def child(argv: list[str]) -> None:
    sys.path.insert(0, str(Path.cwd()))
    kind, *nums = argv
    if kind == "core":
        _child_core(int(nums[0]), int(nums[1]))
    elif kind == "cold":
        _child_cold(int(nums[0]), nums[1] == "1")
    else:
        _child_backup(int(nums[0]), int(nums[1]), int(nums[2]))


# --------------------------------------------------------------------------- parent side


# A cache like one core's of this machine (lscpu: 32 KiB L1i and L1d, 1 MiB L2 per core) for
# cachegrind, whose last level stands for the L2: what misses there comes from the shared L3 (or
# memory), at roughly 40 cycles where an L1 miss that hits the L2 costs about 12.
CACHE = ("--I1=32768,8,64", "--D1=32768,8,64", "--LL=1048576,16,64")
L1_MISS_CYCLES, LL_MISS_CYCLES = 12, 40


def events(tree: Path, args: list[str], tool: str = "callgrind") -> dict[str, int]:
    """valgrind's event totals (`Ir`, and with `tool="cachegrind"` the cache misses too) for
    `python bench/instructions.py --child ARGS` run in `tree`."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"{tool}.out"
        extra = ["--cache-sim=yes", *CACHE] if tool == "cachegrind" else []
        cmd = ["valgrind", f"--tool={tool}", *extra, f"--{tool}-out-file={out}", sys.executable,
               str(Path(__file__).resolve()), "--child", *args]
        env = {**os.environ, "PYTHONHASHSEED": "0"}  # set iteration orders, hence instruction counts
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"{tool} run failed in {tree}: {proc.stderr[-2000:]}")
        text = out.read_text()
        names = re.search(r"^events:\s+(.+)$", text, re.MULTILINE)
        totals = re.search(r"^(?:summary|totals):\s+([\d ]+)$", text, re.MULTILINE)
        if names is None or totals is None:
            raise RuntimeError(f"no event totals in {tool}'s output for {args}")
        return dict(zip(names.group(1).split(), map(int, totals.group(1).split())))


def count(tree: Path, args: list[str]) -> int:
    """Instructions executed by `python bench/instructions.py --child ARGS` run in `tree`."""
    return events(tree, args)["Ir"]


def cold_cost(tree: Path, writes: int) -> dict[str, int]:
    """Per unloaded write with cold caches (bench/unloaded_write.py): instructions, L1 and
    last-level misses (those of instruction fetches apart) and the cycles they add up to at
    `L1_MISS_CYCLES`/`LL_MISS_CYCLES`, without what the wiping itself costs."""
    work = events(tree, ["cold", str(writes), "1"], "cachegrind")
    wipe = events(tree, ["cold", str(writes), "0"], "cachegrind")
    d = {k: (work[k] - wipe[k]) / writes for k in work}
    l1 = d["I1mr"] + d["D1mr"] + d["D1mw"]
    ll = d["ILmr"] + d["DLmr"] + d["DLmw"]
    cycles = d["Ir"] + L1_MISS_CYCLES * l1 + LL_MISS_CYCLES * ll
    return {"instructions": round(d["Ir"]), "l1_misses": round(l1), "ll_misses": round(ll),
            "ll_instruction_misses": round(d["ILmr"]), "estimated_cycles": round(cycles)}


def _commit(tree: Path) -> str:
    """The checkout's commit (+ "-dirty" with uncommitted changes), or "" outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=tree, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=tree,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return sha + ("-dirty" if dirty else "")


def measure(tree: Path, only: list[str], a: argparse.Namespace) -> dict:
    result: dict = {}
    if "core" in only:
        setup = count(tree, ["core", "0", str(a.batch)])
        total = count(tree, ["core", str(a.orders), str(a.batch)])
        result["core_per_order"] = round((total - setup) / a.orders)
    if "backup" in only:
        counts = [count(tree, ["backup", str(a.appends), str(a.entries), str(stage)]) for stage in range(len(STAGES) + 1)]
        per_stage = {name: round((counts[i + 1] - counts[i]) / a.appends) for i, name in enumerate(STAGES)}
        result["backup_per_append"] = {**per_stage, "total": round((counts[-1] - counts[0]) / a.appends)}
    if "cold" in only:
        result["cold_per_write"] = cold_cost(tree, a.writes)
    return result


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return 0
    sys.path.insert(0, str(ROOT / "bench"))
    from common import RESULTS, log, write_result  # noqa: PLC0415

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=10_000, help="orders through the core workload")
    parser.add_argument("--batch", type=int, default=17, help="orders per primary loop turn (~17 at 100 customers)")
    parser.add_argument("--appends", type=int, default=3_000, help="appends through the backup workload")
    parser.add_argument("--entries", type=int, default=12, help="entries per append")
    parser.add_argument("--writes", type=int, default=300, help="unloaded writes through the cold workload")
    parser.add_argument("--only", default=",".join(WORKLOADS), help=f"comma-separated subset of {','.join(WORKLOADS)}")
    parser.add_argument("--tree", type=Path, action="append", default=[],
                        help="another checkout to measure the same way (repeatable)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="where the JSON goes (default bench/results)")
    a = parser.parse_args()
    only = [w.strip() for w in a.only.split(",") if w.strip()]
    if unknown := [w for w in only if w not in WORKLOADS]:
        parser.error(f"unknown workload(s) {unknown}; choose from {', '.join(WORKLOADS)}")
    if shutil.which("valgrind") is None:
        print("bench/instructions.py: valgrind is not installed (it counts the instructions)", file=sys.stderr)
        return 2
    for tree in a.tree:
        if not (tree / "node" / "replica.py").is_file():
            parser.error(f"--tree {tree}: not a checkout of this project (no node/replica.py)")
    trees = {".": ROOT, **{str(t): t.resolve() for t in a.tree}}
    started = time.monotonic()
    results = {}
    for name, tree in trees.items():
        results[name] = {"commit": _commit(tree), **measure(tree, only, a)}
        log(f"{name}: {results[name]}")
    settings = {"orders": a.orders, "batch": a.batch, "appends": a.appends, "entries": a.entries, "writes": a.writes,
                "only": only, "trees": list(trees), "counter": "valgrind --tool=callgrind, user-space instructions",
                "cold_counter": f"valgrind --tool=cachegrind --cache-sim=yes {' '.join(CACHE)}; estimated cycles = "
                                f"instructions + {L1_MISS_CYCLES} x L1 misses + {LL_MISS_CYCLES} x last-level misses"}
    path = write_result("instructions", {"settings": settings, "instructions": results,
                                         "seconds": round(time.monotonic() - started, 1)}, a.out_dir)
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
