"""An autoencoder trained at every iteration, and a linear probe on its codes stepped every 5th iteration,
before it (its optimizer steps first in the run), or after it (``--after``). No optwatch import.

    TRUTH {"step": S, "loss": the autoencoder's loss at iteration S}
    PROBE {"step": S, "loss": the probe's loss at iteration S}
"""

import argparse
import json

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=60)
parser.add_argument("--after", action="store_true", help="the probe steps after the autoencoder")
args = parser.parse_args()

torch.manual_seed(0)
torch.set_num_threads(1)
encoder = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8))
decoder = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 32))
probe = nn.Linear(8, 4)
probe_optimizer = torch.optim.SGD(probe.parameters(), lr=0.1)
optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=1e-3)
inputs, labels = torch.randn(512, 32), torch.randint(0, 4, (512,))


def probe_step(step: int, x: torch.Tensor, y: torch.Tensor) -> None:
    """How well the codes separate the classes, now and then."""
    with torch.no_grad():
        codes = encoder(x)
    probe_optimizer.zero_grad()
    probe_loss = nn.functional.cross_entropy(probe(codes), y)
    probe_loss.backward()
    probe_optimizer.step()
    print("PROBE " + json.dumps({"step": step, "loss": probe_loss.item()}), flush=True)


for step in range(args.steps):
    batch = torch.randint(0, 512, (64,))
    x, y = inputs[batch], labels[batch]
    if step % 5 == 0 and not args.after:
        probe_step(step, x, y)
    loss = nn.functional.mse_loss(decoder(encoder(x)), x)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    print("TRUTH " + json.dumps({"step": step, "loss": loss.item()}), flush=True)
    if step % 5 == 4 and args.after:
        probe_step(step, x, y)
