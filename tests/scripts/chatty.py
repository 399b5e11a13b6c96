"""Trains a few steps and prints a great deal at each (a run whose output outgrows a small disk).

python chatty.py --steps N --lines-per-step L
"""

import argparse

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=30)
parser.add_argument("--lines-per-step", type=int, default=2000)
args = parser.parse_args()

torch.manual_seed(0)
model = torch.nn.Linear(8, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
x, y = torch.randn(32, 8), torch.randn(32, 1)
filler = "x" * 100
for step in range(args.steps):
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    optimizer.step()
    for line in range(args.lines_per_step):
        print(f"step {step} line {line} {filler}")
    print(f'TRUTH {{"step": {step}, "loss": {loss.item()!r}}}', flush=True)
