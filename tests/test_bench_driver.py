"""The suite's lean load drivers (bench/driver.py) against real processes: every order they send
is answered and counted once, and a client that starts at a backup follows its NOT_PRIMARY hint.

The drivers read only the sockets a poll found ready (and EVENTS instead of a failed recv), so
a reply arriving on a socket other than the current node's must still be read: the redirect
test is where that shows.  No timing is asserted."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import driver  # noqa: E402
from common import Cluster  # noqa: E402
from relay import Relay  # noqa: E402


@pytest.fixture(scope="module")
def relay() -> Iterator[Relay]:
    with Relay(3) as r:
        yield r


def test_closed_loop_against_the_relay_answers_every_order(relay: Relay) -> None:
    out = driver.closed_loop(relay.endpoint, 20, 0.5, warmup=0.1, customer_base=10_000)
    assert out["ops"] > 0
    assert out["errors"] == {} and out["unanswered"] == 0 and out["stale_replies"] == 0
    assert out["resends"] == 0
    # every customer's orders were answered in turn: nothing lost, nothing counted twice
    assert out["completed_total"] >= out["ops"]
    assert out["latency_us"]["p50"] > 0


def test_open_loop_against_the_relay_answers_every_order(relay: Relay) -> None:
    out = driver.open_loop(relay.endpoint, 400, 0.5, warmup=0.1, customers=50, customer_base=20_000)
    assert out["unanswered"] == 0 and out["errors"] == {}
    assert out["completed_total"] > 0
    # the offered rate is what was asked for, give or take the Poisson arrivals
    assert 100 < out["offered_rate"] < 1600


def test_closed_loop_starting_at_a_backup_follows_the_hint() -> None:
    with Cluster(3) as cluster:
        primary = cluster.primary()
        backup = next(n.id for n in cluster.config.nodes if n.id != primary)
        out = driver.closed_loop(cluster.endpoints(primary=backup), 10, 0.5, warmup=0.2, customer_base=30_000)
        assert out["redirects"] >= 1
        assert out["refusals_retried"].get("NOT_PRIMARY", 0) >= 1  # read off the backup's socket
        assert out["errors"] == {} and out["unanswered"] == 0
        assert out["ops"] > 0
        assert cluster.primary() == primary  # no view change: the orders all went through it
