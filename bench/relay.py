"""The limit: a bare ZeroMQ relay with no protocol.

client -> primary -> every backup -> ack -> primary -> reply, in memory, with the same process
layout and the same sockets as the real cluster (clients talk to a ROUTER with the REQ envelope;
the primary has one PUSH per backup, the backups PUSH their acks to the primary's PULL):

* the primary, each loop turn, drains every client request that is pending (up to the node's
  DRAIN_LIMIT), unpacks it and packs its reply (the real `ClientRequest` / `LaptopInfo` wire
  layouts, so any client of the cluster works against the relay unchanged), and sends the raw
  requests of that turn as ONE batch to every backup; any number of batches may be in flight;
* a backup drains whatever batches are pending and answers with one cumulative ack;
* once every backup has acknowledged a batch, the primary sends its replies.

No log, no state machine, no disk, no views, no retransmission: what is left is what ZeroMQ and
the Python interpreter cost for one replicated request.  The relay makes the same pyzmq calls as
node/server.py (protocol/zmq_calls.py: frame-by-frame recv/send with plain-int flags, EVENTS
read instead of a failed recv): whatever makes the node's socket work cheaper makes the limit
cheaper too.
With `--nodes 1` the primary replies at
once (no backups).

Run by the suite (`Relay(...)` below); by hand:
    python bench/relay.py primary --id 1 --client-port 25000 --ack-port 25001 --backup-ports 25011 25021
    python bench/relay.py backup --id 2 --port 25011 --ack-port 25001
"""

from __future__ import annotations

import argparse
import signal
import struct
import sys
from collections import deque
from pathlib import Path

import zmq

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script by the suite
    sys.path.insert(0, str(ROOT))

from protocol.tracepoints import TRACING, mark  # noqa: E402
from protocol.zmq_calls import NOBLOCK, has_message, recv_pending, send_routed  # noqa: E402

REQ = struct.Struct("<BBQiii")  # the codec's ClientRequest
INFO = struct.Struct("<BBQiiiii")  # the codec's LaptopInfo
SEQ = struct.Struct("<Q")  # batch header: batch sequence number
ACK = struct.Struct("<BQ")  # backup index, highest batch received
DRAIN_LIMIT = 2048  # as node/server.py
HWM = 1_000_000

_stop = False


def _on_term(signum, frame) -> None:
    global _stop
    _stop = True


def run_primary(node_id: int, host: str, client_port: int, ack_port: int, backup_ports: list[int]) -> None:
    ctx = zmq.Context()
    clients = ctx.socket(zmq.ROUTER)
    clients.setsockopt(zmq.LINGER, 0)
    clients.setsockopt(zmq.SNDHWM, HWM)
    clients.setsockopt(zmq.RCVHWM, HWM)
    clients.bind(f"tcp://{host}:{client_port}")
    acks = ctx.socket(zmq.PULL)
    acks.setsockopt(zmq.LINGER, 0)
    acks.setsockopt(zmq.RCVHWM, HWM)
    acks.bind(f"tcp://{host}:{ack_port}")
    pushes = []
    for port in backup_ports:
        s = ctx.socket(zmq.PUSH)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, HWM)
        s.connect(f"tcp://{host}:{port}")
        pushes.append(s)
    nb = len(pushes)
    acked = [0] * nb
    inflight: deque[tuple[int, list]] = deque()  # (batch seq, [(identity, reply), ...])
    seq = 0
    poller = zmq.Poller()
    poller.register(clients, zmq.POLLIN)
    poller.register(acks, zmq.POLLIN)
    unpack_req = REQ.unpack
    pack_info = INFO.pack
    pack_seq = SEQ.pack
    unpack_ack = ACK.unpack
    recv_client = clients.recv
    while not _stop:
        ready = dict(poller.poll(100))
        if acks in ready:
            if TRACING:
                mark("peers")
            for data in recv_pending(acks, DRAIN_LIMIT):  # the node's drain, as node/server.py reads acks
                b, s = unpack_ack(data)
                if s > acked[b]:
                    acked[b] = s
        if clients in ready:
            if TRACING:
                mark("clients")
            entries = []
            replies = []
            for i in range(DRAIN_LIMIT):
                if i == 1 and not has_message(clients):
                    break
                try:
                    ident = recv_client(NOBLOCK)
                except zmq.Again:
                    break
                # [identity, b"", payload], checked as the node checks it (`.more` of the last
                # two frames); the benchmark's clients never send anything else, so no resync
                delimiter = recv_client(NOBLOCK, copy=False)
                if len(delimiter) or not delimiter.more:
                    continue
                frame = recv_client(NOBLOCK, copy=False)
                if frame.more:
                    continue
                payload = frame.bytes
                _v, _k, req_id, t, customer, order = unpack_req(payload)
                entries.append(payload)
                replies.append((ident, pack_info(1, 2, req_id, customer, order, t, node_id, node_id)))
            if replies:
                if nb == 0:
                    for ident, reply in replies:
                        send_routed(clients, ident, reply)
                    if TRACING:
                        mark("replies_sent")
                else:
                    seq += 1
                    batch = pack_seq(seq) + b"".join(entries)
                    for s in pushes:
                        s.send(batch)
                    if TRACING:
                        mark("appends_sent")
                    inflight.append((seq, replies))
        if inflight:
            committed = min(acked)
            replied = False
            while inflight and inflight[0][0] <= committed:
                for ident, reply in inflight.popleft()[1]:
                    send_routed(clients, ident, reply)
                replied = True
            if TRACING and replied:
                mark("replies_sent")
    for s in (clients, acks, *pushes):
        s.close(linger=0)
    ctx.term()


def run_backup(index: int, host: str, port: int, ack_port: int) -> None:
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    pull.setsockopt(zmq.RCVHWM, HWM)
    pull.bind(f"tcp://{host}:{port}")
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.setsockopt(zmq.SNDHWM, HWM)
    push.connect(f"tcp://{host}:{ack_port}")
    unpack_seq = SEQ.unpack_from
    pack_ack = ACK.pack
    while not _stop:
        if not pull.poll(100):
            continue
        if TRACING:
            mark("peers")
        last = 0
        for data in recv_pending(pull, DRAIN_LIMIT):
            last = unpack_seq(data)[0]
        if last:
            push.send(pack_ack(index, last))
            if TRACING:
                mark("acks_sent")
    pull.close(linger=0)
    push.close(linger=0)
    ctx.term()


# --------------------------------------------------------------------------- driver side


class Relay:
    """N relay processes (1 primary + N-1 backups) on free loopback ports; a context manager."""

    def __init__(self, nodes: int = 3, log_dir: Path | None = None) -> None:
        from common import Children, free_ports
        from driver import probe

        self.nodes = nodes
        ports = free_ports(2 + (nodes - 1))
        self.client_port, self.ack_port, *self.backup_ports = ports
        self.endpoint = f"tcp://127.0.0.1:{self.client_port}"
        self.children = Children()
        me = str(Path(__file__).resolve())
        try:
            for i, port in enumerate(self.backup_ports):
                self.children.spawn([me, "backup", "--id", str(i), "--port", str(port), "--ack-port", str(self.ack_port)],
                                    log_dir / f"relay-backup-{i}.log" if log_dir else None)
            args = [me, "primary", "--id", "1", "--client-port", str(self.client_port), "--ack-port", str(self.ack_port)]
            if self.backup_ports:
                args += ["--backup-ports", *map(str, self.backup_ports)]
            self.primary_proc = self.children.spawn(args, log_dir / "relay-primary.log" if log_dir else None)
            probe(self.endpoint, timeout=15.0)
        except BaseException:
            self.children.stop()
            raise

    @property
    def pids(self) -> dict[str, int]:
        out = {"primary": self.primary_proc.pid}
        for i, p in enumerate(q for q in self.children.procs if q is not self.primary_proc):
            out[f"backup-{i}"] = p.pid
        return out

    def client_nodes(self) -> list[tuple[int, str]]:
        return [(1, self.endpoint)]

    def pause(self) -> None:
        self.children.pause()

    def resume(self) -> None:
        self.children.resume()

    def close(self) -> None:
        self.children.stop()

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="bare ZeroMQ relay (the limit)")
    sub = parser.add_subparsers(dest="role", required=True)
    p = sub.add_parser("primary")
    p.add_argument("--id", type=int, default=1)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--client-port", type=int, required=True)
    p.add_argument("--ack-port", type=int, required=True)
    p.add_argument("--backup-ports", type=int, nargs="*", default=[])
    b = sub.add_parser("backup")
    b.add_argument("--id", type=int, required=True, help="backup index 0..N-2")
    b.add_argument("--host", default="127.0.0.1")
    b.add_argument("--port", type=int, required=True)
    b.add_argument("--ack-port", type=int, required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, _on_term)
    if args.role == "primary":
        run_primary(args.id, args.host, args.client_port, args.ack_port, args.backup_ports)
    else:
        run_backup(args.id, args.host, args.port, args.ack_port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
