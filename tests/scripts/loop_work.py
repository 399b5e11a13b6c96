"""A loop with no DataLoader that does work of its own before each forward, as diffusion and nanoGPT-style
loops do (noise and timesteps drawn in the loop, an EMA copy updated after the step, Python bookkeeping):
the script times its own pieces. No optwatch import.

    TRUTH {"step": S, "work_s": the loop's own work before the forward, "forward_s": forward and loss}
"""

import argparse
import json
import time

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=60)
parser.add_argument("--work", type=int, default=60000, help="iterations of Python bookkeeping per step")
args = parser.parse_args()

torch.set_num_threads(1)
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 64))
ema = [p.detach().clone() for p in model.parameters()]
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
generator = torch.Generator().manual_seed(1)
for step in range(args.steps):
    began = time.perf_counter()
    clean = torch.randn(128, 64, generator=generator)
    noise = torch.randn(128, 64, generator=generator)
    noisy = clean + 0.5 * noise
    tally = 0
    for i in range(args.work):  # the loop's bookkeeping
        tally += i % 7
    forward_began = time.perf_counter()
    loss = nn.functional.mse_loss(model(noisy), noise)
    forward_ended = time.perf_counter()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        torch._foreach_lerp_(ema, list(model.parameters()), 0.01)
    work_s = forward_began - began
    print("TRUTH " + json.dumps({"step": step, "work_s": work_s, "forward_s": forward_ended - forward_began}))
