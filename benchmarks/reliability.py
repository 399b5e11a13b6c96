"""Reliability under attack: a seeded training run under `optwatch run`, its hub killed and flooded, against a bare run.

The same script (this file, `train` mode: an MLP on CPU, one thread, a fixed seed, dropout and data from the
global RNG) runs three times, one after the other:

    calibration   python reliability.py train --steps 1000 --sleep S        its step rate sizes the other two
    bare          python reliability.py train --steps N --sleep 0           the reference losses
    watched       optwatch run --headless --listen 127.0.0.1:0 reliability.py train --steps N --sleep S

The sleep paces the step like a data wait (it touches no number, so the bare reference skips it). Each step's
loss is written exactly (``float.hex``) with the step's wall time, and at the end a SHA-256 of the final
parameters: the watched run must match the bare one bit for bit, at every step. While the watched run trains,
this process attacks it in phases, one after the other:

    baseline     nothing
    kill-hub     kill -9 of the hub, 20 times: each time the training's channel starts a new one (every ~5 s at
                 most); the next kill waits until the new hub answers a status request
    unread       1,000 peers each ask the control socket for a history page and never read the answer; held
                 for the phase, then closed
    hist-loop    a peer that asks for history pages back to back, reading each answer (a viewer gone wrong,
                 rate-limited by the hub), and beside it one that asks from a fresh connection every time
    fuzz         10,000 control requests through the real control socket (ipc): random bytes, unicode, huge
                 numbers, overlong text (a few above the hub's 64 KiB request cap), malformed ``lr=`` and
                 near-misses of every command, command fields that are not text, broken envelopes. Every
                 text is checked with optwatch's own parser (``optwatch.controls.parse``) before it goes:
                 only commands it refuses are sent, so none can reach the training; any request the hub
                 answers with ok is counted as a fault
    handshakes   2,000 bad connections: CURVE with a wrong token (request and stream ports), CURVE with the
                 right server key and a wrong client key, plain ZeroMQ without CURVE, random bytes, a connect
                 reset at once, a half-sent greeting left open (the hub must drop it after its 5 s handshake
                 timeout) on the `--listen` TCP port, and random bytes on the local control socket
    after        nothing, until the training ends

Per phase: steps/s (from the training's own step times) and its ratio to the baseline, the training process's
RSS (psutil; the child of `optwatch run`), the hub's RSS, descriptors and CPU, and how long the hub takes to
answer a status request (probed once a second from a separate peer). At the end: the losses compared, the exit
code, the hub respawns seen, the hub's count of failed handshakes, leftover hub processes.

    python benchmarks/reliability.py                          # about 8 minutes on a 2-core VM
    python benchmarks/reliability.py --phase-s 10 --kills 5 --unread 300 --fuzz 2000 --handshakes 500
    python benchmarks/reliability.py --json /tmp/reliability.json

Exit status 1 when a check fails (the losses differ, the training fails, a respawn never comes, the hub
accepts a fuzzed command, the training's memory or the hub's grows past its bound).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve()
MIB = 2**20

# What the checks allow (noise of a shared 2-core VM included).
JOB_RSS_GROWTH_MAX = 20 * MIB
"""The training's RSS at the end of `after` against the baseline's median."""
HUB_RSS_GROWTH_MAX = 200 * MIB
"""The hub's highest RSS in any phase after the kills against its RSS when that hub started serving."""
HUB_FDS_GROWTH_MAX = 16
"""The hub's descriptors at the end of `after` against the start of the first phase after the kills."""


# --- the training (python reliability.py train ...) -------------------------------------------------------------------
def train(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="reliability.py train")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds of pause after each step (a data wait)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--out", required=True, help="each step's loss (float.hex) and time, then the params' hash")
    parser.add_argument("--print-every", type=int, default=1000)
    args = parser.parse_args(argv)

    import hashlib

    import torch

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    width = args.width
    model = torch.nn.Sequential(
        torch.nn.Linear(64, width),
        torch.nn.GELU(),
        torch.nn.Dropout(0.1),
        torch.nn.Linear(width, width),
        torch.nn.GELU(),
        torch.nn.Linear(width, 10),
    )
    teacher = torch.randn(64, 10)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    with open(args.out, "w") as out:
        for step in range(args.steps):
            inputs = torch.randn(64, 64)
            targets = (inputs @ teacher).argmax(dim=1)
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(inputs), targets)
            loss.backward()
            optimizer.step()
            value = loss.item()
            out.write(f"{step} {value.hex()} {time.time():.6f}\n")
            if step % 200 == 0:
                out.flush()
            if args.print_every and step % args.print_every == 0:
                print(f"step {step} loss {value!r}", flush=True)
            if args.sleep:
                time.sleep(args.sleep)
        digest = hashlib.sha256()
        for parameter in model.parameters():
            digest.update(parameter.detach().numpy().tobytes())
        out.write(f"end {digest.hexdigest()}\n")
    print(f"done {args.steps} steps", flush=True)


def read_losses(path: Path) -> tuple[list[tuple[int, str]], list[float], str | None]:
    """(step, loss as hex) per step, each step's wall time, and the final parameters' hash (None if absent)."""
    losses, times, end = [], [], None
    if not path.exists():
        return losses, times, end
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "end":
            end = parts[1]
        elif len(parts) == 3:
            losses.append((int(parts[0]), parts[1]))
            times.append(float(parts[2]))
    return losses, times, end


def train_command(steps: int, sleep: float, seed: int, width: int, out: Path, print_every: int = 1000) -> list[str]:
    return [
        str(HERE), "train", "--steps", str(steps), "--sleep", str(sleep), "--seed", str(seed), "--width", str(width),
        "--out", str(out), "--print-every", str(print_every),
    ]  # fmt: skip


# --- watching the job -------------------------------------------------------------------------------------------------
class Job:
    """The watched run: `optwatch run --headless --listen 127.0.0.1:0`, its run directory, its processes."""

    def __init__(self, argv: list[str], env: dict[str, str], workdir: Path):
        self.runtime_root = Path(env["OPTWATCH_RUNTIME_DIR"])
        self.stdout_path, self.stderr_path = workdir / "optwatch.out", workdir / "optwatch.err"
        with open(self.stdout_path, "w") as stdout, open(self.stderr_path, "w") as stderr:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "optwatch", "run", "--headless", "--listen", "127.0.0.1:0", *argv],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
            )
        self.run_dir: Path | None = None
        self.training_pid: int | None = None

    def find(self, timeout_s: float = 90.0) -> None:
        """The run directory and the training process (the child of `optwatch run` that runs the probe)."""
        import psutil

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"optwatch run ended early (exit {self.popen.returncode}): {self.tail()}")
            dirs = (
                [p for p in self.runtime_root.glob("*") if (p / "info.json").exists()]
                if self.runtime_root.exists()
                else []
            )
            children = [
                child
                for child in psutil.Process(self.popen.pid).children()
                if "optwatch.probe.launch" in " ".join(_cmdline(child))
            ]
            if len(dirs) == 1 and children:
                info = self.info(dirs[0])
                if info is not None and info.get("pid") == children[0].pid:  # the hub heard the rank's hello
                    self.run_dir, self.training_pid = dirs[0], children[0].pid
                    return
            time.sleep(0.2)
        raise RuntimeError(f"the watched job did not show up in {timeout_s:.0f} s: {self.tail()}")

    def info(self, run_dir: Path | None = None) -> dict[str, Any] | None:
        try:
            return json.loads(((run_dir or self.run_dir) / "info.json").read_text())
        except (OSError, ValueError, TypeError):
            return None

    def hub_pid(self) -> int | None:
        info = self.info()
        return info.get("hub_pid") if info else None

    @property
    def ctl(self) -> str:
        return f"ipc://{self.run_dir / 'ctl.sock'}"

    @property
    def pub(self) -> str:
        return f"ipc://{self.run_dir / 'pub.sock'}"

    def token(self) -> str:
        return (self.run_dir / "token").read_text().strip()

    def tail(self, lines: int = 15) -> str:
        said = []
        for path in (self.stdout_path, self.stderr_path):
            try:
                said += path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                pass
        return "\n".join(said)


def _cmdline(process: Any) -> list[str]:
    try:
        return process.cmdline()
    except Exception:
        return []


def alive(pid: int | None) -> bool:
    import psutil

    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def ask(context: Any, endpoint: str, request: dict[str, Any], timeout_s: float = 2.0) -> dict[str, Any] | None:
    """One request from a fresh peer; the decoded reply, or None when none came in time."""
    import zmq

    from optwatch import protocol

    peer = context.socket(zmq.DEALER)
    peer.setsockopt(zmq.LINGER, 0)
    try:
        peer.connect(endpoint)
        peer.send_multipart([b"", protocol.encode_request(request)])
        if not peer.poll(int(timeout_s * 1000)):
            return None
        return protocol.decode_request(peer.recv_multipart()[-1])
    finally:
        peer.close(linger=0)


class Sampler(threading.Thread):
    """Twice a second: the training's RSS, the hub's pid, RSS, descriptors and CPU time; this process's CPU time."""

    def __init__(self, job: Job, interval_s: float = 0.5):
        super().__init__(daemon=True, name="sampler")
        self.job, self.interval_s = job, interval_s
        self.samples: list[dict[str, Any]] = []
        self.hub_pids: list[int] = []
        self._halt = threading.Event()

    def run(self) -> None:
        import psutil

        training = psutil.Process(self.job.training_pid)
        hubs: dict[int, Any] = {}
        while not self._halt.is_set():
            sample: dict[str, Any] = {"t": time.time(), "self_cpu_s": time.process_time()}
            try:
                sample["job_rss"] = training.memory_info().rss
            except psutil.Error:
                pass
            pid = self.job.hub_pid()
            if pid:
                if pid not in self.hub_pids:
                    self.hub_pids.append(pid)
                try:
                    hub = hubs.setdefault(pid, psutil.Process(pid))
                    if hub.status() != psutil.STATUS_ZOMBIE:
                        with hub.oneshot():
                            times = hub.cpu_times()
                            sample.update(
                                hub_pid=pid, hub_rss=hub.memory_info().rss, hub_fds=hub.num_fds(),
                                hub_cpu_s=times.user + times.system,
                            )  # fmt: skip
                except psutil.Error:
                    pass
            self.samples.append(sample)
            self._halt.wait(self.interval_s)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


class Responsiveness(threading.Thread):
    """Once a second, a status request from a fresh peer: how long the hub takes to answer (None: no answer in 2 s)."""

    def __init__(self, job: Job, context: Any):
        super().__init__(daemon=True, name="status-probe")
        self.job, self.context = job, context
        self.samples: list[tuple[float, float | None]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            started = time.monotonic()
            try:
                reply = ask(self.context, self.job.ctl, {"op": "status"}, timeout_s=2.0)
            except Exception:
                reply = None
            took = time.monotonic() - started
            self.samples.append((time.time(), took if reply and reply.get("ok") else None))
            self._halt.wait(max(0.0, 1.0 - took))

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


# --- the attacks ------------------------------------------------------------------------------------------------------
def kill_hub(job: Job, context: Any, kills: int) -> dict[str, Any]:
    """kill -9 of the job's hub ``kills`` times, each time waiting for the new one to answer."""
    waits, respawns, missed = [], 0, 0
    for _ in range(kills):
        pid = job.hub_pid()
        if not alive(pid) or "optwatch.hub" not in " ".join(_cmdline(_process(pid))):
            missed += 1
            break
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        deadline = killed + 30.0
        while time.monotonic() < deadline:
            new = job.hub_pid()
            if new and new != pid and alive(new):
                reply = ask(context, job.ctl, {"op": "status"}, timeout_s=1.0)
                if reply and reply.get("ok"):
                    respawns += 1
                    waits.append(time.monotonic() - killed)
                    break
            time.sleep(0.1)
        else:
            missed += 1
            break  # no new hub in 30 s: a finding; the rest of the kills would say nothing more
    return {
        "kills": respawns + missed,
        "respawns": respawns,
        "missed": missed,
        "respawn_s_median": statistics.median(waits) if waits else None,
        "respawn_s_max": max(waits) if waits else None,
    }


def _process(pid: int | None) -> Any:
    import psutil

    try:
        return psutil.Process(pid)
    except (psutil.Error, TypeError, ValueError):
        return None


def unread_history(job: Job, context: Any, peers: int, hold_s: float) -> dict[str, Any]:
    """``peers`` peers, one history request each, never read; held ``hold_s`` seconds, then closed."""
    import zmq

    from optwatch import protocol

    request = protocol.encode_request({"op": "history", "page": 0})
    sockets, failed = [], 0
    started = time.monotonic()
    for _ in range(peers):
        try:
            peer = context.socket(zmq.DEALER)
            peer.setsockopt(zmq.LINGER, 0)
            peer.connect(job.ctl)
            peer.send_multipart([b"", request], zmq.NOBLOCK)
            sockets.append(peer)
        except zmq.ZMQError:
            failed += 1
    opened_s = time.monotonic() - started
    time.sleep(max(0.0, hold_s - opened_s))
    for peer in sockets:
        peer.close(linger=0)
    return {"requests": len(sockets), "failed_to_send": failed, "opened_in_s": round(opened_s, 2)}


def history_loop(job: Job, context: Any, seconds: float) -> dict[str, Any]:
    """One peer asking for history pages back to back (reading each answer), one asking from a fresh
    connection each time, for ``seconds``."""
    result: dict[str, Any] = {}

    def polite() -> None:
        import zmq

        from optwatch import protocol

        peer = context.socket(zmq.DEALER)
        peer.setsockopt(zmq.LINGER, 0)
        peer.connect(job.ctl)
        pages, page, served, waits, lost, received = 1, 0, 0, 0, 0, 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            peer.send_multipart([b"", protocol.encode_request({"op": "history", "page": page})])
            if not peer.poll(3000):
                lost += 1
                peer.close(linger=0)
                peer = context.socket(zmq.DEALER)
                peer.setsockopt(zmq.LINGER, 0)
                peer.connect(job.ctl)
                continue
            raw = peer.recv_multipart()[-1]
            reply = protocol.decode_request(raw)
            received += len(raw)
            if reply.get("ok"):
                served += 1
                pages = int(reply.get("pages", 1))
                page = (page + 1) % pages
            else:
                waits += 1
        peer.close(linger=0)
        result["same_peer"] = {"served": served, "told_to_wait": waits, "unanswered": lost, "mib": received / MIB}

    def fresh() -> None:
        import zmq

        from optwatch import protocol

        served, refused, lost, received, page, pages = 0, 0, 0, 0, 0, 1
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            peer = context.socket(zmq.DEALER)
            peer.setsockopt(zmq.LINGER, 0)
            peer.connect(job.ctl)
            peer.send_multipart([b"", protocol.encode_request({"op": "history", "page": page})])
            if peer.poll(3000):
                raw = peer.recv_multipart()[-1]
                received += len(raw)
                reply = protocol.decode_request(raw)
                if reply.get("ok"):
                    served += 1
                    pages = int(reply.get("pages", 1))
                    page = (page + 1) % pages
                else:
                    refused += 1
            else:
                lost += 1
            peer.close(linger=0)
        result["fresh_peers"] = {"served": served, "refused": refused, "unanswered": lost, "mib": received / MIB}

    threads = [threading.Thread(target=polite), threading.Thread(target=fresh)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return result


# --- fuzzed commands --------------------------------------------------------------------------------------------------
NEAR_MISSES = [
    "lr", "lr=", "lr==0.1", "lr=0", "lr=-0.001", "lr=nan", "lr=NaN", "lr=inf", "lr=-inf", "lr=1e999", "lr=1e-999",
    "lr=1_000", "lr=0x10", "lr=1e4", "lr=1000.0001", "lr=0.1.2", "lr=1e", "lr=e3", "lr=.", "lr=+", "lr=0.001@5",
    "lr*=0", "lr*=-2", "lr*=", "lr*=2000", "lr[0]*=2", "lr[x]=0.1", "lr[-1]=0.1", "lr[]=0.1", "lr[0.5]=0.1",
    "lr[0]=", "lr[0]=0", "lr=0.1!!", "lr!=0.1", "LR=0.1", "lr :=0.1", "lr=0,1", "lr=１", "lr=٣", "lr=²",
    "amp", "amp=", "amp=maybe", "amp=2", "amp=on!", "amp=onn", "amp on", "cudnn_benchmark", "cudnn_benchmark=2",
    "cudnn.benchmark=", "profile", "profile=0", "profile=-1", "profile=1.5", "profile=99999999", "profile=x",
    "pause=0", "pause=-1", "pause=nan", "pause=inf", "pause=1e9", "pause=", "pause!", "pause=5!", "resume=1",
    "resume!", "stop!", "stop=1", "stop now", "paused", "Pause", "STOP", "unpause", "help", "!", "", " ", "\t",
    "\n", "=", "*=", "@", "lr=0.001\x00", "\x00", "pause\x00", "stop\n!", "lr[0]=1e-3=2", "lr=1e-3 lr=1e-2",
]  # fmt: skip
WEIRD_CHARS = (
    "\u200b\u200d\u202e\u2066\ufeff\ufffd\u0301\u0000\u007f\u0085\u2028\u2029\U0001f600\U0001f4a9\u4e2d\u0663\u00b2"
    "\uff11\u0660\u2070\u00bd\u221e\u2212\ufe63\uff0e\u3002"
)


def fuzzed_texts(rng: random.Random) -> Any:
    """Command texts of every shape; the caller keeps only those ``controls.parse`` refuses."""
    words = ["lr", "lr*", "lr[0]", "lr[1]", "amp", "cudnn_benchmark", "profile", "pause", "resume", "stop"]
    while True:
        shape = rng.randrange(9)
        if shape == 0:
            yield rng.choice(NEAR_MISSES)
        elif shape == 1:  # random bytes, read as text
            yield bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))).decode("latin-1")
        elif shape == 2:  # random code points (no lone surrogates: they cannot be sent as text)
            yield "".join(chr(rng.choice([rng.randrange(0x20, 0xD800), rng.randrange(0xE000, 0x110000)]))
                          for _ in range(rng.randrange(1, 120)))  # fmt: skip
        elif shape == 3:  # a command name, then weird characters
            yield rng.choice(words) + "=" + "".join(rng.choice(WEIRD_CHARS) for _ in range(rng.randrange(1, 8)))
        elif shape == 4:  # huge numbers
            digits = "".join(rng.choice("0123456789") for _ in range(rng.randrange(20, 400)))
            yield rng.choice(["lr=", "lr*=", "profile=", "pause=", "lr[0]=", "lr=1e", "lr=0.", "lr=-"]) + digits
        elif shape == 5:  # overlong: past the 200-character limit, up to 60,000
            yield rng.choice(words) + "=" + rng.choice("x0.9 ") * rng.randrange(200, rng.choice([1000, 60_000]))
        elif shape == 6:  # a valid command with something off: a value mangled, a character in the wrong place
            text = rng.choice(["lr=0.001", "lr*=0.5", "lr[0]=0.01", "amp=on", "pause", "pause=3", "profile=5", "stop"])
            position = rng.randrange(len(text) + 1)
            yield text[:position] + rng.choice(WEIRD_CHARS + "!@#$%^&*()[]{}=;:'\"\\/<>?,|`~-+e._") + text[position:]
        elif shape == 7:  # numbers of every form a parser may trip on
            number = rng.choice(["1e309", "-0", "0e0", "0x1p-3", "1e-400", "1.7976931348623157e309", "4.9e-325",
                                 "1" + "0" * 310, "0." + "0" * 330 + "1", "1e+", "++1", "1..2", "1e1e1"])  # fmt: skip
            yield rng.choice(["lr=", "lr*=", "pause=", "profile=", "lr[0]="]) + number
        else:  # lr values that parse but must be refused for range, with a stray suffix or prefix
            yield rng.choice(["lr=", "lr*="]) + repr(rng.uniform(-1e6, 1e6)) + rng.choice(["x", " 1", "%", "!!", "@"])


def fuzz_requests(count: int, seed: int) -> tuple[list[tuple[str, bytes]], dict[str, int]]:
    """``count`` (kind, payload) control requests; kinds: text (refused by the parser), not-text, envelope,
    oversized (above the hub's request cap)."""
    import msgpack

    from optwatch import controls, protocol

    rng = random.Random(seed)
    texts = fuzzed_texts(rng)
    requests: list[tuple[str, bytes]] = []
    skipped_valid = 0
    parser_faults: list[str] = []
    not_text = [
        None, 0, -1, 2**64 - 1, -(2**63), 1e308, float("nan"), float("inf"), True, [], ["lr=0.1"], {"lr": 0.1},
        b"lr=0.1", b"\xff\xfe", {"command": "stop"}, [None] * 50,
    ]  # fmt: skip
    while len(requests) < count:
        roll = rng.random()
        if roll < 0.80:
            text = next(texts)
            try:
                controls.parse(text)
            except controls.CommandError:
                source = rng.choice(["fuzz", "", "x" * 100, "\U0001f4a9", "dashboard"])
                requests.append(("text", protocol.encode_request({"op": "control", "command": text, "source": source})))
            except Exception as exc:  # the parser promises CommandError and nothing else: a finding, not sent
                parser_faults.append(f"{text[:60]!r}: {type(exc).__name__}: {exc}")
            else:
                skipped_valid += 1  # a command the language accepts would change the training: never sent
        elif roll < 0.90:
            value = rng.choice(not_text)
            request = {"op": "control", "command": value, "source": rng.choice(["fuzz", 7, None, ["x"]])}
            requests.append(("not-text", protocol.encode_request(request)))
        elif roll < 0.997:
            shape = rng.randrange(8)
            if shape == 0:
                payload = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200)))
            elif shape == 1:
                payload = msgpack.packb(["op", "control", "command", "stop"])
            elif shape == 2:
                payload = msgpack.packb({"op": "control", "command": "stop"})  # no version
            elif shape == 3:
                payload = msgpack.packb({"v": 2, "op": "control", "command": "stop"})
            elif shape == 4:
                payload = protocol.encode_request({"op": rng.choice(["Control", "ctl", "", "control ", 7, None])})
            elif shape == 5:
                payload = protocol.encode_request({"op": "control"})  # no command
            elif shape == 6:
                payload = protocol.encode_request(
                    {"op": "history", "page": rng.choice([-1, 2**63 - 1, "0", 0.5, True])}
                )
            else:  # a valid envelope cut short
                whole = protocol.encode_request({"op": "control", "command": "stop"})
                payload = whole[: rng.randrange(1, len(whole))]
            requests.append(("envelope", payload))
        else:
            text = "lr=" + "9" * rng.randrange(70_000, 300_000)
            requests.append(("oversized", protocol.encode_request({"op": "control", "command": text})))
    kinds: dict[str, int] = {}
    for kind, _ in requests:
        kinds[kind] = kinds.get(kind, 0) + 1
    kinds["valid_texts_skipped"] = skipped_valid
    kinds["parser_faults"] = len(parser_faults)
    if parser_faults:
        print(
            f"optwatch.controls.parse raised other than CommandError {len(parser_faults)} times, "
            f"e.g. {parser_faults[0]}"
        )
    return requests, kinds


def fuzz(job: Job, context: Any, requests: list[tuple[str, bytes]], window: int = 2) -> dict[str, Any]:
    """Send ``requests`` through the control socket, at most ``window`` awaiting their answer (the hub queues
    two replies a peer and drops the rest); oversized ones from a throwaway peer each (the hub's socket drops
    the connection that sends them)."""
    import zmq

    from optwatch import protocol

    peer = context.socket(zmq.DEALER)
    peer.setsockopt(zmq.LINGER, 0)
    peer.connect(job.ctl)
    answered, accepted, unanswered, errors = 0, 0, 0, {}
    outstanding = 0
    last_answer = time.monotonic()

    def take(timeout_ms: int) -> bool:
        nonlocal answered, accepted, outstanding, last_answer
        if not peer.poll(timeout_ms):
            return False
        reply = protocol.decode_request(peer.recv_multipart()[-1])
        answered += 1
        outstanding -= 1
        last_answer = time.monotonic()
        if reply.get("ok"):
            accepted += 1
        else:
            reason = str(reply.get("error", ""))
            key = reason.split(":")[0].split(",")[0][:48]
            errors[key] = errors.get(key, 0) + 1
        return True

    for kind, payload in requests:
        if kind == "oversized":
            throwaway = context.socket(zmq.DEALER)
            throwaway.setsockopt(zmq.LINGER, 200)
            throwaway.connect(job.ctl)
            throwaway.send_multipart([b"", payload])
            time.sleep(0.05)
            throwaway.close()
            continue
        while outstanding >= window:
            if not take(2000) and time.monotonic() - last_answer > 2.0:
                unanswered += outstanding  # replies the hub could not queue (or lost): counted, not awaited
                outstanding = 0
        peer.send_multipart([b"", payload])
        outstanding += 1
        while take(0):
            pass
    deadline = time.monotonic() + 5.0
    while outstanding > 0 and time.monotonic() < deadline:
        take(200)
    unanswered += max(0, outstanding)
    peer.close(linger=0)
    top = dict(sorted(errors.items(), key=lambda item: -item[1])[:8])
    return {"answered": answered, "accepted": accepted, "unanswered": unanswered, "refusals": top}


# --- bad handshakes ---------------------------------------------------------------------------------------------------
HANDSHAKE_KINDS = (
    "curve-wrong-token", "curve-wrong-token-stream", "curve-wrong-client-key", "plain-zmq", "tcp-garbage",
    "tcp-reset", "tcp-half-open", "ipc-garbage",
)  # fmt: skip
ZMTP_SIGNATURE = b"\xff" + b"\x00" * 8 + b"\x7f"


def bad_handshakes(job: Job, context: Any, count: int, seed: int, batch: int = 64) -> dict[str, Any]:
    """``count`` bad connections, the kinds taken in turn (``HANDSHAKE_KINDS``); half-open ones are held until
    the hub's handshake timeout has passed for the last of them, then checked for having been dropped."""
    import zmq

    from optwatch.wire.keys import curve_keys

    rng = random.Random(seed)
    info = job.info() or {}
    host, port = info["endpoints"]["tcp"].removeprefix("tcp://").rsplit(":", 1)
    stream_host, stream_port = info["endpoints"]["tcp_pub"].removeprefix("tcp://").rsplit(":", 1)
    right = curve_keys(job.token())
    kinds: dict[str, int] = {}
    errors: dict[str, int] = {}
    half_open: list[socket.socket] = []
    plan = [HANDSHAKE_KINDS[i % len(HANDSHAKE_KINDS)] for i in range(count)]
    rng.shuffle(plan)
    for start in range(0, count, batch):
        zmq_sockets = []
        for kind in plan[start : start + batch]:
            kinds[kind] = kinds.get(kind, 0) + 1
            try:
                if kind.startswith("curve") or kind == "plain-zmq":
                    stream = kind == "curve-wrong-token-stream"
                    peer = context.socket(zmq.SUB if stream else zmq.DEALER)
                    peer.setsockopt(zmq.LINGER, 0)
                    if kind.startswith("curve-wrong-token"):
                        curve_keys(os.urandom(24).hex()).connect_as_client(peer)
                    elif kind == "curve-wrong-client-key":
                        public, secret = zmq.curve_keypair()
                        peer.curve_serverkey = right.server_public
                        peer.curve_publickey, peer.curve_secretkey = public, secret
                    if stream:
                        peer.setsockopt(zmq.SUBSCRIBE, b"")
                        peer.connect(f"tcp://{stream_host}:{stream_port}")
                    else:
                        peer.connect(f"tcp://{host}:{port}")
                        peer.send_multipart([b"", b"\x81\xa2op\xa6status"], zmq.NOBLOCK)
                    zmq_sockets.append(peer)
                elif kind == "ipc-garbage":
                    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    raw.settimeout(2)
                    raw.connect(str(job.run_dir / "ctl.sock"))
                    raw.sendall(os.urandom(rng.randrange(1, 512)))
                    raw.close()
                else:
                    raw = socket.create_connection((host, int(port)), timeout=2)
                    if kind == "tcp-garbage":
                        raw.sendall(os.urandom(rng.randrange(1, 512)))
                        raw.close()
                    elif kind == "tcp-reset":
                        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                        raw.close()
                    else:  # half a greeting, then silence
                        raw.sendall(ZMTP_SIGNATURE[: rng.randrange(1, len(ZMTP_SIGNATURE))])
                        half_open.append(raw)
            except (OSError, zmq.ZMQError) as exc:
                errors[f"{kind}: {type(exc).__name__}"] = errors.get(f"{kind}: {type(exc).__name__}", 0) + 1
        time.sleep(0.3)  # time for the handshakes to be tried and failed
        for peer in zmq_sockets:
            peer.close(linger=0)
    last_half_open = time.monotonic()
    time.sleep(6.5)  # the hub's handshake timeout is 5 s
    dropped = 0
    for raw in half_open:
        raw.setblocking(False)
        try:
            while raw.recv(4096):  # the hub's own greeting may come first
                pass
            dropped += 1  # end of stream: the hub closed it
        except BlockingIOError:
            pass  # still open
        except OSError:
            dropped += 1  # reset by the hub
        raw.close()
    return {
        "kinds": kinds,
        "client_errors": errors,
        "half_open": len(half_open),
        "half_open_dropped_by_hub": dropped,
        "waited_after_last_s": round(time.monotonic() - last_half_open, 1),
    }


def hub_figures(job: Job, context: Any) -> dict[str, Any] | None:
    """The hub's own figures record (published every 5 s, the newest kept in its history)."""
    from optwatch.wire.subscriber import Feed

    feed = Feed(job.pub, job.ctl, context=context)
    try:
        records = feed.history()
    except Exception:
        return None
    finally:
        feed.close()
    hubs = [r for r in records if r.get("kind") == "hub"]
    return hubs[-1] if hubs else None


# --- the report -------------------------------------------------------------------------------------------------------
def phase_figures(
    phases: list[dict[str, Any]], times: list[float], samples: list[dict[str, Any]], status: list[tuple[float, Any]]
) -> None:
    """Fill each phase with its step rate, memory, descriptors, CPU and the hub's answer times."""
    for phase in phases:
        start, end = phase["start"], phase["end"]
        duration = max(end - start, 1e-9)
        steps = sum(start <= t < end for t in times)
        phase["seconds"] = duration
        phase["steps"] = steps
        phase["steps_per_s"] = steps / duration
        inside = [s for s in samples if start <= s["t"] < end]
        job = [s["job_rss"] for s in inside if "job_rss" in s]
        hub = [s for s in inside if "hub_rss" in s]
        phase["job_rss_median"] = statistics.median(job) if job else None
        phase["job_rss_max"] = max(job) if job else None
        phase["job_rss_last"] = job[-1] if job else None
        phase["hub_rss_max"] = max(s["hub_rss"] for s in hub) if hub else None
        phase["hub_rss_first"] = hub[0]["hub_rss"] if hub else None
        phase["hub_rss_last"] = hub[-1]["hub_rss"] if hub else None
        phase["hub_fds_max"] = max(s["hub_fds"] for s in hub) if hub else None
        phase["hub_fds_first"] = hub[0]["hub_fds"] if hub else None
        phase["hub_fds_last"] = hub[-1]["hub_fds"] if hub else None
        # CPU between consecutive samples of the same hub (a killed one's last share is lost).
        hub_cpu = sum(b["hub_cpu_s"] - a["hub_cpu_s"] for a, b in zip(hub, hub[1:]) if a["hub_pid"] == b["hub_pid"])
        phase["hub_cpu_pct"] = 100 * hub_cpu / duration if len(hub) > 1 else None
        mine = [s["self_cpu_s"] for s in inside]
        phase["attacker_cpu_pct"] = 100 * (mine[-1] - mine[0]) / duration if len(mine) > 1 else None
        answers = [took for t, took in status if start <= t < end]
        times_ok = [took for took in answers if took is not None]
        phase["status_asked"] = len(answers)
        phase["status_unanswered"] = len(answers) - len(times_ok)
        phase["status_ms_median"] = 1000 * statistics.median(times_ok) if times_ok else None
        phase["status_ms_max"] = 1000 * max(times_ok) if times_ok else None


def mib(value: float | None) -> str:
    return "-" if value is None else f"{value / MIB:.1f}"


def number(value: float | None, form: str = ".0f") -> str:
    return "-" if value is None else format(value, form)


def print_report(report: dict[str, Any]) -> None:
    machine = report["machine"]
    print()
    print(f"optwatch reliability benchmark, {report['date']}")
    print(
        f"machine: {machine['node']}, {machine['cpus']} CPUs, {machine['platform']}, Python {machine['python']}, "
        f"torch {machine['torch']}"
    )
    print(f"commit: {report['commit']}")
    print(f"command: {report['command']}")
    run = report["run"]
    print(
        f"training: {run['steps']} steps (MLP width {run['width']}, seed {run['seed']}, "
        f"sleep {run['sleep_s']} s a step); bare with the same pacing (calibration, {run['calibration_steps']} "
        f"steps): {run['calibration_steps_per_s']:.1f} steps/s; bare reference without the pacing: "
        f"{run['bare_s']:.0f} s"
    )
    print()
    header = (
        f"{'phase':<11} {'s':>5} {'steps':>6} {'steps/s':>8} {'vs base':>7} {'job RSS MiB':>15} {'hub RSS':>8} "
        f"{'hub fds':>8} {'hub CPU':>7} {'us CPU':>6} {'status ms':>11}"
    )
    print(header)
    print("-" * len(header))
    base = report["phases"][0]["steps_per_s"] or None
    for phase in report["phases"]:
        ratio = f"{phase['steps_per_s'] / base:.2f}" if base else "-"
        job = f"{mib(phase['job_rss_median'])}/{mib(phase['job_rss_max'])}"
        status = f"{number(phase['status_ms_median'])}/{number(phase['status_ms_max'])}"
        if phase["status_unanswered"]:
            status += f" ({phase['status_unanswered']}x)"
        print(
            f"{phase['name']:<11} {phase['seconds']:5.1f} {phase['steps']:6d} {phase['steps_per_s']:8.1f} {ratio:>7} "
            f"{job:>15} {mib(phase['hub_rss_max']):>8} {number(phase['hub_fds_max']):>8} "
            f"{number(phase['hub_cpu_pct']):>6}% {number(phase['attacker_cpu_pct']):>5}% {status:>11}"
        )
    print(
        "job RSS: median/max of the training process; hub RSS, fds: the highest of the hub then serving; CPU: % of "
        "one core (hub; this attacking process); status ms: median/max time for the hub to answer a status request "
        "once a second, (Nx): N of them unanswered in 2 s"
    )
    print()
    for phase in report["phases"]:
        if phase.get("attack"):
            print(f"{phase['name']}: {json.dumps(phase['attack'], default=str)}")
    print()
    checks = report["checks"]
    for name, check in checks.items():
        print(f"[{'ok' if check['ok'] else 'FAIL'}] {name}: {check['detail']}")
    print(f"\nwall time of the benchmark: {report['wall_s']:.0f} s")


def check(ok: bool, detail: str) -> dict[str, Any]:
    return {"ok": bool(ok), "detail": detail}


# --- the benchmark ----------------------------------------------------------------------------------------------------
def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "train":
        train(sys.argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase-s", type=float, default=15.0, help="length of baseline, unread, hist-loop, after")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--unread", type=int, default=1000, help="history requests never read (one peer each)")
    parser.add_argument("--fuzz", type=int, default=10_000, help="fuzzed control requests")
    parser.add_argument("--handshakes", type=int, default=2000, help="bad connections")
    parser.add_argument("--sleep", type=float, default=0.002, help="pause after each training step (a data wait)")
    parser.add_argument("--width", type=int, default=128, help="the MLP's hidden width")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, help="training steps (default: enough for every phase, from calibration)")
    parser.add_argument("--json", help="also write every figure to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (outputs, loss files)")
    args = parser.parse_args()

    import zmq

    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="ow-rel-"))  # short: socket paths are limited
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OPTWATCH_RUNTIME_DIR": str(workdir / "rt")}
    env["OPTWATCH_RUNS_DIR"] = str(workdir / "runs")  # the records runs keep by default, not in the checkout
    env.pop("OPTWATCH_TOKEN", None)
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "commit": git_commit(),
        "machine": {
            "node": platform.node(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": package_version("torch"),
        },
    }
    try:
        # 1. Calibration: the step rate with the same pacing, bare; it sizes the run to outlast every phase.
        calibration = workdir / "calibration.txt"
        started = time.monotonic()
        subprocess.run(
            [sys.executable, *train_command(1000, args.sleep, args.seed, args.width, calibration, 0)],
            env=env, check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        _, cal_times, _ = read_losses(calibration)
        cal_rate = (len(cal_times) - 100) / (cal_times[-1] - cal_times[99])
        planned_s = 3 + 4 * args.phase_s + 5.5 * args.kills + args.fuzz / 400 + args.handshakes / 100 + 10
        steps = args.steps or int(cal_rate * planned_s * 1.15)
        print(f"calibration: {cal_rate:.1f} steps/s bare; {steps} steps for about {planned_s:.0f} s of phases")

        # 2. The bare reference, unpaced (the pause touches no number).
        bare = workdir / "bare.txt"
        started = time.monotonic()
        subprocess.run(
            [sys.executable, *train_command(steps, 0.0, args.seed, args.width, bare)], env=env, check=True,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        bare_s = time.monotonic() - started
        print(f"bare reference: {steps} steps in {bare_s:.0f} s")

        # 3. The watched run, attacked in phases.
        watched = workdir / "watched.txt"
        job = Job(train_command(steps, args.sleep, args.seed, args.width, watched), env, workdir)
        context = zmq.Context()
        context.set(zmq.MAX_SOCKETS, 65536)
        phases: list[dict[str, Any]] = []
        sampler = responsiveness = None
        try:
            job.find()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and (not watched.exists() or watched.stat().st_size < 10_000):
                time.sleep(0.2)  # past the first steps (imports, the first detail steps)
            sampler, responsiveness = Sampler(job), Responsiveness(job, context)
            sampler.start()
            responsiveness.start()
            time.sleep(3)

            def phase(name: str, attack: Any = None) -> None:
                start = time.time()
                print(f"{time.strftime('%H:%M:%S')} phase {name}", flush=True)
                detail = attack() if attack else time.sleep(args.phase_s)
                phases.append(
                    {"name": name, "start": start, "end": time.time(), "attack": detail,
                     "training_alive": job.popen.poll() is None and alive(job.training_pid)}
                )  # fmt: skip

            requests, fuzz_kinds = fuzz_requests(args.fuzz, args.seed)
            phase("baseline")
            phase("kill-hub", lambda: kill_hub(job, context, args.kills))
            figures_before = hub_figures(job, context)
            phase("unread", lambda: unread_history(job, context, args.unread, args.phase_s))
            phase("hist-loop", lambda: history_loop(job, context, args.phase_s))
            phase("fuzz", lambda: {"kinds": fuzz_kinds, **fuzz(job, context, requests)})
            phase("handshakes", lambda: bad_handshakes(job, context, args.handshakes, args.seed))
            phase("after")
            figures_after = hub_figures(job, context)
            # The rest of the training, unattacked, is part of `after`.
            remaining = max(60.0, 3 * planned_s)
            try:
                exit_code = job.popen.wait(remaining)
            except subprocess.TimeoutExpired:
                exit_code = None
            phases[-1]["end"] = time.time() if exit_code is not None else phases[-1]["end"]
        finally:
            for thread in (sampler, responsiveness):
                if thread is not None:
                    thread.stop()
            if job.popen.poll() is None:
                job.popen.terminate()
                try:
                    job.popen.wait(30)
                except subprocess.TimeoutExpired:
                    job.popen.kill()
            context.destroy(linger=0)
        time.sleep(8)  # a hub outlives its job by a few seconds
        leftovers = [p for p in hub_processes() if str(workdir) in " ".join(p)]

        # 4. The figures and the checks.
        bare_losses, _, bare_end = read_losses(bare)
        watched_losses, watched_times, watched_end = read_losses(watched)
        # The training's last steps (after the last phase's sample) belong to `after` as well.
        if exit_code is not None and watched_times:
            phases[-1]["end"] = max(phases[-1]["end"], watched_times[-1] + 1e-6)
        phase_figures(phases, watched_times, sampler.samples, responsiveness.samples)
        report["run"] = {
            "steps": steps, "width": args.width, "seed": args.seed, "sleep_s": args.sleep,
            "calibration_steps": 1000, "calibration_steps_per_s": cal_rate, "bare_s": bare_s,
            "watched_exit_code": exit_code, "hub_pids_seen": len(sampler.hub_pids),
        }  # fmt: skip
        report["phases"] = phases
        report["hub_figures"] = {"before": figures_before, "after": figures_after}
        report["checks"] = checks(
            args, steps, phases, exit_code, bare_losses, watched_losses, bare_end, watched_end, figures_before,
            figures_after, leftovers, job,
        )  # fmt: skip
    finally:
        report["wall_s"] = time.monotonic() - began
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    return 0 if all(c["ok"] for c in report["checks"].values()) else 1


def checks(
    args: argparse.Namespace,
    steps: int,
    phases: list[dict[str, Any]],
    exit_code: int | None,
    bare: list[tuple[int, str]],
    watched: list[tuple[int, str]],
    bare_end: str | None,
    watched_end: str | None,
    figures_before: dict[str, Any] | None,
    figures_after: dict[str, Any] | None,
    leftovers: list[list[str]],
    job: Job,
) -> dict[str, dict[str, Any]]:
    by_name = {phase["name"]: phase for phase in phases}
    result: dict[str, dict[str, Any]] = {}
    first_difference = next((i for i, (a, b) in enumerate(zip(bare, watched)) if a != b), None)
    same = len(bare) == len(watched) == steps and first_difference is None and bare_end == watched_end is not None
    detail = f"{len(watched)} of {steps} steps compared bit for bit against the bare run"
    if first_difference is not None:
        detail += (
            f"; first difference at step {first_difference}: {bare[first_difference]} vs {watched[first_difference]}"
        )
    detail += "; final parameters " + ("identical" if bare_end == watched_end is not None else "DIFFER or missing")
    result["losses bit-identical"] = check(same, detail)
    result["training finished"] = check(
        exit_code == 0 and len(watched) == steps,
        f"exit code {exit_code}, {len(watched)} steps" + ("" if exit_code == 0 else f"; output: {job.tail()}"),
    )
    alive_during = [p["name"] for p in phases if not p["training_alive"] and p["name"] != "after"]
    result["every attack hit a live training"] = check(
        not alive_during, "yes" if not alive_during else f"the training had ended by: {', '.join(alive_during)}"
    )
    kills = by_name["kill-hub"]["attack"]
    result["hub respawned after every kill -9"] = check(
        kills["respawns"] == args.kills and kills["missed"] == 0,
        f"{kills['respawns']} respawns after {kills['kills']} kills (of {args.kills}); time to a new hub answering: "
        f"median {number(kills['respawn_s_median'], '.1f')} s, max {number(kills['respawn_s_max'], '.1f')} s",
    )
    fuzzed = by_name["fuzz"]["attack"]
    result["no fuzzed command accepted"] = check(
        fuzzed["accepted"] == 0,
        f"{fuzzed['accepted']} accepted; {fuzzed['answered']} refused with a reason, {fuzzed['unanswered']} "
        f"unanswered, {fuzzed['kinds'].get('oversized', 0)} oversized dropped unread",
    )
    shakes = by_name["handshakes"]["attack"]
    counted = None
    if figures_before and figures_after and figures_before.get("failed_handshakes") is not None:
        counted = (figures_after.get("failed_handshakes") or 0) - figures_before["failed_handshakes"]
    result["half-open connections dropped"] = check(
        shakes["half_open_dropped_by_hub"] == shakes["half_open"],
        f"{shakes['half_open_dropped_by_hub']} of {shakes['half_open']} closed by the hub within "
        f"{shakes['waited_after_last_s']} s; the hub counted {number(counted)} failed handshakes",
    )
    baseline, after = by_name["baseline"], by_name["after"]
    growth = (after["job_rss_last"] or 0) - (baseline["job_rss_median"] or 0)
    result["training memory flat"] = check(
        growth < JOB_RSS_GROWTH_MAX,
        f"RSS {mib(baseline['job_rss_median'])} MiB at baseline, {mib(after['job_rss_last'])} MiB at the end "
        f"({growth / MIB:+.1f} MiB; bound {JOB_RSS_GROWTH_MAX / MIB:.0f})",
    )
    served = [p for p in phases[phases.index(by_name["kill-hub"]) + 1 :]]
    start_rss = served[0]["hub_rss_first"] or 0
    peak = max((p["hub_rss_max"] or 0) for p in served)
    start_fds = served[0]["hub_fds_first"] or 0
    end_fds = after["hub_fds_last"] or 0
    peak_fds = max((p["hub_fds_max"] or 0) for p in served)
    result["hub memory and descriptors bounded"] = check(
        peak - start_rss < HUB_RSS_GROWTH_MAX and end_fds - start_fds <= HUB_FDS_GROWTH_MAX,
        f"RSS {mib(start_rss)} MiB after the kills, peak {mib(peak)} MiB, {mib(after['hub_rss_last'])} MiB at the end "
        f"(bound +{HUB_RSS_GROWTH_MAX / MIB:.0f}); fds {start_fds} -> peak {peak_fds} -> {end_fds} at the end "
        f"(bound +{HUB_FDS_GROWTH_MAX})",
    )
    result["no hub left behind"] = check(not leftovers, f"{len(leftovers)} hub processes of the run still running")
    return result


def hub_processes() -> list[list[str]]:
    import psutil

    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "optwatch.hub" in cmdline:
            found.append(cmdline)
    return found


def git_commit() -> str:
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                               text=True).stdout.strip()  # fmt: skip
        return done.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    except OSError:
        return "unknown"


def package_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
