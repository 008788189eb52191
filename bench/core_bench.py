"""CPU cost of the protocol code itself: a primary and two backups in one process, no sockets.

Every message goes through the real codec: it is encoded, and the core takes the frame as the
node hands it over (it decodes clients' and peers' frames itself, and packs its replies), so
the figure is what the replica core and the codec cost per order on the hot path, apart from
ZeroMQ, the kernel and the WAL (bench/storage_bench.py measures that).  It is timed with
process CPU time, which a busy machine disturbs far less than wall-clock throughput.

Usage: python bench/core_bench.py [--orders 200000] [--batch 100] [--repeats 5]
Writes bench/results/core.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from node.replica import Replica, ReplicaSettings  # noqa: E402
from node.storage import Recovered  # noqa: E402
from protocol import codec  # noqa: E402
from protocol.messages import ClientRequest, View, ViewReply  # noqa: E402


TURNS_PER_TICK = 100  # the loop's clock moves 0.1 ms a turn; a node ticks every 10 ms


def run(orders: int, batch: int) -> float:
    """CPU microseconds per order for `orders` orders arriving `batch` per loop turn."""
    settings = ReplicaSettings(snapshot_every=10**9)
    view = View(1, 1, frozenset({2, 3}))
    nodes = {n: Replica(n, settings, Recovered(), incarnation=n) for n in (1, 2, 3)}
    for rep in nodes.values():
        rep.on_view_reply(ViewReply(view), 0.0, sent_at=0.0)
        rep.flush(0.0).clear()
    primary = nodes[1]
    encode = codec.encode
    frames = [encode(ClientRequest(i, 1, i % 1000, i)) for i in range(orders)]
    now = 0.001
    answered = 0
    started = time.process_time()
    for first in range(0, orders, batch):
        primary.lease_until = now + 1.0
        primary.on_client_requests([(i, frames[i]) for i in range(first, min(first + batch, orders))], now)
        pending = [(1, primary)]
        while pending:  # deliver until every node is quiet: one "loop turn" per node
            node_id, rep = pending.pop()
            out = rep.flush(now)
            answered += len(out.replies)  # frames, ready to send
            wakes = set()
            for peer, msg in (*out.replicate, *out.messages):
                nodes[peer].on_peer_frame(encode(msg), now)  # as the node hands a frame to its core
                wakes.add(peer)
            out.clear()
            pending.extend((p, nodes[p]) for p in sorted(wakes))
        now += 0.0001
        if first // batch % TURNS_PER_TICK == 0:
            for rep in nodes.values():
                rep.apply_committed()  # what a node's tick does (node/server.py: every 10 ms)
    elapsed = time.process_time() - started
    assert answered == orders, (answered, orders)
    assert primary.commit_index == orders
    return elapsed / orders * 1e6


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=100, help="orders arriving per primary loop turn")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "core.json")
    args = parser.parse_args()
    runs = [round(run(args.orders, args.batch), 2) for _ in range(args.repeats)]
    result = {
        "schema_version": 1,
        "experiment": "core",
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "settings": {"orders": args.orders, "batch": args.batch, "repeats": args.repeats},
        "cpu_us_per_order": {"min": min(runs), "median": statistics.median(runs), "max": max(runs), "runs": runs},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["cpu_us_per_order"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
