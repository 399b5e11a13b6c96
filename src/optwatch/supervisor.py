"""Starts the user's script as an instrumented child process, and stops it cleanly.

The child runs in its own session and writes its stdout/stderr to files in the run directory, so a
viewer that crashes, freezes or loses its SSH link neither kills it (no SIGHUP, no broken pipe) nor
slows it (nobody has to drain a pipe). The viewer tails those files.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from optwatch.wire import runtime

STOP_GRACE_S = 10.0


class LogTail:
    """New bytes of a file that another process appends to."""

    def __init__(self, path: Path, stream: str, tail_bytes: int | None = None):
        self.path = path
        self.stream = stream
        self._tail_bytes = tail_bytes
        self._handle = None

    def read(self) -> bytes:
        if self._handle is None:
            try:
                self._handle = open(self.path, "rb")
            except FileNotFoundError:
                return b""
            if self._tail_bytes is not None:
                # Joining late: start at a line boundary near the end, not at the top of a long log.
                size = self._handle.seek(0, os.SEEK_END)
                self._handle.seek(max(0, size - self._tail_bytes))
                if size > self._tail_bytes:
                    self._handle.readline()
        return self._handle.read()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


class TrainingProcess:
    """The instrumented training process started by `optwatch run`."""

    def __init__(
        self,
        script: str,
        args: list[str],
        probe_options_env: str,
        run_id: str | None = None,
        nproc_per_node: int | None = None,
    ):
        self.script = script
        self.nproc_per_node = nproc_per_node
        self.args = args
        self.run_id = run_id or runtime.new_run_id(script)
        self.run_dir = runtime.make_run_dir(self.run_id)
        self._options_env = probe_options_env
        self.popen: subprocess.Popen[bytes] | None = None
        self.tails = [LogTail(self.run_dir / "stdout.log", "stdout"), LogTail(self.run_dir / "stderr.log", "stderr")]
        self.stop_requested = False

    @property
    def pub_endpoint(self) -> str:
        return f"ipc://{self.run_dir / 'pub.sock'}"

    @property
    def ctl_endpoint(self) -> str:
        return f"ipc://{self.run_dir / 'ctl.sock'}"

    def start(self) -> None:
        from optwatch.probe.options import ENV_OPTIONS, ENV_RUN_DIR, ENV_RUN_ID

        env = dict(os.environ)
        env.update(
            {
                ENV_RUN_DIR: str(self.run_dir),
                ENV_RUN_ID: self.run_id,
                ENV_OPTIONS: self._options_env,
                "PYTHONUNBUFFERED": "1",  # the log pane should be live, not block-buffered
            }
        )
        out = os.open(self.run_dir / "stdout.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        err = os.open(self.run_dir / "stderr.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            if self.nproc_per_node:
                # torchrun starts the ranks; each runs `optwatch run` in-process and finds rank 0's hub
                # through the run directory given in the environment.
                command = [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--standalone",
                    f"--nproc-per-node={self.nproc_per_node}",
                    "-m",
                    "optwatch",
                    "run",
                    self.script,
                ]
            else:
                command = [sys.executable, "-m", "optwatch.probe.launch", self.script]
            self.popen = subprocess.Popen(
                [*command, *self.args],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        finally:
            os.close(out)
            os.close(err)

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def poll(self) -> int | None:
        return self.popen.poll() if self.popen else None

    def send(self, sig: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            try:
                os.kill(self.popen.pid, sig)
            except ProcessLookupError:
                pass

    def request_stop(self) -> None:
        """Ask for a clean stop (SIGINT: the script sees KeyboardInterrupt and can save its work)."""
        self.stop_requested = True
        self.send(signal.SIGINT)

    def stop(self, grace_s: float = STOP_GRACE_S) -> int | None:
        """SIGINT, then SIGTERM after ``grace_s``, then SIGKILL; returns the exit code."""
        if self.popen is None:
            return None
        for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if self.popen.poll() is not None:
                break
            self.send(sig)
            try:
                self.popen.wait(wait_s)
            except subprocess.TimeoutExpired:
                continue
        self._reap_group()
        return self.popen.poll()

    def _reap_group(self) -> None:
        # DataLoader workers and other children of the script share its process group.
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def exit_code(self) -> int | None:
        code = self.poll()
        if code is not None and code < 0:
            return 128 - code  # killed by a signal: the shell's convention
        return code

    def cleanup(self) -> None:
        import shutil

        for tail in self.tails:
            tail.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)
