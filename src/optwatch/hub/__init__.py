"""The job's hub: a process beside the training that faces viewers and the network (see ``hub.server``).

``spawn`` starts one; ``optwatch run`` does before it starts the training, and the probe does when a
script started with plain ``python`` calls ``optwatch.watch`` (and again if the hub dies). No torch here.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
from pathlib import Path

from optwatch.options import ENV_TOKEN
from optwatch.wire import runtime

READY_TIMEOUT_S = 20.0


class HubError(RuntimeError):
    """The hub could not start; the message says why."""


def spawn(
    run_dir: Path,
    run_id: str,
    *,
    world_size: int = 1,
    listen: str | None = None,
    token: str | None = None,
    job_pid: int | None = None,
    script: str = "",
    argv: list[str] | None = None,
    runs_dir: str | None = "",
    wait: bool = True,
) -> subprocess.Popen[bytes]:
    """Start a hub for the job in ``run_dir`` in a session of its own (a Ctrl-C or a closed terminal is the
    job's business, not the hub's); with ``wait``, return once its sockets are bound. It records the run
    under ``runs_dir`` ("" for the default, ``optwatch.runs.runs_root()``; None for no record)."""
    from optwatch.runs import runs_root

    command = [
        *runtime.python_module("optwatch.hub"),
        f"--run-dir={run_dir}",
        f"--run-id={run_id}",
        f"--world-size={world_size}",
        f"--script={script}",  # one argument each, whatever they start with ("-c" for `python -c`)
        f"--argv={json.dumps(argv or [])}",
    ]
    if runs_dir is not None:
        command.append(f"--runs-dir={runs_dir or runs_root()}")
    if listen:
        command.append(f"--listen={listen}")
    if job_pid is not None:
        command.append(f"--job-pid={job_pid}")
    env = dict(os.environ)
    env.pop(ENV_TOKEN, None)
    if token:
        env[ENV_TOKEN] = token  # never on the command line, where every local user can read it
    read_end, write_end = os.pipe() if wait else (None, None)
    if write_end is not None:
        command.append(f"--ready-fd={write_end}")
    log_fd = runtime.append_private(run_dir / "hub.log")
    try:
        process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
            start_new_session=True,
            pass_fds=(write_end,) if write_end is not None else (),
        )
    finally:
        os.close(log_fd)
        if write_end is not None:
            os.close(write_end)
    if read_end is None:
        return process
    try:
        ready, _, _ = select.select([read_end], [], [], READY_TIMEOUT_S)
        answer = os.read(read_end, 1) if ready else b""
    finally:
        os.close(read_end)
    if answer != b"1":
        process.kill()
        try:
            said = (run_dir / "hub.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            said = []
        raise HubError(said[-1] if said else "the hub did not start in time")
    return process
