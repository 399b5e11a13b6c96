"""A very short run (``--steps N``: 1, 3, 6...) that ends right after its last optimizer step, plain torch on
the CPU, with its own ground truth: every step, the last included, must reach the record. No optwatch
import.

    TRUTH {"step": S, "loss": ..., "grad_norm": ..., "samples": 16}
"""

import argparse
import json

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=3)
args = parser.parse_args()

torch.set_num_threads(1)
torch.manual_seed(0)
x, y = torch.randn(16 * args.steps, 4), torch.randn(16 * args.steps, 1)
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
model = nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
for step, (inputs, targets) in enumerate(loader):
    optimizer.zero_grad()
    loss = nn.functional.mse_loss(model(inputs), targets)
    loss.backward()
    norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
    optimizer.step()
    record = {"step": step, "loss": loss.item(), "grad_norm": float(norm), "samples": int(inputs.size(0))}
    print(f"TRUTH {json.dumps(record)}", flush=True)
