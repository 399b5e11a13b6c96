"""One browser tab's dashboard: ``optwatch attach RUN`` (``replay`` once the run has ended), bound to live no
longer than the web server.

The server talks to this process through its stdin and stdout alone and tells it to quit when the page
closes or the server stops. A server killed with -9 can tell it nothing, and the dashboard would go on
watching the job for nobody: so the kernel sends it SIGTERM when the server dies (``PR_SET_PDEATHSIG``,
kept across the exec), on which Textual's web driver quits.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

ENV_SERVER_PID = "OPTWATCH_WEB_SERVER_PID"
PR_SET_PDEATHSIG = 1


def dashboard_command(target: str) -> list[str]:
    """``optwatch attach TARGET``, or, for a run of this machine's that has ended, ``optwatch replay TARGET``: its
    record as it was (a page opened or reloaded after the run ended stayed on the splash screen, its dashboard
    unable to attach)."""
    from optwatch.wire import runtime

    live = any(job.run_id == target for job in runtime.list_jobs(clean=False))
    if live or ":" in target:  # (HOST:PORT: a job elsewhere, attached over TCP)
        return ["attach", target]
    return ["replay", target]


def main() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the dashboard then quits when the server says so, not when it is killed
    if str(os.getppid()) != os.environ.get(ENV_SERVER_PID):
        sys.exit(0)  # the server died before the line above
    os.execv(sys.executable, [sys.executable, "-m", "optwatch", *dashboard_command(sys.argv[1]), *sys.argv[2:]])


if __name__ == "__main__":
    main()
