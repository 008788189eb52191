"""Trace marks (protocol/tracepoints.py) and the timeline bench/critical_path.py builds from them.

The marks are off unless LFCTL_TRACE_DIR is set at start, so they are tried in child processes;
the timeline is tried on made-up traces whose segments are known, and once end to end on a real
relay and a real cluster.  No timing is asserted: only that every step is found where it is."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import critical_path as cp  # noqa: E402

from protocol import tracepoints  # noqa: E402

CHILD = """
from protocol.tracepoints import TRACING, mark
print(TRACING)
if TRACING:
    mark("clients"); mark("flushed"); mark("appends_sent")
"""


def run_child(env_dir: Path | None) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if k != tracepoints.ENV}
    env["PYTHONPATH"] = str(ROOT)
    if env_dir is not None:
        env[tracepoints.ENV] = str(env_dir)
    proc = subprocess.Popen([sys.executable, "-c", CHILD], env=env, stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    return out.strip(), proc.pid


def test_a_traced_process_writes_its_marks_in_order_at_exit(tmp_path: Path) -> None:
    out, pid = run_child(tmp_path)
    assert out == "True"
    marks = tracepoints.load(tmp_path / f"{pid}.trace")
    assert [step for _ns, step in marks] == ["clients", "flushed", "appends_sent"]
    assert marks[0][0] <= marks[1][0] <= marks[2][0]


def test_without_the_variable_nothing_is_marked_or_written(tmp_path: Path) -> None:
    out, _pid = run_child(None)
    assert out == "False"
    assert list(tmp_path.iterdir()) == []


def test_a_bad_trace_line_is_named_by_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "1.trace"
    path.write_text("clients 10\n# a comment\npeers twelve\n")
    with pytest.raises(ValueError, match=r"1\.trace:3: not a trace mark"):
        tracepoints.load(path)
    path.write_text("lunch 10\n")
    with pytest.raises(ValueError, match=r"1\.trace:1"):
        tracepoints.load(path)


def us(t: float) -> int:
    return int(t * 1000)  # the traces are in nanoseconds


def marks(*pairs: tuple[str, float]) -> cp.Marks:
    return cp.Marks([(us(t), step) for step, t in pairs])


def test_a_write_splits_into_segments_that_add_up_to_its_latency() -> None:
    # sent at 0, answered at 500 µs; a heartbeat turn before the write must not be taken for it
    primary = marks(("peers", -50), ("flushed", -49), ("clients", 80), ("flushed", 110), ("appends_sent", 130),
                    ("peers", 300), ("peers", 340), ("flushed", 380), ("replies_sent", 420))
    b1 = marks(("peers", -45), ("acks_sent", -40), ("peers", 125), ("flushed", 150), ("wal_written", 160),
               ("acks_sent", 180))  # awake before the primary marked its sends: still this write's
    b2 = marks(("peers", 200), ("flushed", 230), ("wal_written", 240), ("acks_sent", 320))
    t = cp.timeline(0, us(500), primary, [b1, b2])
    assert t is not None
    assert t["to_primary"] == 80 and t["request_turn"] == 50
    assert t["replication"] == 190  # appends sent (130) -> the later ack (320)
    assert t["ack_to_primary"] == 20 and t["commit_turn"] == 80 and t["to_client"] == 80
    assert sum(t[k] for k in cp.SEGMENTS) == pytest.approx(t["total"]) == 500
    assert t["first_backup_wake"] == -5 and t["last_backup_wake"] == 70
    assert t["backup_turn"] == pytest.approx((55 + 120) / 2)
    assert t["ack_turns"] == 2
    assert t["request_turn.core"] == 30 and t["request_turn.send"] == 20
    assert t["commit_turn.core"] == 40 and t["commit_turn.send"] == 40
    assert t["backup_turn.wal"] == pytest.approx(10)
    assert t["backup_turn.send"] == pytest.approx((20 + 80) / 2)


def test_a_write_missing_a_step_is_left_out_and_the_relay_gets_no_node_split() -> None:
    primary = marks(("clients", 10), ("appends_sent", 20), ("peers", 60), ("replies_sent", 70))
    backup = marks(("peers", 30), ("acks_sent", 40))
    t = cp.timeline(0, us(90), primary, [backup])
    assert t is not None and "backup_turn.wal" not in t and "request_turn.core" not in t
    silent = marks(("peers", 30))  # woke, never acknowledged
    assert cp.timeline(0, us(90), primary, [backup, silent]) is None
    round_ = cp.analyse([(0, us(90)), (us(1000), us(1090))], primary, [backup])
    assert round_["writes"] == 2 and round_["matched"] == 1
    assert round_["median_us"]["total"] == 90


def test_a_real_relay_and_cluster_mark_every_step_of_a_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = cp.run(writes=40, rounds=1, nodes=3, out_dir=tmp_path)
    assert (tmp_path / "path.json").exists()
    for name in ("relay", "lfctl"):
        r = result[name]
        # A write is left out only when a mark lands after the client has its reply: when the
        # process lost its core between a send and its mark, which a busy host makes common
        # (a missing or misplaced mark would leave out every write).
        assert r["matched"][0] > 20, (name, r["matched"])
        for key in ("total", *cp.SEGMENTS, "backup_turn"):
            assert r["us"][key]["median"] is not None, (name, key)
        assert r["us"]["total"]["median"] > 0
    assert "backup_turn.wal" in result["lfctl"]["us"] and "backup_turn.wal" not in result["relay"]["us"]
    # and docs/performance.md's table renders from it: a row per segment, both targets filled in
    import report  # noqa: PLC0415

    monkeypatch.setattr(report, "RESULTS", tmp_path)
    lines = report.section_path()
    total = next(line for line in lines if "end to end" in line)
    cells = [c.strip() for c in total.strip("|").split("|")]
    assert cells[1] != "–" and cells[2] != "–", total
    assert sum(1 for line in lines if line.startswith("| ")) == 1 + len(report.PATH_ROWS)
