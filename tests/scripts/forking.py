"""Trains, and at step 5 forks a child that runs a forward and leaves through sys.exit (as a script's own
worker might); then trains on slowly, so that the job can be steered from outside.

    python forking.py --steps N --sleep S [--spawn-watcher]

With --spawn-watcher it also starts a child Python that calls optwatch.watch() and trains a few steps of its own.
"""

import argparse
import os
import subprocess
import sys
import time

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=60)
parser.add_argument("--sleep", type=float, default=0.1)
parser.add_argument("--spawn-watcher", action="store_true")
args = parser.parse_args()

CHILD = """
import torch, optwatch
model = torch.nn.Linear(2, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
optwatch.watch(model, optimizer)
for _ in range(3):
    optimizer.zero_grad(); model(torch.ones(4, 2)).sum().backward(); optimizer.step()
print("child watcher done", flush=True)
"""

torch.manual_seed(0)
model = torch.nn.Linear(8, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
x, y = torch.randn(32, 8), torch.randn(32, 1)
for step in range(args.steps):
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    optimizer.step()
    print(f"step {step} lr {optimizer.param_groups[0]['lr']!r}", flush=True)
    if step == 5:
        pid = os.fork()
        if pid == 0:
            model(x).sum()
            sys.exit(0)
        os.waitpid(pid, 0)
        print("child forked and gone", flush=True)
        if args.spawn_watcher:
            subprocess.run([sys.executable, "-c", CHILD], check=True)
    time.sleep(args.sleep)
