"""A fine-tune that trains its new head first and adds the backbone to the optimizer later
(``add_param_group``, with a lower rate), as a gradual unfreezing does. No optwatch import."""

import argparse

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=60)
parser.add_argument("--unfreeze-at", type=int, default=20)
args = parser.parse_args()

torch.manual_seed(0)
torch.set_num_threads(1)
model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 32), torch.nn.Tanh())
model.append(torch.nn.Linear(32, 4))  # the new head
backbone, head = model[:-1], model[-1]
optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3)
inputs, labels = torch.randn(256, 16), torch.randint(0, 4, (256,))
for step in range(args.steps):
    if step == args.unfreeze_at:
        optimizer.add_param_group({"params": list(backbone.parameters()), "lr": 1e-4})
    batch = torch.randint(0, 256, (32,))
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(inputs[batch]), labels[batch]).backward()
    optimizer.step()
