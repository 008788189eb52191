"""The replica protocol as a pure state machine (sans-IO).

Events go in (`on_client_requests`, `on_peer_frame`, `on_view_reply`, `on_tick`), and `flush`
turns what they changed into an `Outbox`: records to persist, messages to peers, replies to
clients.  What clients and peers send comes in as wire frames (protocol/codec.py), as it came off
the sockets, and replies to clients go out as frames ready to send; messages to peers and to the
view service are objects the shell encodes.  No sockets, clocks or threads: `now` is always
passed in.  That is what lets the deterministic
simulator run N replicas in one process and check the invariants after every step.

Protocol summary (see docs/architecture.md for the safety argument):
- The primary appends orders to its log and replicates every new entry to each backup (and to
  learners); it commits an index once every backup in its view - plus any learner it has asked
  the view service to add - has acknowledged it, then applies and replies.
- Backups accept appends only from their view's primary, in order (prev index and view must
  match); otherwise they say which index they need.
- A new primary first brings every backup to its own log; reads wait until that is done and are
  served only under a lease taken from the primary's last successful ping.
"""

from __future__ import annotations

import logging
import struct
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from node.state import STALE, Log, OrderBook, order_key
from node.storage import AppendEntries, CommitMark, Recovered, SnapshotRecord, TruncateFrom, ViewMark
from protocol.codec import (
    LAPTOP_INFO_FRAME,
    REQUEST_FRAME,
    Kind,
    ProtocolError,
    decode,
    decode_append,
    decode_append_reply,
    decode_request,
    encode,
)
from protocol.entries import ENTRY, ENTRY_SIZE, VIEW
from protocol.messages import (
    NO_NODE,
    NO_VIEW,
    PROTOCOL_VERSION,
    Append,
    AppendReply,
    ClientReply,
    ClientRequest,
    CustomerRecord,
    ErrorCode,
    ErrorReply,
    Outbox,
    Ping,
    RecordList,
    RequestType,
    SnapshotChunk,
    View,
    ViewReply,
)

log = logging.getLogger("node.replica")
ORDER = int(RequestType.ORDER)
# Frame kinds as plain ints, read once per order or frame (an IntEnum member costs an attribute
# lookup and a comparison through int's).
_REQUEST = int(Kind.CLIENT_REQUEST)
_LAPTOP_INFO = int(Kind.LAPTOP_INFO)
_APPEND = int(Kind.APPEND)
_APPEND_REPLY = int(Kind.APPEND_REPLY)

SNAPSHOT_CHUNK = 1 << 20
# A ping unanswered for this many heartbeats is given up (the shell reopens its socket, so a late
# reply can never be matched to a newer ping and stretch the lease).
PING_TIMEOUT_HEARTBEATS = 2
# A backup that answers the view service but makes no progress with us for this many failure
# timeouts is proposed for removal (a partition between the two); generous, since removing a
# healthy backup costs a catch-up.
LAGGING_TIMEOUTS = 2
MAX_PARKED_READS = 10_000


def worth_logging(count: int) -> bool:
    """Whether the `count`-th bad frame gets a log line: the first 20, then one in a thousand,
    so a misbehaving client cannot fill the disk."""
    return count <= 20 or count % 1000 == 0


class Role(str, Enum):
    IDLE = "idle"  # no view yet
    PRIMARY = "primary"
    BACKUP = "backup"
    LEARNER = "learner"  # outside the view: catching up, or deposed


# The members as module globals, which the core reads: on Python 3.11 reading a member through
# its class (`Role.PRIMARY`) goes through EnumType's __getattr__ hook, 77 ns by `timeit` against
# 9 for a global, and a write's four loop turns test the role about ten times.
IDLE, PRIMARY, BACKUP, LEARNER = Role.IDLE, Role.PRIMARY, Role.BACKUP, Role.LEARNER


@dataclass(frozen=True, slots=True)
class ReplicaSettings:
    """Protocol timings in seconds and limits; built from `[replication]` of cluster.toml."""

    heartbeat: float = 0.05
    lease: float = 0.4
    failure_timeout: float = 0.5
    retransmit: float = 0.1
    batch_max_entries: int = 1024
    snapshot_every: int = 100_000
    max_bulk_read: int = 100_000
    max_pending: int = 100_000
    # A new batch goes to a peer only while fewer than this many are
    # unacknowledged; meanwhile new entries pile up into the next, larger batch.  Under load that
    # cuts messages (and CPU) per order on both sides without adding latency: the entries would
    # have waited for those acks anyway.
    max_inflight_batches: int = 8

    @classmethod
    def from_config(cls, rc) -> "ReplicaSettings":
        return cls(
            heartbeat=rc.heartbeat_ms / 1000,
            lease=rc.lease_ms / 1000,
            failure_timeout=rc.failure_timeout_ms / 1000,
            retransmit=rc.retransmit_ms / 1000,
            batch_max_entries=rc.batch_max_entries,
            max_inflight_batches=rc.max_inflight_batches,
            snapshot_every=rc.snapshot_every,
            max_bulk_read=rc.max_bulk_read,
            max_pending=rc.max_pending,
        )


class _Peer:
    """What the primary knows about one backup or learner in the current primaryship."""

    __slots__ = ("next_index", "match_index", "incarnation", "last_ack", "last_sent", "last_need", "snapshot_sent", "unacked")

    def __init__(self, next_index: int, now: float) -> None:
        self.next_index = next_index  # next entry to send (optimistic: advanced when sent)
        self.match_index = 0  # highest index known to match our log
        self.incarnation = 0
        self.last_ack = now  # last reply that made progress, or last tick it was caught up
        self.last_sent = -1.0
        self.last_need = (0, -1.0)  # (index, time) of the last "need" acted on: damps duplicates
        self.snapshot_sent = -1.0
        # Last index of each append sent and not yet answered, oldest first.  Counted by index,
        # not by reply: a backup answers several appends of one loop turn with one reply.
        self.unacked: deque[int] = deque()


class Replica:
    # Slots: the core has over thirty attributes, past the thirty an instance dict shares keys
    # for in CPython 3.11; beyond that every attribute read on the hot path takes the slower
    # lookup (bench/instructions.py: see docs/performance.md).
    __slots__ = (
        "id", "s", "incarnation", "durable", "outbox", "view", "role", "learners", "log", "book", "snapshot",
        "applied_index", "commit_index", "_persisted_commit", "_ticks_since_mark", "_unpersisted_from", "ops",
        "peers", "pending_add", "pending_add_view", "inflight", "waiters", "pending_keys", "parked_reads", "view_start_index",
        "lease_until", "_last_tick", "regressed", "lagging", "_replicated_last", "_replicate_due", "_commit_due",
        "_incoming", "bad_requests",
    )

    def __init__(self, node_id: int, settings: ReplicaSettings, recovered: Recovered, incarnation: int) -> None:
        self.id = node_id
        self.s = settings
        self.incarnation = incarnation
        self.durable = not recovered.fresh
        self.outbox = Outbox()

        self.view: View = View(recovered.view_number, NO_NODE, frozenset()) if recovered.view_number else NO_VIEW
        self.role = IDLE
        self.learners: frozenset[int] = frozenset()

        self.log = Log(recovered.snapshot_index, recovered.snapshot_view, recovered.entries)
        self.book = OrderBook.deserialize(recovered.snapshot_data) if recovered.snapshot_data else OrderBook()
        self.snapshot: tuple[int, int, bytes] | None = (
            (recovered.snapshot_index, recovered.snapshot_view, recovered.snapshot_data)
            if recovered.snapshot_data
            else None
        )
        self.applied_index = recovered.snapshot_index
        self.commit_index = recovered.snapshot_index
        self._persisted_commit = recovered.commit_index
        self._ticks_since_mark = 0  # ticks since the commit mark was last written (see flush)
        self._unpersisted_from = self.log.last_index + 1  # first entry not yet handed to storage
        self.ops = 0

        # primary-only state
        self.peers: dict[int, _Peer] = {}
        self.pending_add: dict[int, int] = {}  # learner -> incarnation, counted for commits
        self.pending_add_view = 0  # the view number in which the addition was requested
        # The entries not yet committed, a loop turn's at a time: (first index, the answer to
        # each entry's order -- its client and the LaptopInfo frame if this node's acceptance
        # stands -- or None for a previous primary's entries, each entry's order key).
        self.inflight: deque[tuple[int, list[tuple[object, bytes]] | None, list[int]]] = deque()
        self.waiters: dict[int, list[tuple[object, bytes]]] = {}  # log index -> retries waiting on it
        self.pending_keys: dict[int, int] = {}  # order key -> log index, for entries not yet applied
        self.parked_reads: list[tuple[object, ClientRequest]] = []
        self.view_start_index = 0  # reads wait until this is committed in the current primaryship
        self.lease_until = -1.0
        self._last_tick = -1.0
        self.regressed: set[int] = set()  # backups that lost acknowledged entries: must leave the view
        self.lagging: set[int] = set()  # backups alive for the view service but not keeping up with us
        # What a primary's flush may skip (see flush): the replication pass, while no entry is
        # new and nothing has left a peer owed a message; the commit check, while no ack, view
        # or tick has come in.  A tick sets both, so nothing is ever put off past one tick.
        self._replicated_last = -1  # the log's last index at the end of the last replication pass
        self._replicate_due = True
        self._commit_due = True

        # learner side of a snapshot transfer: (snap_index, snap_view, total, buffer)
        self._incoming: tuple[int, int, int, bytearray] | None = None
        self.bad_requests = 0  # client frames that did not decode (answered with ErrorCode.PROTOCOL)
        self._set_commit(min(recovered.commit_index, self.log.last_index))

    # ------------------------------------------------------------------ events

    def on_client_requests(self, batch: Sequence[tuple[object, bytes]], now: float) -> None:
        """The request frames of one loop turn, in the order they came, each with the token of
        the client its reply goes back to.  Replies come out as frames too (`Outbox.replies`).

        Why frames and not `ClientRequest` objects: an order is one unpack, a few dict operations
        and a packed entry, and its reply is packed here, once, as if this node accepts the
        order, which is what nearly every order does (`_answer_committed` builds the others
        again).  A request object and a reply object per order, decoded and encoded by the
        shell, cost the loaded primary ~2 µs a write of its ~13 (docs/performance.md).  The
        orders are taken in one loop, and the turn's entries go to the log as one block, which
        `flush` persists and replicates as it is (`Log.slice` hands the same block back); their
        replies wait as one list (`inflight`), not a waiter per entry.
        Anything but a well-formed order at a primary goes through `_request`."""
        if self.role is not PRIMARY:
            for client, frame in batch:
                self._request(client, frame, now)
            return
        # An order is safe without a lease: it commits only with every backup's ack.
        records_get = self.book.records.get
        pending = self.pending_keys
        waiters = self.waiters
        limit = self.s.max_pending
        view = self.view.number
        me = self.id
        pack = ENTRY.pack
        unpack = REQUEST_FRAME.unpack
        reply_to = LAPTOP_INFO_FRAME.pack
        index = self.log.last_index
        committed = self.commit_index
        block: list[bytes] = []
        answers: list[tuple[object, bytes]] = []
        keys: list[int] = []
        try:
            for client, frame in batch:
                try:
                    version, kind, req_id, t, customer, order = unpack(frame)
                except struct.error:  # not the 22 bytes of a request
                    version = 0
                if version != PROTOCOL_VERSION or kind != _REQUEST or t != ORDER:
                    self._request(client, frame, now)
                    continue
                last = records_get(customer)
                if last is not None and order <= last:
                    if order == last:  # already committed: answer again, do not append twice
                        self.outbox.replies.append((client, reply_to(PROTOCOL_VERSION, _LAPTOP_INFO, req_id, customer, order, ORDER, self.book.engineers[customer], me)))
                        self.ops += 1
                    else:
                        self._reply(client, self._stale(req_id, customer, order, last))
                    continue
                key = ((customer & 0xFFFFFFFF) << 32) | (order & 0xFFFFFFFF)  # order_key, inlined: hot
                waiting_at = pending.get(key)
                if waiting_at is not None:  # a retry of an order still in flight: wait with it
                    answer = (client, reply_to(PROTOCOL_VERSION, _LAPTOP_INFO, req_id, customer, order, ORDER, me, me))
                    waiting = waiters.get(waiting_at)
                    if waiting is None:
                        waiters[waiting_at] = [answer]
                    else:
                        waiting.append(answer)
                    continue
                if index - committed >= limit:
                    self._reply(client, ErrorReply(req_id, ErrorCode.OVERLOADED, NO_NODE, "too many orders in flight"))
                    continue
                # Both packs raise, if at all, before any state changes.
                answer = (client, reply_to(PROTOCOL_VERSION, _LAPTOP_INFO, req_id, customer, order, ORDER, me, me))
                block.append(pack(view, customer, order, me))
                index += 1
                pending[key] = index
                keys.append(key)
                answers.append(answer)
        finally:  # what was packed has its answers: it goes to the log, even past an error
            if block:
                self.inflight.append((index - len(block) + 1, answers, keys))
                self.log.extend(block[0] if len(block) == 1 else b"".join(block))

    def on_client_request(self, client: object, frame: bytes, now: float) -> None:
        """One request frame: `on_client_requests` with a batch of one."""
        self.on_client_requests(((client, frame),), now)

    def _request(self, client: object, frame: bytes, now: float) -> None:
        """A request that is not an order to take: any request at a node that is not primary,
        a read, or a frame that does not decode."""
        try:
            req = decode_request(frame)
        except ProtocolError as exc:
            self.bad_requests += 1
            if worth_logging(self.bad_requests):
                log.warning("answered a bad client frame (%d so far): %s", self.bad_requests, exc)
            self._reply(client, ErrorReply(0, ErrorCode.PROTOCOL, NO_NODE, str(exc)[:200]))
            return
        if self.role is not PRIMARY:
            hint = self.view.primary if self.view.primary != self.id else NO_NODE
            self._reply(client, ErrorReply(req.req_id, ErrorCode.NOT_PRIMARY, hint, f"node {self.id} is not primary"))
            return
        # A well-formed order never comes here at a primary (on_client_requests takes it), and
        # decode_request returns no other type: what is left is a read.
        if now >= self.lease_until:
            # A deposed primary must not answer from stale state.
            msg = "primary has no current lease from the view service"
            self._reply(client, ErrorReply(req.req_id, ErrorCode.UNAVAILABLE, NO_NODE, msg))
            return
        if req.type == RequestType.BULK_READ:
            width = req.order_number - req.customer_id
            if width < 0:
                self._reply(client, ErrorReply(req.req_id, ErrorCode.BAD_REQUEST, NO_NODE, "bulk read needs lo <= hi"))
                return
            if width > self.s.max_bulk_read:
                msg = f"bulk read of {width} customers exceeds max_bulk_read {self.s.max_bulk_read}"
                self._reply(client, ErrorReply(req.req_id, ErrorCode.TOO_LARGE, NO_NODE, msg))
                return
        if self.commit_index < self.view_start_index:
            if len(self.parked_reads) >= MAX_PARKED_READS:
                self._reply(client, ErrorReply(req.req_id, ErrorCode.OVERLOADED, NO_NODE, "too many reads waiting"))
            else:
                self.parked_reads.append((client, req))
            return
        self._answer_read(client, req)

    def on_peer_frame(self, frame: bytes, now: float) -> None:
        """A frame from a peer, as it came off the wire.  Raises ProtocolError, having changed
        nothing, for one that does not decode.

        Why frames: appends and their acknowledgements are the replication traffic of a loaded
        cluster, one or two a loop turn on every node, and a backup's turn is on the path of
        every write.  They are taken apart into their fields (`codec.decode_append`,
        `decode_append_reply`), with no message object and no dispatch on its type; the rest
        is decoded and goes to `on_message`."""
        kind = frame[1] if len(frame) > 1 else -1
        if kind == _APPEND:
            view, sender, prev, prev_view, commit, block = decode_append(frame)
            self._commit_due = True
            self._on_append(view, sender, prev, prev_view, commit, block, now)
        elif kind == _APPEND_REPLY:
            view_number, sender, ok, index, incarnation = decode_append_reply(frame)
            self._commit_due = True
            self._on_append_reply(view_number, sender, ok, index, incarnation, now)
        else:
            self.on_message(decode(frame), now)

    def on_message(self, msg: object, now: float) -> None:
        """A decoded message from a peer (the simulator's tests, and `on_peer_frame` for the
        kinds it does not take apart itself)."""
        self._commit_due = True
        kind = type(msg)  # the codec makes exactly these classes: no isinstance() call per message
        if kind is Append:
            m: Append = msg  # type: ignore[assignment]  # the exact type, tested above
            self._on_append(m.view, m.sender, m.prev_index, m.prev_view, m.commit_index, m.entries, now)
        elif kind is AppendReply:
            r: AppendReply = msg  # type: ignore[assignment]
            self._on_append_reply(r.view_number, r.sender, r.ok, r.index, r.incarnation, now)
        elif kind is SnapshotChunk:
            self._on_snapshot_chunk(msg, now)  # type: ignore[arg-type]

    def on_view_reply(self, reply: ViewReply, now: float, sent_at: float) -> None:
        """`sent_at` is when the ping this answers was sent: the lease counts from then, which is
        never later than the moment the view service last heard from us."""
        self._replicate_due = self._commit_due = True  # learners and the view may have changed
        if self._is_newer(reply.view):
            self._adopt_view(reply.view, now)
        elif reply.view.number < self.view.number:
            return  # from before a view we already adopted through our primary
        if self.pending_add and self.view.number > self.pending_add_view:
            self.pending_add.clear()  # resolved: the view now says whether they are in
        self.learners = reply.learners - {self.id}
        if self.role is PRIMARY and reply.view.primary == self.id:
            self.lease_until = max(self.lease_until, sent_at + self.s.lease)
            wanted = self.view.backups | self.learners | self.pending_add.keys()
            for peer_id in list(self.peers):
                if peer_id not in wanted:
                    del self.peers[peer_id]
            for learner in self.learners:
                if learner not in self.peers:
                    self.peers[learner] = _Peer(self.log.last_index + 1, now)

    def on_tick(self, now: float) -> None:
        self.apply_committed()  # where a backup applies (see _learn_commit); the snapshot below reads the book
        self._ticks_since_mark += 1
        self._replicate_due = self._commit_due = True  # heartbeats, retransmits, lagging peers
        # Snapshots are taken here rather than at commit time: a step that commits entries
        # leaves them in the log, where the simulator's invariant checks can still see them.
        if self.applied_index - self.log.base_index >= self.s.snapshot_every:
            self._take_snapshot()
        if self.role is PRIMARY:
            self._primary_tick(now)

    def quiet(self) -> bool:
        """Nothing for a tick to move along: every entry committed and applied, no read waiting,
        no snapshot coming in and, at a primary, every backup and learner holding the whole log
        (no retransmission to time).  The shell then ticks less often (`NodeServer.run`)."""
        last = self.log.last_index
        if not (self.applied_index == self.commit_index == last) or self.parked_reads or self._incoming is not None:
            return False
        if self.role is PRIMARY:
            peers = self.peers
            for peer_id in self.view.backups | self.learners:
                peer = peers.get(peer_id)
                if peer is None or peer.match_index < last:
                    return False
        return True

    def make_ping(self) -> Ping:
        return Ping(
            node_id=self.id,
            incarnation=self.incarnation,
            view_number=self.view.number,
            last_index=self.log.last_index,
            last_view=self.log.last_view,
            commit_index=self.commit_index,
            applied_index=self.applied_index,
            durable=self.durable,
            add=tuple(sorted(self.pending_add.items())) if self.role is PRIMARY else (),
            remove=frozenset(self.regressed | self.lagging) if self.role is PRIMARY else frozenset(),
            ops=self.ops,
        )

    def flush(self, now: float) -> Outbox:
        """End of a loop turn: persist new entries, replicate them in one batch per peer, commit
        what can be committed, reply.  Returns the outbox (the shell drains and clears it)."""
        last = self.log.last_index
        if self._unpersisted_from <= last:
            first = self._unpersisted_from
            self.outbox.persist.append(AppendEntries(first, self.log.slice(first, last)))
        self._unpersisted_from = last + 1
        if self.role is PRIMARY:
            # A turn that brought only acks in step (or only client requests) leaves nothing to
            # send, and one with only client requests nothing to commit: skipping the passes
            # spares each such turn a call per peer.
            if last != self._replicated_last or self._replicate_due:
                # Peers that are in step get the very same Append (one object, one slice): the
                # shell then encodes it once for all of them.
                shared: dict[tuple[int, int], Append] = {}
                for peer_id, peer in self.peers.items():
                    self._send_to(peer_id, peer, now, shared)
                self._replicated_last = last
                self._replicate_due = False
            if self._commit_due or not self.view.backups:  # alone, new entries commit at once
                self._advance_commit()
        self._commit_due = False
        # The commit mark only saves a restarted node from re-learning its commit index (a lower
        # one is safe: committed entries are in every in-sync log, and the primary resends what
        # a backup drops).  So it is written at most once a tick: with the first turn that
        # writes anyway once a tick has passed, or on its own once a second one has.  Riding
        # along with every write cost each loaded turn a record; going on its own every turn
        # would cost a primary's ack turns a write -- and under `fsync` a sync -- before replies.
        if self.commit_index > self._persisted_commit and self._ticks_since_mark and (self.outbox.persist or self._ticks_since_mark > 1):
            self.outbox.persist.append(CommitMark(self.commit_index))
            self._persisted_commit = self.commit_index
            self._ticks_since_mark = 0
        return self.outbox

    # ------------------------------------------------------------------ primary: requests

    @staticmethod
    def _stale(req_id: int, customer: int, order: int, last: int) -> ErrorReply:
        msg = f"customer {customer} already has order {last}: order {order} is older and was not applied"
        return ErrorReply(req_id, ErrorCode.STALE_ORDER, NO_NODE, msg)

    def _answer_read(self, client: object, req: ClientRequest) -> None:
        self.ops += 1
        if req.type == RequestType.READ:
            last = self.book.records.get(req.customer_id)
            if last is None:
                self._reply(client, CustomerRecord(req.req_id, -1, -1))
            else:
                self._reply(client, CustomerRecord(req.req_id, req.customer_id, last))
        else:
            self._reply(client, RecordList(req.req_id, tuple(self.book.range(req.customer_id, req.order_number))))

    def _reply(self, client: object, reply: ClientReply) -> None:
        self.outbox.replies.append((client, encode(reply)))

    # ------------------------------------------------------------------ primary: replication

    def _send_to(self, peer_id: int, peer: _Peer, now: float, shared: dict[tuple[int, int], Append]) -> None:
        """Send what the peer lacks, within the window; a heartbeat when there is nothing new.
        `shared` holds this flush's appends by (first, last) index, for the next peer to reuse."""
        log_ = self.log
        last = log_.last_index
        if peer.next_index <= log_.base_index:
            self._send_snapshot(peer_id, peer, now)
            return
        sent = False
        unacked = peer.unacked
        while peer.next_index <= last and len(unacked) < self.s.max_inflight_batches:
            first = peer.next_index
            upto = first + self.s.batch_max_entries - 1
            if upto > last:  # not min(): a builtin call parses its keywords, 94 ns against 13
                upto = last
            msg = shared.get((first, upto))
            if msg is None:
                prev = first - 1
                msg = Append(self.view, self.id, prev, log_.view_at(prev), self.commit_index, log_.slice(first, upto))
                shared[first, upto] = msg
            self.outbox.replicate.append((peer_id, msg))
            peer.next_index = upto + 1
            unacked.append(upto)
            sent = True
        if not sent and now - peer.last_sent >= self.s.heartbeat:
            prev = min(peer.next_index - 1, last)
            msg = shared.get((prev + 1, prev))  # (first, last) of no entries
            if msg is None:
                msg = Append(self.view, self.id, prev, log_.view_at(prev), self.commit_index, b"")
                shared[prev + 1, prev] = msg
            self.outbox.replicate.append((peer_id, msg))
            unacked.append(prev)  # it is answered like any append
            sent = True
        if sent:
            peer.last_sent = now

    def _send_snapshot(self, peer_id: int, peer: _Peer, now: float) -> None:
        # A transfer in progress is given several retransmit periods before it is resent.
        if self.snapshot is None or now - peer.snapshot_sent < 10 * self.s.retransmit:
            return
        snap_index, snap_view, data = self.snapshot
        for offset in range(0, max(len(data), 1), SNAPSHOT_CHUNK):
            chunk = data[offset : offset + SNAPSHOT_CHUNK]
            self.outbox.replicate.append(
                (peer_id, SnapshotChunk(self.view, self.id, snap_index, snap_view, offset, len(data), chunk))
            )
        peer.snapshot_sent = now
        peer.last_sent = now
        peer.next_index = snap_index + 1

    def _on_append_reply(self, view_number: int, sender: int, ok: bool, index: int, incarnation: int, now: float) -> None:
        """An acknowledgement's fields (`codec.decode_append_reply`)."""
        if self.role is not PRIMARY:
            return
        if view_number > self.view.number:
            log.info("node %d answered from view %d: this primary (view %d) is deposed", sender, view_number, self.view.number)
            self.lease_until = -1.0  # stop serving until the view service says otherwise
            return
        peer = self.peers.get(sender)
        if view_number < self.view.number or peer is None:
            return
        unacked = peer.unacked
        if ok:
            while unacked and unacked[0] <= index:
                unacked.popleft()
        elif unacked:
            unacked.popleft()
        if peer.incarnation != incarnation:
            if peer.incarnation:  # the peer restarted: whatever it acknowledged before may be gone
                self._regress(sender, peer)
            peer.incarnation = incarnation
        if ok:
            if index > peer.match_index:
                last = self.log.last_index
                peer.match_index = index if index < last else last
                peer.last_ack = now
            if peer.next_index <= peer.match_index:
                peer.next_index = peer.match_index + 1
        else:
            need = index
            if need <= peer.match_index:
                # This process of the peer has acknowledged entries up to match_index since it
                # sent this: a refusal the network delayed behind that acknowledgement.  (A peer
                # loses acknowledged entries only by restarting, which shows as a new incarnation
                # above.)  Taken for a loss, it dropped a learner the primary had asked the view
                # service to admit, and the primary committed without the learner the service
                # then admitted (simulator seed 4848 of the restart faults).
                return
            last_need, at = peer.last_need
            if need < peer.next_index and not (need == last_need and now - at < self.s.retransmit):
                peer.next_index = max(need, 1)
                peer.last_need = (need, now)
        if peer.next_index <= self.log.last_index:
            self._replicate_due = True  # behind: resent from further back, or its window opened

    def _regress(self, peer_id: int, peer: _Peer) -> None:
        """The peer restarted: whatever it acknowledged before may be gone, and it can no
        longer count as in sync.  Dropping it from `pending_add` is safe: should the view service
        add it anyway, its next ping (from the new incarnation) makes the service drop it."""
        peer.match_index = 0
        if peer_id in self.view.backups:
            self.regressed.add(peer_id)
        self.pending_add.pop(peer_id, None)

    def _advance_commit(self) -> None:
        last = self.log.last_index
        target = last
        for peer_id in self.view.backups:
            peer = self.peers.get(peer_id)
            # A backup that restarted is not the process the view service admitted: whatever it
            # says now does not count until a new view settles its membership.
            match = peer.match_index if peer and peer_id not in self.regressed else 0
            if match < target:
                target = match
        for peer_id in self.pending_add:
            peer = self.peers.get(peer_id)
            match = peer.match_index if peer else 0
            if match < target:
                target = match
        if target > self.commit_index:
            self._set_commit(target)

    def _primary_tick(self, now: float) -> None:
        last = self.log.last_index
        if now - self._last_tick > self.s.failure_timeout / 2:
            # We were stalled ourselves (paused, starved of CPU): the peers' silence is ours.
            for peer in self.peers.values():
                peer.last_ack = now
        self._last_tick = now
        for peer_id, peer in self.peers.items():
            if peer.match_index >= last:
                # Caught up, nothing owed: silence now is not lag.  Lag counts from when a peer
                # falls behind, not from its last progress: otherwise the first order after an
                # idle second found every backup "lagging" at the next tick (and had it removed).
                peer.last_ack = now
            elif now - peer.last_ack >= self.s.retransmit:
                if now - peer.last_need[1] >= self.s.retransmit:
                    peer.next_index = peer.match_index + 1  # go back: something was lost
                    peer.last_need = (peer.next_index, now)
                    peer.unacked.clear()  # and so were their answers
            if peer_id in self.view.backups and peer.match_index < last and now - peer.last_ack >= LAGGING_TIMEOUTS * self.s.failure_timeout:
                self.lagging.add(peer_id)
            else:
                self.lagging.discard(peer_id)
        # Learners that caught up are counted from now on, then proposed to the view service.
        if self.pending_add_view != self.view.number:
            self.pending_add.clear()
        for learner in self.learners:
            candidate = self.peers.get(learner)
            if (
                candidate is not None
                and learner not in self.pending_add
                and candidate.incarnation
                and candidate.match_index >= self.commit_index
                and last - candidate.match_index <= self.s.batch_max_entries
            ):
                self.pending_add[learner] = candidate.incarnation
                self.pending_add_view = self.view.number

    # ------------------------------------------------------------------ backup side

    def _on_append(self, view: View, sender: int, prev: int, prev_view: int, commit: int, block: bytes, now: float) -> None:
        """An append's fields (`codec.decode_append`): `block` holds its entries, packed."""
        if self.role is IDLE:
            # Until the view service has answered us we might not know any view at all (wiped);
            # adopting one from an append could let a deposed primary count us in its old view.
            return
        if view is not self.view:  # the codec hands out one View object per view: often the same
            number = self.view.number
            if view.number < number:
                self._send_reply(sender, False, self.log.last_index + 1)  # fencing: tell it is stale
                return
            if view.number > number:  # `_is_newer`, inlined: not IDLE here, so only a later view
                self._adopt_view(view, now)
        if sender != self.view.primary or sender == self.id:
            return
        log_ = self.log
        # `block` is kept as it came and written to the WAL as it came (protocol/entries.py)
        count = len(block) // ENTRY_SIZE
        last = log_.last_index
        if prev == last and log_.last_view == prev_view:
            # In step, the usual case: the block goes right after our last entry.
            if count:
                log_.extend(block)
                if self._unpersisted_from > prev + 1:
                    self._unpersisted_from = prev + 1
            matched = prev + count
            if commit > matched:  # _learn_commit, inlined: once per append
                commit = matched
            if commit > self.commit_index:
                self.commit_index = commit
            self._send_reply(sender, True, matched)
            return
        if prev > last:
            self._send_reply(sender, False, last + 1)
            return
        if prev < log_.base_index:
            # The part behind our snapshot is committed and identical: skip it.
            skip = log_.base_index - prev
            if skip >= count:
                self._send_reply(sender, True, log_.base_index)
                return
            block = block[skip * ENTRY_SIZE :]
            count -= skip
            prev = log_.base_index
        elif log_.view_at(prev) != prev_view:
            # Our entry at prev differs from the primary's: everything past our commit index is
            # suspect (committed entries are on every in-sync node), so drop it and ask from there.
            keep = min(self.commit_index, prev - 1)
            log_.truncate_from(keep + 1)
            self.outbox.persist.append(TruncateFrom(keep + 1))
            self._unpersisted_from = min(self._unpersisted_from, keep + 1)
            self._send_reply(sender, False, keep + 1)
            return
        entry_view = VIEW.unpack_from
        for k in range(count):
            index = prev + k + 1
            if index <= last:
                if log_.view_at(index) == entry_view(block, k * ENTRY_SIZE)[0]:
                    continue  # already have it (duplicate or overlapping batch)
                log_.truncate_from(index)
            log_.extend(block[k * ENTRY_SIZE :] if k else block)
            self._unpersisted_from = min(self._unpersisted_from, index)
            break
        matched = prev + count
        self._learn_commit(min(commit, matched))
        self._send_reply(sender, True, matched)

    def _learn_commit(self, commit: int) -> None:
        """A backup only notes what the primary says is committed; it applies those entries at
        its next tick (`apply_committed`), many at a time, so that applying is not part of any
        write's round trip."""
        if commit > self.commit_index:
            self.commit_index = commit

    def apply_committed(self) -> None:
        """Apply what is committed but not yet applied: at a tick, and before a promotion."""
        if self.commit_index > self.applied_index:
            self._set_commit(self.commit_index)

    def _send_reply(self, to: int, ok: bool, index: int) -> None:
        """One reply per loop turn where one will do: an ok reply covers every earlier ok reply
        of the turn with a lower or equal index (a prefix of what it vouches for), so it replaces
        them, as one cumulative acknowledgement.  Anything else stays a reply of its own."""
        messages = self.outbox.messages
        reply = AppendReply(self.view.number, self.id, ok, index, self.incarnation)
        if ok and messages:
            last_to, last = messages[-1]
            if (last_to == to and isinstance(last, AppendReply) and last.ok and last.index <= index
                    and last.view_number == reply.view_number):
                messages[-1] = (to, reply)
                return
        messages.append((to, reply))

    def _on_snapshot_chunk(self, msg: SnapshotChunk, now: float) -> None:
        if self.role is IDLE or msg.view.number < self.view.number:
            return
        if self._is_newer(msg.view):
            self._adopt_view(msg.view, now)
        if msg.sender != self.view.primary:
            return
        if msg.snap_index <= self.commit_index:
            self._send_reply(msg.sender, True, self.commit_index)  # committed entries match anyway
            return
        if msg.offset == 0:
            self._incoming = (msg.snap_index, msg.snap_view, msg.total, bytearray())
        incoming = self._incoming
        if incoming is None or incoming[0] != msg.snap_index or len(incoming[3]) != msg.offset:
            return  # a chunk out of order: wait for the primary to resend from the start
        incoming[3].extend(msg.data)
        if len(incoming[3]) < msg.total:
            return
        self._incoming = None
        data = bytes(incoming[3])
        try:
            book = OrderBook.deserialize(data)
        except ValueError as exc:
            log.warning("discarding snapshot %d from node %d: %s", msg.snap_index, msg.sender, exc)
            return
        self.book = book
        self.log.reset(msg.snap_index, msg.snap_view)
        self.snapshot = (msg.snap_index, msg.snap_view, data)
        self.applied_index = self.commit_index = msg.snap_index
        self._unpersisted_from = msg.snap_index + 1
        self.outbox.persist.append(SnapshotRecord(msg.snap_index, msg.snap_view, data, b""))
        self._persisted_commit = max(self._persisted_commit, msg.snap_index)
        log.info("installed snapshot at index %d from node %d (%d bytes)", msg.snap_index, msg.sender, len(data))
        self._send_reply(msg.sender, True, msg.snap_index)

    # ------------------------------------------------------------------ views, commit, apply

    def _is_newer(self, view: View) -> bool:
        """A restarted node knows its last view number (for fencing) but not that view's primary:
        it takes the first view it hears of with at least that number."""
        return view.number > self.view.number or (self.role is IDLE and view.number == self.view.number)

    def _adopt_view(self, view: View, now: float) -> None:
        old = self.view
        was_primary = self.role is PRIMARY
        self.view = view
        self._replicate_due = self._commit_due = True
        self.outbox.persist.append(ViewMark(view.number))
        if view.primary == self.id:
            # Continuing as primary into the very next view keeps what we know of the peers:
            # no other primary can have existed in between.
            continuing = was_primary and old.primary == self.id and view.number == old.number + 1
            self.role = PRIMARY
            if not continuing:
                self._become_primary(now)
            self.peers = {p: self.peers.get(p) or _Peer(self.log.last_index + 1, now) for p in (view.backups | self.learners) if p != self.id}
            self.regressed &= view.backups
            self.lagging &= view.backups
            log.info("view %d: primary (backups %s)", view.number, sorted(view.backups))
        else:
            if was_primary:
                self._step_down()
            self.role = BACKUP if self.id in view.backups else LEARNER
            log.info("view %d: %s (primary %d)", view.number, self.role.value, view.primary)

    def _become_primary(self, now: float) -> None:
        self.apply_committed()  # the book must hold every committed order before we answer
        self.peers = {}
        self.pending_add.clear()
        self.regressed.clear()
        self.lagging.clear()
        self.lease_until = -1.0
        self.view_start_index = self.log.last_index
        self.inflight = deque()
        self.waiters = {}
        self.parked_reads = []
        self.pending_keys = {}
        first = self.applied_index + 1
        if first <= self.log.last_index:
            keys = []
            for index, (_v, customer, order, _e) in enumerate(ENTRY.iter_unpack(self.log.slice(first, self.log.last_index)), first):
                key = order_key(customer, order)
                self.pending_keys.setdefault(key, index)
                keys.append(key)
            self.inflight.append((first, None, keys))

    def _step_down(self) -> None:
        hint = self.view.primary if self.view.primary != self.id else NO_NODE
        waiting = [answer for _start, answers, _keys in self.inflight for answer in answers or ()]
        for retries in self.waiters.values():
            waiting += retries
        for client, frame in waiting:
            req_id = LAPTOP_INFO_FRAME.unpack(frame)[2]
            self._reply(client, ErrorReply(req_id, ErrorCode.NOT_PRIMARY, hint, "primary changed"))
        for client, req in self.parked_reads:
            self._reply(client, ErrorReply(req.req_id, ErrorCode.NOT_PRIMARY, hint, "primary changed"))
        self.inflight = deque()
        self.waiters = {}
        self.parked_reads = []
        self.pending_keys = {}
        self.peers = {}
        self.pending_add.clear()
        self.regressed.clear()
        self.lagging.clear()
        self.lease_until = -1.0

    def _set_commit(self, commit: int) -> None:
        self.commit_index = commit
        first = self.applied_index + 1
        if commit >= first:
            block = self.log.slice(first, commit)
            accepted = self.book.apply_all(block)
            if self.inflight or self.waiters:  # a primary: answer whoever waits on these
                self._answer_committed(first, accepted)
        if commit > self.applied_index:
            self.applied_index = commit
        if self.parked_reads and commit >= self.view_start_index and self.role is PRIMARY:
            parked, self.parked_reads = self.parked_reads, []
            for client, req in parked:
                self._answer_read(client, req)

    def _answer_committed(self, first: int, accepted: list[int]) -> None:
        """Reply to the clients waiting on the entries from `first` on (what
        `OrderBook.apply_all` made of each is `accepted`).  A turn's orders, accepted by this
        node as it took them (nearly always), are answered with the frames packed when they came
        in, all at once; only an order that turned out stale, or that another primary accepted
        first, is answered anew, and so is a retry that waited on an entry."""
        pending = self.pending_keys
        inflight = self.inflight
        replies = self.outbox.replies
        me = self.id
        last = first + len(accepted) - 1
        answered = 0
        while inflight and inflight[0][0] <= last:
            start, answers, keys = inflight.popleft()
            if start + len(keys) - 1 > last:  # committed in part: the rest waits on
                cut = last - start + 1
                inflight.appendleft((last + 1, answers[cut:] if answers is not None else None, keys[cut:]))
                answers, keys = (answers[:cut] if answers is not None else None), keys[:cut]
            for key in keys:
                pending.pop(key, None)
            if answers is None:  # a previous primary's entries: no one waits on them here
                continue
            outcome = accepted[start - first : start - first + len(keys)]
            if outcome.count(me) == len(outcome):
                replies += answers
                answered += len(answers)
            else:
                for answer, engineer in zip(answers, outcome):
                    answered += self._answer(answer, engineer)
        waiters = self.waiters
        if waiters:
            for index in sorted(i for i in waiters if i <= last):
                for answer in waiters.pop(index):
                    answered += self._answer(answer, accepted[index - first])
        self.ops += answered

    def _answer(self, answer: tuple[object, bytes], engineer: int) -> int:
        """One order's reply, once its entry is applied: the frame packed when it came in if
        this node's acceptance stands, else one made anew.  Returns 1 if it was an order taken."""
        if engineer == self.id:
            self.outbox.replies.append(answer)
            return 1
        client, frame = answer
        _v, _k, req_id, customer, order, _t, _e, _a = LAPTOP_INFO_FRAME.unpack(frame)
        if engineer == STALE:
            self._reply(client, self._stale(req_id, customer, order, self.book.records[customer]))
            return 0
        self.outbox.replies.append((client, LAPTOP_INFO_FRAME.pack(PROTOCOL_VERSION, _LAPTOP_INFO, req_id, customer, order, ORDER, engineer, self.id)))
        return 1

    def _take_snapshot(self) -> None:
        index = self.applied_index
        view = self.log.view_at(index)
        data = self.book.serialize()
        tail = self.log.slice(index + 1, self.log.last_index) if self.log.last_index > index else b""
        self.log.compact(index)
        self.snapshot = (index, view, data)
        # Entries not yet handed to storage are in `tail` now; do not write them twice.
        self.outbox.persist.append(SnapshotRecord(index, view, data, tail))
        self._unpersisted_from = self.log.last_index + 1
        self._persisted_commit = max(self._persisted_commit, index)

    # ------------------------------------------------------------------ inspection

    def status(self) -> dict:
        primary_last = self.log.last_index if self.role is PRIMARY else None
        return {
            "node_id": self.id,
            "role": self.role.value,
            "view": {"number": self.view.number, "primary": self.view.primary, "backups": sorted(self.view.backups)},
            "last_index": self.log.last_index,
            "commit_index": self.commit_index,
            "applied_index": self.applied_index,
            "snapshot_index": self.log.base_index,
            "record_count": len(self.book.records),
            "incarnation": self.incarnation,
            "durable": self.durable,
            "ops": self.ops,
            "primary_last_index": primary_last,
        }
