"""Optimizer-in-backward, as torchtune does it to save memory: one AdamW per parameter, stepped from the
parameter's post-accumulate-grad hook during ``backward()``, each gradient freed right after its step; no
optimizer step in the loop. No optwatch import.

    TRUTH {"step": S, "loss": the step's loss, "grad_norm": the whole model's gradient norm, from the hooks}
"""

import argparse
import json

import torch
import torch.nn.functional as F
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=60)
parser.add_argument("--nan-at", type=int, default=-1, help="a NaN in the first layer's weight gradient at this step")
args = parser.parse_args()

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))
optimizers = {parameter: torch.optim.AdamW([parameter], lr=1e-3) for parameter in model.parameters()}
squares = []
step = 0


def step_in_backward(parameter: torch.Tensor) -> None:
    if step == args.nan_at and parameter is model[0].weight:
        parameter.grad[0, 0] = float("nan")
    squares.append(parameter.grad.detach().float().square().sum())
    optimizers[parameter].step()
    optimizers[parameter].zero_grad(set_to_none=True)


for parameter in model.parameters():
    parameter.register_post_accumulate_grad_hook(step_in_backward)
for step in range(args.steps):
    inputs = torch.randn(64, 16)
    loss = F.mse_loss(model(inputs), inputs[:, :4].sum(1, keepdim=True))
    squares.clear()
    loss.backward()
    norm = torch.stack(squares).sum().sqrt().item()
    print("TRUTH " + json.dumps({"step": step, "loss": loss.item(), "grad_norm": norm}), flush=True)
