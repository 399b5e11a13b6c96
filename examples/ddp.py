"""A small DistributedDataParallel job (gloo, CPU or GPU), for trying `optwatch attach` across ranks.

torchrun --nproc-per-node=2 -m optwatch run examples/ddp.py --steps 500
optwatch run --nproc-per-node 2 examples/ddp.py                  # the same, with the dashboard
torchrun --nproc-per-node=2 -m optwatch run examples/ddp.py --slow-rank 1   # a straggler on purpose
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class Regression(Dataset):
    """A noisy linear target: learnable, in memory, the same on every rank (the sampler splits it)."""

    def __init__(self, size: int = 20_000, features: int = 32, slow_s: float = 0.0):
        generator = torch.Generator().manual_seed(0)
        self.inputs = torch.randn(size, features, generator=generator)
        weights = torch.randn(features, 1, generator=generator)
        self.targets = self.inputs @ weights + 0.1 * torch.randn(size, 1, generator=generator)
        self.slow_s = slow_s

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int):
        if self.slow_s:
            time.sleep(self.slow_s)
        return self.inputs[index], self.targets[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--slow-rank", type=int, default=-1, help="this rank loads its data slowly")
    parser.add_argument("--slow-s", type=float, default=0.002, help="extra seconds per sample on the slow rank")
    parser.add_argument("--step-sleep", type=float, default=0.0, help="seconds of pretend work per step")
    args = parser.parse_args()

    # NCCL needs a GPU per rank: with fewer GPUs than ranks on this node (two ranks, one GPU), gloo on CPU.
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    use_cuda = os.environ.get("LOCAL_RANK") is not None and torch.cuda.device_count() >= ranks_here
    dist.init_process_group("nccl" if use_cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{int(os.environ['LOCAL_RANK'])}") if use_cuda else torch.device("cpu")
    torch.manual_seed(0)
    model = DistributedDataParallel(
        nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 1)).to(device),
        device_ids=[device.index] if use_cuda else None,
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    dataset = Regression(slow_s=args.slow_s if rank == args.slow_rank else 0.0)
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=DistributedSampler(dataset, seed=0))

    step = 0
    while step < args.steps:
        for inputs, targets in loader:
            if args.step_sleep:
                time.sleep(args.step_sleep)
            loss = F.mse_loss(model(inputs.to(device)), targets.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step % 100 == 0 and rank == 0:
                print(f"step {step} loss {loss.item():.4f} ({world} ranks)", flush=True)
            if step == args.steps:
                break
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
