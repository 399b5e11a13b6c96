"""Trains and saves a checkpoint at every step (files opened and closed, as a real run does), printing its loss.

python busy_files.py --steps N --sleep S --out DIR
"""

import argparse
import os

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=40)
parser.add_argument("--sleep", type=float, default=0.05)
parser.add_argument("--out", default=".")
args = parser.parse_args()

torch.manual_seed(0)
model = torch.nn.Linear(8, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
x, y = torch.randn(32, 8), torch.randn(32, 1)
for step in range(args.steps):
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    optimizer.step()
    torch.save(model.state_dict(), os.path.join(args.out, "checkpoint.pt"))
    print(f"step {step} loss {loss.item()!r}", flush=True)
    if args.sleep:
        import time

        time.sleep(args.sleep)
