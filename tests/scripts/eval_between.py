"""A training DataLoader of batch 8 and an evaluation DataLoader of batch 64, iterated in full under
``torch.no_grad()`` every 5 optimizer steps (after steps 4, 9, 14, ...). Plain torch on the CPU, with its
own ground truth. No optwatch import.

    TRUTH {"step": S, "loss": ..., "grad_norm": ..., "samples": 8}
    EVAL {"after_step": S, "eval_loss": ..., "eval_samples": 128}

``samples`` counts training samples only: the evaluation's batches are no step's samples.
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
BATCH, EVAL_BATCH, EVAL_EVERY = 8, 64, 5


def dataset(count: int) -> torch.utils.data.TensorDataset:
    x = torch.randn(count, 10)
    return torch.utils.data.TensorDataset(x, (x[:, :3].sum(1) > 0).long())


train = torch.utils.data.DataLoader(dataset(BATCH * args.steps), batch_size=BATCH, shuffle=True)
evaluation = torch.utils.data.DataLoader(dataset(128), batch_size=EVAL_BATCH)
model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

for step, (x, y) in enumerate(train):
    model.train()
    loss = nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
    optimizer.step()
    record = {"step": step, "loss": loss.item(), "grad_norm": float(norm), "samples": int(x.size(0))}
    print(f"TRUTH {json.dumps(record)}", flush=True)
    if (step + 1) % EVAL_EVERY == 0:
        model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for ex, ey in evaluation:
                total += nn.functional.cross_entropy(model(ex), ey, reduction="sum").item()
                count += int(ex.size(0))
        print(f"EVAL {json.dumps({'after_step': step, 'eval_loss': total / count, 'eval_samples': count})}", flush=True)
