"""The cifar example's training loop with a per-iteration timer, for ``benchmarks/wall_clock.py``: the same
model, data and DataLoader as ``examples/cifar.py`` (synthetic CIFAR-shaped data), printing ``LOOP_TIMES``.

    python benchmarks/cifar_loop.py --iters 160 [--device cuda] [--threads 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from lockstep import LoopTimes
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

from cifar import SmallResNet, SyntheticCIFAR  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iters", type=int, default=160)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: torch's default)")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = SmallResNet().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    loader = DataLoader(SyntheticCIFAR(size=args.iters * args.batch_size), batch_size=args.batch_size, num_workers=2)
    clock = LoopTimes()
    clock.start()  # under benchmarks/wall_clock.py's time slicing: the go of the round
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        clock.lap()
        clock.go()
    clock.print()


if __name__ == "__main__":
    main()
