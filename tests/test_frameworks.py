"""The real Hugging Face Trainer and PyTorch Lightning under `optwatch run`: optwatch's numbers per step are
the ones the framework itself logs (its loss, its pre-clip gradient norm) and sees (the samples of its
training batches), however it accumulates, clips, evaluates and prefetches.

The frameworks come with the ``frameworks`` extra (``scripts/setup.sh`` installs it).
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from conftest import SCRIPTS, optwatch, read_jsonl, steps_of
from test_right_numbers import assert_same, truth_of


def run_framework(tmp_path, script: str) -> tuple[list[dict], dict[int, dict], str]:
    record = tmp_path / f"{script}.jsonl"
    result = optwatch("run", "--headless", "--record", str(record), str(SCRIPTS / f"{script}.py"), timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return read_jsonl(record), truth_of(result.stdout, "FRAMEWORK_STEP"), result.stdout


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="the frameworks extra is not installed")
def test_the_hugging_face_trainer_with_accumulation_clipping_and_evaluation(tmp_path):
    records, truth, stdout = run_framework(tmp_path, "hf_trainer")
    steps = steps_of(records)
    assert len(truth) == 20
    assert_same(steps, truth, "loss", "loss")  # the sum of 4 micro-batches, as the Trainer logs it
    assert_same(steps, truth, "grad_norm", "grad_norm")  # before accelerate clips (get_total_norm path)
    assert_same(steps, truth, "samples", "samples")  # 4 x 4: no evaluation batch, no look-ahead twice
    assert_same(steps, truth, "lr", "lr", rel=1e-9)
    assert {s["clip_max_norm"] for s in steps} == {1.0}
    assert any(t["grad_norm"] > 1.0 for t in truth.values())  # clipping bites at some steps
    evaluated = [json.loads(line.split(" ", 1)[1])["after_step"] for line in stdout.splitlines()
                 if line.startswith("FRAMEWORK_EVAL ")]  # fmt: skip
    assert evaluated and {s["step"] for s in steps if s.get("eval_batches")} >= {a + 1 for a in evaluated if a < 19}


@pytest.mark.skipif(importlib.util.find_spec("lightning") is None, reason="the frameworks extra is not installed")
def test_lightning_with_a_closure_clipping_and_validation(tmp_path):
    records, truth, _ = run_framework(tmp_path, "lightning_train")
    steps = steps_of(records)
    assert len(truth) == 24
    assert_same(steps, truth, "loss", "loss")
    assert_same(steps, truth, "grad_norm", "grad_norm")  # this step's, before gradient_clip_val cuts it
    assert_same(steps, truth, "samples", "samples")  # the sanity check and validation batches are not
    assert {s["clip_max_norm"] for s in steps} == {0.5}
