"""Gradient accumulation over 4 micro-batches (each loss divided by 4) with clipping that bites, plain
torch on the CPU, with its own ground truth. No optwatch import.

    TRUTH {"step": S, "loss": ..., "grad_norm": ..., "grad_norm_after_clip": ..., "samples": ...}

- ``loss``: the step's loss as the loop reports it, the sum of the four ``loss / 4`` it ran backward() on
  (so the mean of the micro-batch losses).
- ``grad_norm``: the pre-clip global L2 norm that ``torch.nn.utils.clip_grad_norm_`` returned (with
  ``--clip-every-micro``, its last call's, on the gradients the step takes).
- ``grad_norm_after_clip``: the norm the optimizer then saw (max_norm when clipping bit).
- ``samples``: the samples of the step's four micro-batches (DataLoader batch 8: 32).
"""

import argparse
import json

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=16)
parser.add_argument(
    "--clip-every-micro",
    action="store_true",
    help="clip after every micro-batch's backward (a common slip): the step's norm is the last clip's",
)
args = parser.parse_args()

torch.set_num_threads(1)
torch.manual_seed(0)
ACCUMULATION, BATCH, MAX_NORM = 4, 8, 0.25

inputs = torch.randn(BATCH * ACCUMULATION * args.steps, 16)
targets = torch.randint(0, 4, (len(inputs),))
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(inputs, targets), batch_size=BATCH, shuffle=True)
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

step, micro, summed, samples = 0, 0, 0.0, 0
optimizer.zero_grad()
for x, y in loader:
    loss = nn.functional.cross_entropy(model(x), y) / ACCUMULATION
    loss.backward()
    summed += loss.item()
    samples += int(x.size(0))
    micro += 1
    if args.clip_every_micro:
        total = torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)
    if micro % ACCUMULATION:
        continue
    if not args.clip_every_micro:
        total = torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)
    after = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
    optimizer.step()
    optimizer.zero_grad()
    record = {"step": step, "loss": summed, "grad_norm": float(total), "grad_norm_after_clip": float(after)}
    print(f"TRUTH {json.dumps(record | {'samples': samples})}", flush=True)
    step, summed, samples = step + 1, 0.0, 0
