"""History recording: outcome classification, the Jepsen-format records, file round trip, process
ids after unknown outcomes, and the histories of real (fake-node) closed-loop runs, also spread
over two processes."""

from __future__ import annotations

import json

import pytest

from loadgen.client import STOPPED_ERROR, OpResult
from loadgen.history import (
    HistoryError,
    HistoryRecorder,
    ProcessIds,
    classify,
    load_history,
    merge_records,
    pair_operations,
    to_dict,
    write_history,
)
from loadgen.worker import Collector, LoadSpec, run_spec
from protocol.messages import CustomerRecord, ErrorReply, LaptopInfo, RecordList, RequestType
from tests import test_client as fakes
from tests.test_client import fake_node  # noqa: F401  (the shared fake-node fixture)

ORDER, READ, BULK = int(RequestType.ORDER), int(RequestType.READ), int(RequestType.BULK_READ)


def res(ok=True, reply=None, error=None, attempts=1, start=100, end=200):
    return OpResult(ok, reply, error, end - start, attempts, 0, 1, start, end)


@pytest.mark.parametrize(("result", "kind"), [
    (res(), "ok"),
    (res(False, ErrorReply(1, 1, 0, ""), "BAD_REQUEST: nope"), "fail"),
    (res(False, None, "PROTOCOL: bad frame"), "fail"),
    (res(False, None, "invalid request: (1, 2, 'x')", attempts=0), "fail"),
    (res(False, None, "deadline exceeded: 9 attempts, last: no reply from node 2", attempts=9), "info"),
    (res(False, None, STOPPED_ERROR), "info"),
    (res(False, None, "OVERLOADED: busy"), "info"),  # may have been appended by an earlier attempt
])
def test_classify(result, kind):
    assert classify(result) == kind


def test_records_of_orders_and_reads():
    rec = HistoryRecorder()
    assert rec.record_op(3, (ORDER, 7, 5), res(True, LaptopInfo(1, 7, 5, 1, 2, 2), start=10, end=20)) == "ok"
    assert rec.record_op(3, (READ, 7, 0), res(True, CustomerRecord(1, 7, 5), start=30, end=40)) == "ok"
    assert rec.record_op(4, (READ, 8, 0), res(True, CustomerRecord(1, -1, -1), start=31, end=41)) == "ok"
    assert rec.record_op(5, (READ, 7, 0), res(False, None, STOPPED_ERROR, start=50, end=60)) == "info"
    assert rec.record_op(6, (BULK, 0, 10), res(True, RecordList(1, ()), start=1, end=2)) is None
    dicts = [to_dict(r) for r in merge_records(rec.raw())]
    assert dicts == [
        {"process": 3, "type": "invoke", "f": "order", "customer": 7, "value": 5, "time": 10},
        {"process": 3, "type": "ok", "f": "order", "customer": 7, "value": 5, "time": 20},
        {"process": 3, "type": "invoke", "f": "read", "customer": 7, "value": None, "time": 30},
        {"process": 4, "type": "invoke", "f": "read", "customer": 8, "value": None, "time": 31},
        {"process": 3, "type": "ok", "f": "read", "customer": 7, "value": 5, "time": 40},
        {"process": 4, "type": "ok", "f": "read", "customer": 8, "value": -1, "time": 41},
        {"process": 5, "type": "invoke", "f": "read", "customer": 7, "value": None, "time": 50},
        {"process": 5, "type": "info", "f": "read", "customer": 7, "value": None, "time": 60},
    ]


def test_nemesis_records():
    rec = HistoryRecorder()
    rec.nemesis(5, "start-pause", {"nodes": [2]})
    assert to_dict(rec.raw()[0]) == {"process": "nemesis", "type": "info", "f": "start-pause",
                                     "value": {"nodes": [2]}, "time": 5}


def test_file_round_trip(tmp_path):
    rec = HistoryRecorder()
    rec.record_op(0, (ORDER, 1, 0), res(start=1, end=2))
    rec.nemesis(3, "start-partition", {"nodes": [3]})
    rec.record_op(1, (READ, 1, 0), res(True, CustomerRecord(1, 1, 0), start=4, end=6))
    path = tmp_path / "history.jsonl"
    assert write_history(merge_records(rec.raw()), path) == 5
    lines = path.read_text().splitlines()
    assert all(isinstance(json.loads(line), dict) for line in lines)
    records = load_history(path)
    ops, nemesis = pair_operations(records)
    assert [(o.f, o.value, o.type, o.line, o.end_line) for o in ops] == [("order", 0, "ok", 1, 2),
                                                                        ("read", 0, "ok", 4, 5)]
    assert nemesis[0]["f"] == "start-partition"


def test_load_history_names_the_bad_line(tmp_path):
    path = tmp_path / "h.jsonl"
    path.write_text('{"process": 0}\n[1]\n')
    with pytest.raises(HistoryError, match=":2: not a JSON object"):
        load_history(path)


def test_pairing_rules():
    inv = {"process": 0, "type": "invoke", "f": "order", "customer": 1, "value": 3, "time": 1}
    with pytest.raises(HistoryError, match="value"):
        pair_operations([inv, dict(inv, type="ok", value=4, time=2)])
    with pytest.raises(HistoryError, match="before its invoke"):
        pair_operations([inv, dict(inv, type="ok", time=0)])
    with pytest.raises(HistoryError, match="unknown type"):
        pair_operations([dict(inv, type="done")])
    ops, _ = pair_operations([inv])  # an invoke without completion: unknown outcome
    assert ops[0].type == "info" and ops[0].end is None


def test_process_ids_of_workers_never_collide():
    a, b = ProcessIds(100, 0, 2), ProcessIds(100, 1, 2)
    ids = [a.fresh() for _ in range(5)] + [b.fresh() for _ in range(5)]
    assert len(set(ids)) == 10 and min(ids) == 100


def test_collector_moves_a_customer_to_a_fresh_process_after_info(fake_node):
    """Closed loop: a customer whose order timed out goes on as a new process (its old one may
    still have that order in flight)."""
    calls = {"n": 0}

    def handler(req):
        calls["n"] += 1
        if req.customer_id == 0 and req.order_number == 1:
            return []  # never answered: this order ends info at its deadline
        return fakes.answer(1)(req)

    n1 = fake_node(1, handler)
    cfg = fakes.make_config(n1, attempt_timeout_ms=50, deadline_ms=300)
    spec = LoadSpec(mode="closed", config=cfg, customer_ids=[0, 1], orders=3, push_telemetry=False)
    out = run_spec(spec)
    ops, _ = pair_operations([to_dict(r) for r in out.history])
    by_process = {}
    for op in ops:
        by_process.setdefault(op.process, []).append((op.customer, op.value, op.type))
    assert by_process[0] == [(0, 0, "ok"), (0, 1, "info")]
    assert by_process[1] == [(1, 0, "ok"), (1, 1, "ok"), (1, 2, "ok")]
    fresh = [p for p in by_process if p not in (0, 1)]
    assert len(fresh) == 1 and fresh[0] >= 2 and by_process[fresh[0]] == [(0, 2, "ok")]
    assert out.collector.count("order", "info") == 1


@pytest.mark.parametrize("procs", [1, 2])
def test_closed_loop_history_over_processes(fake_node, procs):
    n1 = fake_node(1, fakes.answer(1))
    cfg = fakes.make_config(n1)
    spec = LoadSpec(mode="closed", config=cfg, customer_ids=list(range(6)), orders=5, procs=procs,
                    push_telemetry=False)
    out = run_spec(spec)
    assert out.errors == []
    col = out.collector
    assert col.ok == 30 and col.latency.count == 30
    ops, _ = pair_operations([to_dict(r) for r in out.history])
    assert sorted((o.customer, o.value) for o in ops) == [(c, k) for c in range(6) for k in range(5)]
    assert {o.process for o in ops} == set(range(6))  # process i = customer i
    times = [r[0] for r in out.history]
    assert times == sorted(times)


def test_collector_wire_round_trip():
    col = Collector()
    col.record(0, (ORDER, 1, 0), res(start=1000, end=3000))
    col.record(1, (READ, 1, 0), res(False, None, STOPPED_ERROR, start=2000, end=9000), intended_ns=1500)
    again = Collector.from_wire(col.to_wire())
    assert again.counts == col.counts and again.latency.count == 1
    assert list(again.s_start) == [1000, 1500] and list(again.s_outcome) == [0, 2]
    assert again.history.raw() == col.history.raw()
    again.merge(col)
    assert again.ok == 2 and again.failed == 2
