"""Timestamps of the steps of a replicated write, for bench/critical_path.py.

Off unless LFCTL_TRACE_DIR is set when the process starts.  Then `mark(step)` records the step
and CLOCK_MONOTONIC in nanoseconds, in memory, and the process writes them to
`<dir>/<pid>.trace` (one "step nanoseconds" line each) when it exits normally.  CLOCK_MONOTONIC
is one clock for every process on the host, so the marks of a client, a primary and its backups
line up into one timeline of each write.

Why marks and not a profiler: a profile says where CPU goes, not where a write waits.  Callers
test `TRACING` before calling, so with tracing off the hot path pays one global read per mark.
The node (node/server.py) and the bench relay (bench/relay.py) mark the same steps, so their
timelines compare step by step:

    clients       a loop turn woke with client requests to read
    peers         a loop turn woke with replication traffic (appends, acks) to read
    flushed       the core's flush returned (node only)
    appends_sent  a primary sent the turn's appends to its backups
    wal_written   the turn's records are in the WAL (node only)
    acks_sent     a backup sent its acknowledgement
    replies_sent  a primary sent the turn's client replies
"""

from __future__ import annotations

import atexit
import os
import time
from pathlib import Path

ENV = "LFCTL_TRACE_DIR"
STEPS = ("clients", "peers", "flushed", "appends_sent", "wal_written", "acks_sent", "replies_sent")
MAX_MARKS = 1_000_000  # a bound on memory (~100 MB); marks past it are dropped and counted

_dir = os.environ.get(ENV)
TRACING = bool(_dir)
_marks: list[tuple[str, int]] = []
_dropped = [0]


def mark(step: str) -> None:
    """Record `step` now (call only when TRACING)."""
    if len(_marks) < MAX_MARKS:
        _marks.append((step, time.monotonic_ns()))
    else:
        _dropped[0] += 1


def dump(directory: Path) -> Path | None:
    """Write this process's marks to `<directory>/<pid>.trace`; nothing when there are none."""
    if not _marks:
        return None
    path = Path(directory) / f"{os.getpid()}.trace"
    lines = [f"{step} {ns}\n" for step, ns in _marks]
    if _dropped[0]:
        lines.append(f"# dropped {_dropped[0]} marks past {MAX_MARKS}\n")
    path.write_text("".join(lines))
    return path


def load(path: Path) -> list[tuple[int, str]]:
    """A trace file -> [(nanoseconds, step)] in time order.  Raises ValueError on a line that is
    neither a mark nor a comment, naming the file and line."""
    out = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] not in STEPS or not parts[1].isdigit():
            raise ValueError(f"{path}:{number}: not a trace mark: {line[:80]!r}")
        out.append((int(parts[1]), parts[0]))
    out.sort()
    return out


if TRACING:
    atexit.register(dump, Path(_dir))  # type: ignore[arg-type]
