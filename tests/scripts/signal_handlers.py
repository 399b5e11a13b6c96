"""A training whose own signal handlers save a checkpoint and end it cleanly: SIGTERM (a scheduler's
preemption, `kill`) and SIGUSR1 (SLURM's `--signal`, Lightning's requeue). Writes the signal's name to
``--saved`` and exits 0; without a signal it trains on for ``--steps``."""

import argparse
import signal
import sys
import time

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--saved", required=True)
parser.add_argument("--steps", type=int, default=100000)
args = parser.parse_args()

model = torch.nn.Linear(8, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)


def save_and_leave(signum, frame):
    torch.save(model.state_dict(), args.saved + ".pt")
    with open(args.saved, "w") as saved:
        saved.write(signal.Signals(signum).name)
    print(f"saved on {signal.Signals(signum).name}", flush=True)
    sys.exit(0)


signal.signal(signal.SIGTERM, save_and_leave)
signal.signal(signal.SIGUSR1, save_and_leave)
inputs, targets = torch.randn(16, 8), torch.randn(16, 1)
for _step in range(args.steps):
    loss = torch.nn.functional.mse_loss(model(inputs), targets)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    time.sleep(0.02)
