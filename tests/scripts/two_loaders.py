"""A semi-supervised loop (FixMatch's shape): a labelled and an unlabelled DataLoader zipped, one backward()
a step; optionally a validation batch taken every N steps with gradients on and no backward, and gradients
from ``torch.autograd.grad`` instead of ``backward()``. No optwatch import.

    TRUTH {"step": S, "loss": the step's loss, "samples": the training samples of the step}
"""

import argparse
import json

import torch
from torch.utils.data import DataLoader, TensorDataset

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=150)
parser.add_argument("--validate-every", type=int, default=0, help="one validation batch every N steps")
parser.add_argument("--autograd-grad", action="store_true", help="gradients by torch.autograd.grad")
args = parser.parse_args()

torch.manual_seed(0)
torch.set_num_threads(1)
model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
labelled = DataLoader(TensorDataset(torch.randn(32 * args.steps, 16), torch.randint(0, 4, (32 * args.steps,))), 32)
unlabelled = DataLoader(TensorDataset(torch.randn(96 * args.steps, 16)), 96)
validation = DataLoader(TensorDataset(torch.randn(64 * args.steps, 16), torch.randint(0, 4, (64 * args.steps,))), 64)
checks = iter(validation)
for step, ((x, y), (u,)) in enumerate(zip(labelled, unlabelled)):
    if args.validate_every and step % args.validate_every == 0:
        vx, vy = next(checks)  # a quick look at one validation batch, with gradients on (no backward follows)
        torch.nn.functional.cross_entropy(model(vx), vy).detach()
    supervised = torch.nn.functional.cross_entropy(model(x), y)
    confident = model(u).softmax(-1).max(-1).values
    loss = supervised + 0.1 * (1 - confident).mean()  # a consistency term on the unlabelled batch
    optimizer.zero_grad()
    if args.autograd_grad:
        for param, grad in zip(model.parameters(), torch.autograd.grad(loss, list(model.parameters()))):
            param.grad = grad
    else:
        loss.backward()
    optimizer.step()
    print("TRUTH " + json.dumps({"step": step, "loss": loss.item(), "samples": len(x) + len(u)}), flush=True)
