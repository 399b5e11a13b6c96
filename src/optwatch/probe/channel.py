"""The training process's one line to its hub: a bounded queue, and a thread that owns the two sockets.

The training thread only appends to a bounded deque (O(1), never blocks; when full the oldest item is
dropped and counted). The channel's thread waits for an item's device values without waiting on the
device (``readback``), numbers the records (``seq``, per rank), encodes them and pushes them to the hub
with a non-blocking send: while the hub is gone or slow, ZeroMQ keeps a bounded queue and then drops. It
also hears the hub's commands for this rank, and on rank 0 brings a dead hub back (``respawn``).

Its own CPU time is counted (``cpu_s``): each step record carries the share of it that fell in the step,
so what optwatch costs the training process is on screen whole, not only its code on the training thread.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import zmq

from optwatch import protocol
from optwatch.wire import runtime

log = logging.getLogger(__name__)

QUEUE_ITEMS = 1024
SEND_QUEUE_MESSAGES = 300
"""Messages ZeroMQ keeps for a hub that is gone or behind (a message is about 50 ms of records): about 15 s,
after which they are dropped, and what a restarted hub gets first."""
HUB_CHECK_S = 1.0
RECONNECT_MAX_MS = 1000
"""Between ZeroMQ's tries to reach a hub that is gone, at most: from 100 ms, doubling. Each try costs the
training process's ZeroMQ thread CPU (every 100 ms, 2.6 ms of it a second); a hub that comes back is found
within a second."""
RESPAWN_EVERY_S = 5.0
IDLE_WAIT_S = 0.25
"""How long the thread sleeps with nothing on its way from the device: about the probe's publish interval.
Each wake-up takes the GIL from the training thread (every 50 ms, a third of this thread's CPU time went
to them), and a wake-up at each hand-over would take it right at the step's end, where the training
thread runs Python: on a busy machine that made a fast loop's steps cost several times as much. A
command comes in on the bus, which wakes it; a DDP decision and ``close`` wake it too."""


class PendingItem(Protocol):
    """Something the training thread handed over; its values may still be on their way from the device."""

    def ready(self) -> bool: ...

    def records(self) -> list[dict[str, Any]]: ...


class ReadyRecords:
    """Records that need no device readback."""

    def __init__(self, records: list[dict[str, Any]]):
        self._records = records

    def ready(self) -> bool:
        return True

    def records(self) -> list[dict[str, Any]]:
        return self._records


class Channel:
    def __init__(
        self,
        run_dir: Path,
        rank: int = 0,
        remote_hub: tuple[str, int] | None = None,
        token: str | None = None,
        interval_s: float = 0.05,
        respawn: Callable[[], None] | None = None,
    ):
        """``remote_hub``: (host, port) of a hub on another node (``--listen`` there), else the run directory's.
        ``respawn``: starts a new hub when the run directory's has died (rank 0)."""
        self.run_dir = run_dir
        self.rank = rank
        if remote_hub is not None:
            host, port = remote_hub
            address = f"[{host}]" if ":" in host else host
            self.inbox_endpoint = f"tcp://{address}:{port + 2}"
            self.bus_endpoint = f"tcp://{address}:{port + 1}"
        else:
            self.inbox_endpoint = f"ipc://{run_dir / 'in.sock'}"
            self.bus_endpoint = f"ipc://{run_dir / 'pub.sock'}"
        self._token = token if remote_hub is not None else None
        self._respawn = respawn
        self.commands: collections.deque[dict[str, Any]] = collections.deque(maxlen=256)
        """Commands (rank 0) and decisions (the other ranks) from the hub, for the controls plugin."""
        self.dropped = 0
        self.sent = 0
        self.cpu_s = 0.0
        """CPU seconds optwatch's background threads of this process have used (they add to it)."""
        self._cpu_lock = threading.Lock()
        self._seq = 0
        self._queue: collections.deque[PendingItem] = collections.deque(maxlen=QUEUE_ITEMS)
        self._decisions: collections.deque[dict[str, Any]] = collections.deque(maxlen=256)
        self._observers: list[Callable[[list[dict[str, Any]]], None]] = []
        self._interval_s = interval_s
        """How soon the thread looks again at an item whose device values are on their way."""
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        # Closed with the channel object, when nobody can write to them any more (never by the thread: a
        # closed descriptor's number may be another file's by the time a late submit writes to it).
        weakref.finalize(self, _close_fds, self._wake_read, self._wake_write)
        self._stop = threading.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="optwatch-channel", daemon=True)
        self._error: BaseException | None = None
        self._last_hub_check = time.monotonic()
        self._last_respawn = 0.0

    # --- any thread ----------------------------------------------------------------------------------
    def submit(self, item: PendingItem) -> None:
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append(item)

    def submit_records(self, records: list[dict[str, Any]]) -> None:
        self.submit(ReadyRecords(records))

    def send_decision(self, decision: dict[str, Any]) -> None:
        self._decisions.append(decision)
        self._wake()  # (one command's, now and then: the other ranks wait for it)

    def on_ready(self, observer: Callable[[list[dict[str, Any]]], None]) -> None:
        """Call ``observer`` with each batch of records once their values are on the host (on this thread)."""
        self._observers.append(observer)

    def add_cpu(self, seconds: float) -> None:
        with self._cpu_lock:
            self.cpu_s += seconds

    # --- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()
        self._started.wait(10)
        if self._error is not None:
            raise self._error

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is queued (waiting for device values up to ``timeout_s``), then close."""
        self._stop.set()
        self._wake()
        self._thread.join(timeout_s + 3)

    def _wake(self) -> None:
        try:
            os.write(self._wake_write, b"\0")
        except OSError:  # full (it is awake anyway) or closed (it has ended)
            pass

    # --- the thread ------------------------------------------------------------------------------------
    def _run(self) -> None:
        context = zmq.Context()
        try:
            push = context.socket(zmq.PUSH)
            push.setsockopt(zmq.SNDHWM, SEND_QUEUE_MESSAGES)
            push.setsockopt(zmq.LINGER, 2000)  # at exit, a short while for the hub to take the last records
            push.setsockopt(zmq.IMMEDIATE, 0)
            push.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_MAX_MS)
            bus = context.socket(zmq.SUB)
            bus.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_MAX_MS)
            bus.setsockopt(zmq.LINGER, 0)
            bus.setsockopt(zmq.MAXMSGSIZE, 1 << 16)
            bus.setsockopt(zmq.SUBSCRIBE, protocol.TOPIC_CONTROL)
            if self._token:
                from optwatch.wire.keys import curve_keys

                keys = curve_keys(self._token)
                keys.connect_as_client(push)
                keys.connect_as_client(bus)
            push.connect(self.inbox_endpoint)
            bus.connect(self.bus_endpoint)
        except (zmq.ZMQError, OSError) as exc:
            self._error = exc
            self._started.set()
            context.destroy(linger=0)
            return
        self._started.set()
        try:
            poller = zmq.Poller()
            poller.register(bus, zmq.POLLIN)
            poller.register(self._wake_read, zmq.POLLIN)
            while not self._stop.is_set():
                started = time.thread_time()
                wait_s = self._interval_s if self._queue else IDLE_WAIT_S
                events = dict(poller.poll(int(wait_s * 1000)))
                if self._wake_read in events:
                    self._drain_wakes()
                if bus in events:
                    self._hear(bus)
                self._send(push)
                self._check_hub()
                self.add_cpu(time.thread_time() - started)
            self._send(push, wait_s=5.0)
        finally:
            push.close()
            bus.close(linger=0)
            context.term()

    def _drain_wakes(self) -> None:
        try:
            while os.read(self._wake_read, 4096):
                pass
        except BlockingIOError:
            pass

    def _hear(self, bus: zmq.Socket) -> None:
        for _ in range(64):
            try:
                frames = bus.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                message = protocol.decode_request(frames[-1])
            except protocol.ProtocolError:
                continue
            # Rank 0 takes commands and decides their step; the other ranks take rank 0's decisions.
            if ("step" in message) != (self.rank == 0):
                self.commands.append(message)

    def _send(self, push: zmq.Socket, wait_s: float = 0.0) -> None:
        while self._decisions:
            self._push(push, protocol.FRAME_DECISION, protocol.encode_request(self._decisions.popleft()), 1)
        deadline = time.monotonic() + wait_s
        batch: list[dict[str, Any]] = []
        while self._queue:
            head = self._queue[0]
            if not head.ready():
                if time.monotonic() < deadline:
                    time.sleep(0.005)
                    continue
                break
            self._queue.popleft()
            try:
                records = head.records()
            except Exception:  # a bad item must not stop telemetry for the rest of the run
                log.exception("optwatch: dropping an item that failed to materialise")
                continue
            for observer in list(self._observers):
                try:
                    observer(records)
                except Exception:
                    log.exception("optwatch: a record observer failed; it is switched off")
                    self._observers.remove(observer)
            for record in records:
                record["seq"] = self._seq
                self._seq += 1
            batch.extend(records)
        if batch:
            try:
                payload = protocol.encode_batch(batch)
            except Exception:  # a value of a kind the wire does not carry (a bug): the rest still goes
                payload = protocol.encode_batch([_sendable(record) for record in batch])
            self._push(push, protocol.FRAME_RECORDS, payload, len(batch))

    def _push(self, push: zmq.Socket, kind: bytes, payload: bytes, count: int) -> None:
        try:
            push.send_multipart([kind, payload], zmq.NOBLOCK)
            self.sent += count
        except zmq.Again:
            self.dropped += count  # the hub is gone or far behind: never wait for it

    def _check_hub(self) -> None:
        """Rank 0: a hub that died (a kill -9, an OOM kill) is started again from the job's info."""
        now = time.monotonic()
        if self._respawn is None or now - self._last_hub_check < HUB_CHECK_S:
            return
        self._last_hub_check = now
        info = runtime.read_job_info(self.run_dir)
        hub_pid = info.hub_pid if info is not None else None
        if hub_pid and not runtime.pid_alive(hub_pid) and now - self._last_respawn >= RESPAWN_EVERY_S:
            self._last_respawn = now
            try:
                self._respawn()
                log.warning("optwatch: the hub (pid %d) was gone; a new one is taking over", hub_pid)
            except Exception:
                log.exception("optwatch: could not start a new hub; the training goes on without viewers")


def _close_fds(*fds: int) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


_unsendable_reported: set[str] = set()


def _sendable(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with each field the wire cannot carry set to None (logged once per field)."""
    clean = {}
    for key, value in record.items():
        try:
            protocol.encode_batch([{key: value}])
            clean[key] = value
        except Exception:
            clean[key] = None
            if key not in _unsendable_reported:
                _unsendable_reported.add(key)
                log.warning("optwatch: a %s record's %r cannot be sent (%s); it is left out", record.get("kind"),
                            key, type(value).__name__)  # fmt: skip
    return clean
