"""A viewer sees each record of a job once and in order: when it misses a restarted job's first hello, and
when its first history request fails while live records come."""

from __future__ import annotations

import threading
import time

import pytest
import zmq

from optwatch import protocol
from optwatch.wire import subscriber
from optwatch.wire.subscriber import Feed


def record(kind: str, seq: int, **fields) -> dict:
    return {"v": 1, "kind": kind, "rank": 0, "seq": seq, "time": 0.0, **fields}


def test_a_new_pid_in_a_hello_starts_the_sequence_over(tmp_path):
    feed = Feed(f"ipc://{tmp_path}/pub.sock", f"ipc://{tmp_path}/ctl.sock")
    try:
        first = [record("hello", 0, pid=100), *(record("step", seq) for seq in range(1, 60))]
        assert len(feed._accept(first)) == 60
        assert feed._accept([record("step", 59)]) == []  # a repeat
        # The restarted job's hello seq 0 was lost while the socket reconnected; its device hello was not.
        again = [record("system", 2), record("hello", 3, pid=200), record("step", 4), record("end", 5)]
        assert [r["kind"] for r in feed._accept(again)] == ["hello", "step", "end"]
        assert feed._accept([record("hello", 6, pid=200)])  # the same job announcing again: nothing resets
        assert feed.last_seq == {0: 6}
    finally:
        feed.close()


class HubRefusingHistory:
    """A hub's two sockets, scripted: it refuses the first ``refuse`` history requests as a busy hub does
    (the real hub's reply when a viewer's request budget is spent; 0 for ever), serves the rest from a
    real ``History`` of ``run``, and publishes ``live`` (a tail of ``run``) once the viewer subscribed and
    its first history request was refused: the live records come before any history."""

    def __init__(self, directory, run: list[dict], live: list[dict], refuse: int):
        from optwatch.hub.history import History

        self.history = History()
        for item in run:
            self.history.add(item)
        self.live, self.refuse = live, refuse
        self.context = zmq.Context()
        self.pub = self.context.socket(zmq.XPUB)
        self.pub.bind(f"ipc://{directory}/pub.sock")
        self.ctl = self.context.socket(zmq.ROUTER)
        self.ctl.bind(f"ipc://{directory}/ctl.sock")
        self.endpoints = f"ipc://{directory}/pub.sock", f"ipc://{directory}/ctl.sock"
        self.subscribed = threading.Event()
        self.history_requests = 0
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.pub, zmq.POLLIN)
        poller.register(self.ctl, zmq.POLLIN)
        live_due = False
        while not self._stop:
            ready = dict(poller.poll(50))
            if self.pub in ready and self.pub.recv().startswith(b"\x01"):
                self.subscribed.set()
            if live_due and self.subscribed.is_set():  # (sent before the subscription reached us, it was lost)
                self.pub.send_multipart([protocol.TOPIC_RECORDS, protocol.encode_batch(self.live)])
                live_due = False
            if self.ctl in ready:
                identity, _, payload = self.ctl.recv_multipart()
                request = protocol.decode_request(payload)
                if request["op"] != "history":
                    reply = {"ok": True, "endpoints": {}}
                else:
                    self.history_requests += 1
                    pages = self._pages()
                    if pages is None:
                        reply = {"ok": False, "error": "too many history requests; ask again in a second"}
                    else:
                        reply = {
                            "ok": True,
                            "page": request["page"],
                            "pages": len(pages),
                            "batch": pages[request["page"]],
                        }
                    live_due = live_due or self.history_requests == 1
                self.ctl.send_multipart([identity, b"", protocol.encode_request(reply)])
                if live_due and self.subscribed.is_set():
                    self.pub.send_multipart([protocol.TOPIC_RECORDS, protocol.encode_batch(self.live)])
                    live_due = False

    def _pages(self) -> list[bytes] | None:
        """The pages of the answer to the history request being served; None to refuse it."""
        if self.refuse == 0 or self.history_requests <= self.refuse:
            return None
        return self.history.pages()

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        self.pub.close(linger=0)
        self.ctl.close(linger=0)
        self.context.term()


def a_run(steps: int) -> list[dict]:
    """A run's records as its rank sends them: its hello, then a step each (seq counts both)."""
    hello = protocol.make_record("hello", 0, seq=0, pid=4242, world_size=1, run_id="r", script="s")
    return [hello, *(protocol.make_record("step", 0, seq=1 + n, step=n, loss=1.0) for n in range(steps))]


def steps_seen(feed: Feed, until: int, timeout_s: float = 15.0) -> list[int]:
    seen: list[dict] = []
    deadline = time.monotonic() + timeout_s
    while sum(r["kind"] == "step" for r in seen) < until and time.monotonic() < deadline:
        seen.extend(feed.poll(0.1))
    time.sleep(0.3)
    seen.extend(feed.poll(0.1))  # anything that would come twice
    return [r["step"] for r in seen if r["kind"] == "step"]


@pytest.mark.parametrize("attached", ["late", "at the start"])
def test_live_records_wait_for_a_first_history_that_failed_and_every_step_comes_once_in_order(tmp_path, attached):
    """A viewer's first history requests are refused (a busy hub) while live records come: they wait for
    the history, asked again a quarter second later, and the viewer gets every step once, in order. They
    used to go on alone, and the history that came next was cut to what followed them: a viewer that
    attached late lost the run's first 30 steps. One attached at the start, whose live records begin with
    the job's first hello, must not take that hello, once the history has it, for a restarted job."""
    run = a_run(40)
    hub = HubRefusingHistory(tmp_path, run, live=run[31:] if attached == "late" else run, refuse=2)
    feed = Feed(*hub.endpoints)
    try:
        assert hub.subscribed.wait(10)
        assert steps_seen(feed, until=40) == list(range(40))
        assert hub.history_requests == 3
    finally:
        feed.close()
        hub.close()


def test_live_records_go_on_alone_when_the_history_does_not_come(tmp_path, monkeypatch):
    """A hub that never serves its history: the live records wait ``FIRST_HISTORY_WAIT_S`` at most, then
    the viewer shows them (from step 30) rather than nothing."""
    monkeypatch.setattr(subscriber, "FIRST_HISTORY_WAIT_S", 1.0)
    run = a_run(40)
    hub = HubRefusingHistory(tmp_path, run, live=run[31:], refuse=0)
    feed = Feed(*hub.endpoints)
    try:
        assert hub.subscribed.wait(10)
        started = time.monotonic()
        assert steps_seen(feed, until=10) == list(range(30, 40))
        assert 1.0 <= time.monotonic() - started < 5.0
    finally:
        feed.close()
        hub.close()


class HubWithAStaleHistory(HubRefusingHistory):
    """The same hub, whose first history answer is a second old (the real hub's snapshot, made for another
    viewer, lives that long): it ends before the live records that come next begin. Later answers hold
    ``run``."""

    def __init__(self, directory, run: list[dict], live: list[dict], stale: list[dict]):
        from optwatch.hub.history import History

        self.stale = History()
        for item in stale:
            self.stale.add(item)
        super().__init__(directory, run, live, refuse=-1)

    def _pages(self) -> list[bytes]:
        return (self.stale if self.history_requests == 1 else self.history).pages()


def test_live_records_after_a_gap_wait_for_the_history_to_fill_it_and_every_step_comes_in_order(tmp_path):
    """`optwatch attach` right after `optwatch ctl`: the hub's history answer was the one it made for ctl a
    moment before, and the live records began a few steps after its end. The history asked again filled
    that gap, but the records in it were older than the newest seen and were dropped: steps and the
    command's event went missing on every rank. Now the live records wait for it, and all come in order."""
    run = a_run(60)
    hub = HubWithAStaleHistory(tmp_path, run, live=run[46:], stale=run[:40])
    feed = Feed(*hub.endpoints)
    try:
        assert steps_seen(feed, until=60) == list(range(60))
        assert hub.history_requests >= 2
    finally:
        feed.close()
        hub.close()


def test_a_gap_that_no_history_holds_lets_the_live_records_go_at_the_next_answer(tmp_path):
    """Records the rank's channel dropped (its hub gone or far behind) were never the hub's: once an answer
    reaches past the gap without filling it, the live records after it go on, in order, without waiting
    out ``GAP_WAIT_S``."""
    run = a_run(60)
    dropped = run[40:46]
    hub = HubWithAStaleHistory(tmp_path, [r for r in run if r not in dropped], live=run[46:], stale=run[:40])
    feed = Feed(*hub.endpoints)
    started = time.monotonic()
    try:
        assert steps_seen(feed, until=54) == [*range(39), *range(45, 60)]
        assert time.monotonic() - started < subscriber.GAP_WAIT_S
    finally:
        feed.close()
        hub.close()
