"""Loads its data in ``load_data`` for ``--load-s`` seconds before it trains, then trains ``--steps`` steps of
``--sleep`` seconds each, and evaluates in ``evaluate`` for ``--evaluate-s`` seconds after ``--evaluate-after``
steps. No optwatch import. Prints TRAINING and EVALUATING as it gets there."""

import argparse
import time

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--load-s", type=float, default=0.0)
parser.add_argument("--steps", type=int, default=20)
parser.add_argument("--sleep", type=float, default=0.0)
parser.add_argument("--evaluate-after", type=int, default=-1)
parser.add_argument("--evaluate-s", type=float, default=0.0)
args = parser.parse_args()


def load_data(seconds):
    ended = time.monotonic() + seconds
    while time.monotonic() < ended:
        time.sleep(0.01)  # (where the loading waits)
    return torch.randn(64, 8), torch.randn(64, 1)


def evaluate(model, seconds):
    ended = time.monotonic() + seconds
    with torch.no_grad():
        while time.monotonic() < ended:
            model(torch.randn(256, 8))
            time.sleep(0.01)  # (where the evaluation waits)


torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
inputs, targets = load_data(args.load_s)
print("TRAINING", flush=True)
for step in range(args.steps):
    optimizer.zero_grad()
    torch.nn.functional.mse_loss(model(inputs), targets).backward()
    optimizer.step()
    if step == args.evaluate_after:
        print("EVALUATING", flush=True)
        evaluate(model, args.evaluate_s)
    time.sleep(args.sleep)
