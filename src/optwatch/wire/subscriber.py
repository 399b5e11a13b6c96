"""The viewer's side of the wire: history first, then live records, with gaps filled and repeats dropped."""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from optwatch import protocol


class RequestError(RuntimeError):
    """The job refused a request or did not answer in time."""


class AuthenticationError(RequestError):
    """The job refused our token."""


class NoAnswer(RequestError):
    """The job's hub did not answer in time: it may still have taken the request."""


HUB_ANSWER_S = 10.0
"""How long a viewer waits for the hub's answer to a first request or a command (not for the job to apply
it). The hub answers at once; a machine busy with the training and more can hold that up for seconds."""


FIRST_HISTORY_WAIT_S = 5.0
"""How long live records wait for the first history when asking for it failed (a busy or restarting hub):
the viewer shows the run from its start, in order. After this they go on alone, and the history fills in
only what comes after them."""
HISTORY_RETRY_S = 1.0
"""Between two history requests; a quarter of it while live records wait for the first, or for a gap."""
GAP_WAIT_S = 3.0
"""How long live records that came after a gap in a rank's sequence wait for the history to fill it (the
hub's answer may be up to a second old: ``hub.history.SNAPSHOT_MAX_AGE_S``), so that the viewer gets the
run in order. After this they go on, and the gap stays."""


def seq_key(record: dict[str, Any]) -> int:
    """Whose sequence a record's ``seq`` belongs to: the rank that produced it."""
    return record.get("origin", record.get("rank", 0))


class Feed:
    """Records of one job, in order per rank, each at most once.

    A subscriber that joins late, or that ZeroMQ dropped messages for, sees a gap in a rank's ``seq``;
    the feed then asks the job for its history and fills in what the job still remembers.
    """

    def __init__(
        self,
        pub_endpoint: str,
        ctl_endpoint: str,
        token: str | None = None,
        context: zmq.Context | None = None,
    ):
        self._context = context or zmq.Context.instance()
        self._token = token
        self._sub = self._context.socket(zmq.SUB)
        self._sub.setsockopt(zmq.LINGER, 0)
        self._sub.setsockopt(zmq.RCVHWM, 10000)
        self._sub.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_WIRE_BYTES)
        self._sub.setsockopt(zmq.SUBSCRIBE, protocol.TOPIC_RECORDS)
        self._authenticate(self._sub)
        # The hub's end of the stream coming and going: a hub that dies is seen at once, not by its silence.
        self._link = self._sub.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        self.hub_gone_since: float | None = None
        """When the stream's connection to the hub dropped (time.monotonic()); None while it is up."""
        self._sub.connect(pub_endpoint)
        self._ctl_endpoint = ctl_endpoint
        self._ctl: zmq.Socket | None = None
        self._request_lock = threading.Lock()  # zmq sockets are not thread-safe
        self.last_seq: dict[int, int] = {}
        self._pids: dict[int, Any] = {}
        self.gaps_filled = 0
        self.errors: collections.deque[str] = collections.deque(maxlen=100)
        """Why records a peer sent were left out, newest last."""
        self._need_history = True
        self._last_history_try = 0.0
        self._held: list[dict[str, Any]] = []
        """Live records that came before the first history, waiting for it (``FIRST_HISTORY_WAIT_S``), or after
        a gap, waiting for the history to fill it (``GAP_WAIT_S``)."""
        self._holding_since: float | None = None
        self._gap_since: float | None = None
        """When live records first waited for a gap to be filled (None while none waits)."""
        self._refused_live = False
        """A live record was refused (malformed) since the last batch taken: the gap it leaves is no history's."""

    def _close_control(self) -> None:
        if self._ctl is not None:
            self._ctl.disable_monitor()
            self._monitor.close(linger=0)
            self._ctl.close(linger=0)
            self._ctl = None

    def close(self) -> None:
        self._sub.disable_monitor()
        self._link.close(linger=0)
        self._sub.close(linger=0)
        self._close_control()

    def _authenticate(self, socket: zmq.Socket) -> None:
        if self._token is not None:
            from optwatch.wire.keys import curve_keys

            curve_keys(self._token).connect_as_client(socket)

    # --- requests -------------------------------------------------------------------------------
    def _control_socket(self) -> zmq.Socket:
        if self._ctl is None:
            self._ctl = self._context.socket(zmq.DEALER)
            self._ctl.setsockopt(zmq.LINGER, 0)
            self._ctl.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_WIRE_BYTES)
            self._authenticate(self._ctl)
            self._monitor = self._ctl.get_monitor_socket(
                zmq.EVENT_HANDSHAKE_FAILED_AUTH
                | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
            )
            self._ctl.connect(self._ctl_endpoint)
        return self._ctl

    def request(self, op: str, timeout_s: float = 3.0, **fields: Any) -> dict[str, Any]:
        """Ask the job. The socket is the pump thread's; the lock makes any other caller wait its turn."""
        with self._request_lock:
            socket = self._control_socket()
            socket.send_multipart([b"", protocol.encode_request({"op": op, **fields})])
            poller = zmq.Poller()
            poller.register(socket, zmq.POLLIN)
            poller.register(self._monitor, zmq.POLLIN)
            deadline = time.monotonic() + timeout_s
            answered = refused = False
            while not (answered or refused) and time.monotonic() < deadline:
                ready = dict(poller.poll(max(1, int((deadline - time.monotonic()) * 1000))))
                answered = socket in ready
                refused = self._monitor in ready and not answered
            if not answered:
                # The reply may still come later and would be taken for the next one: start afresh.
                self._close_control()
                if refused:
                    raise AuthenticationError("the job refused the token (wrong or missing --token)")
                raise NoAnswer(f"no answer to {op!r} within {timeout_s:.0f}s")
            reply = protocol.decode_request(socket.recv_multipart()[-1])
        if not reply.get("ok"):
            raise RequestError(str(reply.get("error", "refused")))
        return reply

    # --- records --------------------------------------------------------------------------------
    def _accept(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Drop repeats; note gaps (they trigger a history request). Records after a gap in a known rank's
        sequence wait in ``_held`` for the history to fill it (``GAP_WAIT_S``), so they come in order."""
        fresh = []
        for position, record in enumerate(records):
            rank, seq = seq_key(record), record.get("seq")
            if seq is None:
                fresh.append(record)
                continue
            if record.get("kind") == protocol.HELLO:
                # The job (or this rank) started afresh, an elastic restart: its sequence starts over. Its
                # first hello (seq 0) is easily lost while this subscriber reconnects; a new pid tells too.
                # A first hello of a process already known is no restart, only a repeat (the history has it).
                pid = record.get("pid")
                known = self._pids.get(rank)
                if (seq == 0 and known is None) or (known is not None and pid != known):
                    self.last_seq.pop(rank, None)
                self._pids[rank] = pid
            last = self.last_seq.get(rank, -1)
            if seq <= last:
                continue
            if seq > last + 1:
                self._need_history = True
                if rank in self.last_seq and not self._refused_live:  # (a first record's: the first history's)
                    now = time.monotonic()
                    self._gap_since = self._gap_since or now
                    if now - self._gap_since < GAP_WAIT_S:
                        # The history answer takes everything after ``last``: the gap, then these, in order.
                        self._held = records[position:] + self._held
                        return fresh
            self.last_seq[rank] = seq
            fresh.append(record)
        if not self._held:
            self._gap_since = None  # all taken in order
            if fresh:
                self._refused_live = False  # (the gap a refused record left is behind them)
        return fresh

    def _follow_link(self) -> None:
        while self._link.poll(0):
            event = recv_monitor_message(self._link)["event"]
            if event == zmq.EVENT_DISCONNECTED:
                self.hub_gone_since = self.hub_gone_since or time.monotonic()
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                if self.hub_gone_since is not None:
                    self._need_history = True  # what the ranks sent meanwhile, from the new hub
                self.hub_gone_since = None

    def history(self) -> list[dict[str, Any]]:
        """Everything the hub keeps, page by page (what a viewer that attaches late sees first)."""
        records: list[dict[str, Any]] = []
        page, pages = 0, 1
        while page < pages:
            reply = self.request("history", timeout_s=6.0, page=page)
            batch = reply.get("batch")
            if not isinstance(batch, bytes):
                raise RequestError("the hub sent a history page without records")
            good, refused = protocol.decode_records(batch)
            records.extend(good)
            self.errors.extend(refused)
            pages = int(reply.get("pages", 1))
            page += 1
        return records

    def _history(self) -> list[dict[str, Any]]:
        self._last_history_try = time.monotonic()
        try:
            history = self.history()
        except (RequestError, protocol.ProtocolError, ValueError, TypeError):
            return []
        self._need_history = False
        before = dict(self.last_seq)
        self.last_seq = {}
        records = []
        taken: set[tuple[int, int]] = set()  # a record on two pages (the history moved between them) once
        for record in history:  # each validated as its page was decoded
            if record.get("kind") == protocol.HISTORY:
                records.append(record)  # made for this answer, outside any sender's sequence
                continue
            rank, seq = seq_key(record), record.get("seq", -1)
            if seq > before.get(rank, -1) and (rank, seq) not in taken:
                taken.add((rank, seq))
                records.append(record)
            if record.get("kind") == protocol.HELLO:
                self._pids[rank] = record.get("pid")  # the hub keeps each rank's newest hello
            self.last_seq[rank] = max(seq, self.last_seq.get(rank, -1))
        for rank, seq in before.items():
            self.last_seq[rank] = max(seq, self.last_seq.get(rank, -1))
        if before:
            self.gaps_filled += 1
        return records + self._release_held()

    def _release_held(self) -> list[dict[str, Any]]:
        held, self._held, self._holding_since = self._held, [], None
        return self._accept(held) if held else []

    def _holding(self) -> bool:
        """Whether live records wait for the first history (it is due, none came yet) or for a gap to be
        filled, and not for too long."""
        if self._gap_since is not None and self._held:
            return self._need_history and time.monotonic() - self._gap_since < GAP_WAIT_S
        if not (self._need_history and not self.last_seq):
            return False
        now = time.monotonic()
        if self._holding_since is None:
            self._holding_since = now
        return now - self._holding_since < FIRST_HISTORY_WAIT_S

    def _history_due(self) -> bool:
        retry_s = HISTORY_RETRY_S / 4 if self._held else HISTORY_RETRY_S
        return self._need_history and time.monotonic() - self._last_history_try > retry_s

    def poll(self, timeout_s: float = 0.1, max_messages: int = 256) -> list[dict[str, Any]]:
        """Records that arrived since the last call (waits up to ``timeout_s`` for the first)."""
        records: list[dict[str, Any]] = []
        self._follow_link()
        if self._history_due():
            records.extend(self._history())
        if self._held and not self._holding():
            records.extend(self._release_held())  # the first history did not come in time: go on without it
        if not self._sub.poll(int(timeout_s * 1000)):
            return records
        for _ in range(max_messages):
            try:
                payload = self._sub.recv_multipart(zmq.NOBLOCK)[-1]
            except zmq.Again:
                break
            try:
                batch, refused = protocol.decode_records(payload)
                self.errors.extend(refused)
                self._refused_live = self._refused_live or bool(refused)
            except protocol.ProtocolError as exc:
                self.errors.append(str(exc))
                self._refused_live = True
                continue
            if self._need_history and not self.last_seq and not self._held:
                # First live data before any history: fetch history now so order is kept.
                records.extend(self._history())
            if self._holding():
                self._held.extend(batch)  # the history failed: these come after it, when it comes
                continue
            if self._held:
                records.extend(self._release_held())
            records.extend(self._accept(batch))
        if self._history_due():
            records.extend(self._history())
        return records
