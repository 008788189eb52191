"""Client side of the JSON control plane (supervisor and node control sockets).

One REQ socket per request, closed right after: a REQ socket whose reply never comes is stuck in
"expecting a reply" forever, so the Lazy Pirate answer is to give up on it (LINGER=0, close) and
report a clear error instead of hanging the CLI.
"""

from __future__ import annotations

from typing import Any

import zmq

from protocol.codec import ProtocolError, decode_json, encode_json

SCHEMA_VERSION = 1


class ControlError(RuntimeError):
    """The peer did not answer in time, or answered something that is not a control reply."""


def request(endpoint: str, obj: dict[str, Any], timeout: float = 2.0, *, what: str = "supervisor") -> dict:
    """Send one JSON request to `endpoint` and return the decoded reply.

    `timeout` is in seconds.  `what` names the peer in error messages ("supervisor", "node 2").
    Raises ControlError when nothing answers in time or the reply is not a JSON object.
    """
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send(encode_json(obj))
        if not sock.poll(int(timeout * 1000), zmq.POLLIN):
            raise ControlError(f"{what} is not answering on {endpoint}")
        data = sock.recv()
    finally:
        sock.close(linger=0)
    try:
        reply = decode_json(data)
    except ProtocolError as exc:
        raise ControlError(f"{what} sent an unreadable reply on {endpoint}: {exc}") from None
    if not isinstance(reply, dict):
        raise ControlError(f"{what} sent an unreadable reply on {endpoint}")
    return reply


def ok(**fields: Any) -> dict:
    """A successful control reply."""
    return {"ok": True, **fields}


def error(message: str, **fields: Any) -> dict:
    """A failed control reply; `message` is shown to the user as is."""
    return {"ok": False, "error": message, **fields}
