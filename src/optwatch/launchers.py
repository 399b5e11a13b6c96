"""Which launcher started this process, and what it says about the job: this rank, the world, the node.

Neutral ground, like ``options``: the CLI, the probe and the hub read it, and none of them pays for torch.

- **torchrun** (and ``accelerate launch``, ``python -m torch.distributed.run``, which run it): ``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``, ``GROUP_RANK`` (the node's rank) in every worker's environment.
- **srun** (Slurm): ``SLURM_PROCID``, ``SLURM_NTASKS`` (``SLURM_STEP_NUM_TASKS`` for the step),
  ``SLURM_LOCALID``, ``SLURM_NODEID``, ``SLURM_JOB_ID``, and no ``RANK``/``WORLD_SIZE``: a script maps them
  itself. optwatch reads them as they are and never adds ``RANK`` or ``WORLD_SIZE`` to the script's
  environment (the script sees what ``python script.py`` gives it under srun).

Every rank of a launch runs ``optwatch run`` in its own process (``probe.launch.run_as_rank``). Global rank 0
starts the job's hub, and, for ``--headless`` or ``--record``, one viewer beside it (``optwatch.follow``), so
a launch prints one summary and writes one record, as ``optwatch run --nproc-per-node`` does. The ranks of
rank 0's node find the hub in the run directory they agree on (``job_key``); ranks on other nodes reach it
over TCP (``OPTWATCH_HUB``, see docs/launchers.md).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

MODULE_PREFIX = "-m "
"""A script given as ``-m package.module`` (``optwatch run -m pkg.train``), run as ``python -m`` runs it: one
string wherever a script's path goes (argparse takes an argument with a space for a positional one)."""


def module_script(module: str) -> str:
    """The script string of ``module`` (``-m package.module``)."""
    return MODULE_PREFIX + module


def module_of(script: str) -> str | None:
    """The module of a ``-m package.module`` script, or None for a file."""
    return script[len(MODULE_PREFIX) :] if script.startswith(MODULE_PREFIX) else None


@dataclass(frozen=True)
class Launch:
    """This process's place in a job that a launcher started."""

    launcher: str
    """``torchrun`` or ``srun``."""
    rank: int
    world_size: int
    local_rank: int
    node: int
    """The node's rank among the job's nodes (rank 0's node is 0)."""
    job_key: str
    """What every rank of this node's part of the job shares, and nothing else does: the run id is made
    from it, so that the ranks of a node find one run directory without talking to each other."""

    @property
    def on_first_node(self) -> bool:
        """Whether this rank runs on the node of rank 0 (which hosts the hub)."""
        return self.node == 0


def _whole(environ: Mapping[str, str], name: str, default: int | None = None) -> int | None:
    try:
        return int(environ[name])
    except (KeyError, ValueError):
        return default


def detect(environ: Mapping[str, str] | None = None) -> Launch | None:
    """The launch this process is a rank of, or None when no launcher started it (plain ``python``)."""
    environ = os.environ if environ is None else environ
    if "LOCAL_RANK" in environ and "WORLD_SIZE" in environ:
        rank = _whole(environ, "RANK", 0)
        local_rank = _whole(environ, "LOCAL_RANK", 0)
        world_size = _whole(environ, "WORLD_SIZE", 1)
        # GROUP_RANK is the node's rank under torchrun; without it, ranks are laid out node by node.
        node = _whole(environ, "GROUP_RANK")
        if node is None:
            node = 0 if rank == local_rank else 1
        # The ranks of a node share their parent, the elastic agent, and the rendezvous settings.
        parts = [environ.get(name, "") for name in ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")]
        key = ":".join(["torchrun", *parts, str(os.getppid())])
        return Launch("torchrun", rank, world_size, local_rank, node, key)  # type: ignore[arg-type]
    if "RANK" in environ or "WORLD_SIZE" in environ:
        return None  # a script's own mapping (or a launcher we do not know): its RANK is read as it is
    rank = _whole(environ, "SLURM_PROCID")
    world_size = _whole(environ, "SLURM_STEP_NUM_TASKS") or _whole(environ, "SLURM_NTASKS")
    if rank is None or world_size is None or world_size < 2 or "SLURM_JOB_ID" not in environ:
        return None  # one task (``srun --pty bash``, then ``optwatch run``): a plain run, with its dashboard
    # Not the parent's pid: srun may start each task through a shell of its own.
    parts = [
        environ.get(name, "")
        for name in ("SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_NODEID", "MASTER_ADDR", "MASTER_PORT")
    ]
    key = ":".join(["srun", *parts])
    return Launch(
        "srun",
        rank,
        world_size,
        _whole(environ, "SLURM_LOCALID", 0),  # type: ignore[arg-type]
        _whole(environ, "SLURM_NODEID", 0),  # type: ignore[arg-type]
        key,
    )


def viewer_arguments(
    launch: Launch,
    headless: bool,
    record: str | None,
    summary_every: float,
    nproc_per_node: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[str] | None:
    """For `optwatch run` as a rank of ``launch``: the arguments of the job's one viewer, which rank 0 starts
    (``optwatch.follow``) for ``--headless`` and ``--record``; None for the other ranks, or without either.
    What a launch cannot honour is refused (ValueError, with the message) or said, never ignored."""
    from optwatch.options import ENV_HUB, ENV_RUN_DIR

    environ = os.environ if environ is None else environ
    if nproc_per_node:
        raise ValueError(
            f"--nproc-per-node: this is already rank {launch.rank} of {launch.world_size} started by "
            f"{launch.launcher}; drop the option (or run `optwatch run --nproc-per-node N` without {launch.launcher})"
        )
    if ENV_RUN_DIR in environ:
        return None  # `optwatch run --nproc-per-node` started this torchrun: its viewer is already there
    if not launch.on_first_node:
        if launch.local_rank == 0 and ENV_HUB not in environ:
            print(
                "optwatch: warning: this node's ranks cannot reach the job's hub, which runs on rank 0's node: "
                "their records are lost. Start the job with --listen HOST:PORT and give every rank "
                "OPTWATCH_HUB=HOST:PORT and OPTWATCH_TOKEN (docs/launchers.md)",
                file=sys.stderr,
            )
        return None
    if launch.rank != 0:
        return None  # rank 0 prints and records for the whole job
    if not (headless or record):
        print(
            f"optwatch: {launch.launcher} runs the ranks here, with no dashboard: watch them from another terminal "
            f"with `optwatch attach` (or give --headless for summaries here)",
            file=sys.stderr,
        )
        return None
    viewer = ["--headless", f"--summary-every={summary_every}"] if headless else []
    if record:
        viewer.append(f"--record={os.path.abspath(record)}")
    return viewer
