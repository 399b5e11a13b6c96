"""LBFGS with a closure (several forward/backward evaluations inside each ``optimizer.step(closure)``),
plain torch on the CPU, with its own ground truth. No optwatch import.

Each step draws one mini-batch from a DataLoader; LBFGS runs the closure up to ``max_iter`` times.

    TRUTH {"step": S, "loss": first closure loss, "grad_norm": ..., "evaluations": N, "samples": ...}

- ``loss``: the loss of the step's first closure evaluation (what ``step`` returns: the loss at the
  weights the step started from).
- ``grad_norm``: the global L2 norm of the gradients of that first evaluation, computed inside the
  closure right after its backward() (no clipping here).
- ``evaluations``: how many times LBFGS called the closure in that step (backward() calls);
  ``grad_norm_last``: the gradient norm of the last of them (the gradients left when the step returns).
"""

import argparse
import json

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=12)
args = parser.parse_args()

torch.set_num_threads(1)
torch.manual_seed(0)
BATCH = 32

inputs = torch.randn(BATCH * args.steps, 8)
targets = (inputs @ torch.randn(8, 1)).tanh() + 0.05 * torch.randn(len(inputs), 1)
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(inputs, targets), batch_size=BATCH)
model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
optimizer = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=5, history_size=5)

for step, (x, y) in enumerate(loader):
    evaluations = []

    def closure(x=x, y=y, evaluations=evaluations):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
        evaluations.append((loss.item(), float(norm)))
        return loss

    returned = optimizer.step(closure)
    first_loss, first_norm = evaluations[0]
    assert first_loss == returned.item()
    record = {"step": step, "loss": first_loss, "grad_norm": first_norm, "samples": int(x.size(0))}
    record |= {"evaluations": len(evaluations), "grad_norm_last": evaluations[-1][1]}
    print(f"TRUTH {json.dumps(record)}", flush=True)
