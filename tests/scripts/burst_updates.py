"""SAC's shape with CleanRL's ``policy_frequency``: the critic steps every iteration; the actor and the
temperature step three times in a row every fourth iteration, after the critic. No optwatch import.

    TRUTH {"step": S, "loss": critic loss, "actor": the burst's last actor loss (iterations with one)}
"""

import json

import torch
from torch import nn
from torch.nn import functional as F

torch.set_num_threads(1)
torch.manual_seed(0)
OBS, ACT = 6, 2
critic = nn.Sequential(nn.Linear(OBS + ACT, 64), nn.ReLU(), nn.Linear(64, 1))
actor = nn.Sequential(nn.Linear(OBS, 64), nn.ReLU(), nn.Linear(64, ACT))
log_alpha = torch.zeros(1, requires_grad=True)
q_optimizer = torch.optim.Adam(critic.parameters(), lr=1e-3)
actor_optimizer = torch.optim.Adam(actor.parameters(), lr=3e-4)
a_optimizer = torch.optim.Adam([log_alpha], lr=1e-3)

for step in range(40):
    obs, action, target = torch.randn(64, OBS), torch.rand(64, ACT) * 2 - 1, torch.randn(64, 1)
    q_loss = F.mse_loss(critic(torch.cat([obs, action], -1)), target)
    q_optimizer.zero_grad()
    q_loss.backward()
    q_optimizer.step()
    truth = {"step": step, "loss": q_loss.item()}
    if step % 4 == 0:
        for _ in range(3):
            taken = torch.tanh(actor(obs))
            actor_loss = (log_alpha.exp().detach() * taken.pow(2).sum(-1) - critic(torch.cat([obs, taken], -1))).mean()
            actor_optimizer.zero_grad()
            actor_loss.backward()
            actor_optimizer.step()
            alpha_loss = -(log_alpha.exp() * (taken.detach().pow(2).sum(-1) - ACT)).mean()
            a_optimizer.zero_grad()
            alpha_loss.backward()
            a_optimizer.step()
            truth["actor"] = actor_loss.item()
    print("TRUTH " + json.dumps(truth), flush=True)
