"""Plain PyTorch training loops that go wrong in known ways, at known steps (no optwatch import).

    --scenario vanishing   a 30-layer sigmoid MLP: the gradients of the early layers die
    --scenario lr-jump     a healthy MLP whose learning rate is raised far too high at --at
    --scenario inf-module  a module that emits inf at step --at
    --scenario healthy     the same MLP, left alone
Prints ``nonfinite loss at step N`` the first time the loss is NaN/Inf (a host sync, fine in a test).
"""

import argparse

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--scenario", required=True, choices=("vanishing", "lr-jump", "inf-module", "healthy"))
parser.add_argument("--steps", type=int, default=100)
parser.add_argument("--at", type=int, default=60)
args = parser.parse_args()


class Spike(nn.Module):
    """Multiplies its input by inf at one chosen step: a stand-in for an overflowing custom op."""

    def __init__(self, at: int):
        super().__init__()
        self.at = at
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x * float("inf") if self.calls == self.at + 1 else x * 1.0


torch.manual_seed(0)
inputs = torch.randn(256, 16)
targets = torch.sin(inputs.sum(1, keepdim=True))
if args.scenario == "vanishing":
    layers = [nn.Linear(16, 32), nn.Sigmoid()]
    for _ in range(28):
        layers += [nn.Linear(32, 32), nn.Sigmoid()]
    model = nn.Sequential(*layers, nn.Linear(32, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
else:
    middle = Spike(args.at) if args.scenario == "inf-module" else nn.Identity()
    model = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), middle, nn.Tanh(), nn.Linear(64, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

reported = False
for step in range(args.steps):
    if args.scenario == "lr-jump" and step == args.at:
        for group in optimizer.param_groups:
            group["lr"] = 50.0
    batch = torch.randint(0, 256, (32,))
    optimizer.zero_grad()
    loss = nn.functional.mse_loss(model(inputs[batch]), targets[batch])
    loss.backward()
    optimizer.step()
    if not reported and not torch.isfinite(loss):
        print(f"nonfinite loss at step {step}", flush=True)
        reported = True
print(f"done {args.steps} steps", flush=True)
