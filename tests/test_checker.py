"""The history checker: hand-written histories, property tests (legal histories stay valid, each
mutation into an illegal one is caught, with a small witness), the two search procedures against
a brute-force oracle, the time limit, and `lfctl check` on run directories.

Times are small integers (ns) to keep the histories readable; only their order matters.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from loadgen.checker import (
    check_history,
    check_run,
    is_linearizable,
    prune,
    shrink_witness,
    wgl_linearizable,
    zone_conflict,
)
from loadgen.history import Operation
from loadgen.synthetic import legal_history
from orchestrator.cli import main as lfctl


def inv(p, f, c, v, t):
    return {"process": p, "type": "invoke", "f": f, "customer": c,
            "value": v if f == "order" else None, "time": t}


def done(p, kind, f, c, v, t):
    return {"process": p, "type": kind, "f": f, "customer": c, "value": v, "time": t}


def order(p, c, n, t0, t1, kind="ok"):
    return [inv(p, "order", c, n, t0), done(p, kind, "order", c, n, t1)]


def read(p, c, v, t0, t1, kind="ok"):
    return [inv(p, "read", c, None, t0), done(p, kind, "read", c, v if kind == "ok" else None, t1)]


def hist(*pieces):
    """Records ordered by time (stable: an invoke stays before its own completion)."""
    out = [r for piece in pieces for r in piece]
    return sorted(out, key=lambda r: r["time"])


def final(**nodes):
    """final_state.json-like: final(n1={7: 3}, n2={7: 3})."""
    return {"time": 10**9, "nodes": {k[1:]: {"settled": True, "records": {str(c): v for c, v in recs.items()}}
                                      for k, recs in nodes.items()}}


# --------------------------------------------------------------------------- hand-written


def test_valid_sequential_history():
    h = hist(order(0, 7, 0, 10, 20), read(1, 7, 0, 30, 40), order(0, 7, 1, 50, 60),
             read(1, 7, 1, 70, 80), read(2, 8, -1, 10, 90))
    res = check_history(h, final_state=final(n1={7: 1}, n2={7: 1}))
    assert res.verdict == "valid" and res.exit_code == 0, res.format_text()
    assert res.operations == 5 and res.customers == 2 and res.nodes == [1, 2]


def test_lost_acknowledged_order():
    h = hist(order(0, 7, 0, 10, 20), order(0, 7, 1, 30, 40), order(0, 7, 2, 50, 60))
    res = check_history(h, final_state=final(n1={7: 2}, n2={7: 1}))
    assert res.verdict == "invalid" and res.exit_code == 1
    lost = [v for v in res.violations if v.kind == "lost-order"]
    assert lost and lost[0].customer == 7
    # the witness: order 1 (what node 2 shows), order 2 (acknowledged after it), node 2's state
    assert sorted(str(op.value) for op in lost[0].ops) == ["1", "1", "2"]
    assert "node 2" in lost[0].message and "order 2" in lost[0].message
    assert any(v.kind == "diverged" for v in res.violations)
    text = res.format_text()
    assert "INVALID" in text and "lost" in text


def test_missing_record_counts_as_lost():
    h = hist(order(0, 7, 0, 10, 20))
    res = check_history(h, final_state=final(n1={}))
    assert res.verdict == "invalid"
    assert res.violations[0].kind == "lost-order"


def test_stale_read():
    h = hist(order(0, 7, 0, 10, 20), order(0, 7, 1, 30, 40), read(1, 7, 0, 50, 60))
    res = check_history(h)
    assert res.verdict == "invalid"
    (v,) = res.violations
    assert v.kind == "linearizability" and v.customer == 7
    assert [(op.f, op.value) for op in v.ops] == [("order", 0), ("order", 1), ("read", 0)]
    assert "stale" in v.message


def test_read_of_a_value_nobody_wrote():
    h = hist(order(0, 7, 0, 10, 20), read(1, 7, 5, 30, 40))
    res = check_history(h)
    assert res.verdict == "invalid"
    assert [op.value for op in res.violations[0].ops] == [5]
    assert "no order" in res.violations[0].message


def test_concurrent_operations_in_either_order_are_legal():
    # Two orders overlap each other and two reads; the reads see them in opposite orders --
    # legal only in one linearization, which the checker must find.
    h = hist(order(0, 7, 0, 10, 100), order(1, 7, 1, 10, 100),
             read(2, 7, 1, 20, 50), read(3, 7, 0, 60, 90))
    assert check_history(h).verdict == "valid"
    # ...and an order concurrent with a read may or may not be visible to it.
    for seen in (-1, 0):
        assert check_history(hist(order(0, 7, 0, 10, 100), read(1, 7, seen, 20, 30))).verdict == "valid"


def test_reads_that_disagree_about_concurrent_orders_are_not():
    # After both orders completed, two sequential reads see different values: no order explains it.
    h = hist(order(0, 7, 0, 10, 100), order(1, 7, 1, 10, 100),
             read(2, 7, 1, 110, 120), read(3, 7, 0, 130, 140))
    assert check_history(h).verdict == "invalid"


@pytest.mark.parametrize("took_effect", [True, False])
def test_info_order_may_or_may_not_have_happened(took_effect):
    h = hist(order(0, 7, 0, 10, 20), order(1, 7, 1, 30, 40, kind="info"),
             read(2, 7, 1 if took_effect else 0, 50, 60))
    fs = final(n1={7: 1 if took_effect else 0})
    res = check_history(h, final_state=fs)
    assert res.verdict == "valid", res.format_text()


def test_info_order_seen_then_unseen_is_invalid():
    h = hist(order(0, 7, 0, 10, 20), order(1, 7, 1, 30, 40, kind="info"),
             read(2, 7, 1, 50, 60), read(2, 7, 0, 70, 80))
    assert check_history(h).verdict == "invalid"


def test_info_order_seen_before_it_was_sent_is_invalid():
    h = hist(read(2, 7, 1, 10, 20), order(1, 7, 1, 30, 40, kind="info"))
    assert check_history(h).verdict == "invalid"


def test_failed_operations_are_ignored():
    h = hist(order(0, 7, 0, 10, 20), order(0, 7, 1, 30, 40, kind="fail"), read(1, 7, 0, 50, 60),
             read(1, 7, None, 70, 80, kind="info"))
    assert check_history(h, final_state=final(n1={7: 0})).verdict == "valid"


def test_idempotent_retry_of_the_same_order_number():
    # The service applies order (7, 0) once: a second order 0 after order 1 changes nothing.
    h = hist(order(0, 7, 0, 10, 20), order(0, 7, 1, 30, 40), order(1, 7, 0, 50, 60),
             read(2, 7, 1, 70, 80))
    assert check_history(h).verdict == "valid"
    assert check_history(hist(order(0, 7, 0, 10, 20), order(0, 7, 1, 30, 40), order(1, 7, 0, 50, 60),
                              read(2, 7, 0, 70, 80))).verdict == "invalid"


def test_initial_state_of_reused_customers():
    h = hist(read(1, 7, 41, 10, 20), order(0, 7, 42, 30, 40), read(1, 7, 42, 50, 60))
    assert check_history(h).verdict == "invalid"  # 41 was never written in this history
    assert check_history(h, initial_state={"records": {"7": 41}}).verdict == "valid"


def test_customers_without_operations_must_not_change():
    h = hist(order(0, 7, 0, 10, 20))
    fs = final(n1={7: 0, 8: 3})
    fs["customer_range"] = [7, 9]
    res = check_history(h, final_state=fs)
    assert res.verdict == "invalid" and res.violations[0].customer == 8


def test_unsettled_nodes_are_left_out_and_said_so():
    h = hist(order(0, 7, 0, 10, 20))
    fs = final(n1={7: 0}, n2={})
    fs["nodes"]["2"].update(settled=False, why="node 2 is not in the view")
    res = check_history(h, final_state=fs)
    assert res.verdict == "valid" and res.nodes == [1]
    assert any("node 2" in n for n in res.notes)


def test_history_format_errors():
    from loadgen.history import HistoryError

    with pytest.raises(HistoryError, match="outstanding"):
        check_history([inv(0, "read", 7, None, 1), inv(0, "read", 7, None, 2)])
    with pytest.raises(HistoryError, match="without an invoke"):
        check_history([done(0, "ok", "read", 7, 1, 1)])
    with pytest.raises(HistoryError, match="unknown f"):
        check_history([inv(0, "write", 7, 1, 1)])
    with pytest.raises(HistoryError, match="does not match"):
        check_history([inv(0, "read", 7, None, 1), done(0, "ok", "read", 8, 1, 2)])


def test_nemesis_records_are_skipped():
    h = hist(order(0, 7, 0, 10, 20),
             [{"process": "nemesis", "type": "info", "f": "start-pause", "value": {"nodes": [1]}, "time": 15},
              {"process": "nemesis", "type": "info", "f": "stop-pause", "value": {"nodes": [1]}, "time": 25}])
    assert check_history(h).verdict == "valid"


# --------------------------------------------------------------------------- time limit


def test_time_limit_gives_unknown_not_a_guess():
    # Duplicate order numbers keep the fast zone test out, so the general search runs -- with a
    # time limit already spent.
    rng = random.Random(5)
    pieces = []
    for k in range(6000):
        t = 10 * k
        pieces.append(order(k % 7, 7, rng.randrange(3), t, t + 25))
    res = check_history(hist(*pieces), time_limit=1e-9)
    assert res.verdict == "unknown" and res.exit_code == 2
    assert res.unknown_customers == [7]
    assert "ran out of time" in res.format_text()


# --------------------------------------------------------------------------- against brute force


def _op(i, f, v, t, s, e):
    return Operation(i, i, f, 0, v, t, s, e)


def brute_force(ops, initial=-1):
    """Every subset of the info orders x every order of the operations: the definition."""
    ops = [o for o in ops if (o.f == "order" and o.type in ("ok", "info"))
           or (o.f == "read" and o.type == "ok")]
    required = [o for o in ops if o.end is not None]
    optional = [o for o in ops if o.end is None]
    for k in range(len(optional) + 1):
        for extra in itertools.combinations(optional, k):
            for perm in itertools.permutations(required + list(extra)):
                if any(b.end is not None and b.end < a.start
                       for i, a in enumerate(perm) for b in perm[i + 1:]):
                    continue
                state, applied, ok = initial, set(), True
                for o in perm:
                    if o.f == "order":
                        if o.value not in applied:
                            state = o.value
                            applied.add(o.value)
                    elif o.value != state:
                        ok = False
                        break
                if ok:
                    return True
    return False


@st.composite
def small_histories(draw):
    n = draw(st.integers(1, 6))
    dup = draw(st.booleans())
    ops = []
    for i in range(n):
        s = draw(st.integers(0, 20))
        e = s + draw(st.integers(0, 8))
        if draw(st.booleans()):
            v = draw(st.integers(0, 2)) if dup else i
            kind = draw(st.sampled_from(["ok", "ok", "info"]))
            ops.append(_op(i, "order", v, kind, s, None if kind == "info" else e))
        else:
            written = [o.value for o in ops if o.f == "order"]
            v = draw(st.sampled_from([-1, 99, *written]))
            ops.append(_op(i, "read", v, "ok", s, e))
    return ops


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_histories())
def test_searches_agree_with_brute_force(ops):
    expected = brute_force(ops)
    assert is_linearizable(ops) is expected
    assert wgl_linearizable(ops) is expected  # the general search, without pruning
    assert wgl_linearizable(prune(ops)) is expected
    pruned = prune(ops)
    if len({o.value for o in pruned if o.f == "order"}) == sum(o.f == "order" for o in pruned) \
            and all(o.end is not None for o in pruned):
        assert (zone_conflict(pruned) is None) is expected


# --------------------------------------------------------------------------- property tests


history_params = st.fixed_dictionaries({
    "ops": st.integers(20, 300),
    "customers": st.integers(1, 4),
    "processes": st.integers(1, 8),
    "seed": st.integers(0, 2**32 - 1),
    "info": st.sampled_from([0.0, 0.05, 0.2]),
    "fail": st.sampled_from([0.0, 0.05]),
})


def make(params):
    return legal_history(params["ops"], customers=params["customers"], processes=params["processes"],
                         seed=params["seed"], info_fraction=params["info"],
                         fail_fraction=params["fail"], max_latency=50, max_gap=30)


@settings(max_examples=60, deadline=None)
@given(history_params)
def test_legal_histories_are_valid(params):
    records, final_state, _ = make(params)
    res = check_history(records, final_state=final_state)
    assert res.verdict == "valid", res.format_text()


def _rewrite(records, op, value):
    """Copy of records with op's completion value changed."""
    out = []
    for r in records:
        if r["process"] == op.process and r["time"] == op.end and r["type"] == "ok" and r["f"] == op.f \
                and r["customer"] == op.customer:
            r = dict(r, value=value)
        out.append(r)
    return out


@settings(max_examples=60, deadline=None)
@given(history_params, st.randoms(use_true_random=False))
def test_a_stale_read_is_caught_with_a_small_witness(params, rnd):
    records, _, made = make(params)
    oks = [o for o in made if o.f == "order" and o.type == "ok"]
    reads = [o for o in made if o.f == "read" and o.type == "ok"]
    # read r, and orders old -> new, old completed before new began, new completed before r began
    triples = [(r, old, new) for r in reads for new in oks if new.customer == r.customer
               and new.end < r.start for old in oks if old.customer == r.customer
               and old.end < new.start]
    assume(triples)
    r, old, _new = rnd.choice(triples)
    from loadgen.history import pair_operations

    ops, _ = pair_operations(records)
    target = next(o for o in ops if o.f == "read" and o.process == r.process and o.start == r.start)
    res = check_history(_rewrite(records, target, old.value))
    assert res.verdict == "invalid", res.format_text()
    (v,) = [v for v in res.violations if v.kind == "linearizability"]
    assert v.customer == r.customer
    assert len(v.ops) <= 4 and any(o.f == "read" and o.value == old.value for o in v.ops)
    # the witness alone is not linearizable
    assert is_linearizable(v.ops) is False


@settings(max_examples=60, deadline=None)
@given(history_params, st.randoms(use_true_random=False))
def test_a_lost_order_is_caught(params, rnd):
    records, final_state, made = make(params)
    oks = [o for o in made if o.f == "order" and o.type == "ok"]
    pairs = [(old, new) for new in oks for old in oks if old.customer == new.customer
             and old.end < new.start]
    assume(pairs)
    old, new = rnd.choice(pairs)
    final_state["nodes"]["1"]["records"][str(old.customer)] = old.value
    res = check_history(records, final_state=final_state)
    assert res.verdict == "invalid"
    assert any(v.kind == "lost-order" and v.customer == old.customer for v in res.violations)


@settings(max_examples=40, deadline=None)
@given(history_params, st.randoms(use_true_random=False))
def test_a_read_of_an_unwritten_value_is_caught(params, rnd):
    records, _, made = make(params)
    reads = [o for o in made if o.f == "read" and o.type == "ok"]
    assume(reads)
    r = rnd.choice(reads)
    from loadgen.history import pair_operations

    ops, _ = pair_operations(records)
    target = next(o for o in ops if o.f == "read" and o.process == r.process and o.start == r.start)
    res = check_history(_rewrite(records, target, 10**6))
    assert res.verdict == "invalid"
    assert [o.value for o in res.violations[0].ops] == [10**6]


def test_shrinking_keeps_the_writers_of_what_was_read():
    # a long valid prefix, then a stale read: the witness is the three operations that matter
    pieces = []
    for k in range(50):
        pieces += order(0, 7, k, 100 * k, 100 * k + 10)
        pieces += read(1, 7, k, 100 * k + 20, 100 * k + 30)
    pieces += read(1, 7, 10, 6000, 6010)
    res = check_history(hist(pieces))
    (v,) = res.violations
    assert v.minimal
    assert sorted((o.f, o.value) for o in v.ops) == [("order", 10), ("order", 49), ("read", 10)]


def test_shrink_witness_returns_a_failing_subset():
    ops = [_op(0, "order", 0, "ok", 0, 1), _op(1, "order", 1, "ok", 2, 3), _op(2, "read", 0, "ok", 4, 5),
           _op(3, "read", 1, "ok", 0, 9)]
    import time as _t

    small, minimal = shrink_witness(ops, -1, _t.monotonic() + 10)
    assert minimal and is_linearizable(small) is False and len(small) == 3


# --------------------------------------------------------------------------- lfctl check


def write_run(path: Path, records, final_state=None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "history.jsonl", "w") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
    if final_state is not None:
        (path / "final_state.json").write_text(json.dumps(final_state))
    return path


def test_check_run_and_cli_exit_codes(tmp_path, capsys):
    good = write_run(tmp_path / "good", hist(order(0, 7, 0, 10, 20), read(1, 7, 0, 30, 40)),
                     final(n1={7: 0}))
    bad = write_run(tmp_path / "bad", hist(order(0, 7, 0, 10, 20), order(0, 7, 1, 30, 40),
                                           read(1, 7, 0, 50, 60)))
    assert check_run(good).verdict == "valid"
    assert check_run(bad / "history.jsonl").verdict == "invalid"
    assert lfctl(["check", str(good)]) == 0
    assert "VALID" in capsys.readouterr().out
    assert lfctl(["check", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "INVALID" in out and "history.jsonl lines" in out and "read -> 0" in out
    assert lfctl(["check", str(bad), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["verdict"] == "invalid" and doc["violations"][0]["operations"]
    # runs/latest is the default
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "latest").symlink_to(good)
    assert lfctl(["check", "--runs-dir", str(tmp_path / "runs")]) == 0
    capsys.readouterr()
    assert lfctl(["check", str(tmp_path / "nowhere")]) == 1
    assert "no run" in capsys.readouterr().err
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "history.jsonl").write_text("{not json\n")
    assert lfctl(["check", str(tmp_path / "broken")]) == 1
    assert "bad history" in capsys.readouterr().err


def test_checker_on_a_bigger_history_finishes(tmp_path):
    records, final_state, _ = legal_history(20_000, customers=20, processes=30, seed=9,
                                            info_fraction=0.01)
    res = check_history(records, final_state=final_state, time_limit=120)
    assert res.verdict == "valid"
    assert res.operations == 20_000
