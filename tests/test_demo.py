"""`lfctl demo`: the summary logic, the fault cycle, and one short unattended run end to end."""

from __future__ import annotations

import argparse
import re

import pytest

from orchestrator.demo import CYCLE, Demo, FaultCycle, Summary
from tests.conftest import processes_using, wait_for


def summary(**kw) -> Summary:
    base = dict(duration_s=60.2, nodes=3, customers=8, orders_ok=123456, orders_failed=0, failovers=4,
                longest_failover_s=0.512, longest_stall_s=0.61,
                faults=[("kill", 2, "ok"), ("restart", 2, "ok"), ("kill", 1, "ok"), ("pause", None, "skipped")],
                digests={1: "ab" * 32, 2: "ab" * 32, 3: "ab" * 32}, applied={1: 99, 2: 99, 3: 99}, missing=[],
                problems=[])
    base.update(kw)
    return Summary(**base)


def test_summary_of_a_consistent_run() -> None:
    s = summary()
    assert s.consistent
    text = s.text()
    assert "orders acknowledged   123,456" in text
    assert "faults injected       kill x2, restart x1" in text  # the skipped pause is not counted
    assert "failovers             4, longest 512 ms" in text
    assert "longest client stall  610 ms" in text
    assert "every node has the same digest (abababababababab..., applied index 99)" in text
    assert "all present in the final state" in text


def test_summary_of_an_inconsistent_run() -> None:
    s = summary(digests={1: "ab" * 32, 2: "cd" * 32, 3: None}, missing=[(3, 41, 40)],
                problems=["the cluster was not back in sync within 20 s"], orders_failed=2)
    assert not s.consistent and not s.same_digest
    text = s.text()
    assert "NOT the same on every node" in text and "node 3: unknown" in text
    assert "customer 3 acked 41 but has 40" in text
    assert "(2 failed)" in text and "not back in sync" in text


def test_fault_cycle_order_and_alternating_pause_target() -> None:
    cycle = FaultCycle("tcp://127.0.0.1:1", 1.0)
    seen = []
    for _ in range(2 * len(CYCLE)):
        step = cycle.next_step()
        seen.append((step.action, step.target))
        cycle.step_index += 1
        if cycle.step_index % len(CYCLE) == 0:
            cycle.rounds += 1
    assert seen[:6] == [("kill", "backup"), ("restart", "same"), ("kill", "primary"), ("restart", "same"),
                        ("pause", "backup"), ("resume", "same")]
    assert seen[10] == ("pause", "primary")  # the second round pauses the primary


def test_check_acked_uses_the_primary_state() -> None:
    demo = Demo.__new__(Demo)

    class Load:
        acked = [5, -1, 7]

    demo.load = Load()
    records = {1: {"role": "backup", "records": {"0": 5, "2": 6}},
               2: {"role": "primary", "records": {"0": 6, "2": 7}}}
    assert demo.check_acked(records) == []
    records[2]["records"]["2"] = 6
    assert demo.check_acked(records) == [(2, 7, 6)]


@pytest.mark.integration
def test_demo_runs_unattended_and_ends_consistent(cluster_factory) -> None:
    handle = cluster_factory(3, name="demo")
    result = handle.lfctl("demo", "--duration", "12", "--interval", "1.5", "--customers", "4",
                          "--base-port", str(handle.base_port), timeout=150)
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-2000:]
    assert "every node has the same digest" in out
    assert "all present in the final state" in out
    acked = int(re.search(r"orders acknowledged\s+([\d,]+)", out).group(1).replace(",", ""))
    assert acked > 0
    # The narration: the faults, as the supervisor saw them.
    assert "demo: kill node" in out and "killed (pid" in out
    assert "caught up" in out
    assert re.search(r"faults injected\s+kill x\d", out)
    # Everything it started is gone; the data dir is marked as the demo's (the next run wipes it).
    assert "is down" in out
    assert (handle.data_dir / "lfctl-demo.txt").exists()
    wait_for(lambda: not processes_using(handle.data_dir), 15.0, "every demo process to exit")


def test_demo_rejects_bad_arguments(tmp_path) -> None:
    from tests.conftest import run_lfctl

    result = run_lfctl(["demo", "--duration", "0", "--data-dir", str(tmp_path / "d")], tmp_path)
    assert result.returncode == 2 and "--duration" in result.stderr
    assert not (tmp_path / "d").exists()


def test_demo_namespace_defaults() -> None:
    from orchestrator.cli import build_parser

    args = build_parser().parse_args(["demo"])
    assert isinstance(args, argparse.Namespace)
    assert args.duration is None and args.interval == 4.0 and args.customers == 8


def test_demo_refuses_a_data_dir_it_did_not_make(tmp_path) -> None:
    from tests.conftest import run_lfctl

    data = tmp_path / "mine"
    data.mkdir()
    (data / "view.json").write_text("{}")  # another cluster's data
    result = run_lfctl(["demo", "--duration", "5", "--data-dir", str(data)], tmp_path)
    assert result.returncode == 1 and "not a demo's" in result.stderr
    assert (data / "view.json").read_text() == "{}"
