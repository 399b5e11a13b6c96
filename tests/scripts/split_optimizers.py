"""A small GPT trained as modded-nanogpt and torch.optim.Muon's users train: Muon for the blocks' matrices,
AdamW for the embedding, the head and the gains and biases, both stepping on the one backward. No optwatch
import. The whole model's figures, computed by the script:

    TRUTH {"step": S, "loss": ..., "grad_norm": the norm of every gradient, before the steps,
           "updates": {name: the norm of what the two steps changed in that parameter},
           "muon_lr": ..., "adam_lr": ..., "scheduled": what the script's schedule assigned (before any command)}
"""

import argparse
import json
import math

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=40)
parser.add_argument("--adam-first", action="store_true", help="AdamW steps first (it is then optwatch's primary)")
parser.add_argument("--zero-between", action="store_true", help="each optimizer's zero_grad right after its step")
args = parser.parse_args()

torch.manual_seed(0)
torch.set_num_threads(1)
VOCAB, WIDTH, CONTEXT = 64, 32, 16


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(WIDTH)
        self.attn = nn.MultiheadAttention(WIDTH, 4, batch_first=True)
        self.fc = nn.Linear(WIDTH, 4 * WIDTH)
        self.proj = nn.Linear(4 * WIDTH, WIDTH)

    def forward(self, x):
        h = self.norm(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.proj(torch.relu(self.fc(x)))


class GPT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.blocks = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(WIDTH, VOCAB, bias=False)

    def forward(self, idx):
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


model = GPT()
matrices = [p for p in model.blocks.parameters() if p.ndim == 2]
rest = [p for p in model.parameters() if all(p is not m for m in matrices)]
muon = torch.optim.Muon(matrices, lr=0.02, momentum=0.95)
adam = torch.optim.AdamW(rest, lr=3e-3, betas=(0.9, 0.95))
optimizers = [adam, muon] if args.adam_first else [muon, adam]
base_rates = [optimizer.param_groups[0]["lr"] for optimizer in optimizers]
tokens = torch.randint(0, VOCAB, (4096,))
for step in range(args.steps):
    scale = min(1.0, (step + 1) / 10) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
    for optimizer, rate in zip(optimizers, base_rates):
        optimizer.param_groups[0]["lr"] = rate * scale
    starts = torch.randint(0, len(tokens) - CONTEXT - 1, (16,))
    inputs = torch.stack([tokens[s : s + CONTEXT] for s in starts])
    targets = torch.stack([tokens[s + 1 : s + CONTEXT + 1] for s in starts])
    loss = nn.functional.cross_entropy(model(inputs).view(-1, VOCAB), targets.view(-1))
    loss.backward()
    rates = {"muon_lr": muon.param_groups[0]["lr"], "adam_lr": adam.param_groups[0]["lr"]}  # the step's, as logged
    grad_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for optimizer in optimizers:
        optimizer.step()
        if args.zero_between:
            optimizer.zero_grad(set_to_none=True)
    if not args.zero_between:
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
    updates = {name: (p.detach() - before[name]).norm().item() for name, p in model.named_parameters()}
    truth = {"step": step, "loss": loss.item(), "grad_norm": grad_norm.item(), "updates": updates}
    truth.update(rates, scheduled=scale)
    print("TRUTH " + json.dumps(truth), flush=True)
