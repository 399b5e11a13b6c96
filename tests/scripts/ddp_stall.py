"""Two or more DDP ranks (gloo, CPU) where one rank, at ``--stall-at``, spends ``--stall-s`` seconds in its own
``save_checkpoint`` while the others wait for it in the next step's gradient all-reduce. No optwatch import.
Run under torchrun; the stalled rank prints STALLING."""

import argparse
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=30)
parser.add_argument("--sleep", type=float, default=0.05)
parser.add_argument("--stall-at", type=int, default=10)
parser.add_argument("--stall-rank", type=int, default=1)
parser.add_argument("--stall-s", type=float, default=8.0)
args = parser.parse_args()


def save_checkpoint(seconds):
    ended = time.monotonic() + seconds
    while time.monotonic() < ended:
        time.sleep(0.01)  # (where the checkpoint waits)


dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = DistributedDataParallel(torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1)))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
inputs, targets = torch.randn(32, 8), torch.randn(32, 1)
for step in range(args.steps):
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(model(inputs), targets)
    loss.backward()  # (where the other ranks wait)
    optimizer.step()
    if step == args.stall_at and rank == args.stall_rank:
        print("STALLING", flush=True)
        save_checkpoint(args.stall_s)
    time.sleep(args.sleep)
dist.destroy_process_group()
