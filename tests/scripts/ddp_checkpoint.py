"""A DDP job (gloo, CPU) that saves a checkpoint when interrupted, as long jobs do: each rank prints the step
it stopped at, and rank 0 takes its time writing (``--save-s``) before it exits 130. No optwatch import.

    STOPPED {"rank": R, "step": S}
    SAVED {"step": S}
"""

import argparse
import json
import sys
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

parser = argparse.ArgumentParser()
parser.add_argument("--out", required=True)
parser.add_argument("--save-s", type=float, default=2.0)
args = parser.parse_args()

torch.set_num_threads(1)
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = DistributedDataParallel(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1)))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
steps = 0


def say(line: str) -> None:
    sys.stdout.write(line + "\n")  # one write: the ranks share the output pipe under plain torchrun
    sys.stdout.flush()


try:
    while True:
        inputs, targets = torch.randn(32, 16), torch.randn(32, 1)
        loss = nn.functional.mse_loss(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
        time.sleep(0.005)
except KeyboardInterrupt:
    say("STOPPED " + json.dumps({"rank": rank, "step": steps}))
    if rank == 0:
        time.sleep(args.save_s)  # a large model's state, written to slow storage
        torch.save({"step": steps, "model": model.module.state_dict()}, args.out)
        say("SAVED " + json.dumps({"step": steps}))
    sys.exit(130)
