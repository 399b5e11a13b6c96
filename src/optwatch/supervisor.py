"""Starts the user's script as an instrumented child process beside its hub, and stops it cleanly.

The hub starts first (``optwatch.hub``), so that nothing the training says is missed; then the script, in
a session of its own, its stdout/stderr taken by the probe into capped log files in the run directory
(``probe.output``). A viewer that crashes, freezes or loses its SSH link neither kills it (no SIGHUP, no
broken pipe) nor slows it (nobody has to drain a pipe). The pipes under the script's output are made here
and their read ends kept (``wire.logs.OutputPipes``): what a training that died hard left in them reaches
its log files once it has ended (``poll``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from optwatch import hub, launchers, runs
from optwatch.options import ProbeOptions
from optwatch.wire import runtime
from optwatch.wire.logs import LogTail, OutputPipes, log_name

STOP_GRACE_S = 10.0
PASSED_ON = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT)
"""Signals ``optwatch run`` gives the training as they come, as ``python script.py`` would get them: SLURM's
``--signal`` and Lightning's requeue (USR1), a script's own USR2 handler, Ctrl-\\ (QUIT). SIGINT and SIGTERM are
passed on too, as a stop (``headless``, the dashboard); not SIGHUP: a lost terminal leaves the training
running, attachable."""


class TrainingProcess:
    """The instrumented training process started by `optwatch run`."""

    def __init__(
        self,
        script: str,
        args: list[str],
        options: ProbeOptions,
        run_id: str | None = None,
        nproc_per_node: int | None = None,
        token: str | None = None,
        keeps_stdin: bool = False,
    ):
        self.script = script
        self.keeps_stdin = keeps_stdin
        """The script reads this process's stdin (headless: nothing else does), as under python: a pipe's
        data, ``input()``, a ``breakpoint()``'s pdb. Under the dashboard, which takes the keys, /dev/null."""
        self.nproc_per_node = nproc_per_node
        self.args = args
        self.options = options
        self.token = token
        self.run_id = run_id or runtime.new_run_id(script)
        self.run_dir = runtime.make_run_dir(self.run_id)
        self.popen: subprocess.Popen[bytes] | None = None
        self.hub: subprocess.Popen[bytes] | None = None
        self.stop_requested = False
        self.output_pipes: OutputPipes | None = None
        """Rank 0's output pipes, for a plain run (torchrun's ranks make their own: it closes other descriptors)."""

    def script_arguments(self) -> list[str]:
        """The script as a command line gives it: its path, or ``-m`` and its module."""
        module = launchers.module_of(self.script)
        return ["-m", module] if module is not None else [self.script]

    def output_tails(self) -> list[LogTail]:
        """The script's output as it is written, every rank's, for a viewer that passes it through."""
        ranks = range(self.nproc_per_node or 1)
        return [
            LogTail(self.run_dir / log_name(stream, rank), stream) for rank in ranks for stream in ("stdout", "stderr")
        ]

    @property
    def pub_endpoint(self) -> str:
        return f"ipc://{self.run_dir / 'pub.sock'}"

    @property
    def ctl_endpoint(self) -> str:
        return f"ipc://{self.run_dir / 'ctl.sock'}"

    def start(self) -> None:
        """Start the hub, then the training; raises ``hub.HubError`` when the hub cannot start."""
        from optwatch.options import (
            ENV_OPTIONS,
            ENV_OUTPUT_PIPES,
            ENV_PROBE_PID,
            ENV_RUN_DIR,
            ENV_RUN_ID,
            ENV_TOKEN,
        )

        self.hub = hub.spawn(
            self.run_dir,
            self.run_id,
            world_size=self.nproc_per_node or 1,
            listen=self.options.listen,
            token=self.token,
            script=self.script,
            argv=self.args,
            runs_dir=self.options.runs_dir,
        )
        env = dict(os.environ)
        env.pop(ENV_PROBE_PID, None)
        env.pop(ENV_TOKEN, None)
        self.options.capture_output = True
        env.update(
            {
                ENV_RUN_DIR: str(self.run_dir),
                ENV_RUN_ID: self.run_id,
                ENV_OPTIONS: self.options.to_env(),
                "PYTHONUNBUFFERED": "1",  # the log pane should be live, not block-buffered
            }
        )
        # Until the probe takes them over: what the interpreter says before it (a missing module) is kept.
        out = runtime.append_private(self.run_dir / log_name("stdout", 0))
        err = runtime.append_private(self.run_dir / log_name("stderr", 0))
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
                    *self.script_arguments(),
                ]
            else:
                command = [sys.executable, "-m", "optwatch.probe.launch", *self.script_arguments()]
                self.output_pipes = OutputPipes(self.run_dir)
                env[ENV_OUTPUT_PIPES] = self.output_pipes.env()
            self.popen = subprocess.Popen(
                [*command, *self.args],
                env=env,
                stdin=None if self.keeps_stdin else subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                pass_fds=self.output_pipes.fds() if self.output_pipes else (),
            )
        except BaseException:
            if self.output_pipes is not None:
                self.output_pipes.close()
                self.output_pipes = None
            raise
        finally:
            os.close(out)
            os.close(err)
        if self.output_pipes is not None:
            self.output_pipes.started()

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def poll(self) -> int | None:
        """The exit code once the training has ended (else None); from then on, what a hard end left in its output
        pipes goes to its log files, where the viewers read it."""
        code = self.popen.poll() if self.popen else None
        if code is not None and self.output_pipes is not None:
            self.output_pipes.take_leftovers()
        return code

    @contextlib.contextmanager
    def passing_signals(self, *extra: tuple[int, Callable[[], None]]) -> Iterator[None]:
        """While it lasts, ``PASSED_ON`` signals sent to this process go to the training as they are (it runs in
        a session of its own, so a terminal's or a scheduler's signal to ``optwatch run`` would reach only
        this process, which would die of it, leaving the training running unwatched); each of ``extra``
        (signal, then what to do after passing it on) too."""
        after = dict(extra)

        def pass_on(signum, frame):
            if self.nproc_per_node and signum in PASSED_ON:
                self._send_to_ranks(signum)  # (torchrun's agent would die of a USR1, not pass it on)
            else:
                self.send(signum)
            if signum in after:
                after[signum]()

        previous = {sig: signal.signal(sig, pass_on) for sig in (*PASSED_ON, *after)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _send_to_ranks(self, sig: int) -> None:
        """``sig`` to the ranks torchrun started (its children), not to torchrun."""
        import psutil

        try:
            ranks = psutil.Process(self.popen.pid).children() if self.popen is not None else []
        except psutil.Error:
            return
        for rank in ranks:
            try:
                rank.send_signal(sig)
            except psutil.Error:
                pass

    def send(self, sig: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            try:
                os.kill(self.popen.pid, sig)
            except ProcessLookupError:
                pass

    def interrupt(self) -> None:
        """A Ctrl-C, as a terminal gives it: to the script's process group, the programs it runs included (a
        script waiting in ``os.system("...")`` waited until its command ended). A launch's ranks get theirs
        from the launcher, once."""
        if self.nproc_per_node or self.popen is None or self.popen.poll() is not None:
            self.send(signal.SIGINT)
            return
        try:
            os.killpg(self.popen.pid, signal.SIGINT)
        except (ProcessLookupError, PermissionError):
            self.send(signal.SIGINT)

    def request_stop(self) -> None:
        """Ask for a clean stop (SIGINT: the script sees KeyboardInterrupt and can save its work)."""
        self.stop_requested = True
        self.send(signal.SIGINT)

    def stop(self, grace_s: float = STOP_GRACE_S) -> int | None:
        """SIGINT, then SIGTERM after ``grace_s``, then SIGKILL; returns the exit code."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.stop_requested = True
        insisted = False
        for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if self.popen.poll() is not None:
                break
            insisted = sig != signal.SIGINT
            self.send(sig)
            try:
                self.popen.wait(wait_s)
            except subprocess.TimeoutExpired:
                continue
        if insisted:
            self._reap_group()
        return self.popen.poll()

    def _reap_group(self) -> None:
        # A script that did not end on the Ctrl-C: its DataLoader workers and other children, in its process
        # group, go with it. One that ended on it keeps what it started on its way out (a checkpoint's upload),
        # as under python; its DataLoader's workers end with it on their own.
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def exit_code(self) -> int | None:
        code = self.poll()
        if code is not None and code < 0:
            return 128 - code  # killed by a signal: the shell's convention
        return code

    def killed_by(self) -> str | None:
        """The signal that ended the training (``SIGKILL``), or None."""
        return signal_name(-self.poll()) if (self.poll() or 0) < 0 else None

    def stop_hub(self) -> None:
        """The job is over and its viewer has what it needs: the hub goes (it would after a short linger)."""
        if self.hub is not None and self.hub.poll() is None:
            self.hub.terminate()
            try:
                self.hub.wait(5.0)
            except subprocess.TimeoutExpired:
                self.hub.kill()

    def cleanup(self) -> None:
        import shutil

        self.stop_hub()
        self._record_how_it_ended()
        if self.output_pipes is not None:
            self.output_pipes.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def _record_how_it_ended(self) -> None:
        """A training killed by a signal (the OOM killer's SIGKILL) or gone with an exit code and no word of
        its own leaves the hub saying only "ended": this process, its parent, knows how it ended. Called once
        the hub is gone, so that nothing writes run.json after it."""
        code = self.poll()
        if not code or self.options.runs_dir is None:
            return
        directory = Path(self.options.runs_dir or runs.runs_root()) / self.run_id
        summary = runs.read_summary(directory)
        if summary is None or summary.get("status") not in ("ended", "running"):
            return  # the hub heard the end from the training itself
        killed_by = self.killed_by()
        if self.stop_requested:
            status = "stopped"  # (with SIGTERM: it did not end on the Ctrl-C in time)
        else:
            status = f"killed ({killed_by})" if killed_by else f"failed (exit {code})"
        summary.update(status=status, exit_code=self.exit_code())
        if killed_by:
            summary["signal"] = killed_by
        summary.setdefault("ended", time.time())
        try:
            runs.write_summary(directory, summary)
        except OSError:
            pass  # a full disk: the record keeps the hub's word


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
