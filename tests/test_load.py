"""Load generator: argument validation, the workloads' operations, the report; one small run
against a fake node (see tests/test_client.py) to check the pieces are wired together."""

from __future__ import annotations

import json

import pytest

from loadgen.client import STOPPED_ERROR, OpResult
from loadgen.load import LoadResult, make_sessions, run_load, validate_load_args
from loadgen.stats import SUMMARY_KEYS
from protocol.messages import CustomerRecord
from tests import test_client as fakes  # module import: its tests are not collected twice
from tests.test_client import fake_node  # noqa: F401  (the shared fake-node fixture)

OK = OpResult(True, CustomerRecord(1, 0, 0), None, 1_000_000, 1, 0, 1)


def ops_of(sessions) -> list[list[tuple[int, int, int]]]:
    """Drive each session to its end, answering every op with a success, and list its ops."""
    out = []
    for session in sessions:
        ops = []
        try:
            op = next(session)
            for _ in range(100_000):
                ops.append(op)
                op = session.send(OK)
        except StopIteration:
            pass
        out.append(ops)
    return out


@pytest.mark.parametrize(
    ("customers", "orders", "req_type", "word"),
    [
        (0, 1, 1, "customers"),
        (-3, 1, 1, "customers"),
        (True, 1, 1, "customers"),
        (1.5, 1, 1, "customers"),
        (1, 0, 1, "orders"),
        (1, -1, 2, "orders"),
        (1, "5", 2, "orders"),
        (1, 1, 0, "type"),
        (1, 1, 4, "type"),
    ],
)
def test_argument_validation(customers, orders, req_type, word):
    with pytest.raises(ValueError, match=word):
        validate_load_args(customers, orders, req_type)
    with pytest.raises(ValueError, match=word):
        make_sessions(customers, orders, req_type)
    # Validation comes before any use of the config or a socket.
    with pytest.raises(ValueError, match=word):
        run_load(None, customers=customers, orders=orders, req_type=req_type)


def test_max_duration_must_be_positive():
    with pytest.raises(ValueError, match="max_duration"):
        run_load(None, customers=1, orders=1, req_type=1, max_duration=0)


def test_type1_each_customer_orders_in_sequence():
    assert ops_of(make_sessions(3, 4, 1)) == [
        [(1, c, k) for k in range(4)] for c in range(3)
    ]


def test_type2_each_customer_reads_itself():
    assert ops_of(make_sessions(2, 3, 2)) == [[(2, 0, 0)] * 3, [(2, 1, 0)] * 3]


def test_type3_each_session_bulk_reads_the_range():
    assert ops_of(make_sessions(1, 50, 3)) == [[(3, 0, 50)]]
    assert ops_of(make_sessions(3, 7, 3)) == [[(3, 0, 7)]] * 3


def test_sessions_keep_going_after_a_failure():
    (session,) = make_sessions(1, 3, 1)
    failed = OpResult(False, None, "deadline exceeded: x", 5, 3, 0, 1)
    assert next(session) == (1, 0, 0)
    assert session.send(failed) == (1, 0, 1)
    assert session.send(failed) == (1, 0, 2)
    with pytest.raises(StopIteration):
        session.send(failed)


def test_load_result_report():
    res = LoadResult(type=1, customers=2, orders=3)
    for us in (100, 200, 300):
        res.record((1, 0, 0), OpResult(True, None, None, us * 1000, 1, 0, 1))
    res.record((1, 1, 0), OpResult(False, None, "deadline exceeded: 9 attempts", 10**9, 9, 0, 2))
    res.record((1, 1, 1), OpResult(False, None, STOPPED_ERROR, 10**9, 1, 0, 2))
    res.record((1, 1, 2), OpResult(False, None, "deadline exceeded: 4 attempts", 10**9, 4, 0, 2))
    res.duration_s = 2.0
    res.attempts, res.redirects, res.timeouts = 20, 1, 12
    doc = res.to_json()
    assert doc == {
        "schema_version": 1,
        "type": 1,
        "customers": 2,
        "orders": 3,
        "operations": 6,
        "ok": 3,
        "failed": 3,
        "duration_s": 2.0,
        "throughput_ops": 1.5,
        "latency_us": {"min": 100, "avg": 200.0, "p50": 200, "p90": 300, "p99": 300,
                       "p999": 300, "p9999": 300, "max": 300},
        "attempts": 20,
        "redirects": 1,
        "timeouts": 12,
        "errors": {"deadline exceeded": 2, "stopped": 1},
    }
    json.dumps(doc)  # serialisable as is
    text = res.format_text()
    for fragment in ("operations 6", "ok 3", "failed 3", "1.5 ops/s", "p99 300",
                     "deadline exceeded x2"):
        assert fragment in text


def test_empty_load_result_report():
    doc = LoadResult(type=2, customers=1, orders=1).to_json()
    assert doc["operations"] == 0 and doc["throughput_ops"] == 0.0
    assert doc["latency_us"] == {key: 0 for key in SUMMARY_KEYS}
    assert doc["errors"] == {}


@pytest.mark.parametrize(("req_type", "customers", "orders", "expected_ops"),
                         [(1, 5, 10, 50), (2, 3, 4, 12), (3, 2, 20, 2)])
def test_run_load_against_fake_node(fake_node, req_type, customers, orders, expected_ops):
    n1 = fake_node(1, fakes.error(fakes.ErrorCode.NOT_PRIMARY, hint=2))
    n2 = fake_node(2, fakes.answer(2))
    cfg = fakes.make_config(n1, n2)
    res = run_load(cfg, customers=customers, orders=orders, req_type=req_type, max_duration=30)
    doc = res.to_json()
    assert doc["ok"] == doc["operations"] == expected_ops and doc["failed"] == 0
    assert doc["redirects"] >= 1
    assert doc["attempts"] >= expected_ops
    assert doc["latency_us"]["max"] >= doc["latency_us"]["min"] > 0
    # Retries after a slow attempt may repeat a request, never invent one.
    assert len(n2.requests) >= expected_ops
    assert {r.type for r in n2.requests} == {req_type}
    if req_type == 1:
        assert {(r.customer_id, r.order_number) for r in n2.requests} == {
            (c, k) for c in range(customers) for k in range(orders)}


def test_run_load_counts_failures_without_latency(fake_node):
    n1 = fake_node(1, fakes.error(fakes.ErrorCode.BAD_REQUEST, message="no"))
    res = run_load(fakes.make_config(n1), customers=2, orders=3, req_type=1, max_duration=30)
    assert res.ok == 0 and res.failed == 6
    assert res.latency.count == 0
    assert res.to_json()["errors"] == {"BAD_REQUEST": 6}


def test_sessions_for_given_customer_ids():
    assert ops_of(make_sessions(2, 2, 1, customer_ids=[5, 9])) == [
        [(1, 5, 0), (1, 5, 1)], [(1, 9, 0), (1, 9, 1)]]
    assert ops_of(make_sessions(2, 1, 2, customer_ids=[7])) == [[(2, 7, 0)]]


def test_run_load_calls_on_result_for_every_operation(fake_node):
    n1 = fake_node(1, fakes.answer(1))
    seen = []
    res = run_load(fakes.make_config(n1), customers=2, orders=3, req_type=1, max_duration=30,
                   customer_ids=[10, 11], on_result=lambda op, r: seen.append((op, r)))
    assert res.ok == 6 and len(seen) == 6
    assert sorted(op for op, _ in seen) == [(1, c, k) for c in (10, 11) for k in range(3)]
    assert all(r.start_ns <= r.end_ns and r.end_ns - r.start_ns == r.latency_ns for _, r in seen)
