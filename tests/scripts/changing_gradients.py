"""Parameters whose gradients are not there at every step: a sparse embedding (``sparse=True``, its gradient
a sparse tensor) beside dense layers, and experts that get no tokens in some steps (their gradients None), as
in a mixture of experts. One SGD over everything. No optwatch import."""

import argparse

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=120)
args = parser.parse_args()

torch.manual_seed(0)
torch.set_num_threads(1)


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(1000, 32, sparse=True)
        self.inp = nn.Linear(32, 32)
        self.experts = nn.ModuleList(nn.Linear(32, 32) for _ in range(4))
        self.out = nn.Linear(32, 1)

    def forward(self, tokens: torch.Tensor, step: int) -> torch.Tensor:
        hidden = torch.relu(self.inp(self.embed(tokens).mean(1)))
        routed = [self.experts[(step + k) % 4] for k in range(2)]  # two of the four experts get the tokens
        return self.out(sum(torch.relu(expert(hidden)) for expert in routed))


model = Model()
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
for step in range(args.steps):
    tokens, targets = torch.randint(0, 1000, (64, 8)), torch.randn(64, 1)
    optimizer.zero_grad()  # (set_to_none: an idle expert's gradients are None)
    nn.functional.mse_loss(model(tokens, step), targets).backward()
    optimizer.step()
print("DONE", flush=True)
