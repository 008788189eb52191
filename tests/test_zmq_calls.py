"""The frame-by-frame message helpers of protocol/zmq_calls.py against real ZeroMQ sockets."""

from __future__ import annotations

import itertools

import pytest
import zmq

from protocol.zmq_calls import recv_message, send_message

_endpoints = itertools.count()


@pytest.fixture
def router_dealer():
    ctx = zmq.Context()
    endpoint = f"inproc://zmq-calls-{next(_endpoints)}"
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    router.bind(endpoint)
    dealer.connect(endpoint)
    yield router, dealer
    router.close(linger=0)
    dealer.close(linger=0)
    ctx.term()


def test_each_call_takes_one_whole_message_and_leaves_the_next(router_dealer) -> None:
    router, dealer = router_dealer
    send_message(dealer, [b"", b"first", b"more"])
    send_message(dealer, [b"", b"second"])
    assert router.poll(5000) == zmq.POLLIN
    first = recv_message(router)
    second = recv_message(router)
    assert first[1:] == [b"", b"first", b"more"]
    assert second[1:] == [b"", b"second"]
    assert first[0] == second[0] and first[0]  # the ROUTER's identity frame of the dealer
    with pytest.raises(zmq.Again):
        recv_message(router)


def test_a_reply_goes_back_through_the_envelope(router_dealer) -> None:
    router, dealer = router_dealer
    send_message(dealer, [b"", b"ping"])
    assert router.poll(5000) == zmq.POLLIN
    *envelope, payload = recv_message(router)
    send_message(router, [*envelope, payload.upper()])
    assert dealer.poll(5000) == zmq.POLLIN
    assert recv_message(dealer) == [b"", b"PING"]


def test_a_single_frame_message(router_dealer) -> None:
    router, dealer = router_dealer
    send_message(router, [b"unknown peer", b"dropped"])  # a ROUTER drops what it cannot route
    send_message(dealer, [b"alone"])
    assert router.poll(5000) == zmq.POLLIN
    assert recv_message(router)[1:] == [b"alone"]
