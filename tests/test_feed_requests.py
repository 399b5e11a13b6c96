"""Every request a viewer sends gets its answer, and one the hub leaves unanswered is told apart from one it
refuses: the first may still take effect."""

from __future__ import annotations

import threading

import pytest
import zmq

from optwatch import protocol
from optwatch.wire.subscriber import Feed, NoAnswer, RequestError


def test_a_viewer_that_asks_several_things_before_reading_gets_every_answer_in_order(tmp_path):
    """The real hub, in its own process, answers six requests sent back to back before any answer is read,
    in order (the requests socket's queue holds two: the rest wait in the hub, not dropped as they were),
    and still answers the same peer's next request."""
    from optwatch.hub import spawn
    from optwatch.wire import runtime

    run_dir = runtime.make_run_dir("answers")
    hub = spawn(run_dir, "answers", runs_dir=None)
    context = zmq.Context()
    asker = context.socket(zmq.DEALER)
    asker.setsockopt(zmq.LINGER, 0)
    asker.connect(f"ipc://{run_dir}/ctl.sock")
    try:
        asked = ["status", "endpoints", "history", "no-such-request", "status", "control"]
        for op in asked:
            asker.send_multipart([b"", protocol.encode_request({"op": op})])
        answers = []
        while len(answers) < len(asked) and asker.poll(5000):
            answers.append(protocol.decode_request(asker.recv_multipart()[-1]))
        told = [
            "paused" in a and "status" or "endpoints" in a and "endpoints" or "pages" in a and "history"
            or "unknown request" in a.get("error", "") and "no-such-request"
            or "needs a command" in a.get("error", "") and "control"
            for a in answers
        ]  # fmt: skip
        assert told == asked
        asker.send_multipart([b"", protocol.encode_request({"op": "status"})])
        assert asker.poll(5000) and protocol.decode_request(asker.recv_multipart()[-1])["ok"]
    finally:
        asker.close()
        context.term()
        hub.kill()
        hub.wait(10)


def hub_silent_on_control(directory, received: list[str], requests: int) -> tuple[zmq.Context, threading.Thread]:
    """A hub's request socket that answers `endpoints`, refuses anything else and `amp=maybe`, and never answers
    another `control` (as a hub held up on a busy machine), for ``requests`` requests."""
    context = zmq.Context()
    hub = context.socket(zmq.ROUTER)
    hub.bind(f"ipc://{directory}/ctl.sock")

    def serve() -> None:
        while len(received) < requests and hub.poll(10_000):
            identity, _, payload = hub.recv_multipart()
            op = protocol.decode_request(payload)["op"]
            received.append(op)
            command = protocol.decode_request(payload).get("command", "")
            if op != "control" or command == "amp=maybe":
                reply = {"ok": op == "endpoints", "endpoints": {}, "error": "amp is on or off"}
                hub.send_multipart([identity, b"", protocol.encode_request(reply)])
        hub.close(linger=0)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    return context, server


def test_a_hub_that_refuses_is_a_refusal_and_one_that_is_silent_is_no_answer(tmp_path):
    """The control request a hub leaves unanswered raises NoAnswer; a refusal is a plain RequestError."""
    received: list[str] = []
    context, server = hub_silent_on_control(tmp_path, received, requests=3)
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
        server.join(10)
        context.term()


def test_the_dashboard_tells_a_command_the_hub_did_not_answer_from_a_rejected_one(tmp_path, monkeypatch):
    """The dashboard's answer to a command the hub did not take in time says the outcome is unknown (the job
    may still apply it), not that it was rejected."""
    from optwatch import session as viewer

    monkeypatch.setattr(viewer, "HUB_ANSWER_S", 0.5)
    received: list[str] = []
    context, server = hub_silent_on_control(tmp_path, received, requests=3)  # and the viewer's history request
    session = viewer.ViewerSession(Feed(f"ipc://{tmp_path}/pub.sock", f"ipc://{tmp_path}/ctl.sock"))
    try:
        session.send_command("lr=0.1")
        session.send_command("amp=maybe")
        session.pump(0.1)
        assert received == ["control", "control", "history"]
        [(first, unanswered), (second, refused)] = session.answers
        assert (first, second) == ("lr=0.1", "amp=maybe")
        assert unanswered["unknown"] and not unanswered["ok"]
        assert "unknown" not in refused and refused["error"] == "amp is on or off"
    finally:
        session.close()
        server.join(10)
        context.term()


async def test_the_dashboard_says_a_command_the_hub_did_not_answer_may_still_apply(tmp_path, monkeypatch):
    from conftest import wait_for_ui
    from optwatch import session as viewer
    from optwatch.app.app import OptwatchApp

    monkeypatch.setattr(viewer, "HUB_ANSWER_S", 0.5)
    received: list[str] = []
    context, server = hub_silent_on_control(tmp_path, received, requests=3)
    app = OptwatchApp(viewer.ViewerSession(Feed(f"ipc://{tmp_path}/pub.sock", f"ipc://{tmp_path}/ctl.sock")))
    try:
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.press("colon", *"lr=0.1", "enter")
            await wait_for_ui(pilot, lambda: [n for n in app._notifications if n.message.startswith("lr=0.1")])
            [notice] = [n for n in app._notifications if n.message.startswith("lr=0.1")]
            assert notice.severity == "warning" and "rejected" not in notice.message
            assert (
                notice.message.startswith("lr=0.1: no answer to 'control' within")
                and "may still apply" in notice.message
            )
    finally:
        server.join(10)
        context.term()
