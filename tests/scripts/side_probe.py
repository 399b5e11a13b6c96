"""An autoencoder trained at every iteration, and a linear probe on its codes stepped every 5th iteration,
before it (its optimizer steps first in the run). No optwatch import.

    TRUTH {"step": S, "loss": the autoencoder's loss at iteration S}
"""

import argparse
import json

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=60)
args = parser.parse_args()

torch.manual_seed(0)
torch.set_num_threads(1)
encoder = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8))
decoder = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 32))
probe = nn.Linear(8, 4)
probe_optimizer = torch.optim.SGD(probe.parameters(), lr=0.1)
optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=1e-3)
inputs, labels = torch.randn(512, 32), torch.randint(0, 4, (512,))
for step in range(args.steps):
    batch = torch.randint(0, 512, (64,))
    x, y = inputs[batch], labels[batch]
    if step % 5 == 0:  # how well the codes separate the classes, now and then
        with torch.no_grad():
            codes = encoder(x)
        probe_optimizer.zero_grad()
        nn.functional.cross_entropy(probe(codes), y).backward()
        probe_optimizer.step()
    loss = nn.functional.mse_loss(decoder(encoder(x)), x)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    print("TRUTH " + json.dumps({"step": step, "loss": loss.item()}), flush=True)
