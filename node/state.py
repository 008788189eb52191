"""The replicated state machine (customer records) and the in-memory operation log.

Both are plain data structures with no I/O, shared by the replica core and the simulator.
"""

from __future__ import annotations

import hashlib
import struct
from array import array

from protocol.entries import ENTRY, ENTRY_SIZE, VIEW
from protocol.messages import Entry

_COUNT = struct.Struct("<Q")
_SNAP_MAGIC = b"LFSM2"  # customers, last orders, engineers
_SNAP_MAGIC_V1 = b"LFSM1"  # ... and every order ever applied (read, never written)


def order_key(customer_id: int, order_number: int) -> int:
    """One int per (customer, order): the primary's table of orders in flight is keyed by it."""
    return ((customer_id & 0xFFFFFFFF) << 32) | (order_number & 0xFFFFFFFF)


# What `OrderBook.apply_all` reports for an entry it did not apply because the customer's last
# order is already a later one (the primary answers its client with ErrorCode.STALE_ORDER).
STALE = -1


class OrderBook:
    """customer_id -> last_order, and the engineer (node) that accepted that last order.

    Orders are idempotent per customer, as a client session is in Raft or an idempotent producer
    in Kafka: a customer's order numbers only grow, and an order is applied only if its number is
    above the customer's last order.  A repeat of the last order changes nothing and is answered
    with the engineer of the first acceptance; an older one changes nothing and is refused as
    stale.  So the state is two entries per customer, whatever the number of orders placed.

    Why: the previous design kept every order ever applied, (customer, order) -> engineer, to
    answer a retry of any of them.  That cost ~85 bytes per order on every node, grew without
    bound under a steady load (~1.7 MB/s at 20k orders/s), and made the snapshot grow with it:
    at 20 million orders, serialising took 1.8 s inside the event loop (past the failure timeout)
    and restoring took 16 s (measured in-process).  A retry is only ever of a customer's newest
    order, which is all this keeps."""

    __slots__ = ("records", "engineers")

    def __init__(self) -> None:
        self.records: dict[int, int] = {}
        self.engineers: dict[int, int] = {}  # customer -> the engineer of its last order

    def apply(self, entry: Entry) -> int:
        """Apply one entry; returns what `apply_all` returns for it."""
        return self.apply_all(ENTRY.pack(*entry))[0]

    def apply_all(self, block: bytes | bytearray | memoryview) -> list[int]:
        """Apply a block of packed entries (protocol/entries.py) in order.  Returns, per entry,
        the engineer whose acceptance stands for that order (its own when applied, the first
        one's for a repeat of the customer's last order) or STALE when a later order of the
        customer was applied first.  One loop here instead of a call per entry: this runs for
        every committed entry on every node."""
        records = self.records
        engineers = self.engineers
        get = records.get
        accepted: list[int] = []
        add = accepted.append
        for _view, customer_id, order_number, engineer in ENTRY.iter_unpack(block):
            last = get(customer_id)
            if last is None or order_number > last:
                records[customer_id] = order_number
                engineers[customer_id] = engineer
                add(engineer)
            elif order_number == last:
                add(engineers[customer_id])
            else:
                add(STALE)
        return accepted

    def last_order(self, customer_id: int) -> int:
        return self.records.get(customer_id, -1)

    def range(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """Records with lo <= customer_id < hi, sorted; iterates whichever side is smaller."""
        if hi - lo <= len(self.records):
            recs = self.records
            return [(c, recs[c]) for c in range(lo, hi) if c in recs]
        return sorted((c, o) for c, o in self.records.items() if lo <= c < hi)

    def digest(self) -> str:
        """sha256 of the sorted records and their engineers, so two nodes can be compared
        without shipping them."""
        flat = array("i")
        for customer_id in sorted(self.records):
            flat.append(customer_id)
            flat.append(self.records[customer_id])
            flat.append(self.engineers[customer_id])
        return hashlib.sha256(flat.tobytes()).hexdigest()

    def serialize(self) -> bytes:
        """Compact binary snapshot: three arrays (customers, last orders, engineers) instead of
        a struct per record keep a million customers fast."""
        customers = array("i", self.records.keys())
        last_orders = array("i", self.records.values())
        engineers = bytes(self.engineers.values())  # same keys, same order: always set together
        return b"".join((_SNAP_MAGIC, _COUNT.pack(len(customers)), customers.tobytes(), last_orders.tobytes(), engineers))

    @classmethod
    def deserialize(cls, data: bytes) -> "OrderBook":
        """Raises ValueError on a snapshot that does not parse (the caller treats it as lost).
        Also reads the previous format (every order applied, "LFSM1"): a data dir written
        before keeps its state."""
        view = memoryview(data)
        magic = bytes(view[:5])
        if magic not in (_SNAP_MAGIC, _SNAP_MAGIC_V1):
            raise ValueError("snapshot has no state-machine header")
        pos = 5
        try:
            (n,) = _COUNT.unpack_from(view, pos)
            pos += 8
            customers = array("i")
            customers.frombytes(view[pos : pos + 4 * n])
            pos += 4 * n
            last_orders = array("i")
            last_orders.frombytes(view[pos : pos + 4 * n])
            pos += 4 * n
            if magic == _SNAP_MAGIC:
                engineers = bytes(view[pos : pos + n])
                pos += n
            else:
                engineers, pos = _v1_engineers(view, pos, customers, last_orders)
        except (struct.error, ValueError) as exc:
            raise ValueError(f"snapshot is truncated: {exc}") from None
        if len(customers) != n or len(last_orders) != n or len(engineers) != n or pos != len(view):
            raise ValueError("snapshot length does not match its counts")
        book = cls()
        book.records = dict(zip(customers, last_orders))
        if len(book.records) != n:
            raise ValueError("snapshot lists a customer twice")
        book.engineers = dict(zip(customers, engineers))
        return book


def _v1_engineers(view: memoryview, pos: int, customers: array, last_orders: array) -> tuple[bytes, int]:
    """The engineer of each customer's last order, from an "LFSM1" snapshot's table of every
    applied order (u64 keys, then one engineer byte each); returns it and the end position."""
    (m,) = _COUNT.unpack_from(view, pos)
    pos += 8
    keys = array("Q")
    keys.frombytes(view[pos : pos + 8 * m])
    pos += 8 * m
    table = dict(zip(keys, bytes(view[pos : pos + m])))
    if len(keys) != m or len(table) != m:
        raise ValueError("the order table does not match its count")
    pos += m
    try:
        engineers = bytes(table[order_key(c, o)] for c, o in zip(customers, last_orders))
    except KeyError:
        raise ValueError("a customer's last order is missing from the order table") from None
    return engineers, pos


_NO_BLOCK = (-1, -1)  # Log._block_at when no block is held: no (first, last) matches it


class Log:
    """Entries base_index+1 .. last_index, packed back to back in one bytearray (the layout of
    protocol/entries.py); everything up to base_index lives in the snapshot.

    Packed rather than a list of tuples because the same bytes go out in every `Append` and into
    the WAL: a slice of this array is a ready block, and a backup extends it with the block it
    received."""

    # last_index and last_view are kept up to date by every change rather than worked out when
    # asked: the core reads them ~14 times in each unloaded write's four loop turns, and a
    # property is a call each time.
    #
    # `_block` is the last block `slice` made or `extend` received, and `_block_at` the (first,
    # last) index it holds, until the log changes: the same range is asked for more than once
    # (a primary persists, replicates and applies its new entries; a backup persists the block
    # it received), and each copy would be a bytes object built again.
    __slots__ = ("base_index", "base_view", "data", "last_index", "last_view", "_block", "_block_at")

    def __init__(self, base_index: int = 0, base_view: int = 0, data: bytes | bytearray = b"") -> None:
        if len(data) % ENTRY_SIZE:
            raise ValueError(f"log of {len(data)} bytes is not a whole number of entries")
        self.base_index = base_index
        self.base_view = base_view
        self.data = bytearray(data)
        self._block = b""
        self._ends()

    def _ends(self) -> None:
        self._block_at = _NO_BLOCK
        data = self.data
        self.last_index = self.base_index + len(data) // ENTRY_SIZE
        self.last_view = VIEW.unpack_from(data, len(data) - ENTRY_SIZE)[0] if data else self.base_view

    def view_at(self, index: int) -> int:
        """View of the entry at `index`; -1 when it is behind the snapshot (unknown) or past the end."""
        if index == self.base_index:
            return self.base_view
        if index < self.base_index or index > self.last_index:
            return -1
        return VIEW.unpack_from(self.data, (index - self.base_index - 1) * ENTRY_SIZE)[0]

    def entry(self, index: int) -> Entry:
        """The entry at `index` as a tuple (it must be in the log, past base_index)."""
        if not self.base_index < index <= self.last_index:
            raise IndexError(f"index {index} is not in the log ({self.base_index + 1}..{self.last_index})")
        return ENTRY.unpack_from(self.data, (index - self.base_index - 1) * ENTRY_SIZE)

    def slice(self, first: int, last: int) -> bytes:
        """The block of entries first..last inclusive (both in the log, first > base_index)."""
        at = self._block_at
        if at[0] == first and at[1] == last:
            return self._block
        off = self.base_index + 1
        block = self._block = bytes(self.data[(first - off) * ENTRY_SIZE : (last - off + 1) * ENTRY_SIZE])
        self._block_at = (first, last)
        return block

    def extend(self, block: bytes | bytearray | memoryview) -> None:
        """Append a block of packed entries (whole ones: the codec checks an Append's length)."""
        if block:
            self.data += block
            first = self.last_index + 1
            self.last_index += len(block) // ENTRY_SIZE
            self.last_view = VIEW.unpack_from(block, len(block) - ENTRY_SIZE)[0]
            if type(block) is bytes:  # immutable: it can stand for these entries
                self._block = block
                self._block_at = (first, self.last_index)
            else:
                self._block_at = _NO_BLOCK

    def truncate_from(self, index: int) -> None:
        """Drop entries >= index."""
        if index <= self.last_index:
            del self.data[max(0, index - self.base_index - 1) * ENTRY_SIZE :]
            self._ends()

    def compact(self, upto: int) -> None:
        """Forget entries <= upto (they are in a snapshot now)."""
        if upto <= self.base_index:
            return
        view = self.view_at(upto)
        del self.data[: (upto - self.base_index) * ENTRY_SIZE]
        self.base_index = upto
        self.base_view = view
        self._ends()

    def reset(self, base_index: int, base_view: int) -> None:
        self.base_index = base_index
        self.base_view = base_view
        self.data = bytearray()
        self._ends()
