"""One node process: a single-threaded ZeroMQ event loop around the sans-IO replica core.

Each loop turn drains whatever arrived (client requests, replication traffic, the view service's
reply, control commands) into the core, then flushes the core's outbox in the order that makes
"written before acknowledged" hold: a primary's appends first (they promise nothing about this
node's disk, and the backups can work while we write), then storage, then acknowledgements to
peers, then clients.  Everything that arrived in one turn goes to each backup as one batch.

The socket calls are the cheapest pyzmq offers (protocol/zmq_calls.py): single frames with
plain-int flags, and EVENTS read instead of ending every drain on a raised `zmq.Again`.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path

import psutil
import zmq

from node.replica import PING_TIMEOUT_HEARTBEATS, PRIMARY, Replica, ReplicaSettings, worth_logging
from node.storage import Storage
from protocol import codec
from protocol.codec import ProtocolError
from protocol.config import ClusterConfig, ConfigError, load_config
from protocol.messages import ViewReply
from protocol.tracepoints import TRACING, mark
from protocol.zmq_calls import NOBLOCK, RCVMORE, has_message, recv_message, recv_pending, send_message, send_routed

log = logging.getLogger("node")

EXIT_PORT_IN_USE = 3
EXIT_ALREADY_RUNNING = 4
DRAIN_LIMIT = 2048  # messages taken from one socket per loop turn, so no socket starves the others
PUSH_HWM = 100_000
CLIENT_HWM = 100_000


def node_dir(data_dir: Path, node_id: int) -> Path:
    return data_dir / f"node-{node_id}"


class NodeServer:
    def __init__(self, config: ClusterConfig, node_id: int, data_dir: Path) -> None:
        self.config = config
        self.node = config.node(node_id)
        self.id = node_id
        self.dir = node_dir(data_dir, node_id)
        self.started = time.monotonic()
        self.stopping = False
        self.incarnation = (int.from_bytes(os.urandom(8), "little") >> 1) or 1
        self.storage = Storage(self.dir, config.replication.durability)
        recovered = self.storage.load()
        for note in recovered.notes:
            log.warning("%s", note)
        self.core = Replica(node_id, ReplicaSettings.from_config(config.replication), recovered, self.incarnation)
        log.info(
            "node %d starting: incarnation %x, recovered %d entries (snapshot %d, commit %d), durability %s",
            node_id, self.incarnation, recovered.last_index, recovered.snapshot_index, recovered.commit_index,
            config.replication.durability,
        )
        self.ctx: zmq.Context = zmq.Context.instance()
        self.client_sock = self.ctx.socket(zmq.ROUTER)
        # One load generator may carry a thousand customers over one connection: the default
        # HWM of 1,000 messages per peer would make the ROUTER silently drop replies beyond it.
        self.client_sock.setsockopt(zmq.SNDHWM, CLIENT_HWM)
        self.client_sock.setsockopt(zmq.RCVHWM, CLIENT_HWM)
        self.repl_sock = self.ctx.socket(zmq.PULL)
        self.control_sock = self.ctx.socket(zmq.REP)
        self._bind_all()
        self.pushes: dict[int, zmq.Socket] = {}
        for peer in config.nodes:
            if peer.id != node_id:
                sock = self.ctx.socket(zmq.PUSH)
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.IMMEDIATE, 1)  # never queue for a peer that is not connected
                sock.setsockopt(zmq.SNDHWM, PUSH_HWM)
                sock.connect(peer.repl_endpoint)
                self.pushes[peer.id] = sock
        self.vs_sock: zmq.Socket = self._connect_vs()
        self.ping_sent_at: float | None = None
        self.next_ping = 0.0
        self.heartbeat = config.replication.heartbeat_ms / 1000
        self.ping_timeout = PING_TIMEOUT_HEARTBEATS * self.heartbeat
        self.tick_period = min(self.heartbeat / 2, 0.01)
        # A tick with nothing in flight (`Replica.quiet`) only sends heartbeats, which are due a
        # heartbeat apart, and looks at the control socket: an idle node then ticks at half a
        # heartbeat, not every 10 ms, which were most of its wake-ups.  Traffic is not slowed:
        # messages wake the loop whatever the tick.
        self.quiet_tick_period = max(self.tick_period, min(self.heartbeat / 2, 0.05))
        self.bad_frames = 0
        # A simulated network partition (`lfctl partition`): traffic to and from these peers,
        # and to the view service when `vs_blocked`, is dropped here, with no root needed.
        self.blocked: frozenset[int] = frozenset()
        self.vs_blocked = False

    # ------------------------------------------------------------------ sockets

    def _bind_all(self) -> None:
        binds = (
            (self.client_sock, self.node.client_port, "client"),
            (self.repl_sock, self.node.repl_port, "replication"),
            (self.control_sock, self.node.control_port, "control"),
        )
        for sock, port, _what in binds:
            sock.setsockopt(zmq.LINGER, 0)
            try:
                sock.bind(f"tcp://{self.node.host}:{port}")
            except zmq.ZMQError as exc:
                self.close()
                if exc.errno == zmq.EADDRINUSE:
                    raise PortInUse(f"node {self.id}: port {port} is in use") from None
                raise PortInUse(f"node {self.id}: cannot bind tcp://{self.node.host}:{port}: {exc}") from None

    def _open_vs(self) -> None:
        """Reopen the view-service socket: a reply that never came must not be matched to a
        later ping (the lease is measured from the send time of the ping a reply answers)."""
        self.vs_sock.close(linger=0)
        self.vs_sock = self._connect_vs()
        self.ping_sent_at = None

    def _connect_vs(self) -> zmq.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.config.supervisor.view_endpoint)
        return sock

    def close(self) -> None:
        for sock in (self.client_sock, self.repl_sock, self.control_sock, getattr(self, "vs_sock", None), *getattr(self, "pushes", {}).values()):
            if sock is not None:
                sock.close(linger=0)
        self.storage.close()

    # ------------------------------------------------------------------ loop

    def run(self) -> None:
        # Each socket in a poll costs system calls on every turn (libzmq checks every socket's
        # command mailbox before and after it blocks), so a turn polls only what traffic needs:
        # replication, clients while primary, and the view service while a ping awaits its
        # answer.  The control socket is asked once a tick (a command waits at most one tick
        # period), and so is a non-primary's client socket: a client that finds a backup gets
        # its redirect within a tick, and a backup's turns poll what a relay backup polls.
        pollers: dict[tuple[bool, bool], zmq.Poller] = {}
        polled_vs = self.vs_sock
        next_tick = 0.0
        while not self.stopping:
            primary = self.core.role is PRIMARY  # the module global: see node/replica.py
            pinging = self.ping_sent_at is not None
            if self.vs_sock is not polled_vs:  # reopened since
                pollers.clear()
                polled_vs = self.vs_sock
            poller = pollers.get((primary, pinging))
            if poller is None:
                poller = pollers[primary, pinging] = self._poller(primary, pinging)
            # A comparison rather than min()/max(): a builtin call parses its keywords, and
            # every turn runs this cold.
            wake = next_tick if next_tick < self.next_ping else self.next_ping
            wait = wake - time.monotonic()
            # pyzmq truncates a float timeout to whole milliseconds: rounding down would turn
            # the last millisecond before every tick into a busy spin of poll(0).
            ready = dict(poller.poll(math.ceil(wait * 1000) if wait > 0 else 0))
            now = time.monotonic()
            if self.repl_sock in ready:
                if TRACING:
                    mark("peers")
                self._drain_replication(now)
            if self.vs_sock in ready:
                self._drain_view_service(now)
            if self.client_sock in ready:
                if TRACING:
                    mark("clients")
                self._drain_clients(now)
            if now >= next_tick:
                if has_message(self.control_sock):
                    self._handle_control()
                if not primary and has_message(self.client_sock):
                    self._drain_clients(now)
                self.core.on_tick(now)
                next_tick = now + (self.quiet_tick_period if self.core.quiet() else self.tick_period)
            if self.ping_sent_at is not None or now >= self.next_ping:  # most turns: neither
                self._ping(now)
            self._flush(now)

    def _poller(self, primary: bool, pinging: bool) -> zmq.Poller:
        poller = zmq.Poller()
        for sock in (self.repl_sock, self.client_sock if primary else None, self.vs_sock if pinging else None):
            if sock is not None:
                poller.register(sock, zmq.POLLIN)
        return poller

    def _drain_clients(self, now: float) -> None:
        """A request is [identity, b"", payload] (the REQ envelope).  Read frame by frame, the
        last two as `zmq.Frame`s whose `.more` says whether another frame follows: reading a
        socket's RCVMORE option builds an enum member inside pyzmq every time (2.6 against 4.8
        µs per request, bench/zmq_calls_bench.py).  A message of any other shape is still
        consumed whole and rejected.  The payloads go to the core as they are: it decodes them
        (and answers one that does not decode)."""
        sock = self.client_sock
        recv = sock.recv
        batch: list[tuple[bytes, bytes]] = []  # handed to the core in one call
        add = batch.append
        try:
            for i in range(DRAIN_LIMIT):
                if i == 1 and not has_message(sock):
                    return  # the usual case when not loaded: one request, no raised zmq.Again
                try:
                    identity = recv(NOBLOCK)  # a ROUTER always has the peer's frames after this one
                except zmq.Again:
                    return
                delimiter = recv(NOBLOCK, copy=False)
                if len(delimiter) or not delimiter.more:
                    self._reject_client_message(identity, 2)
                    continue
                frame = recv(NOBLOCK, copy=False)
                if frame.more:
                    self._reject_client_message(identity, 3)
                    continue
                add((identity, frame.bytes))
        finally:  # on every way out, a socket error included: what was read is not dropped
            if batch:
                self.core.on_client_requests(batch, now)

    def _reject_client_message(self, identity: bytes, frames: int) -> None:
        """Consume the rest of a client message that is not [identity, b"", request]."""
        while self.client_sock.getsockopt(RCVMORE):
            self.client_sock.recv(NOBLOCK)
            frames += 1
        self._bad_frame("client", f"{frames} frames without the REQ envelope")

    def _drain_replication(self, now: float) -> None:
        """The frames go to the core as they are: it decodes them (protocol/codec.py), and
        raises ProtocolError, having done nothing, for one that does not decode."""
        take = self.core.on_peer_frame
        blocked = self.blocked
        for data in recv_pending(self.repl_sock, DRAIN_LIMIT):
            if blocked and codec.peek_sender(data) in blocked:
                continue
            try:
                take(data, now)
            except ProtocolError as exc:
                self._bad_frame("replication", str(exc))

    def _drain_view_service(self, now: float) -> None:
        sock = self.vs_sock
        for i in range(DRAIN_LIMIT):
            if i and not has_message(sock):
                return  # the usual case: one reply, and no raised zmq.Again to end the drain
            try:
                frames = recv_message(sock)
            except zmq.Again:
                return
            if self.vs_blocked:
                continue
            try:
                reply = codec.decode(frames[-1])
            except ProtocolError as exc:
                self._bad_frame("view service", str(exc))
                continue
            if isinstance(reply, ViewReply) and self.ping_sent_at is not None:
                self.core.on_view_reply(reply, now, self.ping_sent_at)
                self.ping_sent_at = None

    def _ping(self, now: float) -> None:
        if self.ping_sent_at is not None:
            if now - self.ping_sent_at < self.ping_timeout:
                return
            log.warning("view service did not answer for %.0f ms; reconnecting", (now - self.ping_sent_at) * 1000)
            self._open_vs()
        if now < self.next_ping or self.vs_blocked:
            return
        send_message(self.vs_sock, [b"", codec.encode(self.core.make_ping())])
        self.ping_sent_at = now
        self.next_ping = now + self.heartbeat

    def _flush(self, now: float) -> None:
        out = self.core.flush(now)
        if TRACING:  # the steps of protocol/tracepoints.py; off, a test of a global (~2 ns) each
            mark("flushed")
        if out.replicate:
            self._send_peers(out.replicate)
            if TRACING:
                mark("appends_sent")
        if out.persist:
            self.storage.write(out.persist)
            if TRACING:
                mark("wal_written")
        if out.messages:
            self._send_peers(out.messages)
            if TRACING:
                mark("acks_sent")
        if out.replies:
            sock = self.client_sock
            for client, reply in out.replies:  # frames the core encoded
                try:
                    send_routed(sock, client, reply)  # type: ignore[arg-type]
                except zmq.ZMQError:
                    pass  # the client went away (ROUTER drops unroutable replies)
            if TRACING:
                mark("replies_sent")
        out.clear()

    def _send_peers(self, messages: list) -> None:
        pushes = self.pushes
        blocked = self.blocked
        last: object = None
        frame = b""
        for peer, msg in messages:
            sock = pushes.get(peer)
            if sock is None or peer in blocked:
                continue
            if msg is not last:  # backups in step share one Append (Replica._send_to): encode it once
                frame = codec.encode(msg)
                last = msg
            try:
                sock.send(frame, NOBLOCK)
            except zmq.Again:
                pass  # not connected or full: the core resends after retransmit_ms

    def _bad_frame(self, source: str, why: str) -> None:
        self.bad_frames += 1
        if worth_logging(self.bad_frames):
            log.warning("dropped a bad %s frame (%d so far): %s", source, self.bad_frames, why)

    # ------------------------------------------------------------------ control

    def _handle_control(self) -> None:
        try:
            data = self.control_sock.recv(zmq.NOBLOCK)
        except zmq.Again:
            return
        try:
            cmd = codec.decode_json(data)
            reply = self._control(cmd)
        except ProtocolError as exc:
            self._bad_frame("control", str(exc))
            reply = {"ok": False, "error": f"bad control message: {exc}"}
        self.control_sock.send(codec.encode_json(reply))

    def _control(self, cmd: dict) -> dict:
        name = cmd.get("cmd")
        base = {"ok": True, "pid": os.getpid(), "uptime_s": round(time.monotonic() - self.started, 3)}
        status = self.core.status()
        if name == "health":
            return {**base, "node_id": self.id, "role": status["role"], "view": status["view"]}
        if name == "status":
            return {**base, **status, **self._partition_state(), "bad_frames": self.bad_frames + self.core.bad_requests}
        if name == "dump":
            book = self.core.book
            return {
                **base,
                **status,
                "digest": book.digest(),
                "records": {str(c): o for c, o in sorted(book.records.items())},
            }
        if name == "stop":
            self.stopping = True
            return {**base, "stopping": True}
        if name == "partition":
            peers = cmd.get("peers", [])
            if not isinstance(peers, list) or not all(isinstance(p, int) and p in self.pushes for p in peers):
                return {"ok": False, "error": f"partition: peers must be a list of other node ids ({sorted(self.pushes)})"}
            self.blocked = frozenset(peers)
            self.vs_blocked = bool(cmd.get("view_service", False))
            if self.vs_blocked:
                self._open_vs()  # what was in flight to or from the view service is lost, as on a real cut
            log.warning("partitioned from nodes %s%s", sorted(self.blocked), " and the view service" if self.vs_blocked else "")
            return {**base, **self._partition_state()}
        if name == "heal":
            if self.blocked or self.vs_blocked:
                log.warning("partition healed")
            self.blocked, self.vs_blocked = frozenset(), False
            return {**base, **self._partition_state()}
        return {"ok": False, "error": f"unknown command {name!r} (health, status, dump, stop, partition, heal)"}

    def _partition_state(self) -> dict:
        return {"partitioned_from": sorted(self.blocked), "view_service_blocked": self.vs_blocked}


class PortInUse(RuntimeError):
    pass


def _pid_file_check(directory: Path) -> Path:
    """Refuse to run twice on one data dir; a pid file of a dead process is just stale."""
    pid_file = directory / "node.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return pid_file
    if pid != os.getpid() and psutil.pid_exists(pid):
        try:
            cmdline = " ".join(psutil.Process(pid).cmdline())
        except psutil.Error:
            cmdline = ""
        if "node" in cmdline and "--id" in cmdline:
            raise AlreadyRunning(f"node already running from {directory} (pid {pid})")
    return pid_file


class AlreadyRunning(RuntimeError):
    pass


def _setup_logging(directory: Path, node_id: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(directory / "node.log")
    fmt = logging.Formatter(f"%(asctime)s node-{node_id} %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(fmt)
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    if sys.stderr.isatty():
        stream = logging.StreamHandler()
        stream.setFormatter(fmt)
        root.addHandler(stream)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lfctl node", description="Run one LaptopFactory node in the foreground.")
    parser.add_argument("--id", type=int, required=True, help="node id from the config")
    parser.add_argument("--config", type=Path, default=None, help="cluster config (default: ./cluster.toml or the built-in one)")
    parser.add_argument("--data-dir", type=Path, default=None, help="cluster data dir (default: from the config)")
    args = parser.parse_args(argv)
    try:
        config_path = args.config if args.config is not None else (Path("cluster.toml") if Path("cluster.toml").exists() else None)
        config = load_config(config_path)
        config.node(args.id)
    except ConfigError as exc:
        print(f"lfctl node: {exc}", file=sys.stderr)
        return 2
    data_dir = (args.data_dir or Path(os.environ.get("LFCTL_DATA_DIR", config.data_dir))).resolve()
    directory = node_dir(data_dir, args.id)
    _setup_logging(directory, args.id)
    try:
        pid_file = _pid_file_check(directory)
        server = NodeServer(config, args.id, data_dir)
    except PortInUse as exc:
        log.error("%s", exc)
        print(exc, file=sys.stderr)
        return EXIT_PORT_IN_USE
    except AlreadyRunning as exc:
        print(f"node {args.id}: {exc}", file=sys.stderr)
        return EXIT_ALREADY_RUNNING
    pid_file.write_text(f"{os.getpid()}\n")

    def stop(signum, _frame) -> None:
        server.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.run()
    finally:
        log.info("node %d stopping (role %s, last index %d, commit %d)", args.id, server.core.role.value, server.core.log.last_index, server.core.commit_index)
        server.close()
        try:
            if pid_file.read_text().strip() == str(os.getpid()):
                pid_file.unlink()
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
