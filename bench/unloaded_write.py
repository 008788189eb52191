"""One unloaded write at a time through a primary and two backups in one process (the real
cores, codec and `wal` Storage, no sockets), each loop turn optionally after the caches were
wiped: the workload of bench/instructions.py's `cold` count.

Why the wiping: in the cluster every turn of an unloaded write runs cold, because the other
processes on the two cores ran in between, and a turn then takes about 3x what it takes warm.
Copying `POLLUTE_BYTES` (twice the simulated last-level cache) before each turn evicts what the
previous turn left, as those processes do.  `polluted_writes(n, write=False)` makes the same
copies without the writes, so the copies' own cost can be subtracted.

Like bench/backup_workload.py, the project's modules are imported inside `polluted_writes`, from
whatever `sys.path` holds then (the checkout under test), so an older tree can be measured with
this file.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

POLLUTE_BYTES = 2 << 20
WARM_WRITES = 200  # before counting starts: imports, first allocations, the WAL file created
TURNS_PER_WRITE = 4  # the primary's request turn, each backup's turn, the primary's commit turn
WRITES_PER_TICK = 10  # unloaded, 1,000-2,000 writes/s meet a node's tick every 10 ms


def polluted_writes(writes: int, write: bool = True) -> None:
    """`WARM_WRITES` warm writes, then `writes` writes with the caches wiped before each of their
    turns (or, with `write=False`, only the wiping, as often).  The backups tick every
    `WRITES_PER_TICK` writes, as often as in the cluster, since a tick is where they apply."""
    from node.replica import Replica, ReplicaSettings
    from node.storage import Recovered, Storage
    from protocol import codec
    from protocol.messages import ClientRequest, View, ViewReply

    source = bytearray(POLLUTE_BYTES)
    target = bytearray(POLLUTE_BYTES)

    def wipe() -> None:
        target[:] = source

    encode, decode = codec.encode, codec.decode
    view_reply = decode(encode(ViewReply(View(1, 1, frozenset({2, 3})))))  # as a node gets it
    nodes = {n: Replica(n, ReplicaSettings(snapshot_every=10**9), Recovered(), incarnation=n) for n in (1, 2, 3)}
    with tempfile.TemporaryDirectory() as tmp:
        disks = {n: Storage(Path(tmp) / f"node{n}", "wal") for n in nodes}
        for n, rep in nodes.items():
            disks[n].load()
            rep.on_view_reply(view_reply, 0.0, sent_at=0.0)
            rep.flush(0.0).clear()
        primary = nodes[1]
        # The shell hands a turn's request frames over in one call.  Older checkouts, whose
        # shell decoded each request for the core, take request objects, in one call or in a
        # call each.
        frames_in = hasattr(codec, "REQUEST_FRAME")

        def take_frame(rep: Replica, frame: bytes, now: float) -> None:
            """A peer's frame, as the node hands it over: to the core as it is, or, in older
            checkouts, decoded by the shell first."""
            if hasattr(rep, "on_peer_frame"):
                rep.on_peer_frame(frame, now)
            else:
                rep.on_message(decode(frame), now)

        take = getattr(primary, "on_client_requests", None)
        frames = [encode(ClientRequest(i, 1, 7, i + 1)) for i in range(WARM_WRITES + writes)]

        def one_write(i: int, now: float, cold: bool) -> None:
            if cold:
                wipe()
            primary.lease_until = now + 1.0
            if frames_in:
                take([(b"client", frames[i])], now)
            elif take is not None:
                take([(b"client", codec.decode_request(frames[i]))], now)
            else:
                primary.on_client_request(b"client", codec.decode_request(frames[i]), now)
            out = primary.flush(now)
            appends = []
            last = sent = None
            for peer, msg in out.replicate:
                if msg is not last:
                    sent, last = encode(msg), msg
                appends.append((peer, sent))
            disks[1].write(out.persist)
            out.clear()
            acks = []
            for peer, frame in appends:
                if cold:
                    wipe()
                backup = nodes[peer]
                take_frame(backup, frame, now)
                out = backup.flush(now)
                disks[peer].write(out.persist)
                acks.extend(encode(msg) for _to, msg in out.messages)
                out.clear()
            if cold:
                wipe()
            for frame in acks:
                take_frame(primary, frame, now)
            out = primary.flush(now)
            disks[1].write(out.persist)
            for _client, reply in out.replies:
                if not frames_in:  # older checkouts: the shell encoded the reply
                    encode(reply)
            assert len(out.replies) == 1, out.replies
            out.clear()
            if i % WRITES_PER_TICK == 0:
                for n in (2, 3):  # a backup's tick: a turn of its own (and where it applies)
                    if cold:
                        wipe()
                    nodes[n].on_tick(now)
                    out = nodes[n].flush(now)
                    disks[n].write(out.persist)
                    out.clear()

        now = 0.001
        for i in range(WARM_WRITES):
            one_write(i, now, cold=False)
            now += 0.0001
        for i in range(WARM_WRITES, WARM_WRITES + writes):
            if write:
                one_write(i, now, cold=True)
            else:
                for _ in range(TURNS_PER_WRITE + (2 if i % WRITES_PER_TICK == 0 else 0)):
                    wipe()
            now += 0.0001
        for disk in disks.values():
            disk.close()
