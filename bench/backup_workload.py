"""A backup in view 1 and the encoded appends its primary would send it: the workload of
bench/backup_bench.py (timed) and bench/instructions.py (counted).

The project's modules are imported when `backup_and_appends` is called, from whatever `sys.path`
holds then: bench/instructions.py loads this file into a process set up for another checkout
(`--tree`), and the workload must be built from that checkout's own code.
"""

from __future__ import annotations

from typing import Any


APPENDS_PER_TICK = 10
"""How many appends a backup handles between two ticks, where it applies what is committed
(node/server.py ticks every 10 ms): ~1,000 appends/s reach a backup both unloaded (one a write)
and at 100 customers (~35 entries an append)."""


def backup_and_appends(entries: int, appends: int) -> tuple[Any, list[bytes]]:
    """(a `Replica` that is backup 2 of view 1, `appends` frames of `entries` entries each, in order)."""
    from node.replica import Replica, ReplicaSettings
    from node.storage import Recovered
    from protocol import codec
    from protocol.entries import pack_entries
    from protocol.messages import Append, View, ViewReply

    view = View(1, 1, frozenset({2, 3}))
    backup = Replica(2, ReplicaSettings(snapshot_every=10**9), Recovered(), incarnation=5)
    backup.on_view_reply(ViewReply(view), 0.0, 0.0)
    backup.flush(0.0).clear()
    frames = []
    for b in range(appends):
        first = b * entries
        block = pack_entries((1, (first + k) % 1000, first + k, 1) for k in range(entries))
        frames.append(codec.encode(Append(view, 1, first, 1 if first else 0, first, block)))
    return backup, frames
