"""Deterministic simulation: N replicas, the view service and clients in one process.

A seeded network delays, drops, duplicates and reorders messages and can partition nodes; a
fault schedule crashes, restarts, wipes and pauses nodes; the clock is simulated.  After every
step the invariants of DESIGN.md are checked, and a failing seed replays exactly:

    python -m orchestrator.simulator --seed 1234 -v

The replicas and the view service are the very same sans-IO cores the real processes run; only
their shells (sockets, disk, clock) are replaced.
"""

from __future__ import annotations

import argparse
import heapq
import random
import sys
import time
from dataclasses import dataclass, field

from node.replica import PING_TIMEOUT_HEARTBEATS, Replica, ReplicaSettings, Role
from node.state import order_key
from node.storage import AppendEntries, CommitMark, Recovered, SnapshotRecord, TruncateFrom, ViewMark
from orchestrator.view_service import ViewService
from protocol import codec
from protocol.entries import ENTRY_SIZE, count as entry_count
from protocol.messages import (
    RETRYABLE_ERRORS,
    ClientRequest,
    CustomerRecord,
    ErrorCode,
    ErrorReply,
    LaptopInfo,
    Ping,
    RequestType,
    ViewReply,
)

VS = 0  # the view service's address on the simulated network
TICK = 0.01


class InvariantViolation(AssertionError):
    pass


@dataclass
class SimConfig:
    nodes: int = 3
    clients: int = 3
    customers_per_client: int = 2
    fault_time: float = 4.0  # seconds of faults and load
    settle_time: float = 4.0  # seconds after healing, for convergence
    fault_interval: float = 0.3
    drop: float = 0.02
    duplicate: float = 0.02
    min_delay: float = 0.0002
    max_delay: float = 0.004
    durability: str = "wal"  # "wal": storage survives a crash; "memory": a crash loses it
    snapshot_every: int = 40
    # "restart_service": the supervisor restarts and its view service comes back from what it
    # persisted, the nodes running on; "restart_cluster": `lfctl down`, then `up` (every node a
    # new process with what its disk holds).  Not under "memory", whose supervisor starts anew.
    faults: tuple[str, ...] = (
        "crash", "restart", "wipe", "pause", "resume", "partition", "heal", "restart_service", "restart_cluster",
    )
    settings: ReplicaSettings = field(
        default_factory=lambda: ReplicaSettings(
            heartbeat=0.05, lease=0.4, failure_timeout=0.5, retransmit=0.1, batch_max_entries=8, snapshot_every=40,
            max_inflight_batches=2,
        )
    )


class SimStorage:
    """A node's disk: the records it was asked to persist, replayed on restart."""

    def __init__(self) -> None:
        self.wipe()

    def wipe(self) -> None:
        self.snapshot: tuple[int, int, bytes] | None = None
        self.entries = bytearray()  # packed, as the WAL holds them (protocol/entries.py)
        self.commit = 0
        self.view = 0
        self.written = False

    @property
    def base(self) -> int:
        return self.snapshot[0] if self.snapshot else 0

    def write(self, records: list) -> None:
        for rec in records:
            self.written = True
            if isinstance(rec, AppendEntries):
                entry_count(rec.entries, "AppendEntries.entries")  # what the real Storage refuses
                keep = rec.first_index - 1 - self.base
                if keep < 0:
                    self.entries = bytearray(rec.entries[-keep * ENTRY_SIZE :])
                else:
                    assert keep * ENTRY_SIZE <= len(self.entries), "storage asked to append with a gap"
                    del self.entries[keep * ENTRY_SIZE :]
                    self.entries += rec.entries
            elif isinstance(rec, TruncateFrom):
                del self.entries[max(0, rec.index - 1 - self.base) * ENTRY_SIZE :]
            elif isinstance(rec, CommitMark):
                self.commit = max(self.commit, rec.index)
            elif isinstance(rec, ViewMark):
                self.view = max(self.view, rec.number)
            elif isinstance(rec, SnapshotRecord):
                entry_count(rec.tail, "SnapshotRecord.tail")
                self.snapshot = (rec.index, rec.view, rec.data)
                self.entries = bytearray(rec.tail)
                self.commit = max(self.commit, rec.index)

    def load(self) -> Recovered:
        if not self.written:
            return Recovered()
        base = self.base
        snap = self.snapshot
        return Recovered(
            snapshot_index=base,
            snapshot_view=snap[1] if snap else 0,
            snapshot_data=snap[2] if snap else None,
            entries=bytearray(self.entries),
            commit_index=min(self.commit, base + len(self.entries) // ENTRY_SIZE),
            view_number=self.view,
            fresh=False,
        )


@dataclass
class _Op:
    process: int
    req: ClientRequest
    invoked: float
    target: int
    attempt_deadline: float
    deadline: float


class Simulation:
    def __init__(self, seed: int, cfg: SimConfig | None = None, verbose: bool = False) -> None:
        self.seed = seed
        self.cfg = cfg or SimConfig()
        self.rng = random.Random(seed)
        self.verbose = verbose
        self.now = 0.0
        self.steps = 0
        self.seq = 0
        self.ticks = 0
        self.queue: list = []  # (time, seq, kind, payload)
        self.ids = list(range(1, self.cfg.nodes + 1))
        self.settings = self.cfg.settings
        self.disks = {n: SimStorage() for n in self.ids}
        self.replicas: dict[int, Replica | None] = {}
        self.paused: dict[int, list] = {}  # node -> messages held while paused
        # Nodes that crash in their next flush that has appends to send and records to persist:
        # after sending the appends, before the disk write (the window the shell's order opens).
        self.crash_in_flush: set[int] = set()
        self.ping_out: dict[int, tuple[int, float] | None] = {}
        self.ping_seq = 0
        self.cut: set[frozenset[int]] = set()  # pairs that cannot talk
        self.vs = ViewService(self.ids, failure_timeout=self.settings.failure_timeout, now=0.0)
        self.trace: list[str] = []
        # invariant bookkeeping
        self.committed: dict[int, tuple] = {}  # index -> entry, as first seen committed anywhere
        self.checked_commit: dict[int, int] = {}
        self.committer: dict[int, int] = {}  # view number -> the node that committed in it as primary
        self.last_vs_view = 0
        self.acks: dict[int, list[tuple[float, int]]] = {}  # customer -> (ack time, order number)
        self.committed_keys: set[int] = set()
        self.invoked_orders: dict[int, list[tuple[float, int]]] = {}
        self.ops: dict[int, _Op] = {}
        self.next_order: dict[int, int] = {}
        self.req_counter = 0
        self.stats = {"acked": 0, "reads": 0, "failed": 0, "faults": 0, "views": 0, "mid_flush_crashes": 0}
        self.clients_active = True
        for n in self.ids:
            self._start(n)
        for p in range(self.cfg.clients):
            self._schedule(self.rng.uniform(0, 0.05), "client", p)
        self._schedule(TICK, "tick", None)
        self._schedule(0.5, "fault", None)

    # ------------------------------------------------------------------ plumbing

    def _schedule(self, delay: float, kind: str, payload) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (self.now + delay, self.seq, kind, payload))

    def _log(self, text: str) -> None:
        line = f"{self.now:8.4f} {text}"
        self.trace.append(line)
        del self.trace[:-60]
        if self.verbose:
            print(line)

    def _send(self, src: int, dst, msg) -> None:
        """dst: a node id, VS, or ("client", p)."""
        a = src
        b = dst if isinstance(dst, int) else None
        if b is not None and frozenset((a, b)) in self.cut:
            return
        if self.rng.random() < self.cfg.drop:
            return
        copies = 2 if self.rng.random() < self.cfg.duplicate else 1
        for _ in range(copies):
            self._schedule(self.rng.uniform(self.cfg.min_delay, self.cfg.max_delay), "deliver", (src, dst, msg))

    def _start(self, n: int) -> None:
        incarnation = self.rng.getrandbits(62) + 1
        self.replicas[n] = Replica(n, self.settings, self.disks[n].load(), incarnation)
        self.ping_out[n] = None
        self.checked_commit[n] = self.replicas[n].commit_index
        self._check_node(n)
        self._log(f"node {n} started (incarnation {incarnation:x})")

    def _flush(self, n: int) -> None:
        """The shell's order (node/server.py): appends, storage, acknowledgements, replies."""
        rep = self.replicas[n]
        out = rep.flush(self.now)
        for peer, msg in out.replicate:
            self._send(n, peer, msg)
        if n in self.crash_in_flush and out.replicate and out.persist:
            self.crash_in_flush.discard(n)
            self.stats["mid_flush_crashes"] += 1
            out.clear()
            self._crash(n, noticed=self.rng.random() < 0.7)
            self._log(f"node {n} crashed after sending appends, before writing them")
            return
        if out.persist:
            self.disks[n].write(out.persist)
        for peer, msg in out.messages:
            self._send(n, peer, msg)
        for client, reply in out.replies:  # frames, as a client gets them off the wire
            self._send(n, client, codec.decode(reply))
        out.clear()
        self._check_node(n)

    # ------------------------------------------------------------------ run

    def run(self) -> dict:
        end_faults = self.cfg.fault_time
        end = end_faults + self.cfg.settle_time
        healed = False
        while self.queue:
            t, _seq, kind, payload = heapq.heappop(self.queue)
            if t > end:
                break
            self.now = t
            if not healed and t >= end_faults:
                self._heal_all()
                healed = True
                self.clients_active = False
            self.steps += 1
            if kind == "deliver":
                self._deliver(*payload)
            elif kind == "tick":
                self._tick()
                self._schedule(TICK, "tick", None)
            elif kind == "client":
                self._client_next(payload)
            elif kind == "fault":
                if not healed:
                    self._fault()
                    self._schedule(self.rng.uniform(0.5, 1.5) * self.cfg.fault_interval, "fault", None)
            elif kind == "timeout":
                self._client_timeout(payload)
        self._final_checks()
        return self.stats

    def _tick(self) -> None:
        self.ticks += 1
        self.vs.on_tick(self.now)
        self._check_vs()
        for n in self.ids:
            rep = self.replicas.get(n)
            if rep is None or n in self.paused:
                continue
            rep.on_tick(self.now)
            out = self.ping_out[n]
            if out is not None and self.now - out[1] >= PING_TIMEOUT_HEARTBEATS * self.settings.heartbeat:
                self.ping_out[n] = out = None  # the shell reopens its socket: that reply is lost
            if out is None and self.ticks % round(self.settings.heartbeat / TICK) == n % 5:
                self.ping_seq += 1
                self.ping_out[n] = (self.ping_seq, self.now)
                self._send(n, VS, (self.ping_seq, rep.make_ping()))
            self._flush(n)

    def _deliver(self, src, dst, msg) -> None:
        if dst == VS:
            seq, ping = msg
            if isinstance(ping, Ping):
                reply = self.vs.on_ping(ping, self.now)
                self._check_vs()
                self._send(VS, src, (seq, reply))
            return
        if isinstance(dst, tuple):
            self._client_reply(dst[1], src, msg)
            return
        rep = self.replicas.get(dst)
        if rep is None:
            return
        if dst in self.paused:
            self.paused[dst].append((src, dst, msg))
            return
        if isinstance(msg, tuple) and len(msg) == 2 and isinstance(msg[1], ViewReply):
            seq, reply = msg
            out = self.ping_out[dst]
            if out is None or out[0] != seq:
                return
            self.ping_out[dst] = None
            rep.on_view_reply(reply, self.now, out[1])
        elif isinstance(msg, ClientRequest):
            rep.on_client_request(("client", src[1]) if isinstance(src, tuple) else src, codec.encode(msg), self.now)
        else:  # as the wire carries it: the core decodes what it gets
            rep.on_peer_frame(codec.encode(msg), self.now)
        self._flush(dst)

    # ------------------------------------------------------------------ faults

    def _fault(self) -> None:
        kind = self.rng.choice(self.cfg.faults)
        live = [n for n in self.ids if self.replicas.get(n) is not None]
        down = [n for n in self.ids if self.replicas.get(n) is None]
        self.stats["faults"] += 1
        if kind == "crash" and live:
            n = self.rng.choice(live)
            if self.cfg.durability != "memory":
                if self.rng.random() < 0.3:
                    self.crash_in_flush.add(n)
                else:
                    self._crash(n, noticed=self.rng.random() < 0.7)  # the supervisor usually sees the exit
            elif self._others_hold_data(n):
                self._crash(n, noticed=True)
        elif kind == "restart" and down:
            self._start(self.rng.choice(down))
        elif kind == "wipe" and live:
            n = self.rng.choice(live)
            if self._others_hold_data(n):
                self._crash(n, noticed=True)  # `restart --wipe` goes through the supervisor
                self.disks[n].wipe()
                self._log(f"node {n} wiped")
                self._start(n)
        elif kind == "pause" and live:
            n = self.rng.choice(live)
            self.paused.setdefault(n, [])
            self._log(f"node {n} paused")
        elif kind == "resume" and self.paused:
            self._resume(self.rng.choice(sorted(self.paused)))
        elif kind == "partition":
            n = self.rng.choice(self.ids)
            others = [VS] + [m for m in self.ids if m != n]
            victims = [m for m in others if self.rng.random() < 0.6] or [VS]
            for m in victims:
                self.cut.add(frozenset((n, m)))
            self._log(f"partition: node {n} cut from {victims}")
        elif kind == "heal":
            self.cut.clear()
            self._log("partition healed")
        elif kind == "restart_service" and self.cfg.durability != "memory":
            self._drop_in_flight(lambda src, dst: dst == VS)  # sent to the old process's socket
            self._restart_service()
        elif kind == "restart_cluster" and self.cfg.durability != "memory":
            # Sometimes one member's data dir is lost while the cluster is down, when another
            # member, in sync as it goes down, keeps its own.
            members = sorted(self.vs.view.members)
            wiped = self.rng.choice(members) if members and self.rng.random() < 0.3 else None
            if wiped is not None and not self._others_hold_data(wiped):
                wiped = None
            for n in live:
                self._crash(n, noticed=False)  # a node stopped mid-run keeps what it wrote, as a crash does
            # Every process of the cluster is new: what was on its way to or from an old one is
            # lost with its sockets (only the clients live on, and retry).
            self._drop_in_flight(lambda src, dst: True)
            if wiped is not None:
                self.disks[wiped].wipe()
                self._log(f"node {wiped} wiped while the cluster was down")
            self._restart_service()
            for n in self.ids:
                self._start(n)

    def _drop_in_flight(self, lost) -> None:
        """Drop the messages on their way whose (src, dst) `lost` says a restart loses."""
        self.queue = [e for e in self.queue if not (e[2] == "deliver" and lost(e[3][0], e[3][1]))]
        heapq.heapify(self.queue)

    def _restart_service(self) -> None:
        """The supervisor persists the view service's state before any reply carries it, so a
        new one starts from exactly the state the old one had."""
        self.vs = ViewService(self.ids, failure_timeout=self.settings.failure_timeout, persisted=self.vs.to_json(), now=self.now)
        self._log("view service restarted")
        self._check_vs()

    def _others_hold_data(self, n: int) -> bool:
        """Wiping the last in-sync copy loses data by definition; the invariants assume one stays.
        Only the primary and backups the view service admitted (and not restarted) count."""
        vs = self.vs
        for m in vs.view.members - {n}:
            rep = self.replicas.get(m)
            if (
                rep is not None
                and rep.incarnation == vs.member_incarnation.get(m)
                and vs.is_alive(m, self.now)
                and m not in self.paused
                and frozenset((m, VS)) not in self.cut
            ):
                return True
        return False

    def _crash(self, n: int, noticed: bool) -> None:
        self.replicas[n] = None
        self.crash_in_flush.discard(n)
        self.paused.pop(n, None)
        self.ping_out[n] = None
        if self.cfg.durability == "memory":
            self.disks[n].wipe()
        if noticed:
            self.vs.on_node_exited(n, self.now)
            self._check_vs()
        self._log(f"node {n} crashed")

    def _resume(self, n: int) -> None:
        held = self.paused.pop(n)
        self._log(f"node {n} resumed ({len(held)} messages held)")
        for src, dst, msg in held:
            self._deliver(src, dst, msg)

    def _heal_all(self) -> None:
        self.cut.clear()
        self.crash_in_flush.clear()
        for n in sorted(self.paused):
            self._resume(n)
        for n in self.ids:
            if self.replicas.get(n) is None:
                self._start(n)
        self._log("all faults healed")

    # ------------------------------------------------------------------ clients

    def _client_next(self, p: int) -> None:
        if not self.clients_active or p in self.ops:
            return
        self.req_counter += 1
        rid = (p << 40) | self.req_counter
        own = [p * self.cfg.customers_per_client + k for k in range(self.cfg.customers_per_client)]
        all_customers = self.cfg.clients * self.cfg.customers_per_client
        roll = self.rng.random()
        if roll < 0.6:
            c = self.rng.choice(own)
            order = self.next_order.get(c, 0)
            self.next_order[c] = order + 1
            req = ClientRequest(rid, RequestType.ORDER, c, order)
            self.invoked_orders.setdefault(c, []).append((self.now, order))
        elif roll < 0.95:
            req = ClientRequest(rid, RequestType.READ, self.rng.randrange(all_customers), 0)
        else:
            req = ClientRequest(rid, RequestType.BULK_READ, 0, all_customers)
        target = self.vs.view.primary if self.rng.random() < 0.5 and self.vs.view.primary else self.rng.choice(self.ids)
        op = _Op(p, req, self.now, target, self.now + 0.2, self.now + 10.0)
        self.ops[p] = op
        self._send_op(op)

    def _send_op(self, op: _Op) -> None:
        op.attempt_deadline = self.now + 0.2
        self._send(("client", op.process), op.target, op.req)
        self._schedule(0.2, "timeout", (op.process, op.req.req_id, True))

    def _client_timeout(self, payload) -> None:
        """An attempt's deadline passed (rotate to the next node) or a retry is due (resend to
        the target an error reply chose)."""
        p, rid, rotate = payload
        op = self.ops.get(p)
        if op is None or op.req.req_id != rid or self.now < op.attempt_deadline - 1e-9:
            return
        if self.now >= op.deadline:
            self._finish(p, ok=False)
            return
        if rotate:
            op.target = self.ids[(self.ids.index(op.target) + 1) % len(self.ids)]
        self._send_op(op)

    def _client_reply(self, p: int, src: int, reply) -> None:
        op = self.ops.get(p)
        if op is None or getattr(reply, "req_id", None) != op.req.req_id:
            return
        req = op.req
        if isinstance(reply, ErrorReply):
            if reply.code in RETRYABLE_ERRORS:
                if reply.code == ErrorCode.NOT_PRIMARY and reply.hint:
                    op.target = reply.hint
                else:
                    op.target = self.ids[(self.ids.index(op.target) + 1) % len(self.ids)]
                delay = 0.0005 if reply.code == ErrorCode.NOT_PRIMARY and reply.hint else 0.02
                op.attempt_deadline = self.now + delay
                self._schedule(delay, "timeout", (p, req.req_id, False))
                return
            raise InvariantViolation(f"unexpected error reply {reply} to {req}")
        if req.type == RequestType.ORDER:
            if not isinstance(reply, LaptopInfo) or (reply.customer_id, reply.order_number) != (req.customer_id, req.order_number):
                raise InvariantViolation(f"order {req} answered with {reply}")
            key = order_key(req.customer_id, req.order_number)
            if key not in self.committed_keys:
                raise InvariantViolation(f"order {req.customer_id}/{req.order_number} acknowledged but not committed anywhere")
            self.acks.setdefault(req.customer_id, []).append((self.now, req.order_number))
            self.stats["acked"] += 1
        elif req.type == RequestType.READ:
            assert isinstance(reply, CustomerRecord), reply
            self._check_read(req.customer_id, reply.last_order if reply.customer_id != -1 else -1, op.invoked)
            self.stats["reads"] += 1
        else:
            for customer, last in reply.records:
                self._check_read(customer, last, op.invoked)
            self.stats["reads"] += 1
        self._finish(p, ok=True)

    def _finish(self, p: int, ok: bool) -> None:
        del self.ops[p]
        if not ok:
            self.stats["failed"] += 1
        self._schedule(self.rng.uniform(0.0, 0.01), "client", p)

    def _check_read(self, customer: int, value: int, invoked: float) -> None:
        """Linearizability for one register written by one process with increasing values:
        the read must return a value written (invoked) before it returned, and no older than the
        newest write acknowledged before it was invoked."""
        newest_acked_before = max((o for t, o in self.acks.get(customer, ()) if t < invoked), default=-1)
        if value < newest_acked_before:
            raise InvariantViolation(
                f"stale read: customer {customer} read {value} but order {newest_acked_before} was acknowledged before the read began"
            )
        if value != -1 and value not in {o for _t, o in self.invoked_orders.get(customer, ())}:
            raise InvariantViolation(f"read of customer {customer} returned {value}, which was never ordered")

    # ------------------------------------------------------------------ invariants

    def _check_node(self, n: int) -> None:
        rep = self.replicas[n]
        if rep is None:
            return
        start = self.checked_commit.get(n, 0)
        if rep.commit_index < start:
            start = rep.commit_index  # restarted from disk: re-check from what it recovered
        for index in range(max(start, rep.log.base_index) + 1, rep.commit_index + 1):
            entry = rep.log.entry(index)
            seen = self.committed.get(index)
            if seen is None:
                self.committed[index] = entry
                self.committed_keys.add(order_key(entry[1], entry[2]))
            elif seen != entry:
                raise InvariantViolation(f"committed prefixes disagree at index {index}: node {n} has {entry}, earlier commit was {seen}")
        if rep.commit_index > start and rep.role is Role.PRIMARY:
            owner = self.committer.setdefault(rep.view.number, n)
            if owner != n:
                raise InvariantViolation(f"two primaries committed in view {rep.view.number}: nodes {owner} and {n}")
        self.checked_commit[n] = rep.commit_index

    def _check_vs(self) -> None:
        number = self.vs.view.number
        if number < self.last_vs_view:
            raise InvariantViolation(f"view number went back from {self.last_vs_view} to {number}")
        if number > self.last_vs_view:
            self.stats["views"] += 1
            self._log(f"view {number}: primary {self.vs.view.primary} backups {sorted(self.vs.view.backups)}")
        self.last_vs_view = number

    def _final_checks(self) -> None:
        live = {n: r for n, r in self.replicas.items() if r is not None}
        primary = self.vs.view.primary
        prim = live.get(primary)
        if prim is None or prim.role is not Role.PRIMARY:
            raise InvariantViolation(f"no serving primary after healing (view {self.vs.view})")
        # A customer's record only moves forward (node/state.py), so an acknowledged order is in
        # the state exactly when the record is at it or past it.
        records = prim.book.records
        missing = [(c, o) for c, acks in self.acks.items() for _t, o in acks if records.get(c, -1) < o]
        if missing:
            raise InvariantViolation(f"{len(missing)} acknowledged orders missing from the primary's state, e.g. {missing[:3]}")
        digest = prim.book.digest()
        for n, rep in live.items():
            if rep.commit_index != prim.commit_index or rep.book.digest() != digest:
                raise InvariantViolation(
                    f"node {n} did not converge: commit {rep.commit_index} vs primary {prim.commit_index} ({rep.role.value})"
                )


def run_seed(seed: int, cfg: SimConfig | None = None, verbose: bool = False) -> dict:
    sim = Simulation(seed, cfg, verbose)
    try:
        return sim.run()
    except InvariantViolation as exc:
        trace = "\n".join(sim.trace[-25:])
        raise InvariantViolation(
            f"seed {seed} failed at t={sim.now:.4f}s (step {sim.steps}): {exc}\n"
            f"replay: python -m orchestrator.simulator --seed {seed} -v\nlast events:\n{trace}"
        ) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Shared by `python -m orchestrator.simulator` and `lfctl sim`."""
    parser.add_argument("--seeds", type=int, default=100, help="how many seeds (default 100)")
    parser.add_argument("--seed", type=int, default=None, help="run just this seed")
    parser.add_argument("--start", type=int, default=0, help="first seed")
    parser.add_argument("--nodes", type=int, default=3, choices=range(1, 10), metavar="N")
    parser.add_argument("--durability", choices=("wal", "memory"), default="wal")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every event of the run")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lfctl sim", description="Run the deterministic simulator over many seeds.")
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


def run_from_args(args: argparse.Namespace) -> int:
    seeds = [args.seed] if args.seed is not None else range(args.start, args.start + args.seeds)
    cfg = SimConfig(nodes=args.nodes, durability=args.durability)
    totals: dict[str, int] = {}
    began = time.monotonic()
    for seed in seeds:
        try:
            stats = run_seed(seed, cfg, args.verbose)
        except InvariantViolation as exc:
            print(exc, file=sys.stderr)
            return 1
        for k, v in stats.items():
            totals[k] = totals.get(k, 0) + v
    n = len(seeds)
    print(f"{n} seeds passed in {time.monotonic() - began:.1f} s: " + ", ".join(f"{k} {v}" for k, v in totals.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
