"""optwatch in a notebook: a real IPython shell runs the cells (what ipykernel runs them with), as a person does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import steps_of, wait_for
from optwatch.runs import read_run_records

SCRIPTS = Path(__file__).parent / "scripts"


def test_a_notebook_session_in_ipython_is_followed_cell_by_cell(tmp_path):
    """Cells that train, idle, evaluate after ``amp=on`` and stop: the run is named after the notebook (not
    ``ipykernel_launcher``), the step the next cell started in is marked as holding the idle time between cells,
    optwatch's autocast ends with its cell (an evaluation cell ran in bf16) and comes back at the next step, and
    a stop reads as one line where IPython printed some 40 lines of traceback through optwatch's hooks."""
    runs = tmp_path / "runs"
    env = {**os.environ, "OPTWATCH_RUNS_DIR": str(runs), "JPY_SESSION_NAME": "/home/me/work/my_notebook.ipynb"}
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / "notebook_cells.py")], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "evaluation dtype torch.float32" in output  # the cell after the training's: no autocast of optwatch's
    assert "in autocast again True" in output
    assert "optwatch: stopped by request before step 41: the steps before it are complete" in output
    assert "Traceback" not in output and "after the stop, steps 41" in output, output
    [run] = list(runs.iterdir())
    assert run.name.startswith("my_notebook-"), run.name
    # (The hub writes the record's end after the kernel's process is gone.)
    wait_for(lambda: "ended" in json.loads((run / "run.json").read_text()), timeout_s=30)
    steps = steps_of(list(read_run_records(run)))
    # The steps begun in a cell and ended in a later one; the first holds the person's pause.
    assert [s["step"] for s in steps if s.get("between_cells")] == [30, 35, 40]
    assert steps[30]["step_time_s"] > 1.0
