"""A tiny MLP sharded with FSDP2 (``fully_shard``) on gloo, CPU. Rank 0 prints, as one JSON line per step,
the norms the script computes itself from the full tensors (gathered with ``full_tensor()``): the gradient
norm of the whole model and of each parameter, each weight's norm before the step and the step's update.

Started by torchrun (RANK, WORLD_SIZE) or by srun (SLURM_PROCID, SLURM_NTASKS, MASTER_ADDR/PORT: the script
maps them itself, as such scripts do).
"""

import argparse
import json
import os
import time

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=6)
parser.add_argument("--clip-from", type=int, default=-1, help="clip_grad_norm_ from this step on")
args = parser.parse_args()

launcher_vars = sorted(name for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK") if name in os.environ)
if "RANK" in os.environ:
    dist.init_process_group("gloo")
else:
    dist.init_process_group("gloo", rank=int(os.environ["SLURM_PROCID"]), world_size=int(os.environ["SLURM_NTASKS"]))
rank = dist.get_rank()
torch.manual_seed(0)
# 7 rows do not split evenly over 2 ranks, and the last bias has 1 row: one rank's shard of it is empty.
model = torch.nn.Sequential(
    torch.nn.Linear(6, 10), torch.nn.Tanh(), torch.nn.Linear(10, 7), torch.nn.Tanh(), torch.nn.Linear(7, 1)
)
for layer in model:
    if isinstance(layer, torch.nn.Linear):
        fully_shard(layer)
fully_shard(model)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
generator = torch.Generator().manual_seed(rank)
for step in range(args.steps):
    inputs, targets = torch.randn(16, 6, generator=generator), torch.randn(16, 1, generator=generator)
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(model(inputs), targets)
    loss.backward()
    grads = {name: p.grad.full_tensor() for name, p in model.named_parameters()}
    before = {name: p.full_tensor().clone() for name, p in model.named_parameters()}
    if 0 <= args.clip_from <= step:
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.2)
    optimizer.step()
    after = {name: p.full_tensor() for name, p in model.named_parameters()}
    if rank == 0:
        line = {
            "step": step,
            "grad_norm": torch.linalg.vector_norm(torch.stack([g.norm() for g in grads.values()])).item(),
            "grads": {name: g.norm().item() for name, g in grads.items()},
            "weights": {name: w.norm().item() for name, w in before.items()},
            "updates": {name: (after[name] - w).norm().item() for name, w in before.items()},
            "launcher_vars": launcher_vars,
        }
        print(json.dumps(line), flush=True)
# Gloo's worker thread lets go of a finished collective's tensors a moment after the caller has them: if the
# interpreter is already shutting down by then, freeing a Python-made tensor there aborts the process
# ("terminate called without an active exception"; about 1 exit in 15 on a loaded machine, with or without
# optwatch; pytorch/pytorch#179291). The barrier and the pause let the workers finish first.
dist.barrier()
time.sleep(0.1)
dist.destroy_process_group()
