"""A fine-tune that makes a new optimizer at a phase change, as scripts do when they unfreeze a backbone or
switch to a lower rate: the old one (and its state) is dropped. No optwatch import.

    TRUTH {"step": S, "loss": the step's loss, "grad_norm": the norm before clipping, "lr": the rate used}
    OLD_OPTIMIZER {"alive": whether the first optimizer outlived the script dropping it}
"""

import argparse
import gc
import json
import time
import weakref

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=60)
parser.add_argument("--switch", type=int, default=30, help="the step the new optimizer takes over at")
parser.add_argument("--sleep", type=float, default=0.0)
args = parser.parse_args()

torch.manual_seed(0)
torch.set_num_threads(1)
model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10, gamma=0.5)
first = weakref.ref(optimizer)
inputs, targets = torch.randn(256, 16), torch.randn(256, 1)
for step in range(args.steps):
    if step == args.switch:  # phase two: a new optimizer and schedule, the old ones dropped
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10, gamma=0.5)
    batch = torch.randint(0, 256, (32,))
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(model(inputs[batch]), targets[batch])
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    used = optimizer.param_groups[0]["lr"]  # (read before step(): an lr command for the next step lands in it)
    optimizer.step()
    scheduler.step()
    print("TRUTH " + json.dumps({"step": step, "loss": loss.item(), "grad_norm": norm.item(), "lr": used}), flush=True)
    if args.sleep:
        time.sleep(args.sleep)
gc.collect()
print("OLD_OPTIMIZER " + json.dumps({"alive": first() is not None}), flush=True)
