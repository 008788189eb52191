"""The packed layout of log entries, shared by the in-memory log, the wire and the WAL.

An entry is 16 bytes: u32 view, i32 customer_id, i32 order_number, i32 engineer_id, little
endian.  A run of entries is just their records back to back (a "block").  The same bytes serve
all three places: a primary appends an order's record to its log, slices a block out of it for
each backup's `Append` and for its own WAL; a backup gets the block off the wire, extends its log
with it and writes it to its WAL as it came.  Entries are unpacked to tuples only where their
fields are needed: when applied to the state machine.

Why: with a tuple per entry, every entry was packed once per backup and once more for the WAL,
and unpacked on every backup (about 0.4 µs per entry and node on the 2-core machine,
bench/backup_bench.py), on the path of every order.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from protocol.messages import Entry

ENTRY = struct.Struct("<Iiii")
ENTRY_SIZE = ENTRY.size  # 16
VIEW = struct.Struct("<I")  # the first field of an entry, read alone (`Log.view_at`)

__all__ = ["ENTRY", "ENTRY_SIZE", "VIEW", "count", "pack_entries", "unpack_entries"]


def pack_entries(entries: Iterable[Entry]) -> bytes:
    """Entry tuples -> one block.  Raises ValueError naming the entry that does not fit."""
    out = bytearray()
    for i, entry in enumerate(entries):
        try:
            out += ENTRY.pack(*entry)
        except (struct.error, TypeError) as exc:
            raise ValueError(
                f"entry {i} {entry!r} does not fit (view u32, customer i32, order i32, engineer i32): {exc}"
            ) from None
    return bytes(out)


def unpack_entries(block: bytes | bytearray | memoryview) -> list[Entry]:
    """One block -> entry tuples (for tests, tools and invariant checks; the hot path iterates
    `ENTRY.iter_unpack` itself)."""
    return list(ENTRY.iter_unpack(block))


def count(block: bytes | bytearray | memoryview, what: str = "entry block") -> int:
    """Entries in a block.  Raises ValueError, naming `what`, for anything that is not a
    bytes-like whole number of entries: the one check the codec and the WAL both make."""
    if isinstance(block, memoryview):
        size = block.nbytes
    elif isinstance(block, (bytes, bytearray)):
        size = len(block)
    else:
        raise ValueError(f"{what} must be a packed entry block (protocol/entries.py), not {type(block).__name__}")
    n, rest = divmod(size, ENTRY_SIZE)
    if rest:
        raise ValueError(f"{what} of {size} bytes is not a whole number of {ENTRY_SIZE}-byte entries")
    return n
