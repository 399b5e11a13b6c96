"""The hub's answers to viewers' requests: none lost to a queue that only looks full.

A request socket keeps at most ``REPLY_QUEUE`` answers for a peer, so that a peer that never reads pins
no more. ZeroMQ's sending thread learns that a peer has read an answer through a message from its I/O
thread, and on a busy machine that message can come after the next answer is sent: the queue then looks
full to a peer that reads every answer, and a plain ROUTER drops the answer without a word (``optwatch
ctl`` waited 10 s for one). The sockets are ROUTER_MANDATORY, so such a send fails instead, and the answer
waits here, in order behind the peer's earlier ones, for the next pass of the hub's loop, when the news
has come.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import zmq

REPLY_QUEUE = 2
"""Answers ZeroMQ keeps for one peer (the request sockets' SNDHWM)."""
WAITING_PER_PEER = 4
"""Answers that wait here for one peer, beyond ``REPLY_QUEUE``: a peer with more does not read them."""
WAIT_LIMIT_S = 10.0
"""How long an answer waits for its peer to make room; after that the peer is taken to be gone."""
RETRY_EVERY_S = 0.01
"""How soon the hub's loop tries again while answers wait."""


@dataclass
class _Waiting:
    since: float
    answers: collections.deque[bytes] = field(default_factory=collections.deque)


class Replies:
    """Sends answers on ROUTER sockets made with ``socket_options()``; keeps for a while those not taken."""

    @staticmethod
    def socket_options() -> dict[str, int]:
        return {"SNDHWM": REPLY_QUEUE, "ROUTER_MANDATORY": 1}

    def __init__(self) -> None:
        self._waiting: dict[tuple[zmq.Socket, bytes], _Waiting] = {}
        self.dropped = 0
        """Answers given up on: their peer went away, did not read them, or asked for too many at once."""

    @property
    def any_waiting(self) -> bool:
        return bool(self._waiting)

    def send(self, socket: zmq.Socket, peer: bytes, answer: bytes, now: float) -> None:
        waiting = self._waiting.get((socket, peer))
        if waiting is not None:
            if len(waiting.answers) >= WAITING_PER_PEER:
                self.dropped += 1
            else:
                waiting.answers.append(answer)  # after the peer's earlier answers, never before them
            return
        try:
            self._send(socket, peer, answer)
        except zmq.Again:
            self._waiting[(socket, peer)] = _Waiting(now, collections.deque([answer]))
        except zmq.ZMQError:
            self.dropped += 1  # the peer went away

    def retry(self, now: float) -> None:
        """Send what waits, in order, as far as each peer's queue takes it."""
        for key, waiting in list(self._waiting.items()):
            socket, peer = key
            try:
                while waiting.answers:
                    self._send(socket, peer, waiting.answers[0])
                    waiting.answers.popleft()
                    waiting.since = now
            except zmq.Again:
                if now - waiting.since < WAIT_LIMIT_S:
                    continue
            except zmq.ZMQError:
                pass
            self.dropped += len(waiting.answers)
            del self._waiting[key]

    @staticmethod
    def _send(socket: zmq.Socket, peer: bytes, answer: bytes) -> None:
        socket.send_multipart([peer, b"", answer], zmq.NOBLOCK)
