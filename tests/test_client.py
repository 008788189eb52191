"""ClientEngine / Client against fake nodes written here (no real cluster).

A fake node is a ROUTER on a free 127.0.0.1 port, run by a thread with its own bounded poller
loop, that answers each decoded ClientRequest with whatever its handler returns.  Timing is only
ever asserted as a generous upper bound ("does not hang"), never as a performance claim.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Union

import pytest
import zmq

from loadgen.client import STOPPED_ERROR, Client, ClientEngine, OpResult, Wait, error_reason
from protocol import codec
from protocol.messages import (
    ClientRequest,
    CustomerRecord,
    ErrorCode,
    ErrorReply,
    LaptopInfo,
    Message,
    RecordList,
)

# What a handler may return per reply: a message (encoded for it), a raw payload (sent after the
# empty delimiter), or a tuple of raw frames (sent as they are after the routing identity).
Reply = Union[Message, bytes, tuple[bytes, ...]]
Handler = Callable[[ClientRequest], list[Reply]]

HANG = 10.0  # seconds: anything slower than this is "hung", never a performance assertion


class FakeNode:
    """A stand-in for a node's client ROUTER socket, answering from a thread."""

    MAX_LIFETIME = 60.0  # the thread ends by itself even if a test forgets to stop it

    def __init__(self, node_id: int, handler: Handler, *, delay: float = 0.0,
                 gate: threading.Event | None = None, close_after: int = 0,
                 endpoint: str = "") -> None:
        self.node_id = node_id
        self.handler = handler
        self.delay = delay  # every reply is held this long
        self.gate = gate  # if given, replies are held until it is set
        # if > 0: after receiving this many requests the node closes its socket, answering
        # nothing more -- what a client sees of a node whose process is killed
        self.close_after = close_after
        self.closed = threading.Event()  # set once the socket is closed
        self.requests: list[ClientRequest] = []
        self.errors: list[BaseException] = []
        self.endpoint = endpoint  # "" binds a free port
        self._stop = threading.Event()
        self._bound = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"fake-node-{node_id}",
                                        daemon=True)

    def start(self) -> FakeNode:
        self._thread.start()
        if not self._bound.wait(HANG) or not self.endpoint:
            self.stop()
            raise RuntimeError(f"fake node {self.node_id} did not bind: {self.errors}")
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(HANG)

    def _main(self) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.bind(self.endpoint or "tcp://127.0.0.1:*")
            self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            self._bound.set()
            self._serve(sock)
        except BaseException as e:  # surfaced by the tests through self.errors
            self.errors.append(e)
        finally:
            self._bound.set()
            sock.close(linger=0)
            ctx.term()
            self.closed.set()

    def _serve(self, sock: zmq.Socket) -> None:
        pending: list[tuple[float, list[bytes]]] = []  # (due, frames) for delayed replies
        end = time.monotonic() + self.MAX_LIFETIME
        while not self._stop.is_set() and time.monotonic() < end:
            if sock.poll(5, zmq.POLLIN):
                for _ in range(1000):
                    try:
                        ident, empty, payload = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    assert empty == b""
                    req = codec.decode(payload)
                    assert isinstance(req, ClientRequest)
                    self.requests.append(req)
                    if self.close_after and len(self.requests) >= self.close_after:
                        return  # _main closes the socket: the connection drops
                    due = time.monotonic() + self.delay
                    for reply in self.handler(req):
                        pending.append((due, [ident, *self._frames(reply)]))
            if self.gate is not None and not self.gate.is_set():
                continue
            now = time.monotonic()
            keep = []
            for due, frames in pending:
                if due <= now:
                    sock.send_multipart(frames)
                else:
                    keep.append((due, frames))
            pending = keep

    @staticmethod
    def _frames(reply: Reply) -> list[bytes]:
        if isinstance(reply, tuple):
            return list(reply)
        if isinstance(reply, bytes):
            return [b"", reply]
        return [b"", codec.encode(reply)]


# ---------------------------------------------------------------------------- handlers


def answer(node_id: int) -> Handler:
    """A primary that answers every request correctly."""

    def handle(req: ClientRequest) -> list[Reply]:
        if req.type == 1:
            return [LaptopInfo(req.req_id, req.customer_id, req.order_number, 1, node_id, node_id)]
        if req.type == 2:
            return [CustomerRecord(req.req_id, req.customer_id, 7)]
        return [RecordList(req.req_id, tuple((c, 1) for c in range(req.customer_id,
                                                                     req.order_number)))]

    return handle


def silent(req: ClientRequest) -> list[Reply]:
    return []


def error(code: ErrorCode, hint: int = 0, message: str = "") -> Handler:
    return lambda req: [ErrorReply(req.req_id, int(code), hint, message)]


def dead_endpoint() -> str:
    """An endpoint nobody listens on (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


def one_op(engine: ClientEngine, op: tuple[int, int, int], max_duration: float = HANG) -> OpResult:
    box: list[OpResult] = []

    def session():
        box.append((yield op))

    engine.run([session()], max_duration=max_duration)
    assert len(box) == 1
    return box[0]


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture
def fake_node() -> Iterator[Callable[..., FakeNode]]:
    nodes: list[FakeNode] = []

    def make(node_id: int, handler: Handler, *, delay: float = 0.0,
             gate: threading.Event | None = None, close_after: int = 0,
             endpoint: str = "") -> FakeNode:
        node = FakeNode(node_id, handler, delay=delay, gate=gate, close_after=close_after,
                        endpoint=endpoint)
        nodes.append(node)
        return node.start()

    try:
        yield make
    finally:
        for node in nodes:
            node.stop()
        for node in nodes:
            assert not node._thread.is_alive(), f"fake node {node.node_id} did not stop"
            assert not node.errors, node.errors


@pytest.fixture
def engine() -> Iterator[Callable[..., ClientEngine]]:
    engines: list[ClientEngine] = []

    def make(nodes, *, attempt_timeout: float = 1.0, deadline: float = 5.0,
             seed: int = 1) -> ClientEngine:
        eng = ClientEngine(nodes, attempt_timeout=attempt_timeout, deadline=deadline, seed=seed)
        engines.append(eng)
        return eng

    try:
        yield make
    finally:
        for eng in engines:
            eng.close()


# ---------------------------------------------------------------------------- tests


def test_success_path(fake_node, engine):
    n1 = fake_node(1, answer(1))
    eng = engine([(1, n1.endpoint)])
    res = one_op(eng, (1, 42, 3))
    assert res.ok and res.error is None
    assert isinstance(res.reply, LaptopInfo)
    assert (res.reply.customer_id, res.reply.order_number, res.reply.admin_id) == (42, 3, 1)
    assert res.node == 1 and res.redirects == 0 and res.attempts >= 1
    assert res.latency_ns > 0
    read = one_op(eng, (2, 42, 0))
    assert read.ok and read.reply == CustomerRecord(read.reply.req_id, 42, 7)
    bulk = one_op(eng, (3, 0, 3))
    assert bulk.ok and bulk.reply.records == ((0, 1), (1, 1), (2, 1))
    assert eng.stats["timeouts"] == 0 and eng.stats["bad_frames"] == 0


def test_req_ids_unique_and_same_across_retries(fake_node, engine):
    n1 = fake_node(1, silent)
    n2 = fake_node(2, answer(2))
    eng = engine([(1, n1.endpoint), (2, n2.endpoint)], attempt_timeout=0.1)
    first = one_op(eng, (1, 1, 0))
    second = one_op(eng, (1, 1, 1))
    assert first.ok and second.ok
    # The retried request kept its id on the second node; the next op got a new one.
    assert n1.requests[0].req_id == n2.requests[0].req_id == first.reply.req_id
    assert second.reply.req_id != first.reply.req_id


def test_redirect_with_hint(fake_node, engine):
    n1 = fake_node(1, error(ErrorCode.NOT_PRIMARY, hint=2))
    n2 = fake_node(2, answer(2))
    eng = engine([(1, n1.endpoint), (2, n2.endpoint)])
    res = one_op(eng, (1, 5, 0))
    assert res.ok and res.node == 2 and res.redirects == 1
    assert eng.stats["redirects"] == 1 and eng.stats["timeouts"] == 0
    assert eng.primary == 2
    # The shared primary guess sends the next operation straight to node 2.
    res2 = one_op(eng, (1, 5, 1))
    assert res2.ok and res2.redirects == 0
    assert len(n1.requests) == 1


def test_not_primary_without_hint_tries_next_node(fake_node, engine):
    n1 = fake_node(1, error(ErrorCode.NOT_PRIMARY, hint=0))
    n2 = fake_node(2, error(ErrorCode.NOT_PRIMARY, hint=9))  # a node we do not know: no hint
    n3 = fake_node(3, answer(3))
    eng = engine([(1, n1.endpoint), (2, n2.endpoint), (3, n3.endpoint)])
    res = one_op(eng, (2, 5, 0))
    assert res.ok and res.node == 3 and res.redirects == 0


@pytest.mark.parametrize("code", [ErrorCode.UNAVAILABLE, ErrorCode.OVERLOADED])
def test_retryable_error_backs_off_and_moves_on(fake_node, engine, code):
    n1 = fake_node(1, error(code, message="busy"))
    n2 = fake_node(2, answer(2))
    eng = engine([(1, n1.endpoint), (2, n2.endpoint)])
    res = one_op(eng, (1, 5, 0))
    assert res.ok and res.node == 2 and res.redirects == 0
    assert len(n1.requests) == 1


def test_redirect_loop_backs_off_instead_of_spinning(fake_node, engine):
    n1 = fake_node(1, error(ErrorCode.NOT_PRIMARY, hint=2))
    n2 = fake_node(2, error(ErrorCode.NOT_PRIMARY, hint=1))
    eng = engine([(1, n1.endpoint), (2, n2.endpoint)], deadline=0.5)
    t0 = time.monotonic()
    res = one_op(eng, (1, 5, 0))
    assert time.monotonic() - t0 < HANG
    assert not res.ok and error_reason(res.error) == "deadline exceeded"
    assert res.redirects >= 1
    assert len(n1.requests) + len(n2.requests) < 200  # backed off, did not spin


def test_timeout_then_retry_on_another_node(fake_node, engine):
    n1 = fake_node(1, silent)
    n2 = fake_node(2, answer(2))
    eng = engine([(1, n1.endpoint), (2, n2.endpoint)], attempt_timeout=0.1)
    res = one_op(eng, (1, 5, 0))
    assert res.ok and res.node == 2
    assert res.attempts >= 2
    assert eng.stats["timeouts"] >= 1
    assert len(n1.requests) >= 1
    assert eng.primary == 2


def test_late_reply_to_earlier_attempt_completes_operation(fake_node, engine):
    n1 = fake_node(1, answer(1), delay=0.3)  # slower than an attempt
    n2 = fake_node(2, silent)
    eng = engine([(1, n1.endpoint), (2, n2.endpoint)], attempt_timeout=0.1)
    res = one_op(eng, (1, 5, 0))
    assert res.ok and res.node == 1
    assert eng.stats["timeouts"] >= 1
    assert {r.req_id for r in n1.requests + n2.requests} == {res.reply.req_id}


def test_node_that_does_not_exist_is_skipped_fast(fake_node, engine):
    n2 = fake_node(2, answer(2))
    # An attempt timeout far above the bound below: only skipping without waiting can pass.
    eng = engine([(1, dead_endpoint()), (2, n2.endpoint)], attempt_timeout=5.0, deadline=20.0)
    t0 = time.monotonic()
    res = one_op(eng, (1, 5, 0))
    assert time.monotonic() - t0 < 4.0
    assert res.ok and res.node == 2
    assert eng.stats["timeouts"] == 0
    assert eng.primary == 2


def test_disconnect_retries_on_the_next_node_at_once(fake_node, engine):
    # Node 1 takes the request and goes away without answering (what a SIGKILL looks like from
    # here).  The attempt timeout is far above the bound below: only reacting to the dropped
    # connection can pass, and no timeout may have fired.
    n1 = fake_node(1, silent, close_after=1)
    n2 = fake_node(2, answer(2))
    eng = engine([(1, n1.endpoint), (2, n2.endpoint)], attempt_timeout=2.0, deadline=20.0)
    t0 = time.monotonic()
    res = one_op(eng, (1, 5, 0))
    elapsed = time.monotonic() - t0
    assert res.ok and res.node == 2 and res.attempts == 2
    assert n1.closed.wait(HANG)
    assert eng.stats["timeouts"] == 0 and elapsed < eng.attempt_timeout / 2
    assert eng.stats["disconnects"] >= 1
    # The retry is the same request: one req_id on both nodes.
    assert [r.req_id for r in n1.requests] == [r.req_id for r in n2.requests] == [res.reply.req_id]
    assert eng.primary == 2


def test_disconnect_hurries_only_the_attempts_on_that_node(fake_node, engine):
    # Customer 1's order is redirected to node 2, which takes it and goes away; customer 2's
    # order waits on node 1, which stays connected and never answers.  Only customer 1's order
    # may move on at once; customer 2's runs into its attempt timeout as before.
    def node1(req: ClientRequest) -> list[Reply]:
        return error(ErrorCode.NOT_PRIMARY, hint=2)(req) if req.customer_id == 1 else []

    n1 = fake_node(1, node1)
    n2 = fake_node(2, silent, close_after=1)
    n3 = fake_node(3, answer(3))
    eng = engine([(1, n1.endpoint), (2, n2.endpoint), (3, n3.endpoint)], attempt_timeout=2.0,
                 deadline=20.0)
    done: list[tuple[int, OpResult, float]] = []
    t0 = time.monotonic()

    def session(customer: int):
        res = yield (1, customer, 0)
        done.append((customer, res, time.monotonic() - t0))

    eng.run([session(1), session(2)], max_duration=HANG)
    assert [customer for customer, _, _ in done] == [1, 2]
    (_, hurried, hurried_s), (_, waited, _) = done
    assert hurried.ok and hurried.node == 3 and hurried.redirects == 1
    assert hurried_s < eng.attempt_timeout / 2
    assert waited.ok and waited.node == 3 and waited.attempts >= 2
    assert eng.stats["disconnects"] >= 1
    assert eng.stats["timeouts"] == 1  # customer 2's attempt on node 1, and only that one
    assert [r.customer_id for r in n1.requests].count(2) == 1


def test_a_node_that_disconnected_is_not_still_connecting(fake_node):
    # Right after construction a refused send means "still connecting" and is retried on the same
    # node.  Once a node's connection has dropped, a refusal means it is gone: a young engine must
    # not keep polling a killed node.  Node 2 is a backup that still names node 1 as primary for
    # two requests (the view change is not done yet), then serves.
    class YoungEngine(ClientEngine):
        CONNECT_GRACE = 10.0  # the whole test runs inside the grace period

    seen = [0]

    def backup_then_primary(req: ClientRequest) -> list[Reply]:
        seen[0] += 1
        if seen[0] <= 2:
            return [ErrorReply(req.req_id, int(ErrorCode.NOT_PRIMARY), 1, "not primary")]
        return answer(2)(req)

    n1 = fake_node(1, silent, close_after=1)
    n2 = fake_node(2, backup_then_primary)
    with YoungEngine([(1, n1.endpoint), (2, n2.endpoint)], attempt_timeout=5.0,
                     deadline=30.0) as eng:
        t0 = time.monotonic()
        res = one_op(eng, (1, 5, 0))
        elapsed = time.monotonic() - t0
        assert res.ok and res.node == 2 and res.redirects == 2
        assert eng.stats["timeouts"] == 0 and elapsed < eng.attempt_timeout / 2
        assert eng.stats["disconnects"] >= 1


def test_reconnects_after_a_disconnect(fake_node, engine):
    # A single node is killed while it holds the request and comes back on the same port: the
    # socket reconnects by itself and the retried request (same req_id) completes there, long
    # before the attempt timeout.
    first = fake_node(1, silent, close_after=1)
    eng = engine([(1, first.endpoint)], attempt_timeout=5.0, deadline=20.0)
    restarted: list[FakeNode] = []

    def restart() -> None:
        if first.closed.wait(HANG):
            restarted.append(fake_node(1, answer(1), endpoint=first.endpoint))

    helper = threading.Thread(target=restart, daemon=True)
    helper.start()
    t0 = time.monotonic()
    res = one_op(eng, (1, 5, 0))
    elapsed = time.monotonic() - t0
    helper.join(HANG)
    assert res.ok and res.node == 1
    assert restarted, "the fake node could not be restarted on its port"
    assert first.requests[0].req_id == restarted[0].requests[0].req_id == res.reply.req_id
    assert eng.stats["timeouts"] == 0 and elapsed < eng.attempt_timeout / 2
    assert eng.stats["disconnects"] >= 1
    later = one_op(eng, (1, 5, 1))  # the new connection keeps serving
    assert later.ok and later.attempts == 1


def test_close_releases_the_monitors(fake_node):
    # With a caller's context, every socket the engine made (monitors included) must be closed
    # by close(), or terminating the context would block forever.
    n1 = fake_node(1, silent, close_after=1)
    ctx = zmq.Context()
    eng = ClientEngine([(1, n1.endpoint)], attempt_timeout=0.2, deadline=0.5, context=ctx)
    one_op(eng, (1, 5, 0))  # leaves a disconnect behind
    eng.close()
    terminator = threading.Thread(target=ctx.term, daemon=True)
    terminator.start()
    terminator.join(HANG)
    assert not terminator.is_alive(), "Context.term() blocked: a socket was left open"


def test_deadline_failure(fake_node, engine):
    n1 = fake_node(1, silent)
    eng = engine([(1, n1.endpoint)], attempt_timeout=0.05, deadline=0.4)
    t0 = time.monotonic()
    res = one_op(eng, (1, 5, 0), max_duration=HANG)
    assert time.monotonic() - t0 < HANG
    assert not res.ok and res.reply is None
    assert error_reason(res.error) == "deadline exceeded"
    assert res.latency_ns >= 0.4e9 * 0.9  # it did not give up early
    assert res.attempts >= 2 and res.node == 1
    assert eng.stats["timeouts"] >= 2


def test_deadline_failure_when_no_node_is_reachable(engine):
    eng = engine([(1, dead_endpoint()), (2, dead_endpoint())], attempt_timeout=5.0, deadline=0.3)
    t0 = time.monotonic()
    res = one_op(eng, (2, 5, 0))
    assert time.monotonic() - t0 < HANG
    assert not res.ok and error_reason(res.error) == "deadline exceeded"
    assert "not connected" in res.error
    assert eng.stats["timeouts"] == 0
    assert res.attempts < 200  # backed off between rounds instead of spinning


def test_stale_and_duplicate_replies_are_ignored(fake_node, engine):
    def handler(req: ClientRequest) -> list[Reply]:
        good = LaptopInfo(req.req_id, req.customer_id, req.order_number, 1, 1, 1)
        stale = dataclasses.replace(good, req_id=req.req_id ^ (1 << 31), order_number=99)
        stale_error = ErrorReply(req.req_id ^ (1 << 30), int(ErrorCode.BAD_REQUEST), 0, "old")
        return [stale, stale_error, good, good]  # the second `good` arrives after completion

    n1 = fake_node(1, handler)
    eng = engine([(1, n1.endpoint)])
    res = one_op(eng, (1, 5, 0))
    assert res.ok and res.reply.order_number == 0
    # The trailing duplicate may land during this run or the next one; either way it is stale.
    res2 = one_op(eng, (1, 5, 1))
    assert res2.ok and res2.reply.order_number == 1
    assert eng.stats["stale_replies"] >= 3


def test_error_from_an_abandoned_attempt_is_ignored(fake_node, engine):
    # Node 1's (fatal) error is released only once node 2 holds the retried request, i.e. while
    # the operation waits for node 2: it must not end the operation.
    release = threading.Event()
    n1 = fake_node(1, error(ErrorCode.BAD_REQUEST, message="late"), gate=release)
    answer2 = answer(2)

    def handler2(req: ClientRequest) -> list[Reply]:
        release.set()
        return answer2(req)

    n2 = fake_node(2, handler2, delay=0.3)
    eng = engine([(1, n1.endpoint), (2, n2.endpoint)], attempt_timeout=0.5, deadline=10.0)
    res = one_op(eng, (1, 5, 0))
    assert res.ok and res.node == 2
    assert eng.stats["stale_replies"] == 1


def test_garbage_frames_are_ignored(fake_node, engine):
    def handler(req: ClientRequest) -> list[Reply]:
        return [
            b"\xff\xffgarbage",  # not a frame the codec accepts
            (b"no-delimiter",),  # wrong envelope
            (b"", b"a", b"b"),  # too many frames
            RecordList(req.req_id, ()),  # a valid frame of the wrong kind for an order
            LaptopInfo(req.req_id, req.customer_id, req.order_number, 1, 1, 1),
        ]

    n1 = fake_node(1, handler)
    eng = engine([(1, n1.endpoint)])
    res = one_op(eng, (1, 5, 0))
    assert res.ok and isinstance(res.reply, LaptopInfo)
    assert eng.stats["bad_frames"] == 4


@pytest.mark.parametrize("code", [ErrorCode.BAD_REQUEST, ErrorCode.TOO_LARGE, ErrorCode.PROTOCOL])
def test_fatal_errors_fail_at_once(fake_node, engine, code):
    n1 = fake_node(1, error(code, message="customer id out of range"))
    n2 = fake_node(2, answer(2))
    eng = engine([(1, n1.endpoint), (2, n2.endpoint)], deadline=30.0)
    t0 = time.monotonic()
    res = one_op(eng, (1, 5, 0))
    assert time.monotonic() - t0 < HANG
    assert not res.ok and res.attempts == 1 and res.node == 1
    assert "customer id out of range" in res.error
    assert error_reason(res.error) == code.name
    assert isinstance(res.reply, ErrorReply)
    assert n2.requests == []


def test_unencodable_op_fails_without_sending(fake_node, engine):
    n1 = fake_node(1, answer(1))
    eng = engine([(1, n1.endpoint)])
    res = one_op(eng, (1, 2**40, 0))
    assert not res.ok and res.attempts == 0
    assert error_reason(res.error) == "invalid request"
    assert n1.requests == []


def test_concurrency_100_sessions(fake_node, engine):
    n1 = fake_node(1, answer(1))
    eng = engine([(1, n1.endpoint)])
    seen: dict[int, list[int]] = {}
    results: list[tuple[tuple[int, int, int], OpResult]] = []

    def session(customer: int):
        for k in range(5):
            res = yield (1, customer, k)
            assert res.ok and res.reply.customer_id == customer and res.reply.order_number == k
            seen.setdefault(customer, []).append(k)

    eng.run([session(c) for c in range(100)], max_duration=HANG * 3,
            on_result=lambda op, res: results.append((op, res)))
    assert len(results) == 500 and all(res.ok for _, res in results)
    assert seen == {c: [0, 1, 2, 3, 4] for c in range(100)}
    req_ids = [res.reply.req_id for _, res in results]
    assert len(set(req_ids)) == 500


def test_max_duration_stops_everything(fake_node, engine):
    n1 = fake_node(1, silent)
    eng = engine([(1, n1.endpoint)], attempt_timeout=0.05, deadline=60.0)
    received: list[OpResult] = []
    closed: list[int] = []

    def session(customer: int):
        try:
            for k in range(1000):
                received.append((yield (1, customer, k)))
        finally:
            closed.append(customer)

    results: list[OpResult] = []
    t0 = time.monotonic()
    eng.run([session(c) for c in range(10)], max_duration=0.3,
            on_result=lambda op, res: results.append(res))
    assert time.monotonic() - t0 < HANG
    assert len(results) == 10 and len(received) == 10
    assert all(not r.ok and r.error == STOPPED_ERROR for r in results)
    assert sorted(closed) == list(range(10))


def test_engine_reusable_across_runs_and_closes(fake_node):
    n1 = fake_node(1, answer(1))
    with ClientEngine([(1, n1.endpoint)], attempt_timeout=1.0, deadline=5.0) as eng:
        assert one_op(eng, (2, 1, 0)).ok
        assert one_op(eng, (2, 2, 0)).ok
        eng.run([], max_duration=1.0)  # nothing to do returns at once
    with pytest.raises(RuntimeError):
        eng.run([], max_duration=1.0)


def test_engine_argument_validation():
    with pytest.raises(ValueError):
        ClientEngine([], attempt_timeout=1.0, deadline=1.0)
    with pytest.raises(ValueError):
        ClientEngine([(1, "tcp://127.0.0.1:1"), (1, "tcp://127.0.0.1:2")],
                     attempt_timeout=1.0, deadline=1.0)
    with pytest.raises(ValueError):
        ClientEngine([(1, "tcp://127.0.0.1:1")], attempt_timeout=0, deadline=1.0)
    with pytest.raises(ValueError):
        ClientEngine([(1, "tcp://127.0.0.1:1")], attempt_timeout=1.0, deadline=-1)


def test_error_reason():
    assert error_reason("deadline exceeded: 3 attempts, last: x") == "deadline exceeded"
    assert error_reason(STOPPED_ERROR) == "stopped"
    assert error_reason(None) == "unknown"


def make_config(*nodes: FakeNode | tuple[int, str], attempt_timeout_ms: int = 200,
                deadline_ms: int = 3000):
    """The default cluster config with its nodes pointed at fake nodes."""
    from protocol.config import ClientConfig, NodeConfig, load_config

    node_cfgs = []
    for node in nodes:
        node_id, endpoint = (node.node_id, node.endpoint) if isinstance(node, FakeNode) else node
        port = int(endpoint.rsplit(":", 1)[1])
        node_cfgs.append(NodeConfig(node_id, "127.0.0.1", port, port + 1, port + 2))
    return dataclasses.replace(load_config(None), nodes=tuple(node_cfgs),
                               client=ClientConfig(attempt_timeout_ms, deadline_ms))


def test_blocking_client(fake_node):
    n1 = fake_node(1, error(ErrorCode.NOT_PRIMARY, hint=2))
    n2 = fake_node(2, answer(2))
    cfg = make_config(n1, n2)
    with Client(cfg) as client:
        assert client.engine.attempt_timeout == pytest.approx(0.2)
        assert client.engine.deadline == pytest.approx(3.0)
        order = client.order(3, 4)
        assert order.ok and order.reply.order_number == 4 and order.redirects == 1
        read = client.read(3)
        assert read.ok and read.reply.last_order == 7 and read.redirects == 0
        bulk = client.bulk_read(0, 2)
        assert bulk.ok and bulk.reply.records == ((0, 1), (1, 1))


def test_blocking_client_deadline_from_override(fake_node):
    n1 = fake_node(1, silent)
    with Client(make_config(n1), attempt_timeout=0.05, deadline=0.2) as client:
        t0 = time.monotonic()
        res = client.read(1)
        assert time.monotonic() - t0 < HANG
        assert not res.ok and error_reason(res.error) == "deadline exceeded"


# ---------------------------------------------------------------------------- batched first sends


def _sessions_of_one_op(n: int, box: list[OpResult]):
    def session(customer: int):
        box.append((yield (1, customer, 0)))

    return [session(c) for c in range(n)]


def test_first_attempts_of_one_turn_go_out_together(fake_node, engine):
    """Operations started in one pass over the ready sessions are sent by one flush (one
    `start_ns` each, taken just before the batch's sends), at most SEND_BATCH at a time."""
    n1 = fake_node(1, answer(1))
    eng = engine([(1, n1.endpoint)])
    batch = ClientEngine.SEND_BATCH
    box: list[OpResult] = []
    eng.run(_sessions_of_one_op(2 * batch + 1, box), max_duration=HANG * 3)
    assert len(box) == 2 * batch + 1 and all(r.ok and r.attempts == 1 for r in box)
    starts = sorted({r.start_ns for r in box})
    assert len(starts) == 3  # flushed after SEND_BATCH, 2 x SEND_BATCH, and the last one
    assert [sum(1 for r in box if r.start_ns == s) for s in starts] == [batch, batch, 1]
    assert len(n1.requests) == 2 * batch + 1


def test_wait_is_a_value():
    assert Wait(1.5) == Wait(1.5) and hash(Wait(1.5)) == hash(Wait(1.5)) and Wait(1.5) != Wait(2)
