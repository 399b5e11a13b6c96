"""Multi-task training that backpropagates its two losses in one call, torch.autograd.backward([a, b]), or
weighted by grad_tensors. No optwatch import.

    TRUTH {"step": S, "loss": a + b (in double precision), "grad_norm": ...}
"""

import argparse
import json

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--weighted", action="store_true", help="grad_tensors weigh the second loss by 0.5")
args = parser.parse_args()

torch.manual_seed(0)
torch.set_num_threads(1)
trunk = nn.Sequential(nn.Linear(8, 32), nn.ReLU())
regression, classes = nn.Linear(32, 1), nn.Linear(32, 3)
model = nn.ModuleDict({"trunk": trunk, "regression": regression, "classes": classes})
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
for step in range(30):
    inputs = torch.randn(32, 8)
    features = trunk(inputs)
    loss_a = nn.functional.mse_loss(regression(features), inputs[:, :1])
    loss_b = nn.functional.cross_entropy(classes(features), (inputs[:, 1] > 0).long())
    optimizer.zero_grad()
    if args.weighted:
        torch.autograd.backward([loss_a, loss_b], grad_tensors=[torch.tensor(1.0), torch.tensor(0.5)])
    else:
        torch.autograd.backward([loss_a, loss_b])
    grad_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
    optimizer.step()
    truth = {"step": step, "loss": loss_a.item() + loss_b.item(), "grad_norm": grad_norm.item()}
    print("TRUTH " + json.dumps(truth), flush=True)
