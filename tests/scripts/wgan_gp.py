"""WGAN-GP as caogang/wgan-gp writes it: the critic minimises D_fake - D_real + gp through three backward()
calls, the real term's weighed by -1 (``D_real.backward(mone)``); the generator minimises -D(G(z)) the same
way. Five critic steps per generator step. Prints per critic step:
``TRUTH {"step": S, "d_cost": D_fake - D_real + gp}``, with ``"g_cost": -D(G(z))`` at each fifth, which the
generator's step follows."""

import json

import torch

torch.manual_seed(0)
critic = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
generator = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
opt_d = torch.optim.Adam(critic.parameters(), lr=1e-3, betas=(0.5, 0.9))
opt_g = torch.optim.Adam(generator.parameters(), lr=1e-3, betas=(0.5, 0.9))
one, mone = torch.tensor(1.0), torch.tensor(-1.0)
step = 0
for _generator_step in range(8):
    for critic_step in range(5):
        real = torch.randn(32, 2) + 3.0
        opt_d.zero_grad()
        d_real = critic(real).mean()
        d_real.backward(mone)
        fake = generator(torch.randn(32, 4)).detach()
        d_fake = critic(fake).mean()
        d_fake.backward(one)
        alpha = torch.rand(32, 1)
        mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
        grads = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)[0]
        penalty = 10 * ((grads.norm(2, dim=1) - 1) ** 2).mean()
        penalty.backward()
        opt_d.step()
        truth = {"step": step, "d_cost": (d_fake - d_real + penalty).item()}
        step += 1
        if critic_step < 4:  # (the generator's step goes with the last critic step's record)
            print("TRUTH " + json.dumps(truth), flush=True)
    for p in critic.parameters():
        p.requires_grad_(False)
    opt_g.zero_grad()
    g = critic(generator(torch.randn(32, 4))).mean()
    g.backward(mone)
    opt_g.step()
    for p in critic.parameters():
        p.requires_grad_(True)
    truth["g_cost"] = (-g).item()
    print("TRUTH " + json.dumps(truth), flush=True)
