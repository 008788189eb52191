"""Tests for node.storage: the WAL + snapshot a node recovers from.

Recovery has to be right for every way a write can be cut short, so the torn-tail test tries
every byte offset, and a hypothesis state machine checks replay against a plain model of the log.
Bytes for malformed records are built here by hand from the documented format, which also pins
the format down independently of the encoder."""

from __future__ import annotations

import logging
import os
import shutil
import struct
import tempfile
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from node.storage import (
    SNAPSHOT_NAME,
    WAL_HEADER_SIZE,
    WAL_NAME,
    AppendEntries,
    CommitMark,
    Recovered,
    SnapshotRecord,
    Storage,
    TruncateFrom,
    ViewMark,
    wipe,
)
from protocol.entries import pack_entries, unpack_entries


def entries(first: int, n: int, view: int = 1) -> bytes:
    """Distinct, recognisable entries (packed): customer = index, order = index * 10."""
    return pack_entries((view, i, i * 10, i % 7) for i in range(first, first + n))


def reopen(directory: Path, policy: str = "wal") -> tuple[Storage, Recovered]:
    s = Storage(directory, policy)
    return s, s.load()


def record_bytes(payload: bytes) -> bytes:
    """One WAL record framed by hand: u32 length, u32 crc32(payload), payload."""
    return struct.pack("<II", len(payload), zlib.crc32(payload)) + payload


def entries_payload(first: int, ents: bytes) -> bytes:
    return struct.pack("<BQI", 1, first, len(ents) // 16) + ents


# --------------------------------------------------------------------------- round trips


def test_fresh_directory_is_created_and_reported_fresh(tmp_path: Path) -> None:
    d = tmp_path / "a" / "node-1"
    s, rec = reopen(d)
    assert rec.fresh and rec.notes == [] and rec.entries == b"" and rec.snapshot_data is None
    assert (d / WAL_NAME).exists()
    s.close()
    _, rec = reopen(d)
    assert not rec.fresh  # an empty but valid WAL: nothing was lost


def test_entries_at_the_end_are_framed_as_every_record_is(tmp_path: Path) -> None:
    """A loaded node's turn (entries right after the last, alone) takes a shorter path through
    `write`; it must put the very bytes of the general path in the file, and leave anything
    else -- a gap, an overwrite, an empty block -- to the general path's checks."""
    s, _ = reopen(tmp_path)
    s.write([AppendEntries(1, entries(1, 3))])  # the short path
    s.write([AppendEntries(4, entries(4, 2)), CommitMark(4)])  # the general path
    s.write([AppendEntries(6, entries(6, 1))])
    with pytest.raises(ValueError, match="gap"):
        s.write([AppendEntries(9, entries(9, 1))])
    s.write([AppendEntries(7, b"")])  # nothing to frame: the general path writes an empty record
    s.write([AppendEntries(5, entries(5, 2, view=2))])  # an overwrite from index 5 on
    s.close()
    raw = (tmp_path / WAL_NAME).read_bytes()[WAL_HEADER_SIZE:]
    expected = b"".join((
        record_bytes(entries_payload(1, entries(1, 3))),
        record_bytes(entries_payload(4, entries(4, 2))), record_bytes(struct.pack("<BQ", 3, 4)),  # a commit mark
        record_bytes(entries_payload(6, entries(6, 1))),
        record_bytes(entries_payload(7, b"")),
        record_bytes(entries_payload(5, entries(5, 2, view=2))),
    ))
    assert raw == expected
    _, rec = reopen(tmp_path)
    assert rec.entries == entries(1, 4) + entries(5, 2, view=2) and rec.commit_index == 4


def test_round_trip_appends_truncates_marks(tmp_path: Path) -> None:
    s, _ = reopen(tmp_path)
    s.write([ViewMark(1), AppendEntries(1, entries(1, 5)), CommitMark(3)])
    s.write([TruncateFrom(4), AppendEntries(4, entries(4, 3, view=2)), ViewMark(2)])
    s.write([CommitMark(6)])
    s.close()
    s, rec = reopen(tmp_path)
    assert not rec.fresh and rec.notes == []
    assert rec.entries == (entries(1, 3) + entries(4, 3, view=2))
    assert (rec.commit_index, rec.view_number, rec.last_index, rec.last_view) == (6, 2, 6, 2)
    # Appending after a reopen continues the same log.
    s.write([AppendEntries(7, entries(7, 1, view=2))])
    s.close()
    _, rec = reopen(tmp_path)
    assert rec.last_index == 7


def test_marks_only_grow_and_commit_is_clipped(tmp_path: Path) -> None:
    s, _ = reopen(tmp_path)
    s.write([AppendEntries(1, entries(1, 4)), CommitMark(4), ViewMark(5), ViewMark(3), CommitMark(2)])
    s.write([TruncateFrom(3)])  # not something a correct core does, but recovery must stay sane
    s.close()
    _, rec = reopen(tmp_path)
    assert rec.view_number == 5
    assert rec.commit_index == 2  # max mark 4, clipped to the last index held


def test_append_at_lower_index_overwrites(tmp_path: Path) -> None:
    s, _ = reopen(tmp_path)
    s.write([AppendEntries(1, entries(1, 10))])
    s.write([AppendEntries(4, entries(4, 2, view=3))])  # replaces 4..10 with two entries
    s.close()
    _, rec = reopen(tmp_path)
    assert rec.entries == (entries(1, 3) + entries(4, 2, view=3))


def test_gap_is_refused_at_write_time(tmp_path: Path) -> None:
    s, _ = reopen(tmp_path)
    s.write([AppendEntries(1, entries(1, 3))])
    size = (tmp_path / WAL_NAME).stat().st_size
    with pytest.raises(ValueError, match="gap"):
        s.write([CommitMark(1), AppendEntries(5, entries(5, 1))])
    assert (tmp_path / WAL_NAME).stat().st_size == size  # nothing of the bad batch was written
    s.write([AppendEntries(4, entries(4, 1))])  # the tracked state was not disturbed either
    s.close()
    _, rec = reopen(tmp_path)
    assert rec.last_index == 4 and rec.commit_index == 0


def test_bad_values_raise_value_error_before_writing(tmp_path: Path) -> None:
    s, _ = reopen(tmp_path)
    for bad in ([AppendEntries(1, ((1, 2, 0, 0),))], [AppendEntries(1, b"\x00" * 15)],
                [AppendEntries(0, b"")], [CommitMark(-1)], [SnapshotRecord(-1, 0, b"")],
                [SnapshotRecord(1, 0, b"", b"\x00" * 17)]):
        with pytest.raises(ValueError):
            s.write(bad)
    with pytest.raises(TypeError):
        s.write([object()])
    assert (tmp_path / WAL_NAME).stat().st_size == WAL_HEADER_SIZE


def test_write_without_load_recovers_first(tmp_path: Path) -> None:
    s, _ = reopen(tmp_path)
    s.write([AppendEntries(1, entries(1, 2))])
    s.close()
    with open(tmp_path / WAL_NAME, "ab") as f:
        f.write(b"\x07\x00")  # torn garbage
    s = Storage(tmp_path, "wal")
    s.write([AppendEntries(3, entries(3, 1))])
    s.close()
    _, rec = reopen(tmp_path)
    assert rec.last_index == 3 and rec.notes == []


# --------------------------------------------------------------------------- snapshots


def test_snapshot_tail_and_reopen(tmp_path: Path) -> None:
    s, _ = reopen(tmp_path)
    s.write([ViewMark(4), AppendEntries(1, entries(1, 100, view=4)), CommitMark(90)])
    wal_before = (tmp_path / WAL_NAME).stat().st_size
    s.write([SnapshotRecord(80, 4, b"state@80", entries(81, 20, view=4))])
    s.finish_snapshot()
    assert (tmp_path / WAL_NAME).stat().st_size < wal_before  # the old log is gone
    assert not list(tmp_path.glob("*.tmp"))
    s.write([AppendEntries(101, entries(101, 5, view=4)), CommitMark(103)])
    s.close()
    _, rec = reopen(tmp_path)
    assert (rec.snapshot_index, rec.snapshot_view, rec.snapshot_data) == (80, 4, b"state@80")
    assert rec.entries == (entries(81, 25, view=4))
    assert (rec.commit_index, rec.view_number, rec.last_index) == (103, 4, 105)


def test_snapshot_beyond_log_and_commit_at_least_snapshot(tmp_path: Path) -> None:
    """A learner installs the primary's snapshot well past its own short log."""
    s, _ = reopen(tmp_path)
    s.write([AppendEntries(1, entries(1, 3))])
    s.write([SnapshotRecord(1000, 7, b"big", b"")])
    s.write([AppendEntries(1001, entries(1001, 2, view=7))])
    s.close()
    _, rec = reopen(tmp_path)
    assert rec.snapshot_index == 1000 and rec.entries == (entries(1001, 2, view=7))
    assert rec.commit_index == 1000 and rec.last_view == 7


def test_records_around_snapshot_in_one_batch(tmp_path: Path) -> None:
    s, _ = reopen(tmp_path)
    s.write([AppendEntries(1, entries(1, 10)), CommitMark(8), SnapshotRecord(5, 1, b"s", entries(6, 5)),
             AppendEntries(11, entries(11, 2)), ViewMark(9)])
    s.close()
    _, rec = reopen(tmp_path)
    assert rec.snapshot_index == 5 and rec.entries == (entries(6, 7))
    assert (rec.commit_index, rec.view_number) == (8, 9)


def test_append_overlapping_snapshot_drops_overlap(tmp_path: Path) -> None:
    s, _ = reopen(tmp_path)
    s.write([AppendEntries(1, entries(1, 10)), SnapshotRecord(6, 1, b"s", entries(7, 4))])
    s.write([AppendEntries(4, entries(4, 5, view=2))])  # 4..6 lie under the snapshot
    s.close()
    _, rec = reopen(tmp_path)
    assert rec.snapshot_index == 6 and rec.entries == (entries(7, 2, view=2))


def test_snapshot_file_is_written_off_the_loop_and_records_meanwhile_survive_any_crash(tmp_path: Path, monkeypatch) -> None:
    """The snapshot file is written by a thread; writes go on meanwhile, into the current WAL
    (complete on its own) and into the new one.  A crash before, during or after putting the new
    pair in place loses none of them."""
    import threading

    import node.storage as mod

    real_write = mod._write_file_synced
    release = threading.Event()

    def slow_snapshot(path: Path, data: bytes) -> None:
        if path.name == SNAPSHOT_NAME + ".tmp":
            assert release.wait(10)
        real_write(path, data)

    monkeypatch.setattr(mod, "_write_file_synced", slow_snapshot)
    live = tmp_path / "live"
    s, _ = reopen(live)
    s.write([ViewMark(2), AppendEntries(1, entries(1, 10)), CommitMark(8)])
    s.write([SnapshotRecord(8, 1, b"s8", entries(9, 2))])  # returns while the file is being written
    s.write([AppendEntries(11, entries(11, 3)), CommitMark(12)])
    s.write([TruncateFrom(14), AppendEntries(14, entries(14, 1, view=2))])

    crash_in_flight = tmp_path / "in-flight"
    shutil.copytree(live, crash_in_flight)
    _, rec = reopen(crash_in_flight)  # the old pair: no snapshot, everything in the WAL
    assert rec.snapshot_index == 0 and rec.entries == entries(1, 13) + entries(14, 1, view=2)
    assert (rec.commit_index, rec.view_number) == (12, 2)

    release.set()
    real_replace = os.replace
    monkeypatch.setattr(mod.os, "replace", lambda a, b: (_ for _ in ()).throw(OSError(5, "crash"))
                        if str(b).endswith(WAL_NAME) else real_replace(a, b))
    with pytest.raises(OSError, match="crash"):
        s.finish_snapshot()  # snapshot renamed, the new WAL still under its temp name
    monkeypatch.setattr(mod.os, "replace", real_replace)
    crash_mid_install = tmp_path / "mid-install"
    shutil.copytree(live, crash_mid_install)
    _, rec = reopen(crash_mid_install)  # rolled forward: the new pair, with what came meanwhile
    assert (rec.snapshot_index, rec.snapshot_data) == (8, b"s8")
    assert rec.entries == entries(9, 5) + entries(14, 1, view=2) and (rec.commit_index, rec.view_number) == (12, 2)

    s, rec = reopen(live)
    assert rec.snapshot_index == 8 and rec.entries == entries(9, 5) + entries(14, 1, view=2)
    s.write([SnapshotRecord(12, 1, b"s12", entries(13, 1) + entries(14, 1, view=2))])
    s.write([AppendEntries(15, entries(15, 1, view=2))])
    s.close()  # finishes the install
    assert not list(live.glob("*.tmp"))
    _, rec = reopen(live)
    assert (rec.snapshot_index, rec.snapshot_data) == (12, b"s12")
    assert rec.entries == entries(13, 1) + entries(14, 2, view=2)


def test_crash_window_old_wal_with_new_snapshot(tmp_path: Path) -> None:
    """Snapshot renamed, WAL not yet replaced and no temp left: the old log is replayed and the
    part the snapshot covers is dropped."""
    s, _ = reopen(tmp_path)
    s.write([AppendEntries(1, entries(1, 10)), CommitMark(7), ViewMark(2)])
    s.close()
    old_wal = (tmp_path / WAL_NAME).read_bytes()
    s, _ = reopen(tmp_path)
    s.write([SnapshotRecord(6, 1, b"s6", entries(7, 4))])
    s.close()
    (tmp_path / WAL_NAME).write_bytes(old_wal)
    _, rec = reopen(tmp_path)
    assert rec.snapshot_index == 6 and rec.entries == (entries(7, 4))
    assert (rec.commit_index, rec.view_number) == (7, 2) and not rec.fresh


def test_crash_window_rolls_forward_temp_wal(tmp_path: Path) -> None:
    """Snapshot renamed, new WAL still under its temp name: load() finishes the install."""
    s, _ = reopen(tmp_path)
    s.write([AppendEntries(1, entries(1, 10)), ViewMark(3)])
    s.close()
    old_wal = (tmp_path / WAL_NAME).read_bytes()
    s, _ = reopen(tmp_path)
    s.write([SnapshotRecord(8, 1, b"s8", pack_entries([(1, 99, 99, 99)]))])  # a tail unlike the old log
    s.close()
    os.replace(tmp_path / WAL_NAME, tmp_path / (WAL_NAME + ".tmp"))
    (tmp_path / WAL_NAME).write_bytes(old_wal)
    _, rec = reopen(tmp_path)
    assert unpack_entries(rec.entries) == [(1, 99, 99, 99)] and rec.view_number == 3
    assert not (tmp_path / (WAL_NAME + ".tmp")).exists()


def test_stale_temp_wal_is_discarded(tmp_path: Path) -> None:
    s, _ = reopen(tmp_path)
    s.write([AppendEntries(1, entries(1, 3))])
    s.close()
    (tmp_path / (WAL_NAME + ".tmp")).write_bytes(b"half a file")
    (tmp_path / (SNAPSHOT_NAME + ".tmp")).write_bytes(b"half a snapshot")
    _, rec = reopen(tmp_path)
    assert rec.last_index == 3 and not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("damage", ["flip_data", "flip_index", "truncate", "extend", "magic", "tiny"])
def test_corrupt_snapshot_gives_fresh_with_note(tmp_path: Path, damage: str, caplog) -> None:
    s, _ = reopen(tmp_path)
    s.write([AppendEntries(1, entries(1, 10)), SnapshotRecord(5, 1, b"x" * 64, entries(6, 5))])
    s.close()
    p = tmp_path / SNAPSHOT_NAME
    raw = bytearray(p.read_bytes())
    if damage == "flip_data":
        raw[-10] ^= 0x01
    elif damage == "flip_index":
        raw[8] ^= 0x01
    elif damage == "truncate":
        del raw[-1]
    elif damage == "extend":
        raw += b"\0"
    elif damage == "magic":
        raw[0] ^= 0xFF
    else:
        raw = raw[:5]
    p.write_bytes(bytes(raw))
    with caplog.at_level(logging.ERROR, logger="node.storage"):
        s, rec = reopen(tmp_path)
    assert rec.fresh and rec.entries == b"" and rec.snapshot_data is None and rec.snapshot_index == 0
    assert len(rec.notes) == 1 and "snapshot" in rec.notes[0]
    assert any(r.levelno == logging.ERROR for r in caplog.records)
    # The node catches up like a wiped node; what it writes now must survive the next restart.
    s.write([AppendEntries(1, entries(1, 2, view=9))])
    s.close()
    _, rec = reopen(tmp_path)
    assert not rec.fresh and rec.entries == (entries(1, 2, view=9))
    assert (tmp_path / (SNAPSHOT_NAME + ".corrupt")).exists()


def test_wal_without_its_snapshot_is_unusable(tmp_path: Path) -> None:
    s, _ = reopen(tmp_path)
    s.write([AppendEntries(1, entries(1, 10)), SnapshotRecord(5, 1, b"s", entries(6, 5))])
    s.close()
    (tmp_path / SNAPSHOT_NAME).unlink()
    _, rec = reopen(tmp_path)
    assert rec.fresh and rec.entries == b"" and "snapshot" in rec.notes[0]


def test_bad_wal_header_is_unusable(tmp_path: Path) -> None:
    s, _ = reopen(tmp_path)
    s.write([AppendEntries(1, entries(1, 3))])
    s.close()
    p = tmp_path / WAL_NAME
    raw = bytearray(p.read_bytes())
    raw[10] ^= 0x40  # inside base_index: caught by the header checksum
    p.write_bytes(bytes(raw))
    _, rec = reopen(tmp_path)
    assert rec.fresh and rec.entries == b"" and "header" in rec.notes[0]


# --------------------------------------------------------------------------- torn and corrupt tails


def _three_records(directory: Path) -> tuple[list[int], bytes]:
    """Write three steps; return the WAL size after each and the final bytes."""
    s, _ = reopen(directory)
    sizes = [WAL_HEADER_SIZE]
    for step in ([AppendEntries(1, entries(1, 4))], [AppendEntries(5, entries(5, 3))],
                 [AppendEntries(8, entries(8, 3))]):
        s.write(step)
        sizes.append((directory / WAL_NAME).stat().st_size)
    s.close()
    return sizes, (directory / WAL_NAME).read_bytes()


def test_torn_tail_at_every_offset_of_last_record(tmp_path: Path, caplog) -> None:
    sizes, raw = _three_records(tmp_path / "orig")
    start, end = sizes[2], sizes[3]
    for cut in range(start, end):
        d = tmp_path / f"cut{cut}"
        d.mkdir()
        (d / WAL_NAME).write_bytes(raw[:cut])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="node.storage"):
            s, rec = reopen(d)
        assert rec.entries == (entries(1, 7)), cut
        assert not rec.fresh
        if cut > start:
            assert len(rec.notes) == 1
            assert f"cut off {cut - start} bytes at offset {start}" in rec.notes[0]
            assert "recovered 7 entries" in rec.notes[0] and rec.notes[0].startswith(f"{d.name}/wal.log: ")
            assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == rec.notes
        else:
            assert rec.notes == []
        assert (d / WAL_NAME).stat().st_size == start  # really truncated on disk
        s.write([AppendEntries(8, entries(8, 1, view=5))])
        s.close()
        _, rec = reopen(d)
        assert rec.entries == (entries(1, 7)) + (entries(8, 1, view=5)) and rec.notes == []
        shutil.rmtree(d)


@pytest.mark.parametrize("where", ["payload", "crc", "length_small", "length_huge", "length_past_end"])
def test_damage_in_middle_record_cuts_from_there(tmp_path: Path, where: str) -> None:
    sizes, raw = _three_records(tmp_path)
    buf = bytearray(raw)
    mid = sizes[1]  # start of the second record
    if where == "payload":
        buf[mid + 8 + 20] ^= 0x10
    elif where == "crc":
        buf[mid + 5] ^= 0x01
    elif where == "length_small":
        struct.pack_into("<I", buf, mid, 0)
    elif where == "length_huge":
        struct.pack_into("<I", buf, mid, 0xFFFFFFF0)
    else:
        struct.pack_into("<I", buf, mid, len(buf))
    (tmp_path / WAL_NAME).write_bytes(bytes(buf))
    _, rec = reopen(tmp_path)
    assert rec.entries == (entries(1, 4))
    assert len(rec.notes) == 1 and f"at offset {mid}" in rec.notes[0]
    assert (tmp_path / WAL_NAME).stat().st_size == mid


def _wal_with(tmp_path: Path, *payloads: bytes) -> Path:
    s, _ = reopen(tmp_path)
    s.write([AppendEntries(1, entries(1, 3))])
    s.close()
    with open(tmp_path / WAL_NAME, "ab") as f:
        for p in payloads:
            f.write(record_bytes(p))
    return tmp_path


def test_gap_in_wal_is_cut_off(tmp_path: Path) -> None:
    _wal_with(tmp_path, entries_payload(5, entries(5, 2)), struct.pack("<BQ", 3, 2))
    _, rec = reopen(tmp_path)
    assert rec.entries == (entries(1, 3)) and rec.commit_index == 0  # the later mark goes too
    assert "gap" in rec.notes[0]


@pytest.mark.parametrize("payload", [
    b"\x09" + b"\0" * 8,  # unknown record type
    struct.pack("<BQ", 2, 1)[:-1],  # truncate body too short
    struct.pack("<BQI", 1, 4, 3) + b"\0" * 16,  # count disagrees with length
    entries_payload(0, entries(1, 1)),  # index 0
])
def test_undecodable_body_is_cut_off(tmp_path: Path, payload: bytes) -> None:
    _wal_with(tmp_path, payload)
    _, rec = reopen(tmp_path)
    assert rec.entries == (entries(1, 3)) and len(rec.notes) == 1


def test_hand_built_records_match_documented_format(tmp_path: Path) -> None:
    """A WAL written purely from the documented format loads: the format is the contract."""
    head = struct.pack("<4sHHQ", b"LFWL", 1, 0, 0)
    raw = head + struct.pack("<I", zlib.crc32(head))
    raw += record_bytes(entries_payload(1, entries(1, 2))) + record_bytes(struct.pack("<BQ", 4, 6))
    raw += record_bytes(struct.pack("<BQ", 3, 2)) + record_bytes(struct.pack("<BQ", 2, 2))
    (tmp_path / WAL_NAME).write_bytes(raw)
    _, rec = reopen(tmp_path)
    assert rec.entries == (entries(1, 1)) and rec.view_number == 6 and rec.commit_index == 1


# --------------------------------------------------------------------------- policies and wipe


def test_memory_policy_writes_no_files(tmp_path: Path) -> None:
    d = tmp_path / "node-1"
    s = Storage(d, "memory")
    rec = s.load()
    assert rec.fresh
    s.write([AppendEntries(1, entries(1, 3)), CommitMark(2), SnapshotRecord(2, 1, b"s", entries(3, 1))])
    with pytest.raises(ValueError):
        s.write([AppendEntries(9, entries(9, 1))])  # still validated
    s.close()
    assert not d.exists()
    assert Storage(d, "memory").load().fresh


def test_fsync_policy(tmp_path: Path, monkeypatch) -> None:
    import node.storage as mod

    calls: list[int] = []
    real = mod._fdatasync
    monkeypatch.setattr(mod, "_fdatasync", lambda fd: (calls.append(fd), real(fd)))
    s, _ = reopen(tmp_path, "fsync")
    s.write([AppendEntries(1, entries(1, 64)), CommitMark(10), ViewMark(1)])
    s.write([AppendEntries(65, entries(65, 64))])
    assert len(calls) == 2  # one per write() call: group commit
    s.write([SnapshotRecord(100, 1, b"s", entries(101, 28))])
    s.close()
    _, rec = reopen(tmp_path, "fsync")
    assert rec.snapshot_index == 100 and rec.last_index == 128 and rec.commit_index == 100


def test_one_os_write_per_step(tmp_path: Path, monkeypatch) -> None:
    import node.storage as mod

    s, _ = reopen(tmp_path)
    writes: list[int] = []
    real = os.write
    monkeypatch.setattr(mod.os, "write", lambda fd, b: (writes.append(len(b)), real(fd, b))[1])
    s.write([AppendEntries(1, entries(1, 64)), CommitMark(1), ViewMark(1), TruncateFrom(60)])
    assert len(writes) == 1
    s.close()


def test_a_short_write_is_completed(tmp_path: Path, monkeypatch) -> None:
    """The kernel may take part of a buffer: the rest follows, and nothing is written twice."""
    import node.storage as mod

    s, _ = reopen(tmp_path)
    s.write([AppendEntries(1, entries(1, 2))])
    real = os.write
    taken: list[int] = []

    def short_once(fd: int, b) -> int:
        monkeypatch.setattr(mod.os, "write", real)
        taken.append(real(fd, bytes(b)[:7]))
        return taken[-1]

    monkeypatch.setattr(mod.os, "write", short_once)
    s.write([AppendEntries(3, entries(3, 4))])
    assert taken == [7]
    s.write([AppendEntries(7, entries(7, 1))])
    s.close()
    _, rec = reopen(tmp_path)
    assert rec.entries == entries(1, 7) and rec.notes == []


def test_failed_write_is_rolled_back(tmp_path: Path, monkeypatch) -> None:
    import node.storage as mod

    s, _ = reopen(tmp_path)
    s.write([AppendEntries(1, entries(1, 2))])
    real = os.write

    def short_then_fail(fd: int, b) -> int:
        monkeypatch.setattr(mod.os, "write", lambda fd, b: (_ for _ in ()).throw(OSError(28, "No space")))
        return real(fd, bytes(b)[:5])

    monkeypatch.setattr(mod.os, "write", short_then_fail)
    with pytest.raises(OSError):
        s.write([AppendEntries(3, entries(3, 4))])
    monkeypatch.setattr(mod.os, "write", real)
    s.write([AppendEntries(3, entries(3, 1, view=2))])
    s.close()
    _, rec = reopen(tmp_path)
    assert rec.entries == (entries(1, 2)) + (entries(3, 1, view=2)) and rec.notes == []


def test_failed_snapshot_install_blocks_writes_until_reload(tmp_path: Path, monkeypatch) -> None:
    import node.storage as mod

    s, _ = reopen(tmp_path)
    s.write([AppendEntries(1, entries(1, 5)), ViewMark(2)])
    real = os.replace

    def fail_on_wal(src, dst):
        if str(dst).endswith(WAL_NAME):
            raise OSError(5, "I/O error")
        return real(src, dst)

    monkeypatch.setattr(mod.os, "replace", fail_on_wal)
    s.write([SnapshotRecord(3, 1, b"s3", entries(4, 2))])  # the file is written off the loop...
    with pytest.raises(OSError, match="I/O error"):
        s.finish_snapshot()  # ...and putting it in place fails
    monkeypatch.setattr(mod.os, "replace", real)
    with pytest.raises(OSError, match="reload required"):
        s.write([AppendEntries(6, entries(6, 1))])
    s.close()
    s, rec = reopen(tmp_path)  # rolls the new WAL forward
    assert rec.snapshot_index == 3 and rec.entries == (entries(4, 2)) and rec.view_number == 2
    s.write([AppendEntries(6, entries(6, 1))])
    s.close()
    assert reopen(tmp_path)[1].last_index == 6


def test_unknown_policy_and_unreadable_state(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="policy"):
        Storage(tmp_path, "sometimes")
    odd = tmp_path / "odd"
    (odd / WAL_NAME).mkdir(parents=True)  # an I/O problem, not corrupt content: raise, clearly
    with pytest.raises(OSError, match="cannot read node state file"):
        Storage(odd, "wal").load()


def test_wipe(tmp_path: Path) -> None:
    s, _ = reopen(tmp_path)
    s.write([AppendEntries(1, entries(1, 3)), SnapshotRecord(2, 1, b"s", entries(3, 1))])
    s.close()
    (tmp_path / "node.log").write_text("keep me")
    removed = wipe(tmp_path)
    assert {p.name for p in removed} == {WAL_NAME, SNAPSHOT_NAME}
    assert (tmp_path / "node.log").exists()
    _, rec = reopen(tmp_path)
    assert rec.fresh and rec.notes == []
    assert wipe(tmp_path / "missing") == []


# --------------------------------------------------------------------------- property tests

ENTRY = st.tuples(st.integers(0, 2**32 - 1), st.integers(-(2**31), 2**31 - 1),
                  st.integers(-(2**31), 2**31 - 1), st.integers(0, 63))


class Model:
    """The log as a dict index -> entry, plus the snapshot and marks: the obvious semantics."""

    def __init__(self) -> None:
        self.snap: tuple[int, int, bytes] | None = None
        self.log: dict[int, tuple] = {}
        self.commit = 0
        self.view = 0

    @property
    def snap_index(self) -> int:
        return self.snap[0] if self.snap else 0

    @property
    def last(self) -> int:
        return max(self.log, default=self.snap_index)

    def apply(self, r) -> None:
        if isinstance(r, AppendEntries):
            self.log = {i: e for i, e in self.log.items() if i < r.first_index}
            for k, e in enumerate(unpack_entries(r.entries)):
                if r.first_index + k > self.snap_index:
                    self.log[r.first_index + k] = e
        elif isinstance(r, TruncateFrom):
            self.log = {i: e for i, e in self.log.items() if i < r.index}
        elif isinstance(r, CommitMark):
            self.commit = max(self.commit, r.index)
        elif isinstance(r, ViewMark):
            self.view = max(self.view, r.number)
        else:
            self.snap = (r.index, r.view, r.data)
            self.log = {r.index + 1 + k: e for k, e in enumerate(unpack_entries(r.tail))}

    def check(self, rec: Recovered) -> None:
        assert sorted(self.log) == list(range(self.snap_index + 1, self.last + 1))
        assert unpack_entries(rec.entries) == [self.log[i] for i in sorted(self.log)]
        assert rec.snapshot_index == self.snap_index
        assert rec.snapshot_data == (self.snap[2] if self.snap else None)
        assert rec.snapshot_view == (self.snap[1] if self.snap else 0)
        assert rec.view_number == self.view
        assert rec.commit_index == min(max(self.commit, self.snap_index), self.last)
        assert rec.notes == []


class StorageMachine(RuleBasedStateMachine):
    """Random batches of records, random reopens; every reopen must recover the model."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="lfctl-storage-"))
        self.storage = Storage(self.dir, "wal")
        self.storage.load()
        self.model = Model()
        self.batch: list = []

    def _add(self, r) -> None:
        self.batch.append(r)
        self.model.apply(r)

    @rule(data=st.data(), ents=st.lists(ENTRY, max_size=6))
    def append(self, data, ents) -> None:
        first = data.draw(st.integers(1, self.model.last + 1), label="first_index")
        self._add(AppendEntries(first, pack_entries(ents)))

    @rule(data=st.data())
    def truncate(self, data) -> None:
        self._add(TruncateFrom(data.draw(st.integers(0, self.model.last + 2), label="index")))

    @rule(index=st.integers(0, 40))
    def commit(self, index) -> None:
        self._add(CommitMark(index))

    @rule(number=st.integers(0, 10))
    def view(self, number) -> None:
        self._add(ViewMark(number))

    @rule(data=st.data(), view=st.integers(0, 5), blob=st.binary(max_size=20), tail=st.lists(ENTRY, max_size=4))
    def snapshot(self, data, view, blob, tail) -> None:
        index = data.draw(st.integers(0, self.model.last + 5), label="snap_index")
        self._add(SnapshotRecord(index, view, blob, pack_entries(tail)))

    @rule()
    def flush(self) -> None:
        self.storage.write(self.batch)
        self.batch = []

    @precondition(lambda self: not self.batch)
    @rule()
    def reopen(self) -> None:
        self.storage.close()
        self.storage = Storage(self.dir, "wal")
        self.model.check(self.storage.load())

    @invariant()
    def tracks_last_index(self) -> None:
        if not self.batch:
            assert self.storage.last_index == self.model.last

    def teardown(self) -> None:
        self.storage.write(self.batch)
        self.storage.close()
        s = Storage(self.dir, "wal")
        self.model.check(s.load())
        s.close()
        shutil.rmtree(self.dir, ignore_errors=True)


TestStorageMachine = StorageMachine.TestCase
TestStorageMachine.settings = settings(max_examples=150, stateful_step_count=30, deadline=None,
                                       suppress_health_check=[HealthCheck.too_slow])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.integers(1, 5), min_size=1, max_size=6), data=st.data())
def test_random_damage_never_raises_and_keeps_a_prefix(tmp_path: Path, steps, data) -> None:
    """Whatever happens to the bytes after the header, load() returns the state after some
    prefix of the steps written (never raises, never invents entries)."""
    d = Path(tempfile.mkdtemp(dir=tmp_path))
    s, _ = reopen(d)
    states, nxt = [b""], 1
    for n in steps:
        s.write([AppendEntries(nxt, entries(nxt, n))])
        nxt += n
        states.append((entries(1, nxt - 1)))
    s.close()
    raw = bytearray((d / WAL_NAME).read_bytes())
    action = data.draw(st.sampled_from(["flip", "cut", "garbage"]))
    if action == "flip":
        pos = data.draw(st.integers(WAL_HEADER_SIZE, len(raw) - 1))
        raw[pos] ^= 1 << data.draw(st.integers(0, 7))
    elif action == "cut":
        del raw[data.draw(st.integers(WAL_HEADER_SIZE, len(raw))):]
    else:
        raw += data.draw(st.binary(min_size=1, max_size=64))
    (d / WAL_NAME).write_bytes(bytes(raw))
    s, rec = reopen(d)
    assert rec.entries in states and not rec.fresh
    s.write([AppendEntries(rec.last_index + 1, entries(rec.last_index + 1, 1))])
    s.close()
    _, again = reopen(d)
    assert again.last_index == rec.last_index + 1 and again.notes == []
