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

# PUB topics: viewers subscribe to records; the other ranks of a job subscribe to control decisions.
TOPIC_RECORDS = b"r"
TOPIC_CONTROL = b"c"
PLAIN_USER = b"optwatch"

# Rare kinds are kept apart so a flood of steps never evicts the alert a viewer must see.
_RARE_HISTORY = 500
_STEP_HISTORY = 4000
_LOG_HISTORY = 500
_LAYERS_HISTORY = 200


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
    """Bounded recent history per rank and per kind, replayed to viewers that attach mid-run."""

    def __init__(self, steps: int = _STEP_HISTORY, rare: int = _RARE_HISTORY, logs: int = _LOG_HISTORY):
        self.hello: dict[int, dict[str, Any]] = {}
        self._step_capacity = steps
        self.steps_by_rank: dict[int, collections.deque[dict[str, Any]]] = {}
        # Per-layer records are large: a viewer that attaches needs the recent picture, not all of it.
        self.layers_by_rank: dict[int, collections.deque[dict[str, Any]]] = {}
        self.logs: collections.deque[dict[str, Any]] = collections.deque(maxlen=logs)
        self.rare: collections.deque[dict[str, Any]] = collections.deque(maxlen=rare)
        self.latest: dict[tuple[str, int], dict[str, Any]] = {}

    def add(self, record: dict[str, Any]) -> None:
        kind = record["kind"]
        rank = record.get("rank", 0)
        if kind == protocol.HELLO:
            self.hello[rank] = record
        elif kind == protocol.STEP:
            ring = self.steps_by_rank.get(rank)
            if ring is None:
                ring = self.steps_by_rank[rank] = collections.deque(maxlen=self._step_capacity)
            ring.append(record)
        elif kind == protocol.LAYERS:
            ring = self.layers_by_rank.get(rank)
            if ring is None:
                ring = self.layers_by_rank[rank] = collections.deque(maxlen=_LAYERS_HISTORY)
            ring.append(record)
        elif kind == protocol.LOG:
            self.logs.append(record)
        elif kind in (protocol.SYSTEM, protocol.HOTSPOTS, protocol.VERDICT):
            # Only the newest matters to a viewer that attaches; older ones are in the record file.
            self.latest[(kind, rank)] = record
        else:
            self.rare.append(record)

    @property
    def steps(self) -> list[dict[str, Any]]:
        """Recent step records of every rank."""
        return [record for ring in self.steps_by_rank.values() for record in ring]

    def snapshot(self) -> list[dict[str, Any]]:
        records = [*self.hello.values(), *self.rare, *self.logs, *self.latest.values(), *self.steps]
        records += [record for ring in self.layers_by_rank.values() for record in ring]
        return sorted(records, key=lambda r: (r.get("origin", r.get("rank", 0)), r.get("seq", 0)))


RequestHandler = Callable[[dict[str, Any]], dict[str, Any]]
RecordObserver = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


def tcp_endpoints(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port); raises ValueError with a message a user can act on."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host:
        raise ValueError(f"--listen wants HOST:PORT (e.g. 127.0.0.1:0), got {listen!r}")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"--listen: port must be a number, got {port_text!r}") from None
    if not 0 <= port <= 65534:
        raise ValueError(f"--listen: port must be 0..65534, got {port}")
    return host.strip("[]"), port


class Publisher:
    """Owns the sockets of one rank and the thread that drives them.

    Rank 0 (the hub) binds PUB (records for viewers, control decisions for the other ranks) and
    ROUTER (requests), and with several ranks a PULL socket through which the other ranks' records
    arrive to be kept and republished. Any other rank only PUSHes its records to the hub and listens
    to the hub's control topic; it never touches the training's own process group.
    """

    def __init__(
        self,
        run_dir: Path,
        queue_size: int = 1024,
        interval_s: float = 0.05,
        sndhwm: int = 1000,
        rank: int = 0,
        world_size: int = 1,
        listen: str | None = None,
        token: str | None = None,
        hub_endpoint: str | None = None,
    ):
        self.run_dir = run_dir
        self.rank = rank
        self.world_size = world_size
        self.is_hub = rank == 0
        self.pub_endpoint = f"ipc://{run_dir / 'pub.sock'}"
        self.ctl_endpoint = f"ipc://{run_dir / 'ctl.sock'}"
        self.hub_endpoint = hub_endpoint or f"ipc://{run_dir / 'hub.sock'}"
        if hub_endpoint and not self.is_hub:
            # On another node: the hub's records stream is one port below its PULL port.
            host, _, port = hub_endpoint.rpartition(":")
            self.pub_endpoint = f"{host}:{int(port) - 1}"
        self._listen = listen
        self._token = token
        if listen is not None:
            tcp_endpoints(listen)  # fail early, on the caller's thread, with a clear message
            if not token:
                raise ValueError("a TCP endpoint needs a token")
        self.control_inbox: collections.deque[dict[str, Any]] = collections.deque(maxlen=256)
        self._tick_callbacks: list[Callable[[Publisher], list[dict[str, Any]]]] = []
        self._outgoing_controls: collections.deque[dict[str, Any]] = collections.deque(maxlen=256)
        self.history = History()
        self.dropped = 0
        self.published = 0
        self._next_seq = 0
        self._queue: collections.deque[PendingItem] = collections.deque(maxlen=queue_size)
        self._interval_s = interval_s
        self._sndhwm = sndhwm
        self._handlers: dict[str, RequestHandler] = {
            "history": self._history_request,
            "endpoints": lambda request: {"ok": True, "endpoints": self.endpoints},
        }
        self._observers: list[RecordObserver] = []
        self._ended_ranks: set[int] = set()
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

    def on_tick(self, callback: Callable[[Publisher], list[dict[str, Any]]]) -> None:
        """Run ``callback(publisher)`` on the publisher thread about once a second; it returns records
        to publish (diagnostics over ``history``, which only this thread changes)."""
        self._tick_callbacks.append(callback)

    def broadcast_control(self, decision: dict[str, Any]) -> None:
        """Hub only: send a control decision to every other rank (thread-safe)."""
        self._outgoing_controls.append(decision)

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
        if self._tcp_ctl:
            endpoints.update(tcp=self._tcp_ctl, tcp_pub=self._tcp_pub or "")
        return endpoints

    # --- the thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        context = zmq.Context()
        self._sockets: dict[str, zmq.Socket] = {}
        authenticator = None
        old_umask = os.umask(0o077)  # socket files are created 0600
        try:
            if self.is_hub:
                self._bind_hub_sockets(context)
                if self._listen:
                    authenticator = self._bind_tcp(context)
            else:
                self._connect_to_hub(context)
        except (zmq.ZMQError, OSError) as exc:
            self._bind_error = exc
            self._started.set()
            context.destroy(linger=0)
            return
        finally:
            os.umask(old_umask)
        self._started.set()
        poller = zmq.Poller()
        for name in ("ctl", "tcp_ctl", "pull", "tcp_pull", "ctl_sub"):
            if name in self._sockets:
                poller.register(self._sockets[name], zmq.POLLIN)
        next_tick = time.monotonic() + 1.0
        try:
            while not self._stop.is_set():
                ready = dict(poller.poll(int(self._interval_s * 1000)))
                for name, socket in self._sockets.items():
                    if socket in ready:
                        self._service(name, socket)
                self._drain()
                self._send_controls()
                if self._tick_callbacks and time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + 1.0
                    self._tick()
            self._drain(wait_s=5.0)
            if self.is_hub and self.world_size > 1:
                self._await_other_ranks(poller, wait_s=5.0)
            if self._tick_callbacks:
                self._tick()
        finally:
            for socket in self._sockets.values():
                socket.close(linger=2000 if socket.type in (zmq.PUB, zmq.PUSH) else 0)
            if authenticator is not None:
                authenticator.stop()
            context.term()

    def _bind_hub_sockets(self, context: zmq.Context) -> None:
        pub = context.socket(zmq.PUB)
        pub.setsockopt(zmq.SNDHWM, self._sndhwm)
        pub.bind(self.pub_endpoint)
        self._sockets["pub"] = pub
        ctl = context.socket(zmq.ROUTER)
        ctl.setsockopt(zmq.MAXMSGSIZE, 1 << 20)
        ctl.bind(self.ctl_endpoint)
        self._sockets["ctl"] = ctl
        if self.world_size > 1:
            pull = context.socket(zmq.PULL)
            pull.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_WIRE_BYTES)
            pull.bind(self.hub_endpoint)
            self._sockets["pull"] = pull

    def _bind_tcp(self, context: zmq.Context):
        """TCP needs a token: ZeroMQ's PLAIN mechanism, checked by a ZAP authenticator thread."""
        from zmq.auth.thread import ThreadAuthenticator

        authenticator = ThreadAuthenticator(context)
        authenticator.start()
        authenticator.configure_plain(domain="optwatch", passwords={PLAIN_USER.decode(): self._token})
        host, port = tcp_endpoints(self._listen or "")
        address = f"[{host}]" if ":" in host else host
        for attempt in range(50):
            ctl = context.socket(zmq.ROUTER)
            pub = context.socket(zmq.PUB)
            for socket in (ctl, pub):
                socket.plain_server = True
                socket.zap_domain = b"optwatch"
            ctl.setsockopt(zmq.MAXMSGSIZE, 1 << 20)
            pub.setsockopt(zmq.SNDHWM, self._sndhwm)
            try:
                # The stream is always on the port after the request port, so one rule serves SSH tunnels.
                ctl_port = ctl.bind_to_random_port(f"tcp://{address}") if port == 0 else port
                if port != 0:
                    ctl.bind(f"tcp://{address}:{port}")
                pub.bind(f"tcp://{address}:{ctl_port + 1}")
            except zmq.ZMQError:
                ctl.close(linger=0)
                pub.close(linger=0)
                if port != 0 or attempt == 49:
                    raise
                continue
            self._sockets["tcp_ctl"] = ctl
            self._sockets["tcp_pub"] = pub
            if self.world_size > 1:
                # Ranks on other nodes push their records to PORT+2, with the same token.
                pull = context.socket(zmq.PULL)
                pull.plain_server = True
                pull.zap_domain = b"optwatch"
                pull.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_WIRE_BYTES)
                pull.bind(f"tcp://{address}:{ctl_port + 2}")
                self._sockets["tcp_pull"] = pull
            self._tcp_ctl = f"tcp://{host}:{ctl_port}"
            self._tcp_pub = f"tcp://{host}:{ctl_port + 1}"
            return authenticator
        raise OSError("no free port pair found")

    def _connect_to_hub(self, context: zmq.Context) -> None:
        push = context.socket(zmq.PUSH)
        push.setsockopt(zmq.SNDHWM, self._sndhwm)
        ctl_sub = context.socket(zmq.SUB)
        if self._token:
            for socket in (push, ctl_sub):
                socket.plain_username = PLAIN_USER
                socket.plain_password = self._token.encode()
        push.connect(self.hub_endpoint)
        ctl_sub.setsockopt(zmq.SUBSCRIBE, TOPIC_CONTROL)
        ctl_sub.connect(self.pub_endpoint)
        self._sockets["push"] = push
        self._sockets["ctl_sub"] = ctl_sub

    def _service(self, name: str, socket: zmq.Socket) -> None:
        for _ in range(64):
            try:
                frames = socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if name in ("ctl", "tcp_ctl"):
                self._answer(socket, frames)
            elif name in ("pull", "tcp_pull"):
                self._relay(frames[-1])
            elif name == "ctl_sub":
                try:
                    self.control_inbox.append(protocol.decode_request(frames[-1]))
                except protocol.ProtocolError:
                    log.warning("optwatch: ignoring a malformed control message from the hub")

    def _await_other_ranks(self, poller: zmq.Poller, wait_s: float) -> None:
        """Hub, closing: the other ranks finish at about the same time; keep relaying until each has
        sent its end record (bounded), so their last steps are not lost with the hub."""
        deadline = time.monotonic() + wait_s
        while len(self._ended_ranks) < self.world_size - 1 and time.monotonic() < deadline:
            ready = dict(poller.poll(50))
            for name in ("pull", "tcp_pull"):
                socket = self._sockets.get(name)
                if socket is not None and socket in ready:
                    self._service(name, socket)

    def _relay(self, payload: bytes) -> None:
        """Hub: another rank's records; keep them for late viewers and pass them on."""
        try:
            records = protocol.decode_batch(payload)
        except protocol.ProtocolError as exc:
            log.warning("optwatch: dropping a malformed batch from a rank: %s", exc)
            return
        for record in records:
            self.history.add(record)
            if record.get("kind") == protocol.END:
                self._ended_ranks.add(record.get("rank"))
        self._publish(records)

    def _publish(self, records: list[dict[str, Any]]) -> None:
        payload = protocol.encode_batch(records)
        for name in ("pub", "tcp_pub", "push"):
            socket = self._sockets.get(name)
            if socket is None:
                continue
            try:
                frames = [payload] if name == "push" else [TOPIC_RECORDS, payload]
                socket.send_multipart(frames, zmq.NOBLOCK)
            except zmq.Again:
                self.dropped += len(records)  # the hub is gone or far behind: never wait for it
        self.published += len(records)

    def _send_controls(self) -> None:
        while self._outgoing_controls:
            payload = protocol.encode_request(self._outgoing_controls.popleft())
            for name in ("pub", "tcp_pub"):
                if name in self._sockets:
                    self._sockets[name].send_multipart([TOPIC_CONTROL, payload], zmq.NOBLOCK)

    def _tick(self) -> None:
        records: list[dict[str, Any]] = []
        for callback in self._tick_callbacks:
            try:
                records.extend(callback(self))
            except Exception:
                log.exception("optwatch: a diagnostic failed on the publisher thread")
        if records:
            for record in records:
                self._stamp(record)
                self.history.add(record)
            self._publish(records)

    def _stamp(self, record: dict[str, Any]) -> None:
        if "seq" not in record:  # records relayed from other ranks keep their own
            record["seq"] = self._next_seq
            self._next_seq += 1
            if record.get("rank") != self.rank:
                # A record about another rank (a straggler alert): its seq is in this rank's series.
                record["origin"] = self.rank

    def _drain(self, wait_s: float = 0.0) -> None:
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
                self._stamp(record)
                if self.is_hub:
                    self.history.add(record)
            batch.extend(records)
        if batch:
            self._publish(batch)

    def _observe(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for observer in list(self._observers):
            try:
                records = observer(records)
            except Exception:
                log.exception("optwatch: a record observer failed; it is switched off")
                self._observers.remove(observer)
        return records

    def _answer(self, ctl: zmq.Socket, frames: list[bytes]) -> None:
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
