"""Profiler traces on disk, and the helper process that summarises one.

Torch-free. The training process exports a window's raw Chrome trace into the run's trace directory
and starts ``python -m optwatch.probe.traces`` on it: the helper reads it, summarises it
(``hotspots.summarise``), gzips it into its final name, deletes the oldest traces and prints the
summary as JSON. Parsing tens of megabytes of JSON there, rather than on a thread of the training
process, keeps the training thread from waiting for the GIL.

Layout: ``<root>/<run_id>/rank<R>-steps<FIRST>-<LAST>.pt.trace.json.gz``, directories 0700, files
0600, the last ``KEEP_TRACES`` of each rank kept. ``root`` is ``$OPTWATCH_TRACE_DIR``, else
``./optwatch-runs`` (each run's traces beside its record).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from optwatch.diagnose.hotspots import summarise
from optwatch.wire import runtime

KEEP_TRACES = 5
TRACE_DIR_ENV = "OPTWATCH_TRACE_DIR"


def trace_root() -> Path:
    """``$OPTWATCH_TRACE_DIR``, else the runs directory (``optwatch.runs``): a run's traces lie beside its
    record (made absolute, so a later chdir changes nothing)."""
    from optwatch.runs import runs_root

    override = os.environ.get(TRACE_DIR_ENV)
    return Path(override).absolute() if override else runs_root()


class TraceStore:
    """One rank's traces in ``<root>/<run_id>/``, private to the user, the last few kept."""

    def __init__(self, root: Path, run_id: str, rank: int, keep: int = KEEP_TRACES):
        self.root = root
        self.directory = root / run_id
        self.rank = rank
        self.keep = keep

    def final_path(self, first: int, last: int) -> Path:
        return self.directory / f"rank{self.rank}-steps{first}-{last}.pt.trace.json.gz"

    def raw_path(self, first: int, last: int) -> Path:
        """Where the training process exports the uncompressed trace (a hidden file, removed once packed)."""
        # The root may be shared (OPTWATCH_TRACE_DIR=/scratch): create it private but never chmod it.
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        runtime.ensure_private_dir(self.directory)
        return self.directory / f".rank{self.rank}-steps{first}-{last}.{os.getpid()}.json"

    def pack(self, raw: Path, first: int, last: int) -> Path:
        """Gzip ``raw`` into the trace's final name (0600), remove ``raw`` and the oldest traces."""
        final = self.final_path(first, last)
        partial = raw.with_suffix(".partial")
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with open(raw, "rb") as source, os.fdopen(fd, "wb") as sink:
                with gzip.GzipFile(filename=final.name[:-3], mode="wb", fileobj=sink, compresslevel=6) as packed:
                    shutil.copyfileobj(source, packed, 1 << 20)
            os.replace(partial, final)  # a reader never sees half a file
        finally:
            for leftover in (raw, partial):
                leftover.unlink(missing_ok=True)
        self._prune()
        return final

    def _prune(self) -> None:
        traces = sorted(
            self.directory.glob(f"rank{self.rank}-steps*.pt.trace.json.gz"), key=lambda path: path.stat().st_mtime
        )
        for old in traces[: -self.keep]:
            old.unlink(missing_ok=True)


def summarise_window(job: dict[str, Any]) -> dict[str, Any]:
    """Summarise and pack one exported window. ``job``: raw, root, run_id, rank, first, last, wall_s, device_used."""
    raw = Path(job["raw"])
    store = TraceStore(Path(job["root"]), job["run_id"], job["rank"])
    with open(raw, encoding="utf-8") as handle:
        trace = json.load(handle)
    summary = summarise(trace, wall_s=job["wall_s"], device_used=job["device_used"])
    del trace
    try:
        summary["trace"] = str(store.pack(raw, job["first"], job["last"]))
    except OSError as exc:
        summary.update(trace=None, trace_error=str(exc))
    return summary


def main() -> None:
    """``python -m optwatch.probe.traces JOB_JSON``: print the window's summary as one JSON line."""
    try:
        os.nice(10)  # the training comes first
    except OSError:
        pass
    print(json.dumps(summarise_window(json.loads(sys.argv[1]))))


if __name__ == "__main__":
    main()
