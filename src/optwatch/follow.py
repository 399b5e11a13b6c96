"""The viewer of a job whose ranks a launcher started (torchrun, srun): what `optwatch run --headless` and
`--record` promise there.

Each rank of such a launch runs `optwatch run` in its own process, with no dashboard: rank 0 starts this
viewer beside its hub (``probe.launch.run_as_rank``), so that the launch prints one summary line every few
seconds, the alerts and verdicts, and writes one record file with every rank's records, as `optwatch run
--nproc-per-node` does. The script's own output is not passed through: the launcher already shows every
rank's. The viewer runs in a session of its own (a Ctrl-C in the terminal goes to the launcher, which stops
the ranks; their last records still reach the record), and ends once every rank has ended, or a few seconds
after rank 0's process is gone.

    python -m optwatch.follow --run-dir DIR --job-pid PID --world-size N [--headless] [--record PATH]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from optwatch.session import ViewerSession
from optwatch.store import RecordWriter, Store
from optwatch.wire import runtime
from optwatch.wire.subscriber import Feed


class LaunchedRanks:
    """Stands for the training process in ``ViewerSession.done``: it has "exited" once every rank has said
    its end, or rank 0's process (which started this viewer) is gone."""

    def __init__(self, rank0_pid: int, world_size: int, store: Store, run_id: str):
        self.rank0_pid = rank0_pid
        self.world_size = world_size
        self.store = store
        self.run_id = run_id
        self.pid = rank0_pid
        self.stop_requested = False  # a stop goes through the launcher; the ranks' end records tell

    def poll(self) -> int | None:
        if not runtime.pid_alive(self.rank0_pid):
            return 0
        with self.store.lock:
            ended = sum(state.end is not None for state in self.store.ranks.values())
        return 0 if ended >= self.world_size else None

    def exit_code(self) -> int:
        return 0  # the launcher reports the ranks' exit codes

    def killed_by(self) -> str | None:
        return None  # the launcher's to tell

    def send(self, sig: int) -> None:
        """A signal for the training goes to the launcher, not through this viewer."""

    def stop(self) -> None:
        """Whoever reads this viewer's output went away: the training goes on (the launcher owns it)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m optwatch.follow", description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--job-pid", type=int, required=True)
    parser.add_argument("--world-size", type=int, default=1)
    parser.add_argument("--headless", action="store_true")
    parser.add_argument("--record")
    parser.add_argument("--summary-every", type=float, default=5.0)
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    writer = None
    if args.record:
        try:
            writer = RecordWriter(args.record)
        except OSError as exc:
            print(f"optwatch: cannot record to {args.record}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    feed = Feed(f"ipc://{run_dir / 'pub.sock'}", f"ipc://{run_dir / 'ctl.sock'}")
    store = Store()
    ranks = LaunchedRanks(args.job_pid, args.world_size, store, run_dir.name)
    session = ViewerSession(feed, store=store, writer=writer, process=ranks)  # type: ignore[arg-type]
    try:
        if args.headless:
            from optwatch.headless import run_headless

            return run_headless(session, summary_every_s=args.summary_every)
        while not session.done():
            session.pump(0.2)
            reason = session.recording_stopped()
            if reason:
                print(f"optwatch: {reason}", file=sys.stderr, flush=True)
        session.pump(0.0)
        return 0
    finally:
        session.close()


if __name__ == "__main__":
    sys.exit(main())
