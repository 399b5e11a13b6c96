"""`optwatch run --headless`: the CLI end to end on real training runs."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import (
    EXAMPLES,
    ROOT,
    SCRIPTS,
    live_jobs,
    optwatch,
    optwatch_share,
    read_jsonl,
    steps_for_now,
    steps_of,
    wait_for,
    wait_for_steps,
)


def test_cifar_example_records_40_falling_finite_steps(tmp_path):
    record = tmp_path / "r.jsonl"
    result = optwatch(
        "run", "--headless", "--record", str(record), str(EXAMPLES / "cifar.py"), "--steps", "40", "--batch-size", "64"
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = read_jsonl(record)
    steps = steps_of(records)
    assert [s["step"] for s in steps] == list(range(40))
    for step in steps:
        assert math.isfinite(step["loss"]) and math.isfinite(step["grad_norm"])
        assert step["rank"] == 0 and step["lr"] == 0.05 and step["step_time_s"] > 0
        assert step["samples_per_s"] > 0 and isinstance(step["time"], float)
    first, last = steps[:10], steps[-10:]
    assert sum(s["loss"] for s in last) < 0.97 * sum(s["loss"] for s in first)
    # The script's own output passes through unchanged; optwatch's summary goes to stderr.
    assert "cifar: 40 steps in" in result.stdout
    assert "optwatch: final step 39" in result.stderr
    # What optwatch cost the run, per step and in the summary: part of each step, never all of it.
    assert all(0 < s["optwatch_s"] < s["step_time_s"] for s in steps)
    final = next(line for line in result.stderr.splitlines() if line.startswith("optwatch: final step 39"))
    assert f"optwatch {100 * optwatch_share(steps_for_now(steps)):.1f}%" in final
    # Beside it, what the hub (a process of its own, on the same cores) used between two of its reports.
    hubs = [r for r in records if r["kind"] == "hub"]
    shares = [
        f"hub {100 * (b['cpu_s'] - a['cpu_s']) / (b['time'] - a['time']):.0f}% of a core"
        for a, b in zip(hubs, hubs[1:])
    ]
    assert any(share in final for share in shares), (final, shares)
    assert stat.S_IMODE(os.stat(record).st_mode) == 0o600


def test_plain_script_losses_equal_the_scripts_own(tmp_path):
    record = tmp_path / "r.jsonl"
    result = optwatch("run", "--headless", "--record", str(record), str(SCRIPTS / "plain_train.py"), "--steps", "25")
    assert result.returncode == 0, result.stderr
    printed = [float(line.split()[-1]) for line in result.stdout.splitlines() if line.startswith("step ")]
    recorded = [s["loss"] for s in steps_of(read_jsonl(record))]
    assert len(printed) == 25
    assert recorded == printed  # bit-exact: the probe reads the very tensor the script printed


def test_nested_tensor_batches_train_and_count_their_samples(tmp_path):
    """Variable-length samples batched with torch.nested have no ``.shape``: reading one crashed the
    training inside the DataLoader's ``next()``."""
    record = tmp_path / "r.jsonl"
    result = optwatch("run", "--headless", "--record", str(record), str(SCRIPTS / "nested_batches.py"))
    assert result.returncode == 0, result.stderr
    printed = [float(line.split("loss=")[1]) for line in result.stdout.splitlines() if line.startswith("step=")]
    steps = steps_of(read_jsonl(record))
    assert len(printed) == 8 and [s["loss"] for s in steps] == pytest.approx(printed, abs=1e-6)
    assert [s["samples"] for s in steps] == [4] * 8


def test_exit_code_and_output_of_the_script_are_kept(tmp_path):
    script = tmp_path / "fails.py"
    script.write_text("import sys\nprint('about to fail')\nprint('oops', file=sys.stderr)\nsys.exit(3)\n")
    result = optwatch("run", "--headless", str(script))
    assert result.returncode == 3
    assert result.stdout == "about to fail\n"
    assert "oops" in result.stderr
    last = result.stderr.splitlines()[-1]
    assert last == "optwatch: the script exited with 3 before its first step (see its output above)"


@pytest.mark.parametrize("slow_exit", [False, True], ids=["exits at once", "exits 1.5 s after its traceback"])
def test_a_script_that_fails_ends_on_its_error_not_on_speed_up_tips(tmp_path, slow_exit):
    """A run that raised after six steps: its traceback, then the final figures and verdict with no tips under
    it (they read as the advice, where the error is what to change), and a last line that says it failed.
    Its process may take a while to exit after the traceback (atexit handlers, a loaded machine): a summary
    that fell due meanwhile came between the error and the final figures."""
    script = tmp_path / "raises.py"
    script.write_text(
        ("import atexit, time\natexit.register(time.sleep, 1.5)\n" if slow_exit else "")
        + "import torch\nmodel = torch.nn.Linear(4, 1)\nopt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "for step in range(10):\n"
        "    opt.zero_grad(); model(torch.randn(8, 4)).pow(2).mean().backward(); opt.step()\n"
        "    if step == 5:\n        raise RuntimeError('the batch was bad')\n"
    )
    result = optwatch("run", "--headless", "--no-record", "--summary-every", "1", str(script))
    assert result.returncode == 1, result.stderr[-2000:]
    lines = result.stderr.splitlines()
    error = lines.index("RuntimeError: the batch was bad")
    assert lines[error + 1].startswith("optwatch: final step 5 (6 steps) | loss ")
    assert lines[error + 2].startswith("optwatch: final verdict ")
    assert lines[error + 3 :] == ["optwatch: the script exited with 1 after step 5 (see its output above)"]


def test_the_scripts_output_passes_through_byte_for_byte(tmp_path):
    """A progress line redrawn with \r, a last write with no newline: stdout as plain `python` gives it (a
    newline was added at the end, and a line was held until its newline came, as for several ranks)."""
    script = tmp_path / "progress.py"
    script.write_text(
        "import sys, time\nfor i in range(3):\n    sys.stdout.write(f'\\r{i}/3'); sys.stdout.flush(); time.sleep(0.3)\n"
        "sys.stdout.write('\\ndone')\n"
    )
    plain = subprocess.run([sys.executable, str(script)], capture_output=True, timeout=60)
    record = tmp_path / "r.jsonl"
    watched = subprocess.run([sys.executable, "-m", "optwatch", "run", "--headless", "--record", str(record),
                              str(script)], capture_output=True, timeout=120, cwd=ROOT)  # fmt: skip
    assert watched.returncode == 0, watched.stderr
    assert watched.stdout == plain.stdout == b"\r0/3\r1/3\r2/3\ndone"
    # The Log tab and the record: the line as the terminal left it, not every drawing of it run together.
    # ("done", with no newline, is a line once the run has ended; it may come after the viewer left.)
    assert [r["line"] for r in read_jsonl(record) if r["kind"] == "log"][:1] == ["2/3"]


def test_optwatchs_lines_start_lines_of_their_own_beside_a_progress_bar(tmp_path):
    """tqdm redraws its bar with carriage returns on stderr and ends the line only when done: optwatch's summary
    lines ran into it (`22/30 [00:00<00:00]optwatch: step 15 | ...`). The script's own bytes stay as they are."""
    script = tmp_path / "bar.py"
    script.write_text(
        "import sys, time, torch\nmodel = torch.nn.Linear(4, 1)\nopt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "for step in range(40):\n"
        "    opt.zero_grad(); model(torch.randn(8, 4)).pow(2).mean().backward(); opt.step()\n"
        "    sys.stderr.write(f'\\r{step + 1}/40 |{\"#\" * (step // 4)}'); sys.stderr.flush(); time.sleep(0.05)\n"
        "sys.stderr.write('\\n')\n"
    )
    plain = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    watched = optwatch("run", "--headless", "--summary-every", "0.5", str(script))
    assert watched.returncode == 0, watched.stderr
    own = [line for line in watched.stderr.split("\n") if "optwatch:" in line]
    assert len(own) >= 3 and all(line.startswith("optwatch:") for line in own), own
    drawn = re.compile(r"\d+/40 \|#*")  # (read as text, each carriage return is a newline)
    assert drawn.findall(watched.stderr) == drawn.findall(plain.stderr) and len(drawn.findall(plain.stderr)) == 40


def test_the_scripts_arguments_reach_it_as_typed_even_when_they_look_like_optwatchs(tmp_path):
    """Everything after SCRIPT is the script's: prefixes of optwatch's own flags (`--n` of `--no-record` and
    `--nproc-per-node`, `--grad`, `--h`) and its exact flags alike. argparse's abbreviations used to make
    `--n 72` an ambiguous optwatch option: a usage error, and no training."""
    script = tmp_path / "argv.py"
    script.write_text("import json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    typed = ["--n", "72", "--no", "1", "--grad", "2", "--p", "--h", "--head", "--budget", "3", "-h", "--", "x"]
    for how in (("run", "--headless"), ("run", "--headless", "--no-record")):
        result = optwatch(*how, str(script), *typed)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == typed
    for typed in (["--", "--record", "x"], ["--"], ["a", "--", "b"]):  # (argparse dropped a "--" after SCRIPT)
        result = optwatch("run", "--headless", str(script), *typed)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == typed
    mistyped = optwatch("run", "--head", str(script))  # optwatch's own flags are spelled out in full
    assert mistyped.returncode == 2 and "unrecognized arguments: --head" in mistyped.stderr


def test_log_lines_are_recorded(tmp_path):
    record = tmp_path / "r.jsonl"
    result = optwatch("run", "--headless", "--record", str(record), str(SCRIPTS / "plain_train.py"), "--steps", "3")
    assert result.returncode == 0
    logs = [r for r in read_jsonl(record) if r["kind"] == "log"]
    assert [r["line"] for r in logs if r["stream"] == "stdout"][:1] == [result.stdout.splitlines()[0]]


def test_bad_input_gets_a_clear_message(tmp_path):
    missing = optwatch("run", "--headless", "no/such/script.py")
    assert missing.returncode == 2 and "no such script: no/such/script.py" in missing.stderr
    directory = optwatch("run", str(SCRIPTS))
    assert directory.returncode == 2 and directory.stderr == f"optwatch: {SCRIPTS} is a directory, not a script\n"
    import zipapp

    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "__main__.py").write_text("print('hello')\n")
    zipapp.create_archive(tmp_path / "app", tmp_path / "app.pyz")
    zipped = optwatch("run", "--headless", str(tmp_path / "app.pyz"))  # (a traceback of optwatch's own, before)
    assert zipped.returncode == 2 and zipped.stderr.startswith(f"optwatch: {tmp_path / 'app.pyz'} is a zip application")
    none = optwatch("run")
    assert none.returncode == 2
    assert (
        none.stderr == "optwatch run: error: the following arguments are required: SCRIPT (see optwatch run --help)\n"
    )
    unknown = optwatch("run", "--headless", "--bogus", "x.py")
    assert unknown.returncode == 2
    assert unknown.stderr == "optwatch run: error: unrecognized arguments: --bogus (see optwatch run --help)\n"
    first = optwatch("--bogus", "x.py")  # options go after the command
    assert first.returncode == 2 and first.stderr == (
        "optwatch: unknown option --bogus: options go after the command, e.g. optwatch run --headless SCRIPT "
        "(`optwatch --help` lists the commands)\n"
    )
    misplaced = optwatch("--headless", "x.py", "--lr", "1")
    assert misplaced.returncode == 2 and misplaced.stderr == (
        "optwatch: --headless is an option of `optwatch run`, and goes after it: optwatch run --headless x.py --lr 1\n"
    )
    for interpreter in ("python", sys.executable):
        typed = optwatch("run", interpreter, "train.py", "--lr", "0.1")
        assert typed.returncode == 2
        assert "takes the script, not the interpreter: optwatch run train.py --lr 0.1" in typed.stderr
    bad_flag = optwatch("run", "--summary-every", "banana", str(SCRIPTS / "plain_train.py"))
    assert bad_flag.returncode == 2 and "expected a number, got 'banana'" in bad_flag.stderr
    unwritable = optwatch("run", "--headless", "--record", "/no/such/dir/r.jsonl", str(SCRIPTS / "plain_train.py"))
    assert unwritable.returncode == 2 and "cannot record to /no/such/dir/r.jsonl" in unwritable.stderr
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text("this is not json\nnor is this\n")
    replay = optwatch("replay", "--headless", str(garbage))
    assert replay.returncode == 2 and f"{garbage}:1" in replay.stderr
    damaged = tmp_path / "damaged.jsonl"  # a record whose second line is not: what it holds is replayed, and said
    damaged.write_text('{"v": 1, "kind": "step", "rank": 0, "step": 0}\nthis is not json\n')
    replay = optwatch("replay", "--headless", str(damaged))
    assert replay.returncode == 0 and "damaged from line 2 on" in replay.stderr, replay.stderr


@pytest.mark.parametrize("steps", [400, 16])
def test_steps_before_a_long_evaluation_are_shown_while_it_runs(tmp_path, steps):
    """Steps between detail steps are recorded at a later step boundary: a loop that went on to evaluate for
    8 s without a DataLoader showed a step 122 steps old the whole time, and a loop that ended its training
    early showed none of its last steps until it exited. They are recorded by the training thread's next
    module call once no boundary came for 2 s. The first steps' records (every one a detail step: 16 here)
    waited for the next flush too, through the whole evaluation, while the header said "no step since step
    15": the sampler thread hands them over itself."""
    import time

    record = tmp_path / "r.jsonl"
    job = subprocess.Popen(
        [sys.executable, "-m", "optwatch", "run", "--headless", "--record", str(record),
         str(SCRIPTS / "pause_after.py"), "--steps", str(steps), "--evaluate-s", "8"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        for line in job.stdout:
            if line.startswith("EVALUATING"):
                break
        time.sleep(4.0)  # the idle check (every sample, 2 s after the last boundary) and the record's writer
        assert job.poll() is None, "the evaluation ended before the check"
        seen = max(s["step"] for s in steps_of(read_jsonl(record)))
    finally:
        job.kill()
        job.communicate()
    assert seen == steps - 1


def test_a_training_killed_by_sigkill_is_recorded_and_said_as_killed(tmp_path):
    """The OOM killer's way: no word from the training, so only its parent can tell how it ended."""
    script = tmp_path / "killed.py"
    script.write_text(
        "import os, signal, torch\nmodel = torch.nn.Linear(4, 1)\nopt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "for step in range(5):\n    opt.zero_grad(); model(torch.randn(8, 4)).pow(2).mean().backward(); opt.step()\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    result = optwatch("run", "--headless", str(script))
    assert result.returncode == 137, result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith("optwatch: the run was killed by SIGKILL") and "exit 137 (out of memory?" in last
    [summary] = [json.loads(path.read_text()) for path in Path(os.environ["OPTWATCH_RUNS_DIR"]).glob("*/run.json")]
    assert summary["status"] == "killed (SIGKILL)" and summary["exit_code"] == 137 and summary["signal"] == "SIGKILL"
    listed = optwatch("runs")
    assert "killed (SIGKILL)" in listed.stdout


@pytest.mark.parametrize("how", ["segfault", "sigkill"])
def test_what_a_training_wrote_just_before_it_died_hard_is_shown_and_recorded(tmp_path, how):
    """A segfault's traceback, the lines before the OOM killer's SIGKILL: what the script wrote last is what
    its user needs most, and the training process is gone before its own drain can take it."""
    script = SCRIPTS / "dies_hard.py"
    plain = subprocess.run([sys.executable, str(script), "--how", how], capture_output=True, timeout=120)
    record = tmp_path / "r.jsonl"
    watched = optwatch("run", "--headless", "--record", str(record), str(script), "--how", how)
    assert watched.returncode == 128 - plain.returncode == (139 if how == "segfault" else 137)
    assert watched.stdout == plain.stdout.decode()  # every line, the 2,000-line burst and the last words
    assert watched.stdout.endswith("last words on stdout\n")
    assert "last words on stderr" in watched.stderr
    if how == "segfault":
        assert "Fatal Python error: Segmentation fault" in plain.stderr.decode()
        assert "Fatal Python error: Segmentation fault" in watched.stderr
        assert f'File "{script}", line' in watched.stderr  # faulthandler's traceback, at the script's line
    # The dashboard's Log tab and the record: the same lines, through the hub.
    logged = [r["line"] for r in read_jsonl(record) if r["kind"] == "log"]
    assert "last words on stdout" in logged and "last words on stderr" in logged


def test_the_output_pipes_optwatch_run_keeps_are_not_the_scripts_to_see(tmp_path):
    """The pipes under the script's output come from `optwatch run`: the script's environment and the
    descriptors its own children inherit are python's, nothing more."""
    script = tmp_path / "looks.py"
    script.write_text(
        "import os, stat\n"
        "def inheritable_pipe(fd):\n"
        "    try:\n"
        "        return os.get_inheritable(fd) and stat.S_ISFIFO(os.fstat(fd).st_mode)\n"
        "    except OSError:  # (the listing's own descriptor, closed by now)\n"
        "        return False\n"
        "print(sorted(name for name in os.environ if name.startswith('OPTWATCH_OUTPUT')))\n"
        "fds = map(int, os.listdir('/proc/self/fd'))\n"
        "print('inheritable pipes', [fd for fd in fds if fd > 2 and inheritable_pipe(fd)])\n"
    )
    plain = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    watched = optwatch("run", "--headless", str(script))
    assert watched.returncode == 0, watched.stderr
    assert watched.stdout == plain.stdout == "[]\ninheritable pipes []\n"


def test_a_ctrl_c_stops_the_run_and_the_last_line_says_at_which_step(tmp_path):
    job = subprocess.Popen(
        [sys.executable, "-m", "optwatch", "run", "--headless", str(SCRIPTS / "plain_train.py"), "--steps", "100000",
         "--sleep", "0.02"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        [listed] = wait_for(live_jobs)
        wait_for_steps(listed, 5)
        job.send_signal(signal.SIGINT)
    finally:
        out, err = job.communicate(timeout=60)
    assert job.returncode == 130, err[-2000:]
    said = re.fullmatch(r"optwatch: the run was stopped at step (\d+), exit 130", err.splitlines()[-1])
    assert said, err[-2000:]
    last_printed = int(out.splitlines()[-1].split()[1])  # (the interrupt may come before its step is sent)
    assert last_printed - 1 <= int(said[1]) <= last_printed


def test_a_ctrl_c_reaches_the_programs_the_script_runs_as_a_terminals_does(tmp_path):
    """A terminal's Ctrl-C goes to the whole foreground process group: under python, `os.system("sleep 30")`
    ends at once and the script sees the interrupt. Under optwatch the training runs in a session of its own,
    and the sleep ran its 30 s."""
    script = tmp_path / "shells_out.py"
    script.write_text(
        "import os, sys, time\nprint('started', flush=True)\nstarted = time.monotonic()\n"
        "status = os.system('sleep 30')\n"
        "print('command ended after', round(time.monotonic() - started), 's', flush=True)\n"
    )
    job = subprocess.Popen(
        [sys.executable, "-m", "optwatch", "run", "--headless", "--no-record", str(script)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert job.stdout.readline() == "started\n"
        time.sleep(1.0)  # (the sleep is under way)
        job.send_signal(signal.SIGINT)
        out, err = job.communicate(timeout=60)
    finally:
        job.kill()
    ended = re.search(r"command ended after (\d+) s", out)
    assert ended and int(ended[1]) < 10, (out, err[-2000:])


@pytest.mark.parametrize(
    "sig, launch",
    [(signal.SIGUSR1, ()), (signal.SIGTERM, ()), (signal.SIGUSR1, ("--nproc-per-node", "1"))],
    ids=["SIGUSR1", "SIGTERM", "SIGUSR1 to a torchrun launch"],
)
def test_a_signal_to_optwatch_run_reaches_the_scripts_own_handler(tmp_path, sig, launch):
    """SLURM's `--signal` (USR1, Lightning's requeue) sent to `optwatch run` killed it alone: the training, in a
    session of its own, ran on unwatched and its handler never saved. It gets the signal, as under python;
    under `--nproc-per-node`, every rank does (torchrun's agent would die of it)."""
    saved = tmp_path / "saved"
    job = subprocess.Popen(
        [sys.executable, "-m", "optwatch", "run", "--headless", *launch, str(SCRIPTS / "signal_handlers.py"),
         "--saved", str(saved)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        [listed] = wait_for(live_jobs)
        wait_for_steps(listed, 3)
        job.send_signal(sig)
    finally:
        out, err = job.communicate(timeout=60)
    assert job.returncode == 0, err[-2000:]
    assert saved.read_text() == sig.name and f"saved on {sig.name}" in out
    assert not live_jobs()


def test_without_a_terminal_the_dashboard_gives_way_to_headless(tmp_path):
    """`nohup optwatch train.py > log &`, `sbatch --wrap`: with no terminal the dashboard waited for keys for
    ever (a 0.1 s script still running at 40 s), with the script's output in no log."""
    result = optwatch("run", str(SCRIPTS / "short.py"), "--steps", "3")  # (stdin, stdout: no terminals)
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.match(
        r"optwatch: no terminal for the dashboard \((stdin|stdout) is not one\): headless instead", result.stderr
    )
    assert result.stdout.count("TRUTH ") == 3  # the script's output, passed through
    assert "optwatch: final step 2" in result.stderr


def test_a_headless_runs_script_reads_its_stdin_as_under_python(tmp_path):
    """stdin was /dev/null: `echo '{...}' | optwatch run --headless` failed in json.load, and a breakpoint()'s
    pdb quit at once (BdbQuit). Headless, the script has stdin; the dashboard keeps the keys."""
    script = tmp_path / "reads_stdin.py"
    script.write_text(
        "import json, sys, torch\nsettings = json.load(sys.stdin)\nmodel = torch.nn.Linear(4, 1)\n"
        "opt = torch.optim.SGD(model.parameters(), lr=settings['lr'])\nfor step in range(settings['steps']):\n"
        "    opt.zero_grad(); model(torch.randn(8, 4)).pow(2).mean().backward(); opt.step()\n"
        "print('trained', settings['steps'], 'steps')\n"
    )
    result = optwatch("run", "--headless", str(script), input='{"lr": 0.1, "steps": 4}')
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "trained 4 steps" and "optwatch: final step 3 (4 steps) " in result.stderr


def test_output_a_slow_reader_could_not_take_is_said_to_be_missing(tmp_path):
    """`optwatch run --headless ... | slow reader`: the log files rotate at 16 MiB and keep two, so a reader
    that fell behind lost whole files of output without a word (8.5 of 30 MB shown). It reads the rotated
    file it had not read yet, and says how much went unshown when more was gone."""
    import re as regex

    done = tmp_path / "done"
    job = subprocess.Popen(
        [sys.executable, "-m", "optwatch", "run", "--headless", str(SCRIPTS / "floods_output.py"), "--done", str(done)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_for(done.exists, timeout_s=120)  # nothing read meanwhile: the reader is as far behind as it gets
        out, err = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, err[-2000:]
    numbers = [int(line[:8]) for line in out.splitlines()]
    assert numbers == sorted(numbers) and numbers[0] == 0 and numbers[-1] == 59_999  # in order, the end too
    said = regex.search(rb"optwatch: about (\d+) MiB of the script's stdout went unshown here", err)
    assert said, err[-2000:]
    missing_mib = (60_000 - len(numbers)) * 1000 / 2**20
    assert abs(missing_mib - int(said[1])) <= 1, (missing_mib, said[0])


def test_a_module_in_the_directory_it_is_started_from_does_not_stand_in_for_the_standard_librarys(tmp_path):
    """`python -m optwatch.hub` put the start directory on sys.path: an `hmac.py` there (a user's own) made
    "cannot start the job's hub", where `python script.py`, which puts only the script's directory there, ran."""
    (tmp_path / "hmac.py").write_text("raise ImportError('a local hmac.py, not the standard library one')\n")
    result = subprocess.run(
        [sys.executable, "-m", "optwatch", "run", "--headless", str(SCRIPTS / "short.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("TRUTH ") == 3


def test_a_second_ctrl_c_reaches_the_script_as_under_python(tmp_path):
    """The second Ctrl-C became a SIGTERM: a script that saves an emergency checkpoint on its second SIGINT was
    killed without one (exit 143). Both reach it; a third insists."""
    saved = tmp_path / "saved"
    job = subprocess.Popen(
        [sys.executable, "-m", "optwatch", "run", "--headless", str(SCRIPTS / "two_interrupts.py"), "--saved",
         str(saved)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        [listed] = wait_for(live_jobs)
        wait_for_steps(listed, 3)
        job.send_signal(signal.SIGINT)
        time.sleep(1.0)
        job.send_signal(signal.SIGINT)
    finally:
        out, err = job.communicate(timeout=60)
    assert job.returncode == 0, err[-2000:]
    assert saved.read_text() == "second" and "interrupt 2" in out


def test_the_scripts_main_module_starts_with_the_names_pythons_does(tmp_path):
    """`print(__annotations__)` at a script's top level failed with a NameError under optwatch: its __main__
    lacked a name the interpreter's has from the start."""
    script = tmp_path / "names.py"
    script.write_text(
        "import json, subprocess, sys\nprint(json.dumps(sorted(dir())))\nprint(__annotations__)\n"
        "print(getattr(sys.flags, 'safe_path', False), subprocess._args_from_interpreter_flags())\n"
    )  # (and no interpreter flag of optwatch's own: -P was one, which the script's subprocesses inherited)
    plain = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    watched = optwatch("run", "--headless", str(script))
    assert watched.returncode == plain.returncode == 0, watched.stderr[-2000:]
    assert watched.stdout == plain.stdout


def test_a_replay_without_a_terminal_prints_its_summary(tmp_path):
    """`optwatch replay RUN > file`: the dashboard drew its escape codes into the file and waited for keys."""
    record = tmp_path / "r.jsonl"
    assert (
        optwatch("run", "--headless", "--record", str(record), str(SCRIPTS / "short.py"), "--steps", "3").returncode
        == 0
    )
    replayed = optwatch("replay", str(record), timeout=60)
    assert replayed.returncode == 0, replayed.stderr[-2000:]
    assert re.fullmatch(
        r"optwatch: no terminal for the dashboard \((stdin|stdout) is not one\): headless instead\n", replayed.stderr
    )
    assert replayed.stdout.startswith("optwatch: final step 2 (3 steps) | loss ")


@pytest.mark.parametrize("launch", [(), ("--nproc-per-node", "1")], ids=["one process", "torchrun"])
def test_a_module_runs_as_python_m_runs_it(tmp_path, launch):
    """`optwatch run -m pkg.train` (torchtitan's `torchrun -m torchtitan.train`): "unrecognized arguments: -m".
    It runs as `python -m pkg.train` does: argv, __name__, __spec__, the start directory first on sys.path."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "train.py").write_text(
        "import json, sys, torch\nfrom pkg import __name__ as parent\n"
        "print('SEES', json.dumps([sys.argv[0].endswith('pkg/train.py'), sys.argv[1:], __name__, __spec__.name]))\n"
        "torch.manual_seed(0)\nmodel = torch.nn.Linear(4, 1)\nopt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "for step in range(5):\n    opt.zero_grad(); loss = model(torch.randn(8, 4)).pow(2).mean(); loss.backward()\n"
        "    opt.step(); print('TRUTH ' + json.dumps({'step': step, 'loss': loss.item()}))\n"
    )
    plain = subprocess.run(
        [sys.executable, "-m", "pkg.train", "--lr", "1"], cwd=tmp_path, capture_output=True, text=True
    )
    record = tmp_path / "r.jsonl"
    watched = subprocess.run(
        [sys.executable, "-m", "optwatch", "run", "--headless", "--record", str(record), *launch, "-m", "pkg.train",
         "--lr", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert plain.returncode == 0 and watched.returncode == 0, watched.stderr[-2000:]
    assert watched.stdout == plain.stdout  # (seeded: the same losses too)
    losses = {s["step"]: s["loss"] for s in steps_of(read_jsonl(record))}
    printed = [json.loads(line[6:]) for line in plain.stdout.splitlines() if line.startswith("TRUTH ")]
    truth = {seen["step"]: seen["loss"] for seen in printed}
    assert losses == truth


def test_a_run_whose_loss_ended_nan_gets_no_speed_up_tips(tmp_path):
    """Its loss NaN from step 10 on: the final verdict went on to offer a GPU and bf16 for it, and so did each
    verdict said while it ran (lr=30: NaN for 85 of 120 steps, a GPU and amp=on offered meanwhile)."""
    script = tmp_path / "nan_from_10.py"
    script.write_text(
        "import time, torch\ntorch.manual_seed(0)\nmodel = torch.nn.Linear(4, 1)\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.1)\nfor step in range(500):\n"
        "    opt.zero_grad(); loss = model(torch.randn(8, 4)).pow(2).mean()\n"
        "    (loss * float('nan') if step >= 10 else loss).backward(); opt.step(); time.sleep(0.02)\n"
    )
    result = optwatch("run", "--headless", "--no-record", str(script))
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stderr.splitlines()
    assert any(line.startswith("optwatch: final step 499 (500 steps) | loss NaN") for line in lines), lines[-5:]
    assert any(line.startswith("optwatch: verdict ") for line in lines), lines  # (one said while it ran)
    assert lines[-1].startswith("optwatch: final verdict ") and not any("try:" in line for line in lines), lines


def test_the_clipped_share_after_nan_norms_says_it_is_of_the_finite_ones(tmp_path):
    """Norms NaN from step 5 of 12: the final line said "grad NaN (clipped at 1 in 100% of the last 5 steps)",
    read as steps 7-11 (all NaN, which no clip cuts), when the 5 were steps 0-4. By the script's own print of
    what clip_grad_norm_ returned: the finite norms, those over the clip, and the steps they are among."""
    script = tmp_path / "clipped_then_nan.py"
    script.write_text(
        "import torch\ntorch.manual_seed(0)\nmodel = torch.nn.Linear(4, 1)\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.01)\nfor step in range(12):\n"
        "    opt.zero_grad(); loss = model(10 * torch.randn(8, 4)).pow(2).mean()\n"
        "    (loss * float('nan') if step >= 5 else loss).backward()\n"
        "    print('NORM', float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))); opt.step()\n"
    )
    result = optwatch("run", "--headless", "--no-record", str(script))
    assert result.returncode == 0, result.stderr[-2000:]
    norms = [float(line.split()[1]) for line in result.stdout.splitlines() if line.startswith("NORM ")]
    finite_norms = [norm for norm in norms if math.isfinite(norm)]
    share = 100 * sum(norm > 1.0 for norm in finite_norms) / len(finite_norms)
    said = f"(clipped at 1 in {share:.0f}% of the {len(finite_norms)} finite norms of the last {len(norms)} steps)"
    [final] = [line for line in result.stderr.splitlines() if line.startswith("optwatch: final step")]
    assert (len(norms), len(finite_norms)) == (12, 5) and f"grad NaN {said}" in final, final


def test_what_spawned_workers_send_back_of_the_scripts_own_classes_reaches_it(tmp_path):
    """A DataLoader whose spawn workers return a dataclass the script defines failed at its first batch:
    "Can't get attribute 'Sample' on <module 'optwatch.probe.launch'>" (multiprocessing, imported before the
    script, had named the launcher ``__mp_main__``). So did a pool's results under `-m` and forkserver."""
    script = tmp_path / "spawned.py"
    script.write_text(
        "import dataclasses, torch\nfrom torch.utils.data import DataLoader, Dataset\n"
        "@dataclasses.dataclass\nclass Sample:\n    x: torch.Tensor\n    y: torch.Tensor\n"
        "class Samples(Dataset):\n    def __len__(self): return 8\n"
        "    def __getitem__(self, i): return Sample(torch.full((4,), float(i)), torch.ones(1))\n"
        "def collate(items): return Sample(torch.stack([s.x for s in items]), torch.stack([s.y for s in items]))\n"
        "if __name__ == '__main__':\n    model = torch.nn.Linear(4, 1)\n"
        "    opt = torch.optim.SGD(model.parameters(), lr=0.01)\n"
        "    loader = DataLoader(Samples(), batch_size=4, num_workers=1, collate_fn=collate,\n"
        "                        multiprocessing_context='spawn')\n"
        "    for batch in loader:\n        opt.zero_grad(); (model(batch.x) - batch.y).pow(2).mean().backward()\n"
        "        opt.step()\n"
        "        print(type(batch).__name__, batch.x[:, 0].tolist())\n"
        "    print(type(__builtins__).__name__)\n"
    )
    plain = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    watched = optwatch("run", "--headless", "--no-record", str(script))
    assert plain.returncode == watched.returncode == 0, watched.stderr[-2000:]
    assert watched.stdout == plain.stdout == "Sample [0.0, 1.0, 2.0, 3.0]\nSample [4.0, 5.0, 6.0, 7.0]\nmodule\n"


def test_a_namespace_package_runs_under_m_and_its_modules_pools_send_back_their_classes(tmp_path):
    """`optwatch run -m tools` for a folder with a __main__.py and no __init__.py: "No module named tools",
    where python -m runs it. And `-m tools.pool`, whose spawned pool returns a class it defines."""
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "__main__.py").write_text("import sys\nprint(__spec__.name, sys.argv[1:])\n")
    (tmp_path / "tools" / "pool.py").write_text(
        "import concurrent.futures, dataclasses, multiprocessing\n"
        "@dataclasses.dataclass\nclass Result:\n    n: int\n"
        "def square(n): return Result(n * n)\n"
        "if __name__ == '__main__':\n    context = multiprocessing.get_context('spawn')\n"
        "    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:\n"
        "        print(list(pool.map(square, [2, 3])))\n"
    )
    for module, said in [("tools", "tools.__main__ ['x']\n"), ("tools.pool", "[Result(n=4), Result(n=9)]\n")]:
        plain = subprocess.run([sys.executable, "-m", module, "x"], cwd=tmp_path, capture_output=True, text=True)
        watched = subprocess.run(
            [sys.executable, "-m", "optwatch", "run", "--headless", "--no-record", "-m", module, "x"],
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert plain.returncode == watched.returncode == 0, watched.stderr[-2000:]
        assert watched.stdout == plain.stdout == said


@pytest.mark.parametrize("raised", ["KeyboardInterrupt", "Stop"])
def test_an_uncaught_interrupt_or_base_exception_is_reported_from_the_scripts_frames(tmp_path, raised):
    """An uncaught KeyboardInterrupt (a Ctrl-C the script does not handle) or an exception class of its own
    derived from BaseException: their tracebacks went through optwatch's launcher and runpy, and
    ``sys.last_value`` was None for the script's atexit handlers, where python sets it."""
    script = tmp_path / "interrupted.py"
    script.write_text(
        "import atexit, sys\nclass Stop(BaseException): pass\n"
        "atexit.register(lambda: print('last', repr(getattr(sys, 'last_value', None)), flush=True))\n"
        f"def train():\n    raise {raised}('here')\ntrain()\n"
    )
    plain = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    watched = optwatch("run", "--headless", "--no-record", str(script))
    assert watched.stdout == plain.stdout == f"last {raised}('here')\n"
    assert watched.returncode == (130 if raised == "KeyboardInterrupt" else 1) and plain.returncode in (-2, 1)
    script_lines = [line for line in watched.stderr.splitlines() if not line.startswith("optwatch:")]
    assert script_lines == plain.stderr.splitlines(), watched.stderr
