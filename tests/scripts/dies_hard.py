"""A training that dies with no chance to clean up, right after a burst of output (``--how segfault``: a C-level
crash, whose traceback faulthandler writes as the process dies; ``--how sigkill``: the OOM killer's way)."""

import argparse
import ctypes
import faulthandler
import os
import signal
import sys

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--how", choices=("segfault", "sigkill"), required=True)
args = parser.parse_args()

faulthandler.enable()
torch.manual_seed(0)
model = torch.nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(5):
    loss = model(torch.randn(8, 4)).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    print(f"step {step} loss {loss.item():.6f}", flush=True)
for line in range(2000):  # a burst the output's drain cannot have taken before the end
    sys.stdout.write(f"checkpoint shard {line:05d} written\n")
sys.stdout.flush()
print("last words on stdout", flush=True)
print("last words on stderr", file=sys.stderr, flush=True)
if args.how == "segfault":
    ctypes.string_at(0)
os.kill(os.getpid(), signal.SIGKILL)
