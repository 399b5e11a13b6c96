"""What a loop that makes a new model and optimizer again and again pays under optwatch: test-time
training, Reptile's inner loop, a sweep in one process. Each iteration makes a small MLP and an SGD and
takes ``--steps`` steps; the loop prints its own training-thread CPU time per iteration. Bare and under
``optwatch run --headless --no-record`` take turns, ``--rounds`` times; the figure is the ratio of the
medians, with each round's ratio beside it.

    python benchmarks/new_models.py [--iterations 200] [--steps 1] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOOP = """
import sys, time, torch
torch.manual_seed(0)
torch.set_num_threads(1)
iterations, steps = int(sys.argv[1]), int(sys.argv[2])
inputs = torch.randn(20, 1)
targets = torch.sin(inputs)
started = time.thread_time()
for _ in range(iterations):
    model = torch.nn.Sequential(torch.nn.Linear(1, 40), torch.nn.ReLU(), torch.nn.Linear(40, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
print("PER_ITERATION_MS", (time.thread_time() - started) / iterations * 1000)
"""


def once(script: Path, watched: bool, iterations: int, steps: int, env: dict[str, str]) -> float:
    prefix = [sys.executable, "-m", "optwatch", "run", "--headless", "--no-record"] if watched else [sys.executable]
    done = subprocess.run(
        [*prefix, str(script), str(iterations), str(steps)], capture_output=True, text=True, env=env, timeout=600
    )
    line = next(line for line in done.stdout.splitlines() if line.startswith("PER_ITERATION_MS"))
    return float(line.split()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--steps", type=int, default=1, help="steps with each new model")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ow-new-models-"))
    script = work / "new_models_loop.py"
    script.write_text(LOOP)
    runtime = work / "runtime"
    runtime.mkdir(mode=0o700)
    env = {**os.environ, "OPTWATCH_RUNTIME_DIR": str(runtime)}
    bare, watched = [], []
    for _ in range(args.rounds):
        bare.append(once(script, False, args.iterations, args.steps, env))
        watched.append(once(script, True, args.iterations, args.steps, env))
        time.sleep(0.5)
    ratios = [w / b for w, b in zip(watched, bare)]
    print(f"bare     per iteration {statistics.median(bare):.2f} ms of training-thread CPU (rounds: "
          + ", ".join(f"{v:.2f}" for v in bare) + ")")  # fmt: skip
    print(f"optwatch per iteration {statistics.median(watched):.2f} ms (rounds: "
          + ", ".join(f"{v:.2f}" for v in watched) + ")")  # fmt: skip
    print(f"ratio of medians {statistics.median(watched) / statistics.median(bare):.3f} (each round: "
          + ", ".join(f"{r:.2f}" for r in ratios) + ")")  # fmt: skip


if __name__ == "__main__":
    main()
