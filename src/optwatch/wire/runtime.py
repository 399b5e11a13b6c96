"""Where jobs leave their sockets and metadata: a per-user directory that only its owner can enter.

Layout::

    $OPTWATCH_RUNTIME_DIR (default $XDG_RUNTIME_DIR/optwatch or /tmp/optwatch-$UID), mode 0700
      <run_id>/              mode 0700, one per job
        info.json            mode 0600: run id, pid, script, ranks, endpoints, start time
        pub.sock, ctl.sock   mode 0600: telemetry (PUB) and requests (ROUTER)
        token                mode 0600: only when the job listens on TCP
        stdout.log, stderr.log   the script's output when started by `optwatch run`

Another local user can create /tmp/optwatch-$UID before us, or a link there to a directory of theirs:
every use of the root or of a run directory checks that it is ours (``check_private_dir``), and a
listing skips whatever is not, so no job of theirs is ever shown, steered or removed.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optwatch.launchers import module_of

INFO_FILE = "info.json"


class RuntimeDirError(RuntimeError):
    """The runtime directory is missing, foreign or too open to be trusted."""


def python_module(module: str) -> list[str]:
    """The command line that runs ``module`` of optwatch's own (the hub) in a new interpreter, the directory it is
    started in kept off ``sys.path`` where Python can (3.11's ``-P``): a ``queue.py`` or ``platform.py`` beside
    the user's work must not stand in for the standard library's. (Not the training's launcher: its script
    would see the flag; ``probe/launch.py`` drops that directory itself.)"""
    import sys

    return [sys.executable, *(["-P"] if sys.version_info >= (3, 11) else []), "-m", module]


def runtime_root() -> Path:
    configured = os.environ.get("OPTWATCH_RUNTIME_DIR")
    if configured:
        return Path(configured)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return Path(xdg) / "optwatch"
    return Path(f"/tmp/optwatch-{os.getuid()}")


# What a user can do about a runtime directory we refuse: the only setting that moves it.
WAY_OUT = "set OPTWATCH_RUNTIME_DIR to a directory of your own"


def _way_out(path: Path) -> str:
    root = runtime_root()
    return WAY_OUT if path == root or root in path.parents else "use a directory of your own"


def check_private_dir(path: Path) -> Path:
    """``path`` if it is a directory of ours, not a link, that only we can enter (its group and other
    permission bits are cleared when it has any); else RuntimeDirError naming the path, the fault and the
    way out."""
    try:
        info = path.lstat()
    except OSError as exc:
        raise RuntimeDirError(f"cannot use {path}: {exc.strerror}; {_way_out(path)}") from None
    if stat.S_ISLNK(info.st_mode):
        fault = f"is a symbolic link (to {os.readlink(path)})"
    elif not stat.S_ISDIR(info.st_mode):
        fault = "is not a directory"
    elif info.st_uid != os.getuid():
        fault = f"belongs to uid {info.st_uid}, not to you (uid {os.getuid()})"
    else:
        fault = None
    if fault:
        raise RuntimeDirError(f"refusing {path}: it {fault}; {_way_out(path)}")
    if info.st_mode & 0o077:
        try:
            os.chmod(path, 0o700)
        except OSError as exc:
            raise RuntimeDirError(
                f"refusing {path}: others may enter it (mode {stat.S_IMODE(info.st_mode):04o}) and it cannot be "
                f"made private ({exc.strerror}); {_way_out(path)}"
            ) from None
    return path


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` with mode 0700, or check that an existing one is ours and private (``check_private_dir``)."""
    try:
        path.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass  # checked below, whatever it is
    except OSError as exc:
        raise RuntimeDirError(f"cannot create {path}: {exc.strerror}; {_way_out(path)}") from None
    return check_private_dir(path)


def write_private_file(path: Path, text: str) -> None:
    """Write atomically with mode 0600 so no reader ever sees a half-written or world-readable file."""
    # Per process and thread: two writers of one file in a process (a hub thread in the tests' process)
    # would otherwise move each other's half of it.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def append_private(path: Path) -> int:
    """A descriptor appending to ``path``, made with mode 0600 if it is new, never opened through a symbolic link
    (the logs of a job: the script's output, the hub's)."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)


def new_run_id(script: str) -> str:
    module = module_of(script)
    if module is not None:  # a module run as `python -m` runs it: its last part names the run
        stem = module.rsplit(".", 1)[-1]
    else:
        stem = Path(script).stem.lstrip("-") or "run"  # `python -c` names its script "-c"
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in stem)[:24]
    return f"{safe}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


# Unix socket paths are limited to 107 bytes on Linux; leave room for the socket file names.
MAX_RUN_DIR_LEN = 96


def make_run_dir(run_id: str) -> Path:
    root = ensure_private_dir(runtime_root())
    run_dir = root / run_id
    if len(str(run_dir)) > MAX_RUN_DIR_LEN:
        raise RuntimeDirError(
            f"{run_dir} is too long for a Unix socket path; set OPTWATCH_RUNTIME_DIR to a shorter directory"
        )
    return ensure_private_dir(run_dir)


def new_token() -> str:
    # Hex, not URL-safe base64: one of those in 64 starts with "-", and `optwatch attach --token -x...`
    # then reads as a missing value.
    return secrets.token_hex(24)


@dataclass
class JobInfo:
    """What `optwatch ls` shows and what a viewer needs to connect."""

    run_id: str
    pid: int
    script: str
    run_dir: str
    start_time: float
    ranks: int = 1
    endpoints: dict[str, str] = field(default_factory=dict)
    token_file: str | None = None
    argv: list[str] = field(default_factory=list)
    hub_pid: int | None = None
    paused: dict[str, Any] | None = None
    """While a pause is in effect: who paused (``by``), since when (``since``), until when (``until``, a lease)."""

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobInfo:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)

    def save(self) -> None:
        write_private_file(Path(self.run_dir) / INFO_FILE, json.dumps(self.to_json(), indent=1))

    def token(self) -> str | None:
        if not self.token_file:
            return None
        try:
            return Path(self.token_file).read_text().strip()
        except OSError:
            return None


def tcp_address(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port); raises ValueError with a message a user can act on."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host:
        raise ValueError(f"--listen wants HOST:PORT (e.g. 127.0.0.1:0), got {listen!r}")
    if not (port_text.isascii() and port_text.isdigit()):
        raise ValueError(f"--listen: port must be a number, got {port_text!r}")
    port = int(port_text)
    if not 0 <= port <= 65533:
        raise ValueError(f"--listen: port must be 0..65533 (the job uses PORT, PORT+1 and PORT+2), got {port}")
    return host.strip("[]"), port


def read_job_info(run_dir: Path) -> JobInfo | None:
    """The job's info in ``run_dir``, or None when there is none (yet) or it cannot be read."""
    try:
        return JobInfo.from_json(json.loads((run_dir / INFO_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _private_entry(path: Path, directory: bool) -> os.stat_result | None:
    """``path``'s lstat when it is ours, not a link, of the expected type and closed to others (what a job
    of ours leaves), else None. Anything else in the runtime directory is skipped, and never removed."""
    try:
        info = path.lstat()
    except OSError:
        return None
    expected = stat.S_ISDIR(info.st_mode) if directory else stat.S_ISREG(info.st_mode)
    return info if expected and info.st_uid == os.getuid() and not info.st_mode & 0o077 else None


def list_jobs(clean: bool = True) -> list[JobInfo]:
    """Live jobs of this user, oldest first; leftovers of dead jobs are removed when ``clean``.

    The runtime directory must pass ``check_private_dir`` (else RuntimeDirError); run directories and
    info files that are not plainly ours are skipped, so a job another user planted is never listed.
    """
    root = runtime_root()
    try:
        root.lstat()
    except FileNotFoundError:
        return []
    check_private_dir(root)
    jobs = []
    for run_dir in sorted(root.iterdir()):
        made = _private_entry(run_dir, directory=True)
        if made is None:
            continue
        info_path = run_dir / INFO_FILE
        if os.path.lexists(info_path) and not _private_entry(info_path, directory=False):
            continue
        try:
            job = JobInfo.from_json(json.loads(info_path.read_text()))
        except (OSError, ValueError, TypeError):
            # A job that is still starting has a directory but no info yet; leave young ones alone.
            if clean and time.time() - made.st_mtime > 60:
                shutil.rmtree(run_dir, ignore_errors=True)
            continue
        if pid_alive(job.pid):
            jobs.append(job)
        elif clean:
            shutil.rmtree(run_dir, ignore_errors=True)
    return sorted(jobs, key=lambda j: j.start_time)


def where_to_attach(run_dir: Path) -> str | None:
    """The line that says where viewers reach a job that listens on TCP, and where its token is (never the
    token itself, which would stay in terminal logs and scrollback); None where it does not listen."""
    info = read_job_info(run_dir)
    endpoint = (info.endpoints.get("tcp") or "").removeprefix("tcp://") if info else ""
    if not endpoint:
        return None
    port = int(endpoint.rpartition(":")[2])
    return (
        f"optwatch: listening on {endpoint} (and port {port + 1}); to attach: optwatch attach {endpoint} "
        f"--token-file {info.token_file} (from another machine: tunnel both ports and set OPTWATCH_TOKEN to the "
        "token, which `optwatch ls` shows here)"
    )
