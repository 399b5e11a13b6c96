"""Two ranks (gloo) training in step; rank ``--dies`` kills itself with SIGKILL before step ``--at`` (the OOM
killer's way: no word from it), and torchrun then stops the other."""

import argparse
import os
import signal
import time

import torch
import torch.distributed as dist

parser = argparse.ArgumentParser()
parser.add_argument("--dies", type=int, default=1)
parser.add_argument("--at", type=int, default=20)
args = parser.parse_args()

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(8, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
for step in range(200):
    if rank == args.dies and step == args.at:
        os.kill(os.getpid(), signal.SIGKILL)
    optimizer.zero_grad()
    model(torch.randn(16, 8)).pow(2).mean().backward()
    optimizer.step()
    time.sleep(0.02)
dist.destroy_process_group()
