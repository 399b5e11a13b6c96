"""The job's side of the wire: a background thread that owns every socket.

The training thread only appends to a bounded deque (O(1), never blocks; the oldest item is dropped
and counted when viewers or the device lag far behind). The thread turns items into records, keeps a
bounded history for viewers that attach later, publishes on PUB (a slow subscriber is dropped by
ZeroMQ's high-water mark, never waited for) and answers requests on a ROUTER socket.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import zmq

from optwatch import protocol

log = logging.getLogger(__name__)

# Rare kinds are kept apart so a flood of steps never evicts the alert a viewer must see.
_RARE_HISTORY = 500
_STEP_HISTORY = 4000
_LOG_HISTORY = 500


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


class History:
    """Bounded recent history per kind, replayed to viewers that attach mid-run."""

    def __init__(self, steps: int = _STEP_HISTORY, rare: int = _RARE_HISTORY, logs: int = _LOG_HISTORY):
        self.hello: dict[int, dict[str, Any]] = {}
        self.steps: collections.deque[dict[str, Any]] = collections.deque(maxlen=steps)
        self.logs: collections.deque[dict[str, Any]] = collections.deque(maxlen=logs)
        self.rare: collections.deque[dict[str, Any]] = collections.deque(maxlen=rare)
        self.latest: dict[tuple[str, int], dict[str, Any]] = {}

    def add(self, record: dict[str, Any]) -> None:
        kind = record["kind"]
        if kind == protocol.HELLO:
            self.hello[record.get("rank", 0)] = record
        elif kind in (protocol.STEP, protocol.LAYERS):
            self.steps.append(record)
        elif kind == protocol.LOG:
            self.logs.append(record)
        elif kind in (protocol.SYSTEM, protocol.HOTSPOTS, protocol.VERDICT):
            # Only the newest matters to a viewer that attaches; older ones are in the record file.
            self.latest[(kind, record.get("rank", 0))] = record
        else:
            self.rare.append(record)

    def snapshot(self) -> list[dict[str, Any]]:
        records = [*self.hello.values(), *self.rare, *self.logs, *self.latest.values(), *self.steps]
        return sorted(records, key=lambda r: (r.get("rank", 0), r.get("seq", 0)))


RequestHandler = Callable[[dict[str, Any]], dict[str, Any]]
RecordObserver = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


class Publisher:
    """Owns the PUB and ROUTER sockets of one job and the thread that drives them."""

    def __init__(
        self,
        run_dir: Path,
        queue_size: int = 1024,
        interval_s: float = 0.05,
        sndhwm: int = 1000,
    ):
        self.run_dir = run_dir
        self.pub_endpoint = f"ipc://{run_dir / 'pub.sock'}"
        self.ctl_endpoint = f"ipc://{run_dir / 'ctl.sock'}"
        self.history = History()
        self.dropped = 0
        self.published = 0
        self._next_seq = 0
        self._queue: collections.deque[PendingItem] = collections.deque(maxlen=queue_size)
        self._interval_s = interval_s
        self._sndhwm = sndhwm
        self._handlers: dict[str, RequestHandler] = {"history": self._history_request}
        self._observers: list[RecordObserver] = []
        self._extra_binds: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="optwatch-publisher", daemon=True)
        self._bind_error: BaseException | None = None
        self._tcp_pub: str | None = None
        self._tcp_ctl: str | None = None

    # --- called from the training thread -------------------------------------------------------
    def submit(self, item: PendingItem) -> None:
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append(item)

    def submit_records(self, records: list[dict[str, Any]]) -> None:
        self.submit(ReadyRecords(records))

    def add_observer(self, observer: RecordObserver) -> None:
        """Pass every batch of ready records through ``observer`` before it is published.

        It runs on the publisher thread, sees records in order with their device values read back,
        and returns the batch to publish: the same records, completed or with records added.
        One that raises is logged and switched off.
        """
        self._observers.append(observer)

    def on_request(self, op: str, handler: RequestHandler) -> None:
        """Register a handler for a request ``op``; it runs on the publisher thread and must be quick."""
        self._handlers[op] = handler

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()
        self._started.wait(10)
        if self._bind_error is not None:
            raise self._bind_error

    def close(self, timeout_s: float = 5.0) -> None:
        """Flush what is queued (waiting for device values up to ``timeout_s``) and close the sockets."""
        self._stop.set()
        self._thread.join(timeout_s + 2)

    @property
    def endpoints(self) -> dict[str, str]:
        endpoints = {"pub": self.pub_endpoint, "ctl": self.ctl_endpoint}
        if self._tcp_pub:
            endpoints.update(tcp_pub=self._tcp_pub, tcp_ctl=self._tcp_ctl or "")
        return endpoints

    # --- the thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        context = zmq.Context()
        old_umask = os.umask(0o077)  # socket files are created 0600
        try:
            pub = context.socket(zmq.PUB)
            pub.setsockopt(zmq.SNDHWM, self._sndhwm)
            pub.setsockopt(zmq.LINGER, 2000)
            pub.bind(self.pub_endpoint)
            ctl = context.socket(zmq.ROUTER)
            ctl.setsockopt(zmq.LINGER, 500)
            ctl.setsockopt(zmq.MAXMSGSIZE, 1 << 20)
            ctl.bind(self.ctl_endpoint)
        except zmq.ZMQError as exc:
            self._bind_error = exc
            self._started.set()
            context.destroy(linger=0)
            return
        finally:
            os.umask(old_umask)
        self._started.set()
        poller = zmq.Poller()
        poller.register(ctl, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                for _ in range(64):
                    if not dict(poller.poll(0)):
                        break
                    self._answer(ctl)
                self._drain(pub)
                if dict(poller.poll(int(self._interval_s * 1000))):
                    self._answer(ctl)
            self._drain(pub, wait_s=5.0)
        finally:
            pub.close()
            ctl.close(linger=0)
            context.term()

    def _drain(self, pub: zmq.Socket, wait_s: float = 0.0) -> None:
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
            records = self._observe(records)
            for record in records:
                if "seq" not in record:  # records relayed from other ranks keep their own
                    record["seq"] = self._next_seq
                    self._next_seq += 1
                self.history.add(record)
            batch.extend(records)
        if batch:
            try:
                pub.send(protocol.encode_batch(batch), zmq.NOBLOCK)
                self.published += len(batch)
            except zmq.Again:
                self.dropped += len(batch)

    def _observe(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for observer in list(self._observers):
            try:
                records = observer(records)
            except Exception:
                log.exception("optwatch: a record observer failed; it is switched off")
                self._observers.remove(observer)
        return records

    def _answer(self, ctl: zmq.Socket) -> None:
        try:
            frames = ctl.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        identity, payload = frames[0], frames[-1]
        try:
            request = protocol.decode_request(payload)
            handler = self._handlers.get(str(request.get("op")))
            if handler is None:
                reply = {"ok": False, "error": f"unknown request {request.get('op')!r}"}
            else:
                reply = handler(request)
        except protocol.ProtocolError as exc:
            reply = {"ok": False, "error": str(exc)}
        except Exception as exc:
            log.exception("optwatch: request handler failed")
            reply = {"ok": False, "error": f"internal error: {exc}"}
        try:
            ctl.send_multipart([identity, b"", protocol.encode_request(reply)], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the asker went away; nothing to do

    def _history_request(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "records": self.history.snapshot()}
