"""The hub: the one process of a job that faces viewers and the network, so that nothing they do reaches training.

Every rank hands its records to the hub over a local socket (``probe.channel``); the hub completes them
(``hub.diagnosis``), keeps a bounded history (``hub.history``), publishes them to viewers, answers their
requests (``hub.replies``), relays their commands to the ranks, and publishes the script's output from the
run directory's log files. It runs beside the training processes, started by ``optwatch run`` or by the
probe itself; a kill -9 of it costs the training nothing (the ranks queue, then drop, until a new hub binds
the same sockets).

Sockets, all in the run directory (mode 0700) unless ``--listen`` adds TCP:

    in.sock   PULL    records from the local ranks (frames: b"r" + batch, or b"d" + a control decision)
    pub.sock  PUB     topic b"r": records for viewers; topic b"c": commands and decisions for the ranks
    ctl.sock  ROUTER  requests from viewers: history (paged), endpoints, control, status
    TCP PORT, PORT+1, PORT+2: the same ROUTER, PUB and PULL, CURVE-encrypted, keys from the job's token

What a peer can make the hub hold is bounded: requests are capped in size, at most six answers wait
for a peer that does not read them, for 10 s at most (``hub.replies``), the history is encoded at most once
a second and served in pages at a limited rate per peer, and TCP handshakes that do not finish in a few
seconds are dropped.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import signal
import time
from pathlib import Path
from socket import gethostname
from typing import Any

import zmq

from optwatch import controls, protocol
from optwatch.hub.diagnosis import JobDiagnosis
from optwatch.hub.history import History
from optwatch.hub.output_lines import OutputLines
from optwatch.hub.recorder import RunRecorder
from optwatch.hub.replies import RETRY_EVERY_S, Replies
from optwatch.hub.shards import ShardedNorms
from optwatch.options import ENV_TOKEN
from optwatch.wire import runtime
from optwatch.wire.keys import CurveKeys
from optwatch.wire.logs import LogTail, parse_log_name

log = logging.getLogger(__name__)


MAX_REQUEST_BYTES = 64 * 1024
HISTORY_REQUESTS_PER_S = 4.0
"""Per peer; a peer asking faster is told to wait."""
HISTORY_BURST = 8
MAX_PEERS_TRACKED = 4096
HANDSHAKE_TIMEOUT_MS = 5000
COMMAND_RESEND_S = 1.0
COMMAND_GIVE_UP_S = 30.0
LINGER_AFTER_END_S = 5.0
WAIT_FOR_FIRST_RANK_S = 60.0
MAX_REFUSALS_SAID = 3
"""Alerts for records left out, each for a new reason: a few say it; more would only repeat it."""
FIGURES_EVERY_S = 5.0
LOGS_EVERY_S = 0.25
"""How often the script's new output is read (and published as ``log`` records)."""
LOST_RANK_GRACE_S = 0.5
"""A rank seen gone is said lost this long after, once what it sent before it died has come in."""
TICK_EVERY_S = 1.0


class _Bucket:
    """A token bucket per peer: ``rate`` requests a second, bursts of ``burst``."""

    def __init__(self, rate: float, burst: float):
        self.rate, self.burst = rate, burst
        self._peers: collections.OrderedDict[bytes, tuple[float, float]] = collections.OrderedDict()

    def take(self, peer: bytes, now: float) -> bool:
        tokens, last = self._peers.pop(peer, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        self._peers[peer] = (tokens - 1.0 if allowed else tokens, now)
        if len(self._peers) > MAX_PEERS_TRACKED:
            self._peers.popitem(last=False)
        return allowed


def _record_alert(message: str) -> dict[str, Any]:
    """The run's own record (``optwatch runs``) cannot be written or stopped: said to every viewer, where it had
    gone to the hub's log alone, and "the run is recorded in" stood on the screen."""
    return protocol.make_record(protocol.ALERT, 0, type="record_stopped", step=None, severity="warning",
                                message=message)  # fmt: skip


class Hub:
    def __init__(
        self,
        run_dir: Path,
        run_id: str,
        world_size: int = 1,
        listen: str | None = None,
        token: str | None = None,
        job_pid: int | None = None,
        script: str = "",
        argv: list[str] | None = None,
    ):
        self.run_dir = run_dir
        self.run_id = run_id
        self.world_size = world_size
        self.listen = listen
        self.token = token
        self.job_pid = job_pid
        self.script = script
        self.argv = argv or []
        self.history = History()
        self.diagnosis = JobDiagnosis()
        self.shards = ShardedNorms(world_size)
        self.endpoints: dict[str, str] = {}
        self.paused: dict[str, Any] | None = None
        """``{"by": source, "since": unix time}`` while a pause is in effect."""
        self._rank0_held = False
        """Rank 0's last system sample was taken while the run was held (a pause, which a hub started again
        mid-run has no event of)."""
        self.published = 0
        self.failed_handshakes = 0
        self._refusals_said: set[str] = set()
        """Why records from the ranks were left out, each said once in an alert (a few at most)."""
        # Increasing across restarts of the hub (viewers drop what they have seen by its number).
        self._seq = time.time_ns() // 1000
        self._sockets: dict[str, zmq.Socket] = {}
        self._context: zmq.Context | None = None
        self._stop = False
        self._history_limit = _Bucket(HISTORY_REQUESTS_PER_S, HISTORY_BURST)
        self.replies = Replies()
        self._pending_commands: dict[str, tuple[dict[str, Any], float, float]] = {}
        """Commands sent to rank 0 and not yet answered by an event: (message, first sent, last sent)."""
        self._tails: dict[str, LogTail] = {}
        self._lines: dict[str, OutputLines] = {}
        """Each log file's line under way."""
        self._ended_at: float | None = None
        self._started = time.monotonic()
        self._host = gethostname()
        self._lost: set[int] = set()
        """Ranks said to be gone without a word (``_lost_ranks``), and when each was first seen gone."""
        self._gone_at: dict[int, float] = {}
        self._started_at = time.time()
        """When the job started, as `optwatch ls` shows it: this hub's start (the job's, but for a hub started
        again for a running job), not the time of the latest rewrite of the info (a pause's)."""
        self._last_handshake_report = time.monotonic()
        self._handshakes_reported = 0
        self._next_figures = 0.0
        self.recorder: RunRecorder | None = None
        self._record_failure_said = False

    # --- lifecycle ------------------------------------------------------------------------------------
    def bind(self) -> None:
        """Bind every socket (raises zmq.ZMQError or OSError with the reason) and write the job's info."""
        context = self._context = zmq.Context()
        old_umask = os.umask(0o077)  # socket files are created 0600
        try:
            self._bind_local(context)
            if self.listen:
                self._bind_tcp(context)
        finally:
            os.umask(old_umask)
        self.save_info()

    def _socket(self, name: str, kind: int, **options: Any) -> zmq.Socket:
        assert self._context is not None
        socket = self._context.socket(kind)
        socket.setsockopt(zmq.LINGER, 0)
        for option, value in options.items():
            socket.setsockopt(getattr(zmq, option), value)
        self._sockets[name] = socket
        return socket

    def _bind_local(self, context: zmq.Context) -> None:
        inbox = self._socket("in", zmq.PULL, MAXMSGSIZE=protocol.MAX_WIRE_BYTES, RCVHWM=1000)
        inbox.bind(f"ipc://{self.run_dir / 'in.sock'}")
        pub = self._socket("pub", zmq.PUB, SNDHWM=1000)
        pub.bind(f"ipc://{self.run_dir / 'pub.sock'}")
        ctl = self._socket("ctl", zmq.ROUTER, MAXMSGSIZE=MAX_REQUEST_BYTES, **Replies.socket_options())
        ctl.bind(f"ipc://{self.run_dir / 'ctl.sock'}")
        self.endpoints = {"pub": pub.last_endpoint.decode(), "ctl": ctl.last_endpoint.decode()}
        self.endpoints["in"] = inbox.last_endpoint.decode()

    def _bind_tcp(self, context: zmq.Context) -> None:
        from optwatch.wire.keys import curve_keys
        from optwatch.wire.runtime import tcp_address

        if not self.token:
            raise ValueError("a TCP endpoint needs a token")
        keys = curve_keys(self.token)
        self._gatekeeper = self._socket("zap", zmq.REP)
        self._gatekeeper.bind("inproc://zeromq.zap.01")
        self._client_key = keys.client_public
        host, port = tcp_address(self.listen or "")
        address = f"[{host}]" if ":" in host else host
        for attempt in range(50):
            names = ("tcp_ctl", "tcp_pub", "tcp_in")
            ctl = self._tcp_socket(
                "tcp_ctl", zmq.ROUTER, keys, MAXMSGSIZE=MAX_REQUEST_BYTES, **Replies.socket_options()
            )
            pub = self._tcp_socket("tcp_pub", zmq.PUB, keys, SNDHWM=1000)
            inbox = self._tcp_socket("tcp_in", zmq.PULL, keys, MAXMSGSIZE=protocol.MAX_WIRE_BYTES, RCVHWM=1000)
            try:
                # The stream is on the port after the request port, the ranks' inbox after that: one rule
                # for SSH tunnels.
                ctl_port = ctl.bind_to_random_port(f"tcp://{address}") if port == 0 else port
                if port != 0:
                    ctl.bind(f"tcp://{address}:{port}")
                pub.bind(f"tcp://{address}:{ctl_port + 1}")
                inbox.bind(f"tcp://{address}:{ctl_port + 2}")
            except zmq.ZMQError:
                for name in names:
                    self._sockets.pop(name).close(linger=0)
                if port != 0 or attempt == 49:
                    raise
                continue
            self.endpoints.update(tcp=f"tcp://{host}:{ctl_port}", tcp_pub=f"tcp://{host}:{ctl_port + 1}")
            return
        raise OSError("no free port triple found")

    def _tcp_socket(self, name: str, kind: int, keys: CurveKeys, **options: Any) -> zmq.Socket:
        socket = self._socket(name, kind, HANDSHAKE_IVL=HANDSHAKE_TIMEOUT_MS, TCP_KEEPALIVE=1, **options)
        keys.serve(socket)
        monitor = socket.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
        )
        self._sockets[f"{name}_monitor"] = monitor
        return socket

    def _figures(self) -> dict[str, Any]:
        """What the hub itself costs and holds, for viewers (its CPU is off the training's, but on its cores)."""
        return protocol.make_record(
            protocol.HUB,
            protocol.HUB_ORIGIN,
            cpu_s=time.process_time(),
            rss_bytes=_rss_bytes(),
            published=self.published,
            failed_handshakes=self.failed_handshakes,
        )

    def _update_info(self) -> None:
        """``save_info`` while serving: a job info that cannot be rewritten (a full runtime tmpfs, a directory
        removed under the hub) leaves the listing behind for now; the hub goes on serving the viewers."""
        try:
            self.save_info()
        except OSError as exc:
            log.warning("optwatch hub: cannot update the job's info in %s: %s", self.run_dir, exc)

    def save_info(self) -> None:
        token_file = None
        if self.token:
            token_path = self.run_dir / "token"
            if not token_path.exists():
                runtime.write_private_file(token_path, self.token + "\n")
            token_file = str(token_path)
        info = runtime.JobInfo(
            run_id=self.run_id,
            pid=self.job_pid or os.getpid(),
            script=self.script,
            argv=self.argv,
            run_dir=str(self.run_dir),
            start_time=self._started_at,
            ranks=self.world_size,
            endpoints={k: v for k, v in self.endpoints.items() if k != "in"},
            token_file=token_file,
            hub_pid=os.getpid(),
            paused=self.paused,
        )
        info.save()

    def start_recording(self, runs_dir: Path) -> None:
        """Record the run in ``runs_dir/<run_id>/``; a directory that cannot be made is said in hub.log, and
        the hub serves without a record."""
        try:
            self.recorder = RunRecorder(
                runs_dir / self.run_id,
                {
                    "run_id": self.run_id,
                    "script": self.script,
                    "argv": self.argv,
                    "cwd": os.getcwd(),
                    "start": time.time(),
                    "world_size": self.world_size,
                    "hub_pid": os.getpid(),
                },
            )
        except OSError as exc:
            log.warning("optwatch hub: cannot record the run in %s: %s", runs_dir, exc)
            why = "it is a file, not a directory" if runs_dir.is_file() else exc.strerror or exc
            self.take([_record_alert(f"the run is not recorded: cannot write in {runs_dir}: {why}")])

    def _end_recording(self) -> None:
        recorder, self.recorder = self.recorder, None
        if recorder is not None:
            recorder.close(*self._how_the_run_ended())

    def _how_the_run_ended(self) -> tuple[str, int | None]:
        """The record's status and exit code, from the ranks' ends and the commands they took. "finished" where
        every rank said it exited 0: a rank that ended without a code (a watch() script's ``sys.exit(N)``,
        whose N its process cannot know) leaves the run "ended", where it read "finished" with exit 0."""
        codes = [end.get("exit_code") for end in self.history.end.values()]
        stopped = any(
            record.get("kind") == protocol.EVENT
            and record.get("status") == "accepted"
            and str(record.get("command")) == "stop"
            for record in self.history.rare
        )
        ended_all = bool(self.history.hello) and set(self.history.hello) <= set(self.history.end)
        return protocol.run_status(codes, stopped=stopped, ended_all=ended_all)

    def close(self) -> None:
        # `optwatch run` stops the hub once its viewer is done, which can be before the hub has read the
        # script's last words: they go into the record, a line under way with them, rather than with the hub.
        self._read_logs(last=True)
        self._end_recording()
        for socket in self._sockets.values():
            socket.close(linger=0)
        self._sockets.clear()
        if self._context is not None:
            self._context.term()
            self._context = None
        for name in ("in.sock", "pub.sock", "ctl.sock"):
            try:
                (self.run_dir / name).unlink()
            except OSError:
                pass
        for tail in self._tails.values():
            tail.close()

    def stop(self, *_: Any) -> None:
        self._stop = True

    # --- the loop ---------------------------------------------------------------------------------------
    def serve(self) -> None:
        poller = zmq.Poller()
        for name, socket in self._sockets.items():
            if name in ("in", "ctl", "tcp_in", "tcp_ctl", "zap") or name.endswith("_monitor"):
                poller.register(socket, zmq.POLLIN)
        next_tick = 0.0
        next_logs = 0.0
        while not self._stop:
            # Asleep until a message comes or the next timed work is due (the logs' read): each wake costs CPU
            # on the machine the training runs on.
            wait_ms = max(0, math.ceil(1000 * (min(next_logs, next_tick) - time.monotonic())))
            if self.replies.any_waiting:
                wait_ms = min(wait_ms, math.ceil(1000 * RETRY_EVERY_S))
            ready = dict(poller.poll(wait_ms))
            self.replies.retry(time.monotonic())  # before new answers, which go behind a peer's waiting ones
            for name, socket in list(self._sockets.items()):
                if socket in ready:
                    self._service(name, socket)
            now = time.monotonic()
            if self.recorder is not None:
                self.recorder.tick(now)
                if self.recorder.failure is not None and not self._record_failure_said:
                    self._record_failure_said = True  # (once: the viewers and headless say it, as --record's)
                    self.take([_record_alert(self.recorder.failure)])
            if now >= next_logs:
                next_logs = now + LOGS_EVERY_S
                self._read_logs()
            if now >= next_tick:
                next_tick = now + TICK_EVERY_S
                self._tick(now)

    def _service(self, name: str, socket: zmq.Socket) -> None:
        for _ in range(64):  # a flood on one socket must not starve the others
            try:
                frames = socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if name in ("in", "tcp_in"):
                self._from_rank(frames)
            elif name in ("ctl", "tcp_ctl"):
                self._answer(socket, frames)
            elif name == "zap":
                self._gate(frames)
            elif name.endswith("_monitor"):
                self.failed_handshakes += 1

    # --- records from the ranks ---------------------------------------------------------------------------
    def _from_rank(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            return
        kind, payload = frames
        if kind == protocol.FRAME_DECISION:
            try:
                decision = protocol.decode_request(payload)
            except protocol.ProtocolError:
                return
            self._send_to_ranks(decision)
            return
        try:
            records, refused = protocol.decode_records(payload)
        except protocol.ProtocolError as exc:
            log.warning("optwatch hub: dropping a malformed batch from a rank: %s", exc)
            return
        if refused:
            log.warning("optwatch hub: %d records from a rank left out (%s)", len(refused), refused[0])
            records = [*records, *self._refusal_alerts(refused)]
        try:
            records = self.shards.take(records, time.monotonic())
        except Exception:
            log.exception("optwatch hub: combining the ranks' sharded norms failed on a batch; it goes on as it is")
        self._diagnose_and_take(records)

    def _refusal_alerts(self, refused: list[str]) -> list[dict[str, Any]]:
        """An alert for each new reason records were left out (a plugin's bad field, a fault in optwatch): the
        figures they carried are missing from every view, which says so instead of showing nothing."""
        alerts = []
        for reason in dict.fromkeys(refused):
            if reason in self._refusals_said or len(self._refusals_said) >= MAX_REFUSALS_SAID:
                continue
            self._refusals_said.add(reason)
            message = (
                f"records from the training were left out, their figures missing from every view: {reason}. A fault "
                "in optwatch or in a plugin of its, not in the run, which goes on (please report it)"
            )
            alerts.append(protocol.make_record(protocol.ALERT, 0, type="records_refused", step=None,
                                               severity="warning", message=message))  # fmt: skip
        return alerts

    def _diagnose_and_take(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        try:
            records = self.diagnosis.observe(records)
        except Exception:
            log.exception("optwatch hub: the diagnosis failed on a batch; its records go out as they are")
        self.take(records)

    def take(self, records: list[dict[str, Any]]) -> None:
        """Keep and publish ``records`` (the hub's own get its sequence numbers here)."""
        for record in records:
            if "seq" not in record:
                record["seq"] = self._seq
                record["origin"] = protocol.HUB_ORIGIN
                self._seq += 1
            self._note(record)
            self.history.add(record)
        if self.recorder is not None:
            self.recorder.add(records)
        self._publish(records)

    def _note(self, record: dict[str, Any]) -> None:
        kind = record.get("kind")
        if kind == protocol.EVENT and record.get("rank", 0) == 0:
            self._pending_commands.pop(str(record.get("id")), None)
            command = controls.parse_or_none(str(record.get("command", "")))
            if record.get("status") == "accepted" and command is not None:
                if command.name == "pause":
                    self.paused = {"by": record.get("source"), "since": record.get("time"), "until": None}
                    if command.value:
                        self.paused["until"] = (record.get("time") or time.time()) + float(command.value)
                    self._update_info()
                elif command.name == "resume" and self.paused is not None:
                    self.paused = None
                    self._update_info()
        elif kind == protocol.SYSTEM and record.get("rank", 0) == 0:
            self._rank0_held = bool(record.get("held"))
        elif kind == protocol.HELLO and record.get("rank") == 0 and isinstance(record.get("pid"), int):
            if self.job_pid != record["pid"]:
                self.job_pid = record["pid"]
                self._update_info()

    def _publish(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        payload = protocol.encode_batch(records)
        for name in ("pub", "tcp_pub"):
            socket = self._sockets.get(name)
            if socket is not None:
                try:
                    socket.send_multipart([protocol.TOPIC_RECORDS, payload], zmq.NOBLOCK)
                except zmq.Again:
                    pass  # PUB never blocks; a slow viewer loses messages and asks for history
        self.published += len(records)

    # --- commands -----------------------------------------------------------------------------------------
    def _send_to_ranks(self, message: dict[str, Any]) -> None:
        payload = protocol.encode_request(message)
        for name in ("pub", "tcp_pub"):
            socket = self._sockets.get(name)
            if socket is not None:
                try:
                    socket.send_multipart([protocol.TOPIC_CONTROL, payload], zmq.NOBLOCK)
                except zmq.Again:
                    pass

    def _resend_commands(self, now: float) -> None:
        """Rank 0 may not have been listening yet (or a message was lost): commands go again until it answers."""
        for command_id, (message, first, last) in list(self._pending_commands.items()):
            if now - first > COMMAND_GIVE_UP_S:
                del self._pending_commands[command_id]
                self.take(
                    [
                        protocol.make_record(
                            protocol.EVENT,
                            0,
                            command=message["command"],
                            status="rejected",
                            reason="the job did not take the command (is it still running?)",
                            effective_step=None,
                            id=command_id,
                            source=message.get("source"),
                        )
                    ]
                )
            elif now - last >= COMMAND_RESEND_S:
                self._pending_commands[command_id] = (message, first, now)
                self._send_to_ranks(message)

    # --- requests -----------------------------------------------------------------------------------------
    def _answer(self, socket: zmq.Socket, frames: list[bytes]) -> None:
        identity, payload = frames[0], frames[-1]
        try:
            request = protocol.decode_request(payload)
            reply = self._handle(identity, request)
        except protocol.ProtocolError as exc:
            reply = {"ok": False, "error": str(exc)}
        except Exception:
            log.exception("optwatch hub: a request failed")
            reply = {"ok": False, "error": "the hub could not answer this request"}
        self.replies.send(socket, identity, protocol.encode_request(reply), time.monotonic())

    def _handle(self, identity: bytes, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "history":
            return self._history(identity, request)
        if op == "endpoints":
            return {"ok": True, "endpoints": {k: v for k, v in self.endpoints.items() if k != "in"}}
        if op == "status":
            return {"ok": True, "paused": self.paused, "ranks": sorted(self.history.hello), "run_id": self.run_id}
        if op == "control":
            return self._control(request)
        return {"ok": False, "error": f"unknown request {str(op)[:40]!r}"}

    def _history(self, identity: bytes, request: dict[str, Any]) -> dict[str, Any]:
        now = time.monotonic()
        if not self._history_limit.take(identity, now):
            return {"ok": False, "error": "too many history requests; ask again in a second", "retry": True}
        pages = self.history.pages(now)
        page = request.get("page", 0)
        if isinstance(page, bool) or not isinstance(page, int) or not 0 <= page < len(pages):
            return {"ok": False, "error": f"no page {str(page)[:20]} (there are {len(pages)})"}
        return {"ok": True, "page": page, "pages": len(pages), "batch": pages[page]}

    def _control(self, request: dict[str, Any]) -> dict[str, Any]:
        text = request.get("command")
        source = request.get("source", "ctl")
        source = source if isinstance(source, str) and len(source) <= 32 else "ctl"
        if not isinstance(text, str):
            return {"ok": False, "error": "a control request needs a command"}
        command_id = f"c{os.getpid()}.{self._seq}.{len(self._pending_commands)}.{time.monotonic_ns() % 10**9}"
        try:
            command = controls.parse(text)
            unpaused = self.paused is None and not self._rank0_held and not self._pause_pending()
            if command.name == "resume" and unpaused:
                # (Said here: a job between steps, a notebook's idle kernel, reaches no boundary to say it.)
                raise controls.CommandError("the run is not paused")
        except controls.CommandError as exc:
            self.take(
                [
                    protocol.make_record(
                        protocol.EVENT,
                        0,
                        command=text[: controls.MAX_COMMAND_CHARS],
                        status="rejected",
                        reason=str(exc),
                        effective_step=None,
                        id=command_id,
                        source=source,
                    )
                ]
            )
            return {"ok": False, "error": str(exc), "id": command_id}
        message = {"command": text, "id": command_id, "source": source}
        now = time.monotonic()
        self._pending_commands[command_id] = (message, now, now)
        self._send_to_ranks(message)
        return {"ok": True, "id": command_id, "status": "queued"}

    def _pause_pending(self) -> bool:
        """A pause sent and not yet answered: a resume after it is for the ranks to judge."""
        texts = (str(message.get("command")) for message, _, _ in self._pending_commands.values())
        return any(getattr(controls.parse_or_none(text), "name", None) == "pause" for text in texts)

    # --- the gatekeeper (ZeroMQ's ZAP), for TCP ---------------------------------------------------------------
    def _gate(self, frames: list[bytes]) -> None:
        """Let in the one client key the token gives; count and log the rest (never more than a line each 10 s)."""
        if len(frames) < 6:
            return
        version, request_id = frames[0], frames[1]
        mechanism, credentials = frames[5], frames[6:]
        allowed = mechanism == b"CURVE" and len(credentials) == 1 and _z85(credentials[0]) == self._client_key
        if not allowed:
            self.failed_handshakes += 1
        status = (b"200", b"OK") if allowed else (b"400", b"unknown key")
        self._gatekeeper.send_multipart([version, request_id, *status, b"optwatch" if allowed else b"", b""])

    # --- the script's output ------------------------------------------------------------------------------------
    def _read_logs(self, last: bool = False) -> None:
        """New lines of the script's output (every rank's log files) as ``log`` records; ``last``: the hub's
        last read, the lines under way included."""
        try:
            names = [entry.name for entry in os.scandir(self.run_dir) if entry.name.endswith(".log")]
        except OSError:
            return
        records = []
        for name in names:
            parsed = parse_log_name(name)
            if parsed is None:
                continue
            tail = self._tails.get(name)
            if tail is None:
                tail = self._tails[name] = LogTail(self.run_dir / name, parsed[0], tail_bytes=64 * 1024)
            data = tail.read()
            output = self._lines.setdefault(name, OutputLines())
            texts = output.feed(data) if data else []
            if last or (not data and self._ended_at is not None):
                texts += output.end()  # (the run has ended and the file too: a last line with no newline is one too)
            stream, rank = parsed
            for text in texts:
                fields = {"stream": stream, "line": text}
                if rank:
                    fields["from_rank"] = rank
                records.append(protocol.make_record(protocol.LOG, -1, **fields))
        if records:
            self.take(records)

    # --- once a second ------------------------------------------------------------------------------------------
    def _tick(self, now: float) -> None:
        self._diagnose_and_take(self.shards.release(now))  # a sharded step that some rank never completed
        try:
            # The straggler reads each rank's newest window only: copying whole rings took seconds at 256 ranks.
            self.take(self.diagnosis.tick(self.history.steps(last=self.diagnosis.TICK_STEPS)))
        except Exception:
            log.exception("optwatch hub: the straggler check failed")
        if now >= self._next_figures:
            self._next_figures = now + FIGURES_EVERY_S
            self.take([self._figures()])
        self._resend_commands(now)
        self.take(self._lost_ranks(now))
        if self.failed_handshakes > self._handshakes_reported and now - self._last_handshake_report >= 10.0:
            log.warning(
                "optwatch hub: %d failed TCP handshakes (wrong or missing token) in the last %.0f s",
                self.failed_handshakes - self._handshakes_reported,
                now - self._last_handshake_report,
            )
            self._handshakes_reported = self.failed_handshakes
            self._last_handshake_report = now
        if self._job_over(now):
            self._stop = True

    def _lost_ranks(self, now: float) -> list[dict[str, Any]]:
        """A rank of several, on this machine, whose process is gone without its end record (the OOM killer's
        SIGKILL, a segfault): said once, as an alert at the last step it sent. The launcher's own report names
        it too, among its tracebacks; the dashboard and the record did not."""
        lost = []
        for rank, hello in self.history.hello.items():
            pid = hello.get("pid")
            if rank in self.history.end or rank in self._lost or (hello.get("world_size") or 1) < 2:
                continue
            if not isinstance(pid, int) or hello.get("host") != self._host or runtime.pid_alive(pid):
                continue
            if self._gone_at.setdefault(rank, now) > now - LOST_RANK_GRACE_S:
                continue  # (what it sent before it died may still be on its way: said at a later tick)
            self._lost.add(rank)
            steps = self.history.steps(last=1).get(rank) or []
            last = steps[-1].get("step") if steps else None
            after = f" after step {last}" if isinstance(last, int) else " before any step of its came in"
            message = (
                f"rank {rank}'s process (pid {pid}) is gone without a word{after}: killed (out of memory? kill -9? "
                "its launcher, after another rank failed?) or crashed; its last quarter second of records went with it"
            )
            alert = {"type": "rank_lost", "step": last, "severity": "error", "message": message}
            lost.append(protocol.make_record(protocol.ALERT, rank, **alert))
        return lost

    def _job_over(self, now: float) -> bool:
        """Every rank that said hello has ended or died (then a short linger for the last viewers' requests),
        or none ever came and the process that started the hub is gone."""
        hellos = self.history.hello
        if not hellos:
            if self.job_pid is not None and not runtime.pid_alive(self.job_pid):
                return now - self._started > 2.0
            return now - self._started > WAIT_FOR_FIRST_RANK_S and self.job_pid is None
        done = all(
            rank in self.history.end or not runtime.pid_alive(int(hello.get("pid") or 0))
            for rank, hello in hellos.items()
        )
        if not done:
            if self._ended_at is not None and self.recorder is not None:
                self.recorder.mark_running()  # a rank came back in the linger (torchrun restarted the job)
            self._ended_at = None
            return False
        if self._ended_at is None:
            self._ended_at = now
            self._read_logs()
            if self.recorder is not None:
                # `optwatch runs` says how the run ended once it has, not after the viewers' linger.
                self.recorder.mark_ended(*self._how_the_run_ended())
        return now - self._ended_at >= LINGER_AFTER_END_S


def _raise_file_limit() -> None:
    """As many descriptors as the hard limit allows: a flood of connections runs the hub, not the training, out."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 1 << 20), hard))
        except (ValueError, OSError):
            pass


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _z85(key: bytes) -> bytes:
    from zmq.utils import z85

    return z85.encode(key) if len(key) == 32 else key


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m optwatch.hub", description="an optwatch job's hub")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--world-size", type=int, default=1)
    parser.add_argument("--listen")
    parser.add_argument("--job-pid", type=int)
    parser.add_argument("--script", default="")
    parser.add_argument("--argv", default="[]", help="the script's arguments, as a JSON list")
    parser.add_argument("--ready-fd", type=int, help="write one byte there once the sockets are bound")
    parser.add_argument("--runs-dir", help="record the run in RUNS_DIR/RUN_ID/ (optwatch.runs)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the job's Ctrl-C is the job's; the hub stops on SIGTERM
    _raise_file_limit()
    run_dir = runtime.ensure_private_dir(Path(args.run_dir))
    token = os.environ.pop(ENV_TOKEN, None) or (runtime.new_token() if args.listen else None)
    hub = Hub(
        run_dir,
        args.run_id,
        world_size=args.world_size,
        listen=args.listen,
        token=token,
        job_pid=args.job_pid,
        script=args.script,
        argv=json.loads(args.argv),
    )
    signal.signal(signal.SIGTERM, hub.stop)
    try:
        hub.bind()
    except (zmq.ZMQError, OSError, ValueError) as exc:
        print(f"optwatch hub: cannot bind in {run_dir}: {exc}", flush=True)
        return 1
    if args.runs_dir:
        hub.start_recording(Path(args.runs_dir))
    if args.ready_fd is not None:
        os.write(args.ready_fd, b"1")
        os.close(args.ready_fd)
    try:
        hub.serve()
    finally:
        hub.close()
    return 0
