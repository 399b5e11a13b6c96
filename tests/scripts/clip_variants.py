"""Clips as scripts write them, each printing the step's global gradient 2-norm before any clip, as the script
computes it (``TRUTH {"step": S, "grad_norm": N}``), by ``--how``: a part of the model only (``subset``), two
parts apart (``parts``, an encoder's and a decoder's), the same gradients twice (``twice``), by the inf-norm
(``inf``), and a second model's clip only (``other``: the first model's step has no clip)."""

import argparse
import json

import torch
from torch import nn
from torch.nn import functional as F

parser = argparse.ArgumentParser()
parser.add_argument("--how", choices=("subset", "parts", "twice", "inf", "other"), required=True)
parser.add_argument("--steps", type=int, default=30)
args = parser.parse_args()

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
critic = nn.Linear(4, 1)
critic_optimizer = torch.optim.SGD(critic.parameters(), lr=0.1)
clip = torch.nn.utils.clip_grad_norm_
for step in range(args.steps):
    inputs, targets = torch.randn(32, 16), torch.randint(0, 4, (32,))
    optimizer.zero_grad()
    F.cross_entropy(model(inputs), targets).backward()
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    print("TRUTH " + json.dumps({"step": step, "grad_norm": norm.item()}), flush=True)
    if args.how == "subset":
        clip(model[0].parameters(), 0.1)
    elif args.how == "parts":
        clip(model[:3].parameters(), 0.2)
        clip(model[4].parameters(), 0.2)
    elif args.how == "twice":
        clip(model.parameters(), 0.5)
        clip(model.parameters(), 0.5)
    elif args.how == "inf":
        clip(model.parameters(), 0.05, norm_type="inf")
    optimizer.step()
    critic_optimizer.zero_grad()
    critic(model(inputs).detach()).pow(2).mean().backward()
    if args.how == "other":
        clip(critic.parameters(), 0.01)
    critic_optimizer.step()
