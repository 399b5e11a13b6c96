"""Prints ``--lines`` numbered lines of 1,000 bytes as fast as it can (60 MB by default: more than three of
optwatch's 16 MiB log files), trains a step, then touches ``--done``."""

import argparse
import sys
from pathlib import Path

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--lines", type=int, default=60_000)
parser.add_argument("--done", required=True)
args = parser.parse_args()

filler = "y" * 991 + "\n"
for number in range(args.lines):
    sys.stdout.write(f"{number:08d} {filler}")
sys.stdout.flush()
model = torch.nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
model(torch.randn(8, 4)).pow(2).mean().backward()
optimizer.step()
Path(args.done).touch()
