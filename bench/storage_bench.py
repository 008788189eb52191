"""Benchmark node.storage: Storage.write() throughput under the `wal` and `fsync` policies.

Each write() is one replica step (64 entries + a commit mark, like a batch of orders arriving in
one loop turn), so writes/s is the ceiling on durable steps per second and entries/s the
ceiling on orders/s from storage alone.  The entries are packed blocks, as the replica hands
them over (protocol/entries.py): storage frames them and does not pack anything per entry.

Usage: python bench/storage_bench.py [--batches 1000] [--entries 64] [--dir DIR]
(``--dir`` matters: fsync on tmpfs costs nothing, so the result notes the filesystem.)
Writes bench/results/storage.json.  Timings live here, never as test assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from node.storage import AppendEntries, CommitMark, Storage  # noqa: E402
from protocol.entries import ENTRY_SIZE, pack_entries  # noqa: E402


def filesystem_of(path: Path) -> str:
    """Best-effort filesystem type of `path` (Linux /proc/mounts), for reading the fsync figure."""
    try:
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "unknown"
    best, fstype = "", "unknown"
    target = str(path.resolve())
    for parts in mounts:
        if len(parts) >= 3 and (target == parts[1] or target.startswith(parts[1].rstrip("/") + "/")):
            if len(parts[1]) > len(best):
                best, fstype = parts[1], parts[2]
    return fstype


def make_batches(batches: int, per_batch: int) -> list[list]:
    out: list[list] = []
    index = 1
    for _ in range(batches):
        ents = pack_entries((3, (index * 7919) % 100_000, index, index % 5 + 1) for index in range(index, index + per_batch))
        out.append([AppendEntries(index, ents), CommitMark(index - 1)])
        index += per_batch
    return out


def bench_policy(policy: str, batches: list[list], base: Path) -> dict:
    d = Path(tempfile.mkdtemp(prefix=f"storage-{policy}-", dir=base))
    try:
        s = Storage(d, policy)
        s.load()
        start = time.perf_counter()
        for b in batches:
            s.write(b)
        elapsed = time.perf_counter() - start
        s.close()
        n_entries = sum(len(b[0].entries) // ENTRY_SIZE for b in batches)
        result = {
            "policy": policy,
            "writes": len(batches),
            "entries": n_entries,
            "seconds": round(elapsed, 4),
            "writes_per_s": round(len(batches) / elapsed),
            "entries_per_s": round(n_entries / elapsed),
            "us_per_write": round(elapsed / len(batches) * 1e6, 1),
        }
        if policy != "memory":  # memory keeps nothing: it measures validation + encoding only
            t0 = time.perf_counter()
            rec = Storage(d, policy).load()
            load_s = time.perf_counter() - t0
            assert rec.last_index == n_entries and not rec.notes
            result["wal_bytes"] = (d / "wal.log").stat().st_size
            result["load_seconds"] = round(load_s, 4)
            result["load_entries_per_s"] = round(n_entries / load_s)
        return result
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=1000)
    ap.add_argument("--entries", type=int, default=64)
    ap.add_argument("--dir", type=Path, default=None, help="parent of the temp dir (default: system temp)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "storage.json")
    args = ap.parse_args(argv)

    base = args.dir or Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    batches = make_batches(args.batches, args.entries)
    results = [bench_policy(p, batches, base) for p in ("memory", "wal", "fsync")]
    report = {
        "benchmark": "node.storage write()",
        "batches": args.batches,
        "entries_per_batch": args.entries,
        "temp_dir_parent": str(base),
        "filesystem": filesystem_of(base),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "results": results,
    }
    for r in results:
        print(f"{r['policy']:>6}: {r['entries_per_s']:>10,} entries/s  {r['writes_per_s']:>8,} writes/s  "
              f"{r['us_per_write']:>8} us/write"
              + (f"   load {r['load_entries_per_s']:,} entries/s" if "load_seconds" in r else "   (no disk)"))
    print(f"temp dir under {base} ({report['filesystem']})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
