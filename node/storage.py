"""A node's durable state: a write-ahead log (``wal.log``) and a snapshot (``snapshot.bin``).

The replica core is sans-IO: after every step it hands its shell a list of records
(``Outbox.persist``) that must be on disk *before* any message or reply of that step leaves the
process.  This module turns such a list into exactly one ``os.write`` on an ``O_APPEND`` file
descriptor (and, under the ``fsync`` policy, one ``fdatasync``): one system call per loop turn
no matter how many entries arrived, which is what makes group commit cheap.

Recovery must never be fatal.  Every record carries its length and a CRC32 of its payload, so
a torn tail (the process died mid-write, or the machine lost power under the ``wal`` policy) or
a corrupt record is recognised, cut off with a log line, and the node restarts with the intact
prefix; the primary then resends what is missing.  A state that cannot be trusted at all (a
corrupt snapshot, a mangled WAL header) is reported as ``fresh``: the node then behaves like a
wiped node and catches up from the primary, and must not claim to be durable.

File formats (all little endian)::

    wal.log       header: magic "LFWL", u16 version, u16 flags (0), u64 base_index,
                          u32 crc32(of the preceding 16 bytes)
                  records: u32 length, u32 crc32(payload), payload
                  payload: u8 type + body
                     1 entries   u64 first_index, u32 count, count * (u32 view, i32 customer,
                                 i32 order, i32 engineer)
                     2 truncate  u64 index
                     3 commit    u64 index
                     4 view      u64 number
    snapshot.bin  magic "LFSN", u16 version, u16 flags (0), u64 index, u32 view, u64 length,
                  u32 crc32(index, view, length fields + data), data

``base_index`` in the WAL header is the snapshot index the log continues from.  It lets
recovery tell a WAL that belongs to a snapshot that has gone missing (base > snapshot index:
unusable) from the crash window of a snapshot install (base < snapshot index: the old log is
replayed and everything the snapshot covers is dropped).
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from protocol.entries import ENTRY_SIZE, VIEW, count as entry_count

log = logging.getLogger("node.storage")

POLICIES = ("memory", "wal", "fsync")

WAL_NAME = "wal.log"
SNAPSHOT_NAME = "snapshot.bin"
_TMP_SUFFIX = ".tmp"
_CORRUPT_SUFFIX = ".corrupt"

WAL_MAGIC = b"LFWL"
SNAPSHOT_MAGIC = b"LFSN"
FORMAT_VERSION = 1

# --------------------------------------------------------------------------- binary layout
# Precompiled once: Struct objects skip the format-string cache lookup on every call.
_WAL_HEADER = struct.Struct("<4sHHQ")  # + u32 crc of these 16 bytes
_WAL_HEADER_CRC = struct.Struct("<I")
WAL_HEADER_SIZE = _WAL_HEADER.size + _WAL_HEADER_CRC.size
_SNAP_HEADER = struct.Struct("<4sHHQIQ")  # magic, version, flags, index, view, length
_SNAP_CRC = struct.Struct("<I")
SNAPSHOT_HEADER_SIZE = _SNAP_HEADER.size + _SNAP_CRC.size
_REC_HEADER = struct.Struct("<II")  # payload length, crc32(payload)
_ENTRIES_HEAD = struct.Struct("<BQI")  # type, first_index, count
_U64_BODY = struct.Struct("<BQ")  # type, value (truncate / commit / view)

REC_ENTRIES = 1
REC_TRUNCATE = 2
REC_COMMIT = 3
REC_VIEW = 4

# A record larger than this can only be a corrupted length field.  write() splits bigger
# appends into several records so a legitimate record never reaches it.
MAX_RECORD_SIZE = 1 << 24
_MAX_ENTRIES_PER_RECORD = (MAX_RECORD_SIZE - _ENTRIES_HEAD.size) // ENTRY_SIZE
_U64_MAX = 2**64 - 1

# Entries arrive already packed (protocol/entries.py: the log's and the wire's layout), so an
# entries record is its 13-byte head followed by the block as it is: nothing is packed per entry.


# --------------------------------------------------------------------------- records
# Values, never changed after they are built; AppendEntries and CommitMark are built on every
# loop turn of every node, so, like the hot messages (protocol/messages.py), they are not
# `frozen`, which costs ~0.5 us per object.


@dataclass(slots=True, unsafe_hash=True)
class AppendEntries:
    """Entries at first_index, first_index+1, ...; replaces anything held from first_index on.
    `entries` is a packed block (protocol/entries.py)."""

    first_index: int
    entries: bytes


@dataclass(slots=True, unsafe_hash=True)
class TruncateFrom:
    """Drop every entry at index >= `index`."""

    index: int


@dataclass(slots=True, unsafe_hash=True)
class CommitMark:
    """The highest index known committed."""

    index: int


@dataclass(slots=True, unsafe_hash=True)
class ViewMark:
    """The highest view this node adopted; persisted so fencing survives a restart."""

    number: int


@dataclass(slots=True, unsafe_hash=True)
class SnapshotRecord:
    """State machine as of `index` (appended in view `view`), opaque to storage.  `tail` holds
    entries index+1.. that must survive (a packed block): the WAL is replaced by one holding only
    the tail."""

    index: int
    view: int
    data: bytes
    tail: bytes = b""


StorageRecord = AppendEntries | TruncateFrom | CommitMark | ViewMark | SnapshotRecord


@dataclass(slots=True)
class Recovered:
    """What load() found.  `entries` is a packed block (protocol/entries.py) whose first entry
    is the one at `snapshot_index + 1`.

    `fresh` is True when there was nothing to recover or what was there could not be trusted;
    a fresh node must not present itself as holding durable state."""

    snapshot_index: int = 0
    snapshot_view: int = 0
    snapshot_data: bytes | None = None
    entries: bytearray = field(default_factory=bytearray)
    commit_index: int = 0
    view_number: int = 0
    fresh: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def last_index(self) -> int:
        return self.snapshot_index + len(self.entries) // ENTRY_SIZE

    @property
    def last_view(self) -> int:
        """View of the last entry held (the snapshot's view when the log is empty)."""
        entries = self.entries
        return VIEW.unpack_from(entries, len(entries) - ENTRY_SIZE)[0] if entries else self.snapshot_view


class _Corrupt(Exception):
    """Internal: a record (or file) that cannot be used; the message is the reason."""


# --------------------------------------------------------------------------- encoding


def _record(payload_parts: list[bytes], out: list[bytes]) -> None:
    """Frame one record.  The CRC is chained over the parts so the payload is never copied."""
    crc = 0
    length = 0
    for part in payload_parts:
        crc = zlib.crc32(part, crc)
        length += len(part)
    out.append(_REC_HEADER.pack(length, crc))
    out.extend(payload_parts)


def _encode_entries(first_index: int, block: bytes, out: list[bytes]) -> int:
    """Frame a block as entries records (several if it is huge); returns its entry count."""
    if first_index < 1:
        raise ValueError(f"AppendEntries.first_index must be >= 1, got {first_index}")
    count = entry_count(block, "AppendEntries.entries")
    whole = count <= _MAX_ENTRIES_PER_RECORD  # every append in practice: no copy of the block
    # Split so no legitimate record ever looks like a corrupted length on recovery.
    for start in range(0, max(count, 1), _MAX_ENTRIES_PER_RECORD):
        chunk = block if whole else block[start * ENTRY_SIZE : (start + _MAX_ENTRIES_PER_RECORD) * ENTRY_SIZE]
        try:
            head = _ENTRIES_HEAD.pack(REC_ENTRIES, first_index + start, len(chunk) // ENTRY_SIZE)
        except struct.error as exc:
            raise ValueError(f"cannot encode entries at {first_index + start}: {exc}") from exc
        _record([head, chunk], out)
    return count


def _encode_u64(kind: int, value: int, what: str, out: list[bytes]) -> None:
    if not 0 <= value <= _U64_MAX:
        raise ValueError(f"{what} out of range: {value}")
    _record([_U64_BODY.pack(kind, value)], out)


def _wal_header(base_index: int) -> bytes:
    head = _WAL_HEADER.pack(WAL_MAGIC, FORMAT_VERSION, 0, base_index)
    return head + _WAL_HEADER_CRC.pack(zlib.crc32(head))


def _snapshot_bytes(index: int, view: int, data: bytes) -> bytes:
    try:
        head = _SNAP_HEADER.pack(SNAPSHOT_MAGIC, FORMAT_VERSION, 0, index, view, len(data))
    except struct.error as exc:
        raise ValueError(f"snapshot index/view out of range: {exc}") from exc
    crc = zlib.crc32(data, zlib.crc32(head[4:]))  # covers index, view and length, not just data
    return b"".join((head, _SNAP_CRC.pack(crc), data))


# --------------------------------------------------------------------------- small file helpers


def _fsync_dir(directory: Path) -> None:
    """Make renames/creations in `directory` durable (a rename lives in the directory)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    """os.write, repeated only if the kernel accepted part of the buffer (rare for files)."""
    written = os.write(fd, data)
    if written == len(data):
        return
    view = memoryview(data)[written:]
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _write_file_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_optional(path: Path) -> bytes | None:
    """The file's bytes, or None when it does not exist.  Other OSErrors get a clear message."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OSError(exc.errno, f"cannot read node state file {path}: {exc.strerror}", str(path)) from exc


_fdatasync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync


def wipe(directory: Path | str) -> list[Path]:
    """Remove the node's storage files (``restart --wipe``).  Other files (node.log, node.pid)
    are left alone; they are not state.  Returns the files removed."""
    directory = Path(directory)
    removed: list[Path] = []
    for name in (WAL_NAME, SNAPSHOT_NAME):
        for suffix in ("", _TMP_SUFFIX, _CORRUPT_SUFFIX):
            path = directory / (name + suffix)
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            removed.append(path)
    if removed:
        log.info("%s: wiped %s", directory, ", ".join(p.name for p in removed))
    return removed


# --------------------------------------------------------------------------- Storage


class _SnapshotInstall:
    """A snapshot file being written and synced by a thread: at a million orders that is tens
    of milliseconds (more on a busy machine), too long for the event loop, which goes on
    appending to the current WAL meanwhile.  Only the file is the thread's; renaming it into
    place, and the new WAL, stay with the loop (`Storage._finish_install`)."""

    def __init__(self, snapshot: SnapshotRecord, tail: list[bytes], snap_path: Path) -> None:
        self.snapshot = snapshot
        self.after = list(tail)  # the new WAL's records: the tail, then everything written since
        self.tmp_path = snap_path.with_name(SNAPSHOT_NAME + _TMP_SUFFIX)
        self.seconds = 0.0
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="snapshot-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        started = time.monotonic()
        snap = self.snapshot
        try:
            _write_file_synced(self.tmp_path, _snapshot_bytes(snap.index, snap.view, bytes(snap.data)))
        except BaseException as exc:  # handed to the loop by join()
            self._error = exc
        self.seconds = time.monotonic() - started

    def written(self) -> bool:
        return not self._thread.is_alive()

    def join(self) -> None:
        self._thread.join()
        if isinstance(self._error, OSError):
            raise self._error
        if self._error is not None:
            raise OSError(errno.EIO, f"writing the snapshot failed: {self._error!r}")


class Storage:
    """Write-ahead log + snapshot of one node.  The node's event loop owns it; a snapshot file
    alone is written by a helper thread (`_SnapshotInstall`).

    Call load() once, then write() after every step.  write() validates the whole batch and
    builds one buffer before touching the file, so a bad record raises ValueError with nothing
    written; an OSError during the write rolls the file back to its previous length so a
    later write is never appended behind half a record (which recovery would cut off, taking
    the later records with it)."""

    def __init__(self, directory: Path | str, policy: str) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown durability policy {policy!r}; expected one of {', '.join(POLICIES)}")
        self.directory = Path(directory)
        self.policy = policy
        self._wal_path = self.directory / WAL_NAME
        self._snap_path = self.directory / SNAPSHOT_NAME
        self._fd: int | None = None
        self._installing: _SnapshotInstall | None = None
        self._size = 0  # bytes in wal.log, to roll back a failed write
        self._loaded = False
        self._broken: str | None = None
        # What the disk holds, tracked so write() can refuse a gap (which recovery would treat
        # as corruption) and so a snapshot can restate the marks in the fresh WAL.
        self._snap_index = 0
        self._last_index = 0
        self._commit = 0  # highest CommitMark written (not clipped to the log)
        self._commit_mark = 0  # scratch for load()
        self._view = 0

    # ------------------------------------------------------------------ properties

    @property
    def last_index(self) -> int:
        return self._last_index

    @property
    def snapshot_index(self) -> int:
        return self._snap_index

    @property
    def name(self) -> str:
        """Short prefix for log lines, e.g. ``node-2/wal.log``."""
        return f"{self.directory.name}/{WAL_NAME}"

    # ------------------------------------------------------------------ load

    def load(self) -> Recovered:
        """Read snapshot.bin then wal.log; cut off a torn/corrupt tail; never raise for bad
        content.  Leaves the WAL open for appending.  Raises OSError only for I/O problems
        such as a directory that cannot be read."""
        self.close()
        self._broken = None
        self._loaded = True
        self._snap_index = self._last_index = self._commit = self._view = 0
        if self.policy == "memory":
            return Recovered()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot create node data dir {self.directory}: {exc.strerror}",
                          str(self.directory)) from exc
        self._commit_mark = 0
        rec = self._recover()
        self._snap_index = rec.snapshot_index
        self._last_index = rec.last_index
        self._commit = self._commit_mark
        self._view = rec.view_number
        self._open_wal()
        return rec

    def _recover(self) -> Recovered:
        snap_raw = _read_optional(self._snap_path)
        rec = Recovered()
        if snap_raw is not None:
            try:
                rec.snapshot_index, rec.snapshot_view, rec.snapshot_data = self._parse_snapshot(snap_raw)
            except _Corrupt as exc:
                return self._unusable(rec, f"{self.directory.name}/{SNAPSHOT_NAME}: corrupt snapshot "
                                      f"({exc}); discarding local state, will catch up from the primary")
        self._roll_forward(rec.snapshot_index)
        wal_raw = _read_optional(self._wal_path)
        if wal_raw is None:
            if snap_raw is None:
                self._create_wal(0)
                return rec  # nothing on disk: fresh, and nothing to say about it
            return self._unusable(rec, f"{self.name}: missing next to {SNAPSHOT_NAME} (view and commit "
                                  "marks and the log tail are lost); discarding local state")
        try:
            base = self._parse_wal_header(wal_raw)
        except _Corrupt as exc:
            return self._unusable(rec, f"{self.name}: unusable header ({exc}); discarding local state")
        if base > rec.snapshot_index:
            return self._unusable(rec, f"{self.name}: continues from index {base} but the snapshot ends at "
                                  f"{rec.snapshot_index} (snapshot missing or stale); discarding local state")
        if base < rec.snapshot_index:
            # Crash between installing a snapshot and replacing the WAL: the old log is still
            # consistent; replay drops whatever the snapshot covers.
            log.info("%s: log starts at %d, snapshot at %d; replaying the older log", self.name, base,
                     rec.snapshot_index)
        self._replay(wal_raw, rec)
        # Remember the highest mark as written (a snapshot restates it), report it clipped:
        # the caller can only act on a commit index it holds entries for.
        self._commit_mark = rec.commit_index
        rec.commit_index = min(max(rec.commit_index, rec.snapshot_index), rec.last_index)
        rec.fresh = False
        return rec

    def _unusable(self, rec: Recovered, note: str) -> Recovered:
        """Discard local state we cannot trust.  The files are moved aside (not deleted) for a
        post-mortem, and a new empty WAL is created so later writes are recoverable."""
        log.error("%s", note)
        for path in (self._snap_path, self._wal_path):
            if path.exists():
                os.replace(path, path.with_name(path.name + _CORRUPT_SUFFIX))
        self._create_wal(0)
        return Recovered(fresh=True, notes=[note])

    def _roll_forward(self, snapshot_index: int) -> None:
        """Finish a snapshot install that crashed after renaming snapshot.bin but before
        renaming the new WAL into place; otherwise drop a leftover temp file."""
        tmp_snap = self._snap_path.with_name(SNAPSHOT_NAME + _TMP_SUFFIX)
        if tmp_snap.exists():
            tmp_snap.unlink()
        tmp_wal = self._wal_path.with_name(WAL_NAME + _TMP_SUFFIX)
        tmp_raw = _read_optional(tmp_wal)
        if tmp_raw is None:
            return
        cur_raw = _read_optional(self._wal_path)
        try:
            tmp_base = self._parse_wal_header(tmp_raw)
        except _Corrupt:
            tmp_base = -1
        try:
            cur_base = self._parse_wal_header(cur_raw) if cur_raw is not None else -1
        except _Corrupt:
            cur_base = -1
        # The new WAL is fsynced before the snapshot is renamed, so a temp WAL whose base is
        # the current snapshot index (and the live WAL's is not) is complete.
        if snapshot_index > 0 and tmp_base == snapshot_index and cur_base != snapshot_index:
            os.replace(tmp_wal, self._wal_path)
            self._sync_dir()
            log.info("%s: completed an interrupted snapshot install at index %d", self.name, snapshot_index)
        else:
            tmp_wal.unlink()

    @staticmethod
    def _parse_snapshot(raw: bytes) -> tuple[int, int, bytes]:
        if len(raw) < SNAPSHOT_HEADER_SIZE:
            raise _Corrupt(f"{len(raw)} bytes, shorter than its header")
        magic, version, _flags, index, view, length = _SNAP_HEADER.unpack_from(raw)
        if magic != SNAPSHOT_MAGIC:
            raise _Corrupt("bad magic")
        if version != FORMAT_VERSION:
            raise _Corrupt(f"unsupported format version {version}")
        if len(raw) != SNAPSHOT_HEADER_SIZE + length:
            raise _Corrupt(f"header says {length} bytes of data, file holds {len(raw) - SNAPSHOT_HEADER_SIZE}")
        (crc,) = _SNAP_CRC.unpack_from(raw, _SNAP_HEADER.size)
        data = raw[SNAPSHOT_HEADER_SIZE:]
        if zlib.crc32(data, zlib.crc32(raw[4 : _SNAP_HEADER.size])) != crc:
            raise _Corrupt("bad checksum")
        return index, view, data

    @staticmethod
    def _parse_wal_header(raw: bytes) -> int:
        if len(raw) < WAL_HEADER_SIZE:
            raise _Corrupt(f"{len(raw)} bytes, shorter than the header")
        magic, version, _flags, base = _WAL_HEADER.unpack_from(raw)
        if magic != WAL_MAGIC:
            raise _Corrupt("bad magic")
        (crc,) = _WAL_HEADER_CRC.unpack_from(raw, _WAL_HEADER.size)
        if zlib.crc32(raw[: _WAL_HEADER.size]) != crc:
            raise _Corrupt("bad header checksum")
        if version != FORMAT_VERSION:
            raise _Corrupt(f"unsupported format version {version}")
        return base

    def _replay(self, raw: bytes, rec: Recovered) -> None:
        """Apply the WAL's records to `rec` in order; cut the file at the first bad record."""
        snap = rec.snapshot_index
        entries = rec.entries
        commit = view = 0
        mv = memoryview(raw)
        end = len(raw)
        pos = WAL_HEADER_SIZE
        reason = ""
        while pos < end:
            try:
                if end - pos < _REC_HEADER.size:
                    raise _Corrupt("short record header")
                length, crc = _REC_HEADER.unpack_from(raw, pos)
                if length < 1 or length > MAX_RECORD_SIZE:
                    raise _Corrupt(f"impossible length {length}")
                start = pos + _REC_HEADER.size
                if end - start < length:
                    raise _Corrupt("short record")
                payload = mv[start : start + length]
                if zlib.crc32(payload) != crc:
                    raise _Corrupt("bad checksum")
                kind = payload[0]
                if kind == REC_ENTRIES:
                    if length < _ENTRIES_HEAD.size:
                        raise _Corrupt("short entries record")
                    _, first, count = _ENTRIES_HEAD.unpack_from(payload)
                    if length != _ENTRIES_HEAD.size + count * ENTRY_SIZE:
                        raise _Corrupt(f"entries record of {length} bytes claims {count} entries")
                    if first < 1:
                        raise _Corrupt("entries at index 0")
                    last = snap + len(entries) // ENTRY_SIZE
                    if first > last + 1:
                        raise _Corrupt(f"gap: entries start at {first}, log ends at {last}")
                    new = payload[_ENTRIES_HEAD.size :]
                    if first <= snap:  # the snapshot already covers these
                        new = new[(snap + 1 - first) * ENTRY_SIZE :]
                        first = snap + 1
                    del entries[(first - snap - 1) * ENTRY_SIZE :]
                    entries += new
                elif kind in (REC_TRUNCATE, REC_COMMIT, REC_VIEW):
                    if length != _U64_BODY.size:
                        raise _Corrupt(f"record type {kind} of {length} bytes")
                    _, value = _U64_BODY.unpack_from(payload)
                    if kind == REC_TRUNCATE:
                        del entries[(max(value, snap + 1) - snap - 1) * ENTRY_SIZE :]
                    elif kind == REC_COMMIT:
                        commit = max(commit, value)
                    else:
                        view = max(view, value)
                else:
                    raise _Corrupt(f"unknown record type {kind}")
            except _Corrupt as exc:
                reason = str(exc)
                break
            pos = start + length
        rec.commit_index = commit
        rec.view_number = view
        if pos < end:
            note = (f"{self.name}: cut off {end - pos} bytes at offset {pos} ({reason}); "
                    f"recovered {len(entries) // ENTRY_SIZE} entries")
            log.warning("%s", note)
            rec.notes.append(note)
            os.truncate(self._wal_path, pos)
            if self.policy == "fsync":
                fd = os.open(self._wal_path, os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

    # ------------------------------------------------------------------ write

    def write(self, records: list) -> None:
        """Persist one step's records: one os.write (plus one fdatasync under ``fsync``).

        A SnapshotRecord starts replacing the snapshot and the WAL (`_SnapshotInstall`): the
        snapshot file is written and synced by a thread, while the loop goes on appending to
        the current WAL, which stays complete on its own until the new pair is in place."""
        if not records:
            return
        if not self._loaded:
            # Appending behind an unrecovered torn tail would make the new records unreadable.
            self.load()
        if self._broken:
            raise OSError(errno.EIO, f"{self.name}: storage unusable after an earlier failure: {self._broken}")
        if len(records) == 1 and self._installing is None and self._append_at_end(records[0]):
            return
        # Validate and encode everything against a scratch copy of the tracked state, so a
        # bad record leaves both the file and the tracked state untouched.
        snap, last, commit, view = self._snap_index, self._last_index, self._commit, self._view
        parts: list[bytes] = []
        snapshot: SnapshotRecord | None = None
        snapshot_from = 0  # parts[snapshot_from:] = its tail and the records after it
        for r in records:
            if isinstance(r, AppendEntries):
                if r.first_index > last + 1:
                    raise ValueError(f"AppendEntries at {r.first_index} would leave a gap after {last}")
                count = _encode_entries(r.first_index, r.entries, parts)
                if r.first_index + count - 1 > snap:
                    last = r.first_index + count - 1
                else:  # wholly covered by the snapshot: the log after it is replaced by nothing
                    last = max(snap, min(last, r.first_index - 1))
            elif isinstance(r, TruncateFrom):
                _encode_u64(REC_TRUNCATE, r.index, "TruncateFrom.index", parts)
                last = min(last, max(r.index - 1, snap))
            elif isinstance(r, CommitMark):
                _encode_u64(REC_COMMIT, r.index, "CommitMark.index", parts)
                commit = max(commit, r.index)
            elif isinstance(r, ViewMark):
                _encode_u64(REC_VIEW, r.number, "ViewMark.number", parts)
                view = max(view, r.number)
            elif isinstance(r, SnapshotRecord):
                if r.index < 0:
                    raise ValueError(f"SnapshotRecord.index must be >= 0, got {r.index}")
                _snapshot_bytes(r.index, r.view, b"")  # range check before anything is written
                snapshot = r
                snapshot_from = len(parts)
                snap, last = r.index, r.index + entry_count(r.tail, "SnapshotRecord.tail")
                # The tail goes to the current WAL too: it may hold entries never written yet.
                if r.tail:
                    _encode_entries(r.index + 1, r.tail, parts)
            else:
                raise TypeError(f"not a storage record: {r!r}")
        if self.policy != "memory":
            if self._installing is not None and (snapshot is not None or self._installing.written()):
                self._finish_install()  # before this batch, which then goes to the new WAL
            if parts:
                self._append(b"".join(parts))
                if self._installing is not None:
                    self._installing.after.extend(parts)
            if snapshot is not None:
                self._installing = _SnapshotInstall(snapshot, parts[snapshot_from:], self._snap_path)
        self._snap_index, self._last_index, self._commit, self._view = snap, last, commit, view

    def _append_at_end(self, r: object) -> bool:
        """The turn of a loaded node: entries right after the last one held, alone, no snapshot
        being installed.  Framed here in one go, as `_encode_entries` would frame them; returns
        False, having done nothing, for anything else (the general path then checks it)."""
        if type(r) is not AppendEntries:
            return False
        block, first = r.entries, r.first_index
        size = len(block) if type(block) is bytes else 0
        if not size or size % ENTRY_SIZE or size > _MAX_ENTRIES_PER_RECORD * ENTRY_SIZE or first != self._last_index + 1 or first <= self._snap_index:
            return False
        count = size // ENTRY_SIZE
        head = _ENTRIES_HEAD.pack(REC_ENTRIES, first, count)
        if self.policy != "memory":
            self._append(b"".join((_REC_HEADER.pack(len(head) + size, zlib.crc32(block, zlib.crc32(head))), head, block)))
        self._last_index = first + count - 1
        return True

    def finish_snapshot(self) -> None:
        """Wait for a snapshot being written and put the new snapshot + WAL pair in place (the
        node's loop gets this done by its next write once the file is written; tests and
        close() call it)."""
        if self._installing is not None:
            self._finish_install()

    def _append(self, buf: bytes) -> None:
        fd = self._fd
        assert fd is not None
        try:
            written = os.write(fd, buf)  # `_write_all`, inlined: the kernel takes it whole, as a rule
            if written != len(buf):
                _write_all(fd, memoryview(buf)[written:])
            if self.policy == "fsync":
                _fdatasync(fd)
        except OSError as exc:
            # Roll back a partial record so the next append lands on a record boundary.
            try:
                os.ftruncate(fd, self._size)
            except OSError as exc2:
                self._broken = f"write failed ({exc}) and rollback failed ({exc2})"
            raise
        self._size += len(buf)

    def _finish_install(self) -> None:
        """Put the new pair in place so that a crash at any point leaves either the old pair,
        or the new pair (possibly rolled forward by load()).

        By now the snapshot temp file is written and synced.  Order: new WAL (the restated
        marks, the snapshot's tail and every record written since) to a temp file (fsync) ->
        rename snapshot -> fsync dir -> rename WAL -> fsync dir.  Synced under every disk
        policy: a snapshot deletes the old log, so it must never be half there."""
        inst, self._installing = self._installing, None
        assert inst is not None
        snap = inst.snapshot
        try:
            inst.join()
            marks: list[bytes] = []
            if self._commit:
                _encode_u64(REC_COMMIT, self._commit, "commit", marks)
            if self._view:
                _encode_u64(REC_VIEW, self._view, "view", marks)
            tmp_wal = self._wal_path.with_name(WAL_NAME + _TMP_SUFFIX)
            _write_file_synced(tmp_wal, b"".join([_wal_header(snap.index), *marks, *inst.after]))
            os.replace(inst.tmp_path, self._snap_path)
            self._sync_dir()
            os.replace(tmp_wal, self._wal_path)
            self._sync_dir()
            self.close()
            self._open_wal()
        except OSError as exc:
            # The files may be half-way between old and new pair.  Appending now could land in
            # a WAL that load() later replaces by rolling the temp WAL forward, losing
            # acknowledged records; only load() can sort the pair out.
            self._broken = f"snapshot install failed ({exc}); reload required"
            raise
        log.info("%s: snapshot at index %d (%d bytes, written in %.0f ms off the event loop), log now "
                 "holds %d entries", self.name, snap.index, len(snap.data), inst.seconds * 1000,
                 self._last_index - snap.index)

    # ------------------------------------------------------------------ files

    def _create_wal(self, base: int) -> None:
        """A new WAL appears atomically (temp + rename), so its header is never torn."""
        tmp = self._wal_path.with_name(WAL_NAME + _TMP_SUFFIX)
        _write_file_synced(tmp, _wal_header(base))
        os.replace(tmp, self._wal_path)
        self._sync_dir()

    def _open_wal(self) -> None:
        self._fd = os.open(self._wal_path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self._size = os.fstat(self._fd).st_size

    def _sync_dir(self) -> None:
        _fsync_dir(self.directory)

    def close(self) -> None:
        """Finish a snapshot install under way, then close the WAL.  Under ``wal`` the kernel
        already has every byte; nothing to flush."""
        if self._installing is not None:
            try:
                self._finish_install()
            except OSError:
                log.error("%s: %s", self.name, self._broken)  # load() sorts the files out
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
