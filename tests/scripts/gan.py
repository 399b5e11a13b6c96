"""A DCGAN-style loop (two optimizers, three backward() calls an iteration), plain torch on the CPU, with
its own ground truth. No optwatch import.

Per iteration, as the DCGAN example does: ``errD_real.backward(); errD_fake.backward(); optD.step()``,
then ``errG.backward(); optG.step()``. The discriminator's optimizer steps first, so it is the one whose
steps optwatch counts (its first step is step 0; one step an iteration).

    TRUTH {"step": S, "loss_d": errD_real + errD_fake, "loss_g": errG, "grad_norm_d": ..., "grad_norm_g": ...,
           "samples": real images the iteration drew from the DataLoader}

``grad_norm_d`` / ``grad_norm_g``: the global L2 norm of each network's gradients just before its
optimizer's step (no clipping here).
"""

import argparse
import json

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=20)
args = parser.parse_args()

torch.set_num_threads(1)
torch.manual_seed(0)
NZ, BATCH = 8, 16


def truth(**fields) -> None:
    print(f"TRUTH {json.dumps(fields)}", flush=True)


def norm(module: nn.Module) -> float:
    return float(torch.nn.utils.get_total_norm([p.grad for p in module.parameters() if p.grad is not None]))


netG = nn.Sequential(
    nn.ConvTranspose2d(NZ, 16, 4, 1, 0, bias=False),  # 1x1 -> 4x4
    nn.BatchNorm2d(16),
    nn.ReLU(True),
    nn.ConvTranspose2d(16, 1, 4, 2, 1, bias=False),  # 4x4 -> 8x8
    nn.Tanh(),
)
netD = nn.Sequential(
    nn.Conv2d(1, 16, 4, 2, 1, bias=False),  # 8x8 -> 4x4
    nn.LeakyReLU(0.2, inplace=True),
    nn.Conv2d(16, 1, 4, 1, 0, bias=False),  # 4x4 -> 1x1
    nn.Sigmoid(),
)
criterion = nn.BCELoss()
optD = torch.optim.Adam(netD.parameters(), lr=2e-3, betas=(0.5, 0.999))
optG = torch.optim.Adam(netG.parameters(), lr=2e-3, betas=(0.5, 0.999))

# "Real" images: blurred blobs in [-1, 1].
images = torch.tanh(torch.nn.functional.avg_pool2d(torch.randn(320, 1, 10, 10) * 3, 3, 1))
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images), batch_size=BATCH, shuffle=True)

step = 0
while step < args.steps:
    for (real,) in loader:
        if step >= args.steps:
            break
        b = real.size(0)
        # (1) Update D: maximize log(D(x)) + log(1 - D(G(z)))
        netD.zero_grad()
        errD_real = criterion(netD(real).view(-1), torch.ones(b))
        errD_real.backward()
        noise = torch.randn(b, NZ, 1, 1)
        fake = netG(noise)
        errD_fake = criterion(netD(fake.detach()).view(-1), torch.zeros(b))
        errD_fake.backward()
        grad_norm_d = norm(netD)
        optD.step()
        # (2) Update G: maximize log(D(G(z)))
        netG.zero_grad()
        errG = criterion(netD(fake).view(-1), torch.ones(b))
        errG.backward()
        grad_norm_g = norm(netG)
        optG.step()
        truth(
            step=step,
            loss_d=(errD_real + errD_fake).item(),
            loss_g=errG.item(),
            grad_norm_d=grad_norm_d,
            grad_norm_g=grad_norm_g,
            samples=b,
        )
        step += 1
