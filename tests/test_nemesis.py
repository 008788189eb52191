"""Fault injection: parsing fault lists and partitions, `lfctl partition` / `lfctl heal` on a real
cluster (the view service sees the cut), and one real nemesis run that must end valid.

The nemesis run is short on purpose (a few seconds, 3 nodes): it is the CI proof that the whole
pipeline -- open-loop load, faults through the supervisor, heal, settle, final state, history,
checker, report -- holds together on real processes.  Longer runs are `lfctl load ... --check`.
"""

from __future__ import annotations

import json

import pytest

from loadgen.checker import check_run
from loadgen.history import load_history
from orchestrator.nemesis import FAULTS, parse_faults
from orchestrator.partition import PartitionError, parse_groups, plan_partition

from .conftest import ClusterHandle, wait_for

# --------------------------------------------------------------------------- parsing


def test_parse_faults():
    assert parse_faults("kill-primary, pause,kill-primary") == ["kill-primary", "pause"]
    assert parse_faults(",".join(FAULTS)) == list(FAULTS)
    for bad in ("", " , ", "kill-everything", "pause,nap"):
        with pytest.raises(ValueError):
            parse_faults(bad)


def test_parse_groups():
    assert parse_groups("1,2|3", [1, 2, 3]) == [[1, 2], [3]]
    assert parse_groups(["2,1", "3"], [1, 2, 3]) == [[1, 2], [3]]
    assert parse_groups("3|1", [1, 2, 3]) == [[3], [1]]  # node 2 stays connected to both
    for bad in ("1,2", "1|1", "1|4", "1||2", "a|b", "|"):
        with pytest.raises(PartitionError):
            parse_groups(bad, [1, 2, 3])


def test_plan_cuts_each_side_from_the_other_and_the_view_service_from_one():
    plan = plan_partition([[1, 2], [3]])
    assert plan.per_node == {1: ([3], False), 2: ([3], False), 3: ([1, 2], True)}
    plan = plan_partition([[1, 2], [3]], view_service_side=1)
    assert plan.per_node == {1: ([3], True), 2: ([3], True), 3: ([1, 2], False)}
    partial = plan_partition([[1], [3]])
    assert 2 not in partial.per_node and partial.per_node[1] == ([3], False)
    with pytest.raises(PartitionError):
        plan_partition([[1], [2]], view_service_side=2)


def test_partition_usage_errors_need_no_cluster(capsys, tmp_path, monkeypatch):
    from orchestrator.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["partition", "1,2"]) == 2
    assert "two groups" in capsys.readouterr().err
    assert main(["partition", "1|9"]) == 2
    assert main(["load", "--rate", "10"]) == 2
    assert "--duration" in capsys.readouterr().err
    assert main(["load", "--rate", "10", "--duration", "1", "--orders", "3"]) == 2
    assert main(["load", "--customers", "1", "--orders", "1", "--nemesis", "nap"]) == 2
    assert main(["load", "--rate", "10", "--duration", "1", "--check", "--no-run-dir"]) == 2
    assert main(["load"]) == 2


# --------------------------------------------------------------------------- real clusters


@pytest.mark.integration
def test_partition_and_heal(cluster: ClusterHandle):
    status = cluster.wait_in_sync()
    primary = status["view"]["primary"]
    other = [n for n in (1, 2, 3) if n != primary]
    # Cut the primary off; the view service stays with the other two, which take over.
    out = cluster.lfctl("partition", f"{other[0]},{other[1]}|{primary}")
    assert out.returncode == 0, out.stderr
    assert "partitioned" in out.stdout
    status = wait_for(lambda: s if (s := cluster.status())["view"]["primary"] in other
                      and primary not in s["view"]["backups"] else None, 20, "a new primary")
    assert status["partition"]["groups"] == [sorted(other), [primary]]
    dump = json.loads(cluster.lfctl("dump", str(primary), "--json").stdout)
    assert dump["ok"]
    # Orders still commit on the majority side.
    out = cluster.lfctl("order", "5", "1")
    assert out.returncode == 0, out.stderr
    out = cluster.lfctl("heal")
    assert out.returncode == 0 and "healed" in out.stdout
    status = cluster.wait_in_sync(timeout=30)
    assert status["partition"] is None
    assert sorted([status["view"]["primary"], *status["view"]["backups"]]) == [1, 2, 3]
    out = cluster.lfctl("read", "5")
    assert "last order 1" in out.stdout


@pytest.mark.integration
def test_nemesis_run_ends_valid(cluster: ClusterHandle):
    runs_dir = cluster.cwd / "runs"
    out = cluster.lfctl("load", "--rate", "150", "--duration", "5", "--customers", "20",
                        "--nemesis", "kill-primary,partition,pause", "--nemesis-interval", "1.5",
                        "--seed", "3", "--check", "--runs-dir", str(runs_dir), "--json",
                        timeout=240)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    doc = json.loads(out.stdout)
    assert doc["check"]["verdict"] == "valid"
    assert doc["mode"] == "open" and doc["ok"] > 0
    assert doc["nemesis"]["events"], doc["nemesis"]
    run = runs_dir / "latest"
    for name in ("results.json", "history.jsonl", "latency.hgrm", "final_state.json",
                 "initial_state.json", "check.json", "report.png", "summary.txt", "samples.npz"):
        assert (run / name).is_file(), name
    assert (run / "logs" / "supervisor.log").is_file()
    records = load_history(run / "history.jsonl")
    faults = [r for r in records if r["process"] == "nemesis"]
    assert any(r["f"].startswith("start-") for r in faults)
    assert any(r["f"].startswith("stop-") for r in faults)
    # Every fault was healed: all three nodes settled and were checked.
    final = json.loads((run / "final_state.json").read_text())
    assert sorted(int(n) for n, d in final["nodes"].items() if d["settled"]) == [1, 2, 3]
    assert check_run(run).verdict == "valid"
    # The same history with one read edited to return an older order number is caught.
    from loadgen.synthetic import stale_read

    mutated = stale_read(records)
    if mutated is not None:  # (a run this short may have no read that can be made stale)
        bad = cluster.cwd / "stale"
        bad.mkdir()
        with open(bad / "history.jsonl", "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in mutated[0])
        out = cluster.lfctl("check", str(bad))
        assert out.returncode == 1, out.stdout + out.stderr
        assert "INVALID" in out.stdout and "read ->" in out.stdout
    report = cluster.lfctl("report", str(run))
    assert report.returncode == 0, report.stderr


def test_cli_constants_match_their_modules():
    # orchestrator.loadrun repeats two constants so `lfctl` starts without importing the checker
    import loadgen.checker
    import orchestrator.loadrun
    import orchestrator.nemesis

    assert orchestrator.loadrun.FAULTS == orchestrator.nemesis.FAULTS
    assert orchestrator.loadrun.DEFAULT_TIME_LIMIT == loadgen.checker.DEFAULT_TIME_LIMIT
