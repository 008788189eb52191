"""The in-process benchmarks that `make bench` runs first, at toy sizes: each must run to the end
and write its JSON.  Only that they work and what they report is shaped right -- never a timing
(DEVELOPERS.md: speed is measured, not asserted).  A change of a message layout once broke
bench/codec_bench.py and only `make bench` noticed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_bench(script: str, *args: str) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize(
    ("script", "args", "result", "keys"),
    [
        ("codec_bench.py", ("--repeat", "1"), "codec.json", ("results",)),
        ("storage_bench.py", ("--batches", "20", "--entries", "8"), "storage.json", ("results",)),
        ("core_bench.py", ("--orders", "3000", "--batch", "12", "--repeats", "1"), "core.json", ("cpu_us_per_order",)),
        ("zmq_calls_bench.py", ("--messages", "300", "--repeats", "1"), "zmq_calls.json", ("calls_us",)),
        ("backup_bench.py", ("--entries", "12", "--appends", "40", "--repeats", "1"), "backup.json", ("cpu_us_per_append",)),
        # under valgrind: the interpreter's start-up alone takes seconds, so one workload, tiny
        ("instructions.py", ("--only", "core", "--orders", "300"), "instructions.json", ("instructions",)),
        ("instructions.py", ("--only", "cold", "--writes", "20"), "instructions.json", ("instructions",)),
    ],
)
def test_in_process_bench_runs_and_writes_its_json(tmp_path: Path, script: str, args: tuple[str, ...],
                                                   result: str, keys: tuple[str, ...]) -> None:
    out_args = ("--out", str(tmp_path / result)) if script in ("codec_bench.py", "storage_bench.py", "core_bench.py") \
        else ("--out-dir", str(tmp_path))
    run_bench(script, *args, *out_args)
    doc = json.loads((tmp_path / result).read_text())
    for key in keys:
        assert doc[key], f"{script} wrote an empty {key!r}"
    if script == "instructions.py" and "core" in args:
        assert doc["instructions"]["."]["core_per_order"] > 0
    if script == "instructions.py" and "cold" in args:
        cold = doc["instructions"]["."]["cold_per_write"]
        # a write runs the Python of four loop turns, and with the caches wiped it misses
        assert cold["instructions"] > 50_000 and cold["ll_misses"] > 1_000, cold


def test_steal_percent_is_the_stolen_share_of_all_cpu_time() -> None:
    """The suite records how much CPU the hypervisor gave to other guests during each
    experiment; the share is of every kind of CPU time, idle included."""
    sys.path.insert(0, str(ROOT / "bench"))
    import suite  # noqa: PLC0415

    from collections import namedtuple  # noqa: PLC0415

    times = namedtuple("times", "user nice system idle iowait irq softirq steal guest")
    before = times(10, 0, 5, 80, 0, 0, 0, 5, 3)
    after = times(40, 0, 15, 110, 0, 0, 0, 35, 9)  # +30 user, +10 system, +30 idle, +30 stolen
    assert suite.steal_percent(before, after) == 30.0
    assert suite.steal_percent(after, after) == 0.0


BURNER = """
import sys, threading, time
def burn(seconds):
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
worker = threading.Thread(target=burn, args=(0.3,)) if sys.argv[1] == "worker" else None
if worker:
    worker.start()
    worker.join()
else:
    burn(0.15)
print("done", flush=True)
sys.stdin.read()  # stay alive (idle) until the test has read the times
"""


@pytest.mark.parametrize("where", ["main", "worker"])
def test_cpu_meter_tells_the_event_loop_thread_from_the_others(where: str) -> None:
    """The limit's CPU per write is split into each process's main thread (the event loop and
    all the Python) and the rest (ZeroMQ's I/O thread): CPU burnt in another thread must not be
    counted as the loop's, and CPU burnt in the main thread must be."""
    sys.path.insert(0, str(ROOT / "bench"))
    from common import CpuMeter  # noqa: PLC0415

    proc = subprocess.Popen([sys.executable, "-c", BURNER, where], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        meter = CpuMeter({"burner": proc.pid}).start()
        assert proc.stdout is not None and proc.stdout.readline().strip() == "done"
        got = meter.stop(ops=1000)  # µs per op = milliseconds
        total, loop = got["cpu_us_per_op"]["burner"], got["loop_cpu_us_per_op"]["burner"]
    finally:
        proc.kill()
        proc.wait()
    assert total > 100
    if where == "main":
        assert loop >= 0.8 * total, (loop, total)
    else:
        assert loop < 0.2 * total, (loop, total)
