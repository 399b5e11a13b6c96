"""A GAN whose two optimizers are made on one line inside a function (``opt_d, opt_g = Adam(D...),
Adam(G...)``), as many GAN scripts and Lightning's ``configure_optimizers`` do. No optwatch import.

    TRUTH {"step": S, "loss_d": ..., "loss_g": ...}
"""

import json

import torch
from torch import nn
from torch.nn import functional as F

torch.set_num_threads(1)


class Generator(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))

    def forward(self, z):
        return self.net(z)


class Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x):
        return self.net(x)


def main():
    torch.manual_seed(0)
    generator, discriminator = Generator(), Discriminator()
    opt_d, opt_g = torch.optim.Adam(discriminator.parameters(), lr=2e-4), torch.optim.Adam(generator.parameters())
    for step in range(12):
        real, z = torch.randn(32, 4) + 1, torch.randn(32, 8)
        fake = generator(z)
        loss_d = F.softplus(-discriminator(real)).mean() + F.softplus(discriminator(fake.detach())).mean()
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        loss_g = F.softplus(-discriminator(fake)).mean()
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        print("TRUTH " + json.dumps({"step": step, "loss_d": loss_d.item(), "loss_g": loss_g.item()}), flush=True)


main()
