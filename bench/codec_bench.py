"""Micro-benchmark of the binary codec's hot path.

Why it exists: ClientRequest and Append are encoded/decoded for every order, so their cost bounds
what one node's event loop can do.  Timings live here (JSON under bench/results/), never as
assertions in tests, because they depend on the machine.

Usage: python bench/codec_bench.py [--repeat N] [--out PATH]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

from protocol.codec import decode, encode  # noqa: E402
from protocol.entries import pack_entries  # noqa: E402
from protocol.messages import Append, ClientRequest, View  # noqa: E402

DEFAULT_OUT = ROOT / "bench" / "results" / "codec.json"


def _cases() -> dict[str, object]:
    """The messages timed: a client order, and a full replication batch of 256 entries."""
    view = View(7, 1, frozenset({2, 3}))
    entries = pack_entries((7, 1000 + i, i + 1, 1) for i in range(256))
    return {
        "ClientRequest": ClientRequest(123456789, 1, 4242, 17),
        "Append[256]": Append(view, 1, 10_000, 7, 9_990, entries),
    }


def _best_seconds(stmt, repeat: int) -> tuple[float, int]:
    """Best-of-`repeat` time per call; best rather than mean because noise only adds time."""
    timer = timeit.Timer(stmt)
    number, _ = timer.autorange()  # enough calls for >= 0.2 s per measurement
    return min(timer.repeat(repeat=repeat, number=number)) / number, number


def run(repeat: int) -> dict:
    results: dict[str, dict] = {}
    for name, msg in _cases().items():
        frame = encode(msg)
        assert decode(frame) == msg
        timings = {
            "encode": lambda msg=msg: encode(msg),
            "decode": lambda frame=frame: decode(frame),
            "round_trip": lambda msg=msg: decode(encode(msg)),
        }
        row: dict[str, object] = {"frame_bytes": len(frame)}
        for op, stmt in timings.items():
            seconds, number = _best_seconds(stmt, repeat)
            row[op] = {"us_per_op": round(seconds * 1e6, 3), "ops_per_s": round(1 / seconds), "loops": number}
        results[name] = row
    return results


def _machine() -> dict:
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="measurements per case (best is kept)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    args = parser.parse_args(argv)

    results = run(args.repeat)
    report = {
        "benchmark": "codec",
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(),
        "repeat": args.repeat,
        "results": results,
    }
    for name, row in results.items():
        parts = [f"{name:<14} {row['frame_bytes']:>5} B"]
        for op in ("encode", "decode", "round_trip"):
            cell = row[op]
            parts.append(f"{op} {cell['ops_per_s']:>9,} ops/s ({cell['us_per_op']:.2f} us)")
        print("  ".join(parts))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")  # atomic: readers never see half a file
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, args.out)
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
