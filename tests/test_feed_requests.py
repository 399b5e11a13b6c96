"""A request the hub leaves unanswered is told apart from one it refuses: the first may still take effect."""

from __future__ import annotations

import threading

import pytest
import zmq

from optwatch import protocol
from optwatch.wire.subscriber import Feed, NoAnswer, RequestError


def test_a_hub_that_refuses_is_a_refusal_and_one_that_is_silent_is_no_answer(tmp_path):
    """A hub that answers `endpoints` and refuses `status` but never answers `control` (as a hub held up
    on a busy machine): the control request raises NoAnswer, the refusal a plain RequestError."""
    context = zmq.Context()
    hub = context.socket(zmq.ROUTER)
    hub.bind(f"ipc://{tmp_path}/ctl.sock")
    received: list[str] = []

    def serve() -> None:
        while len(received) < 3 and hub.poll(10_000):
            identity, _, payload = hub.recv_multipart()
            op = protocol.decode_request(payload)["op"]
            received.append(op)
            if op != "control":
                reply = {"ok": op == "endpoints", "endpoints": {}, "error": "no"}
                hub.send_multipart([identity, b"", protocol.encode_request(reply)])

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    feed = Feed(f"ipc://{tmp_path}/pub.sock", f"ipc://{tmp_path}/ctl.sock")
    try:
        assert feed.request("endpoints", timeout_s=5.0)["ok"]
        with pytest.raises(NoAnswer):
            feed.request("control", timeout_s=0.5, command="lr=0.1")
        with pytest.raises(RequestError) as refused:
            feed.request("status", timeout_s=5.0)  # a fresh socket: the late answer is not taken for this one
        assert not isinstance(refused.value, NoAnswer)
        server.join(10)
        assert received == ["endpoints", "control", "status"]
    finally:
        feed.close()
        hub.close(linger=0)
        context.term()
