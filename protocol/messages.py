"""Every message that crosses a process boundary, as plain immutable values.

The codec (`protocol.codec`) turns these into bytes and back; the sans-IO cores consume and
produce them.  Keeping them as data, with no behaviour, is what lets the simulator pass them
between replicas without sockets.

All of them are values: nothing changes a message after building it.  The ones built for every
order or batch (requests, replies, appends and their acks) are not `frozen` all the same: a
frozen dataclass sets each field through `object.__setattr__`, which made building one 4-5x
slower (1.1-1.4 us against 0.25 us per object, measured with timeit), twice per order on the
primary.  They keep value equality and hashing (`unsafe_hash`: safe because they are never
mutated).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

PROTOCOL_VERSION = 1

# Node ids are 1..MAX_NODE_ID so that a set of nodes fits in a 64-bit mask on the wire.
MAX_NODE_ID = 63
NO_NODE = 0

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


class RequestType(IntEnum):
    """The request types of the original LaptopFactory system."""

    ORDER = 1
    READ = 2
    BULK_READ = 3


class ErrorCode(IntEnum):
    BAD_REQUEST = 1  # the request is well-formed but its values are not acceptable
    NOT_PRIMARY = 2  # `hint` names the node this one believes is primary (0: unknown)
    UNAVAILABLE = 3  # primary without a lease, or still bringing its backups in sync
    TOO_LARGE = 4  # bulk range wider than the server allows
    OVERLOADED = 5  # too many operations pending; back off and retry
    PROTOCOL = 6  # the frame could not be decoded
    STALE_ORDER = 7  # the customer already has a later order: this one was not applied (not retryable)


# Errors after which the client may safely send the same request to another node.
RETRYABLE_ERRORS = frozenset({ErrorCode.NOT_PRIMARY, ErrorCode.UNAVAILABLE, ErrorCode.OVERLOADED})


# --------------------------------------------------------------------------- client <-> node


@dataclass(slots=True, unsafe_hash=True)  # a value, not frozen: see the module docstring
class ClientRequest:
    """Type 1: order (customer_id, order_number).  Type 2: read customer_id (order_number 0).
    Type 3: bulk read of customers [customer_id, order_number) -- lo and hi share the two fields
    so every request has the same fixed size on the wire."""

    req_id: int  # u64 chosen by the client, echoed in the reply; the same across retries
    type: int
    customer_id: int
    order_number: int = 0


@dataclass(slots=True, unsafe_hash=True)  # a value, not frozen: see the module docstring
class LaptopInfo:
    """Reply to an order.  engineer_id: the node that accepted the order from the client;
    admin_id: the primary that committed it and answered."""

    req_id: int
    customer_id: int
    order_number: int
    type: int
    engineer_id: int
    admin_id: int


@dataclass(slots=True, unsafe_hash=True)  # a value, not frozen: see the module docstring
class CustomerRecord:
    """Reply to a read; (-1, -1) when the customer has no record."""

    req_id: int
    customer_id: int
    last_order: int


@dataclass(frozen=True, slots=True)
class RecordList:
    """Reply to a bulk read: the records that exist in the range, sorted by customer id."""

    req_id: int
    records: tuple[tuple[int, int], ...]


@dataclass(slots=True, unsafe_hash=True)  # a value, not frozen: see the module docstring
class ErrorReply:
    req_id: int
    code: int
    hint: int = NO_NODE
    message: str = ""


ClientReply = LaptopInfo | CustomerRecord | RecordList | ErrorReply


# --------------------------------------------------------------------------- replication


@dataclass(frozen=True, slots=True)
class View:
    """A configuration created only by the view service.  `backups` are the in-sync replicas."""

    number: int
    primary: int
    backups: frozenset[int] = frozenset()

    @property
    def members(self) -> frozenset[int]:
        return self.backups | {self.primary} if self.primary else self.backups


NO_VIEW = View(0, NO_NODE, frozenset())

# A log entry: (view it was appended in, customer_id, order_number, engineer_id).
Entry = tuple[int, int, int, int]


@dataclass(slots=True, unsafe_hash=True)  # a value, not frozen: see the module docstring
class Append:
    """Primary -> backup or learner.  Carries the full view so a backup can adopt a newer view
    from its primary without waiting for its own ping.  `entries` is a block of packed entries
    (protocol/entries.py: 16 bytes each, the log's and the WAL's own layout); an empty block is a
    heartbeat that still carries the commit index."""

    view: View
    sender: int
    prev_index: int
    prev_view: int
    commit_index: int
    entries: bytes = b""


@dataclass(slots=True, unsafe_hash=True)  # a value, not frozen: see the module docstring
class AppendReply:
    """Backup -> primary.  ok: `index` is the backup's last index (everything up to it matches).
    not ok: `index` is the next index the backup needs.  `view_number` lets a deposed primary
    learn it is stale."""

    view_number: int
    sender: int
    ok: bool
    index: int
    incarnation: int = 0  # u64: lets the primary notice a peer that restarted and lost its log


@dataclass(frozen=True, slots=True)
class SnapshotChunk:
    """Primary -> learner whose needed entries were truncated behind a snapshot."""

    view: View
    sender: int
    snap_index: int
    snap_view: int
    offset: int
    total: int
    data: bytes


# --------------------------------------------------------------------------- node <-> view service


@dataclass(frozen=True, slots=True)
class Ping:
    """Node -> view service, every heartbeat.  Doubles as the node's status report.

    `incarnation` changes every time the process starts, so the view service can tell a
    restarted node from a live one.  `durable` is false when the node came back without the
    state it had (wiped, or the `memory` policy): such a node must never be promoted on its own.
    `add` / `remove` are only honoured from the primary of `view_number`; `add` names the
    incarnation of the learner the primary saw catch up, so a learner that restarted (and may
    have lost what it acknowledged) in the meantime is not added."""

    node_id: int
    incarnation: int
    view_number: int
    last_index: int
    last_view: int
    commit_index: int
    applied_index: int
    durable: bool
    add: tuple[tuple[int, int], ...] = ()  # (node id, incarnation) pairs, at most 63
    remove: frozenset[int] = frozenset()
    ops: int = 0  # client operations answered since start (for ops/s on the dashboard)


@dataclass(frozen=True, slots=True)
class ViewReply:
    """View service -> node.  `learners`: live nodes outside the view that the primary should
    stream to."""

    view: View
    learners: frozenset[int] = frozenset()


ReplicationMessage = Append | AppendReply | SnapshotChunk
Message = ClientRequest | ClientReply | ReplicationMessage | Ping | ViewReply


@dataclass(slots=True)
class Outbox:
    """What a sans-IO core asks its shell to do after one step.

    The shell must write `persist` durably *before* it sends `messages` or `replies`: that
    ordering is what makes "written before acknowledged" hold.  `replicate` (a primary's appends
    and snapshot chunks) promises nothing about this node's own storage, so the shell sends it
    *first*: the primary's disk write then overlaps the backups' work instead of delaying it."""

    replicate: list[tuple[int, ReplicationMessage]] = field(default_factory=list)  # (peer, msg)
    persist: list = field(default_factory=list)  # storage records, see node.storage
    messages: list[tuple[int, ReplicationMessage]] = field(default_factory=list)  # (peer, msg)
    replies: list[tuple[object, bytes]] = field(default_factory=list)  # (client token, encoded reply)

    def clear(self) -> None:
        # Most turns fill one or two of the four: testing a list is cheaper than a call.
        if self.replicate:
            self.replicate.clear()
        if self.persist:
            self.persist.clear()
        if self.messages:
            self.messages.clear()
        if self.replies:
            self.replies.clear()
