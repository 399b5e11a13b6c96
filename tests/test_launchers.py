"""Launchers (torchrun, srun) give one job with all its ranks; FSDP's sharded norms are made whole in the hub."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys

import pytest

from conftest import ROOT, SCRIPTS, optwatch, read_jsonl, steps_of
from optwatch import launchers, protocol
from optwatch.hub.shards import ShardedNorms

LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "TORCHELASTIC_RUN_ID")


def truth_of(stdout: str) -> dict[int, dict]:
    """What the FSDP script printed: per step, the norms it computed from the full tensors."""
    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return {line["step"]: line for line in lines}


def assert_the_scripts_norms(records: list[dict], truth: dict[int, dict], ranks: int, grad_every: int = 1) -> None:
    """Every rank's global and per-parameter figures are the whole model's, as the script computed them."""
    for rank in range(ranks):
        steps = steps_of(records, rank)
        assert [s["step"] for s in steps] == sorted(truth), f"rank {rank}"
        for step in steps:
            assert step["grad_norm"] == pytest.approx(truth[step["step"]]["grad_norm"], abs=1e-5), step
            assert "_sharded" not in step
        layers = [r for r in records if r["kind"] == "layers" and r["rank"] == rank]
        assert [r["step"] for r in layers] == sorted(truth)[::grad_every]
        weights_checked = 0
        for record in layers:
            expected = truth[record["step"]]
            assert record["grad_norm"] == pytest.approx([expected["grads"][n] for n in record["names"]], abs=1e-5)
            for i, name in enumerate(record["names"]):
                if record["updated_at"][i] == record["step"]:  # measured at this step (a chunk in turn)
                    assert record["weight_norm"][i] == pytest.approx(expected["weights"][name], abs=1e-5)
                    assert record["update_norm"][i] == pytest.approx(expected["updates"][name], abs=1e-5)
                    weights_checked += 1
        assert weights_checked >= 6, "every parameter's weight and update checked at least once"


def test_torchrun_headless_prints_one_summary_of_both_ranks_and_fsdp_norms_are_exact(tmp_path):
    """`torchrun -m optwatch run --headless --record`: rank 0's viewer prints the job's summary (once) and
    records both ranks; with fully_shard, the norms are the whole model's, as the script computes them from
    the gathered tensors, whether optwatch measures them (steps 0-3) or the script's clip does (4-5)."""
    record = tmp_path / "r.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         "-m", "optwatch", "run", "--headless", "--record", str(record),
         str(SCRIPTS / "fsdp_mlp.py"), "--steps", "6", "--clip-from", "4"],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("optwatch: final step 5 (6 steps) |") == 1, result.stderr[-3000:]
    assert "| 2 ranks (the figures are rank 0's)" in result.stderr
    records = read_jsonl(record)
    hellos = [r for r in records if r["kind"] == "hello"]
    assert {h["rank"] for h in hellos} == {0, 1} and len({h["run_id"] for h in hellos}) == 1, "one job"
    assert_the_scripts_norms(records, truth_of(result.stdout), ranks=2)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


TWO_RANKS_PRINTING = """
import os, sys, time
rank = int(os.environ["RANK"])
time.sleep(1.5 * rank)  # rank 0's unfinished last line has waited its longest when rank 1 prints
for i in range(20):
    sys.stdout.write(f"RANK {rank} LINE {i:03d} " + "x" * 80)  # as print writes: its text, then its newline
    sys.stdout.flush()
    time.sleep(0.03)
    sys.stdout.write("\\n")
    sys.stdout.flush()
sys.stdout.write(f"RANK {rank} DONE")  # the last line, never ended
"""


@pytest.mark.slow
def test_two_ranks_output_passes_through_headless_in_whole_lines(tmp_path):
    """Each rank's lines reach the terminal whole, never run into the other rank's: a rank's print is two
    writes, and the output read between them used to put the other rank's line after this one's text. A line
    that never ends (rank 0's last, as a progress bar's) goes out after a second, and is ended when another
    rank's output follows it."""
    script = tmp_path / "printing.py"
    script.write_text(TWO_RANKS_PRINTING)
    result = optwatch("run", "--headless", "--no-record", "--nproc-per-node", "2", str(script))
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line]
    expected = [f"RANK {rank} LINE {i:03d} " + "x" * 80 for rank in (0, 1) for i in range(20)]
    assert sorted(lines) == sorted([*expected, "RANK 0 DONE", "RANK 1 DONE"])


def test_srun_tasks_are_one_job_and_the_script_sees_no_rank_variables(tmp_path):
    """Two tasks as srun starts them (SLURM_* and the MASTER_ADDR/PORT a typical script's setup exports,
    no RANK/WORLD_SIZE), each running `optwatch run --record`: one job, both ranks in rank 0's record, the
    script's environment as srun gave it, and the whole model's norms."""
    record = tmp_path / "r.jsonl"
    base = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    base.update(SLURM_JOB_ID="4242", SLURM_NTASKS="2", SLURM_NODEID="0", MASTER_ADDR="127.0.0.1")
    base["MASTER_PORT"] = str(free_port())
    command = [sys.executable, "-m", "optwatch", "run", "--record", str(record), "--grad-every", "2",
               str(SCRIPTS / "fsdp_mlp.py"), "--steps", "6"]  # fmt: skip
    tasks = [
        subprocess.Popen(
            command,
            cwd=ROOT,
            env={**base, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [task.communicate(timeout=180) for task in tasks]
    for task, (_, err) in zip(tasks, outputs):
        assert task.returncode == 0, err[-3000:]
    truth = truth_of(outputs[0][0])
    assert truth[0]["launcher_vars"] == []
    records = read_jsonl(record)
    hellos = [r for r in records if r["kind"] == "hello"]
    assert {h["rank"] for h in hellos} == {0, 1} and {h["world_size"] for h in hellos} == {2}
    assert len({h["run_id"] for h in hellos}) == 1
    # Odd steps have no per-layer statistics (--grad-every 2): their global norm is the probe's own, in parts.
    assert_the_scripts_norms(records, truth, ranks=2, grad_every=2)


def test_a_launch_refuses_nproc_per_node_rather_than_ignore_it(tmp_path):
    script = tmp_path / "nothing.py"
    script.write_text("print('ran')\n")
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}
    result = optwatch("run", "--nproc-per-node", "2", str(script), env=env)
    assert result.returncode == 2 and "ran" not in result.stdout
    assert "--nproc-per-node: this is already rank 0 of 2 started by torchrun" in result.stderr


def test_each_launcher_is_read_from_its_own_variables():
    torchrun = launchers.detect(
        {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "GROUP_RANK": "1", "MASTER_PORT": "29500"}
    )
    assert torchrun is not None and (torchrun.launcher, torchrun.rank, torchrun.world_size) == ("torchrun", 3, 4)
    assert torchrun.local_rank == 1 and not torchrun.on_first_node
    slurm = {"SLURM_JOB_ID": "7", "SLURM_PROCID": "2", "SLURM_NTASKS": "4", "SLURM_LOCALID": "0", "SLURM_NODEID": "1"}
    srun = launchers.detect(slurm)
    assert srun is not None and (srun.launcher, srun.rank, srun.world_size, srun.node) == ("srun", 2, 4, 1)
    # Tasks of one node agree on the job (and so on the run directory); another step of the job does not.
    assert launchers.detect({**slurm, "SLURM_PROCID": "3"}).job_key == srun.job_key
    assert launchers.detect({**slurm, "SLURM_STEP_ID": "1"}).job_key != srun.job_key
    assert launchers.detect({**slurm, "SLURM_NTASKS": "1"}) is None  # `srun --pty bash`: a plain run
    assert launchers.detect({**slurm, "RANK": "2", "WORLD_SIZE": "4"}) is None  # the script's own mapping
    assert launchers.detect({}) is None


def part(rank: int, step: int, kind: str, **fields) -> dict:
    return protocol.make_record(kind, rank, step=step, _sharded=True, **fields)


def test_the_hub_adds_the_ranks_parts_by_hand():
    """Parts as a probe sends them: a sharded weight (parts 3 and 4: whole 5) and a bias replicated on both
    ranks (each sends sqrt(1/2) of its norm 2). A step one rank did not measure has no norm, not a part."""
    combiner = ShardedNorms(world_size=2)
    r = math.sqrt(0.5) * 2.0
    held = combiner.take(
        [
            part(0, 0, "layers", names=["w", "b"], numel=[4, 1], grad_norm=[3.0, r], _chunk=[0, 1],
                 _weight=[6.0, r], _update=[0.3, 0.0], _nonzero=[2.0, 0.5]),
            part(0, 0, "step", grad_norm=math.sqrt(9 + r * r)),
            protocol.make_record("system", 0, step=0),
        ],
        now=0.0,
    )  # fmt: skip
    assert held == [], "rank 0's records wait for rank 1's parts, in order"
    out = combiner.take(
        [
            part(1, 0, "layers", names=["w", "b"], numel=[4, 1], grad_norm=[4.0, r], _chunk=[0, 1],
                 _weight=[8.0, r], _update=[0.4, 0.0], _nonzero=[2.0, 0.5]),
            part(1, 0, "step", grad_norm=math.sqrt(16 + r * r)),
            part(1, 1, "step", grad_norm=1.0),
        ],
        now=0.1,
    )  # fmt: skip
    steps = [o for o in out if o["kind"] == "step" and o["step"] == 0]
    assert [s["grad_norm"] for s in steps] == pytest.approx([math.sqrt(25 + 4)] * 2)
    layers = [o for o in out if o["kind"] == "layers"]
    for record in layers:
        assert record["grad_norm"] == pytest.approx([5.0, 2.0])
        assert record["_weight"] == pytest.approx([10.0, 2.0]) and record["_update"] == pytest.approx([0.5, 0.0])
        assert record["_nonzero"] == pytest.approx([4.0, 1.0]) and "_sharded" not in record
    assert [o["kind"] for o in out if o["rank"] == 0] == ["layers", "step", "system"], "rank 0's order kept"
    # Rank 0 reached step 1 without measuring it (not a detail step there): rank 1's part is no norm.
    late = combiner.take([protocol.make_record("step", 0, step=1, grad_norm=None)], now=0.2)
    assert [o["grad_norm"] for o in late if o["rank"] == 1] == [None]


def test_rank_0_alone_starts_the_viewer_and_what_cannot_be_honoured_is_said(capsys):
    def rank(number: int, node: int = 0) -> launchers.Launch:
        return launchers.Launch("torchrun", number, 4, number % 2, node, "key")

    assert launchers.viewer_arguments(rank(0), True, "r.jsonl", 2.0, environ={}) == [
        "--headless", "--summary-every=2.0", f"--record={os.path.abspath('r.jsonl')}",
    ]  # fmt: skip
    assert launchers.viewer_arguments(rank(1), True, "r.jsonl", 2.0, environ={}) is None
    assert capsys.readouterr().err == ""
    # No dashboard under a launcher: rank 0 says how to watch instead.
    assert launchers.viewer_arguments(rank(0), False, None, 5.0, environ={}) is None
    assert "no dashboard: watch them from another terminal with `optwatch attach`" in capsys.readouterr().err
    # A node without rank 0 and without OPTWATCH_HUB: its first rank says its records have nowhere to go.
    assert launchers.viewer_arguments(rank(2, node=1), True, None, 5.0, environ={}) is None
    assert "this node's ranks cannot reach the job's hub" in capsys.readouterr().err
    assert launchers.viewer_arguments(rank(2, node=1), True, None, 5.0, environ={"OPTWATCH_HUB": "n0:7000"}) is None
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("ranks", [None, "1"], ids=["one process", "a rank of --nproc-per-node"])
def test_the_script_imports_from_its_pythonpath_as_under_python(tmp_path, ranks):
    """A rank (`python -m optwatch run` under torchrun) lost the first PYTHONPATH entry: the script's sys.path[0]
    was replaced where the start directory had already been taken out, and `import mylib` failed."""
    (tmp_path / "libs").mkdir()
    (tmp_path / "libs" / "mylib.py").write_text("ANSWER = 42\n")
    script = tmp_path / "uses_mylib.py"
    script.write_text("import sys, mylib\nprint('answer', mylib.ANSWER, sys.path[0])\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "libs"), os.environ.get("PYTHONPATH", "")])}
    plain = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60)
    launch = ("--nproc-per-node", ranks) if ranks else ()
    watched = optwatch("run", "--headless", "--no-record", *launch, str(script), env=env)
    assert plain.returncode == 0 and watched.returncode == 0, watched.stderr[-2000:]
    assert f"answer 42 {tmp_path}" in watched.stdout and plain.stdout.strip() == f"answer 42 {tmp_path}"
