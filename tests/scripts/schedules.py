"""A learning rate schedule of torch's own, stepped every step; prints the rate each step used. No optwatch
import.

    TRUTH {"step": S, "lr": the rate used}
"""

import argparse
import json

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--schedule", choices=["swa", "cyclic", "onecycle", "cosine"], required=True)
parser.add_argument("--steps", type=int, default=80)
args = parser.parse_args()

torch.manual_seed(0)
model = torch.nn.Linear(8, 1)
if args.schedule == "cosine":  # two param groups under one floor (eta_min), as weight decay's split makes them
    groups = [{"params": [model.weight]}, {"params": [model.bias], "lr": 0.05}]
    optimizer = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
else:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
if args.schedule == "cosine":
    schedules = [torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.steps, eta_min=0.01)]
elif args.schedule == "swa":  # cosine for the first half, then SWALR anneals towards swa_lr and holds it
    schedules = [torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.steps // 2, eta_min=0.01)]
    schedules.append(torch.optim.swa_utils.SWALR(optimizer, swa_lr=0.02, anneal_epochs=5))
elif args.schedule == "cyclic":
    schedules = [torch.optim.lr_scheduler.CyclicLR(optimizer, base_lr=0.01, max_lr=0.1, step_size_up=10)]
else:
    schedules = [torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=args.steps)]
inputs, targets = torch.randn(64, 8), torch.randn(64, 1)
for step in range(args.steps):
    optimizer.zero_grad()
    torch.nn.functional.mse_loss(model(inputs), targets).backward()
    used = [group["lr"] for group in optimizer.param_groups]  # (before step(): a command for the next step lands in it)
    optimizer.step()
    schedules[0 if args.schedule != "swa" or step < args.steps // 2 else 1].step()
    print("TRUTH " + json.dumps({"step": step, "lr": used[0], "lrs": used}), flush=True)
