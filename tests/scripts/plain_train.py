"""A plain PyTorch script with no optwatch import: prints its own loss each step."""

import argparse

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=20)
parser.add_argument("--sleep", type=float, default=0.0)
parser.add_argument("--lr", type=float, default=0.05)
parser.add_argument("--warmup", type=int, default=0, help="a linear warm-up from 0 over N steps (LambdaLR)")
parser.add_argument("--warmup-start", type=float, default=0.0, help="the warm-up's least factor (from 0: its first)")
args = parser.parse_args()

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
if args.warmup:
    warm_up = lambda step: max(args.warmup_start, min(1.0, step / args.warmup))  # noqa: E731
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warm_up)
inputs, targets = torch.randn(64, 8), torch.randn(64, 1)
for step in range(args.steps):
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(model(inputs), targets)
    loss.backward()
    optimizer.step()
    used = optimizer.param_groups[0]["lr"]  # the step's rate (an lr command is applied inside step())
    print(f"step {step} loss {loss.item()!r}", flush=True)
    if args.warmup:
        scheduler.step()
        print(f"lr {step} {used!r}", flush=True)
    if args.sleep:
        import time

        time.sleep(args.sleep)
