"""Where a backup's CPU goes for one append, stage by stage, in one process (no sockets).

Why it exists: under load a backup handles one append of a few dozen entries per loop turn, and
its cost per write is about twice the bare relay backup's.  This splits one append's handling into
the stages a node runs (decode the frame into its fields, the rest of the core's `on_peer_frame`
(the column `on_message`), the core's `flush`, the WAL write, encoding the acknowledgement, and
at every tick applying what the primary committed) so
that a change to one stage shows up in its own column.
Process CPU time; a real `wal` Storage in a temp dir.

Usage: python bench/backup_bench.py [--entries 35] [--appends 3000] [--repeats 5]
Writes bench/results/backup.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from backup_workload import APPENDS_PER_TICK, backup_and_appends  # noqa: E402
from common import RESULTS, log, write_result  # noqa: E402
from node.storage import Storage  # noqa: E402
from protocol import codec  # noqa: E402

STAGES = ("decode", "on_message", "flush", "storage", "encode_ack", "apply")


def run(entries: int, appends: int) -> dict[str, float]:
    """CPU microseconds per append for each stage."""
    backup, frames = backup_and_appends(entries, appends)
    spent = dict.fromkeys(STAGES, 0.0)
    clock = time.process_time
    with tempfile.TemporaryDirectory() as tmp:
        storage = Storage(tmp, "wal")
        storage.load()
        for n, frame in enumerate(frames, 1):
            # What the node does: the core takes the frame (decoding it into fields); its decode
            # is timed on its own first, and the core's part is the rest of the call.
            t0 = clock()
            codec.decode_append(frame)
            t1 = clock()
            backup.on_peer_frame(frame, 1.0)
            t2 = clock()
            out = backup.flush(1.0)
            t3 = clock()
            storage.write(out.persist)
            t4 = clock()
            for _peer, ack in out.messages:
                codec.encode(ack)
            t5 = clock()
            out.clear()
            if n % APPENDS_PER_TICK == 0:
                backup.apply_committed()
            t6 = clock()
            decode = t1 - t0
            for stage, dt in zip(STAGES, (decode, t2 - t1 - decode, t3 - t2, t4 - t3, t5 - t4, t6 - t5)):
                spent[stage] += dt
        storage.close()
    assert backup.log.last_index == entries * appends
    return {stage: 1e6 * s / appends for stage, s in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=35, help="entries per append (~35 at 100 customers)")
    parser.add_argument("--appends", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="where the JSON goes (default bench/results)")
    args = parser.parse_args()
    runs = [run(args.entries, args.appends) for _ in range(args.repeats)]
    per_stage = {}
    for stage in (*STAGES, "total"):
        values = [sum(r.values()) if stage == "total" else r[stage] for r in runs]
        per_stage[stage] = {"median": round(statistics.median(values), 1), "min": round(min(values), 1),
                            "max": round(max(values), 1), "runs": [round(v, 1) for v in values]}
    for stage, row in per_stage.items():
        log(f"{stage:11s} {row['median']:6.1f} us per append ({row['median'] / args.entries:.2f} per entry)")
    settings = {k: v for k, v in vars(args).items() if k != "out_dir"}
    path = write_result("backup", {"settings": settings, "cpu_us_per_append": per_stage}, args.out_dir)
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
