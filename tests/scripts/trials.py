"""A hyperparameter search in one process: each trial trains a new model with a new optimizer from scratch,
the last trial's dropped. A new trial's first losses are far above the converged ones of the trial before.
No optwatch import. Prints ``TRIAL {"trial": T, "first_step": S}`` as each begins.

    python trials.py --steps 300
"""

import argparse
import json

import torch
import torch.nn.functional as F
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=300, help="steps per trial")
args = parser.parse_args()

torch.manual_seed(0)
torch.set_num_threads(1)
inputs = torch.randn(1024, 12)
targets = inputs @ torch.randn(12, 1)
step = 0


def trial(number: int, hidden: int, adam: bool, lr: float) -> float:
    global step
    print("TRIAL " + json.dumps({"trial": number, "first_step": step}), flush=True)
    model = nn.Sequential(nn.Linear(12, hidden), nn.Tanh(), nn.Linear(hidden, 1))
    optimizer = (
        torch.optim.Adam(model.parameters(), lr=lr)
        if adam
        else torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    )
    for _ in range(args.steps):
        batch = torch.randint(0, 1024, (32,))
        loss = F.mse_loss(model(inputs[batch]), targets[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
    return loss.item()


results = [trial(0, 16, False, 0.01), trial(1, 48, True, 3e-3), trial(2, 8, False, 0.1)]
print("best", min(range(3), key=lambda t: results[t]))
