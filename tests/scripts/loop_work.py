"""A loop with no DataLoader that does work of its own before each forward, as diffusion and nanoGPT-style
loops do (noise and timesteps drawn in the loop, an EMA copy updated after the step, Python bookkeeping):
the script times its own pieces. No optwatch import.

    TRUTH {"step": S, "work_s": the loop's own work before the forward, "forward_s": forward and loss,
           "fetch_s": the next batch taken after the forward (``--prefetch``), before backward(),
           "between_s": the loop's own work after the forward, before backward() (``--between``)}
"""

import argparse
import json
import time

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=60)
parser.add_argument("--work", type=int, default=60000, help="iterations of Python bookkeeping per step")
parser.add_argument(
    "--prefetch",
    action="store_true",
    help="batches from a DataLoader, the next one taken "
    "between the forward and backward(), as nanoGPT takes its next batch",
)
parser.add_argument("--width", type=int, default=256)
parser.add_argument(
    "--between",
    type=int,
    default=0,
    help="iterations of Python work between the forward and backward(), as nanoGPT's get_batch makes the "
    "next batch there without a DataLoader",
)
args = parser.parse_args()

torch.set_num_threads(1)
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(64, args.width), nn.ReLU(), nn.Linear(args.width, 64))
ema = [p.detach().clone() for p in model.parameters()]
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
generator = torch.Generator().manual_seed(1)
if args.prefetch:
    pairs = torch.utils.data.TensorDataset(
        torch.randn(128 * (args.steps + 1), 64), torch.randn(128 * (args.steps + 1), 64)
    )
    batches = iter(torch.utils.data.DataLoader(pairs, batch_size=128))
    upcoming = next(batches)
for step in range(args.steps):
    began = time.perf_counter()
    if args.prefetch:
        noisy, noise = upcoming
    else:
        clean = torch.randn(128, 64, generator=generator)
        noise = torch.randn(128, 64, generator=generator)
        noisy = clean + 0.5 * noise
    tally = 0
    for i in range(args.work):  # the loop's bookkeeping
        tally += i % 7
    forward_began = time.perf_counter()
    loss = nn.functional.mse_loss(model(noisy), noise)
    forward_ended = time.perf_counter()
    if args.prefetch:
        upcoming = next(batches)  # the next batch, while (on a GPU) the forward runs
    fetched = time.perf_counter()
    for i in range(args.between):
        tally += i % 7
    between_ended = time.perf_counter()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        torch._foreach_lerp_(ema, list(model.parameters()), 0.01)
    work_s = forward_began - began
    times = {
        "work_s": work_s,
        "forward_s": forward_ended - forward_began,
        "fetch_s": fetched - forward_ended,
        "between_s": between_ended - fetched,
    }
    print("TRUTH " + json.dumps({"step": step, **times}))
