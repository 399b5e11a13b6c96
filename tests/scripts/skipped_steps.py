"""A loop that skips the optimizer's step on a bad batch, as guarded training loops do: a corrupt sample
(NaN) every 7th batch, and an outlier batch (100x its inputs) every 11th that the spike guard skips when its
gradient norm is over 5x the running average. Each iteration calls ``zero_grad()`` between its forward and
its backward, so a skipped batch's gradients are thrown away. The steps taken, counted from 0. No optwatch
import.

    TRUTH {"step": S, "loss": ..., "grad_norm": ...}
    SKIPPED {"batch": B, "before_step": S, "why": "nan" | "spike"}
"""

import argparse
import json
import math

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--batches", type=int, default=60)
parser.add_argument("--lookahead", action="store_true", help="AdamW inside a Lookahead wrapper")
args = parser.parse_args()


class Lookahead(torch.optim.Optimizer):
    """Lookahead (Zhang et al. 2019) as its common PyTorch ports write it: the inner optimizer's param groups
    shared, slow weights pulled toward the fast ones every k steps."""

    def __init__(self, optimizer, k=5, alpha=0.5):
        super().__init__(optimizer.param_groups, optimizer.defaults)
        self.optimizer, self.k, self.alpha, self.steps = optimizer, k, alpha, 0
        self.param_groups = optimizer.param_groups
        self.slow = [p.detach().clone() for group in self.param_groups for p in group["params"]]

    @torch.no_grad()
    def step(self, closure=None):
        loss = self.optimizer.step(closure)
        self.steps += 1
        if self.steps % self.k == 0:
            fast = [p for group in self.param_groups for p in group["params"]]
            for slow, param in zip(self.slow, fast):
                slow.add_(param - slow, alpha=self.alpha)
                param.copy_(slow)
        return loss


torch.set_num_threads(1)
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
if args.lookahead:
    optimizer = Lookahead(optimizer)
generator = torch.Generator().manual_seed(1)
target_weights = torch.randn(32, 10, generator=generator)
step, average = 0, None
for batch in range(args.batches):
    inputs = torch.randn(64, 32, generator=generator)
    targets = (inputs @ target_weights).argmax(1)
    if batch % 7 == 6:
        inputs[0, 0] = float("nan")
    elif batch % 11 == 10:
        inputs = inputs * 100.0
    loss = nn.functional.cross_entropy(model(inputs), targets)
    optimizer.zero_grad()
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0).item()
    why = "nan" if not math.isfinite(grad_norm) else "spike" if average and grad_norm > 5 * average else None
    if why:
        print("SKIPPED " + json.dumps({"batch": batch, "before_step": step, "why": why}), flush=True)
        continue
    average = grad_norm if average is None else 0.9 * average + 0.1 * grad_norm
    optimizer.step()
    print("TRUTH " + json.dumps({"step": step, "loss": loss.item(), "grad_norm": grad_norm}), flush=True)
    step += 1
