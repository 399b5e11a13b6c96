"""A fine-tune that trains every layer, then freezes the backbone (``requires_grad_(False)``) and trains the
head alone, with ``zero_grad(set_to_none=False)`` as older scripts do: the frozen layers keep gradients of
zeros. No optwatch import.

    TRUTH {"step": S, "loss": ..., "grad_norm": the norm of the gradients that train}
"""

import argparse
import json

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=160)
parser.add_argument("--freeze-at", type=int, default=60)
args = parser.parse_args()

torch.manual_seed(0)
torch.set_num_threads(1)
layers = []
for _ in range(5):
    layers += [torch.nn.Linear(32, 32), torch.nn.Tanh()]
model = torch.nn.Sequential(*layers, torch.nn.Linear(32, 4))
backbone, head = model[:-1], model[-1]
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
inputs, labels = torch.randn(512, 32), torch.randint(0, 4, (512,))
for step in range(args.steps):
    if step == args.freeze_at:
        backbone.requires_grad_(False)
    batch = torch.randint(0, 512, (64,))
    loss = torch.nn.functional.cross_entropy(model(inputs[batch]), labels[batch])
    optimizer.zero_grad(set_to_none=False)
    loss.backward()
    trained = [p.grad for p in model.parameters() if p.requires_grad]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in trained]))
    optimizer.step()
    print("TRUTH " + json.dumps({"step": step, "loss": loss.item(), "grad_norm": norm.item()}), flush=True)
